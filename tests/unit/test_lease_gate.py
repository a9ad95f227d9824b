"""The lease gate of a spool (queue/spool_keeper.py) closes at its deadline by
itself, not only when its timer runs: a node thawed after SIGSTOP runs ready
workers before overdue timers, and one of them must not start a delivery on a
lease another node may hold by now."""

from __future__ import annotations

import asyncio

from pillarbox.queue.spool_keeper import _Held


class _Queue:
    gate = None


def test_an_overdue_gate_reads_closed_before_its_timer_runs():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        held = _Held("a", _Queue(), lease=3.0)
        held.renewed(loop.time())
        assert held.gate.is_set()
        held.renewed(loop.time() - 10)  # as if frozen for 10 s since the last renewal
        assert not held.gate.is_set(), "a worker looking now would start a delivery"
        waiter = asyncio.ensure_future(held.gate.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        held.renewed(loop.time())
        await asyncio.wait_for(waiter, 1)
        assert held.gate.is_set()

    asyncio.run(main())
