"""Delivery from spools in a directory that several nodes share (issue 19).

With `[storage] shared_dir` each node accepts mail into its own spool
(shared_dir/queue/NODE), durably on disk before its 250, PostgreSQL or not.
Delivering from a spool takes its lease (queue/spool_lease.py):

- a node delivers from its own spool while it holds the lease, renewed every
  lease/3; when a renewal has not come through for 2/3 of the lease
  (PostgreSQL down) its workers start nothing new, so that whatever runs ends
  before anyone else may take the spool; they go on once the lease is renewed;
- every lease/3 a node looks for spools whose lease ran out (their node died)
  and takes one over: it loads that spool read-only and runs a delivery-only
  queue over it (bounces go to its own spool), until the spool is empty or
  its owner asks for it back; then it lets attempts in flight end, writes
  and syncs its done marks and releases the lease;
- a node whose spool another node holds waits at start-up until it is handed
  back (the holder answers within lease/3), and a running node that lost it
  asks for it back, then forgets what the other node finished meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from pillarbox import logs
from pillarbox.queue.scheduler import Queue
from pillarbox.queue.spool import Spool
from pillarbox.queue.spool_lease import SpoolLeases

if TYPE_CHECKING:
    from pillarbox.config import Config

log = logging.getLogger("pillarbox.queue")

T = TypeVar("T")


class _LeaseGate(asyncio.Event):
    """Set while the lease is held. Past its deadline it reads as clear at once,
    before the timer that clears it has run: a process thawed after a SIGSTOP
    runs its ready workers before its overdue timers."""

    def __init__(self, on_expire: Callable[[], None]) -> None:
        super().__init__()
        self.deadline = math.inf
        self._on_expire = on_expire

    def is_set(self) -> bool:
        if super().is_set() and asyncio.get_running_loop().time() >= self.deadline:
            self._on_expire()
        return super().is_set()


class _Held:
    """A spool this node holds the lease of, and the queue delivering from it."""

    def __init__(self, name: str, queue: Queue, lease: float) -> None:
        self.name = name
        self.queue = queue
        self.gate = _LeaseGate(self._expire)
        queue.gate = self.gate
        self._margin = lease * 2 / 3  # deliveries end before the lease: lease/3 to spare
        self._close: asyncio.TimerHandle | None = None

    def renewed(self, at: float) -> None:
        """The lease was renewed by a call made at loop time `at`."""
        loop = asyncio.get_running_loop()
        if self._close is not None:
            self._close.cancel()
        self.gate.deadline = at + self._margin
        self._close = loop.call_at(self.gate.deadline, self._expire)
        if not asyncio.Event.is_set(self.gate):
            self.gate.set()

    def _expire(self) -> None:
        if self._close is not None:
            self._close.cancel()
        self._close = None
        if not asyncio.Event.is_set(self.gate):
            return  # cleared already (by the timer or a worker's look)
        self.gate.clear()
        logs.event(log, logging.WARNING, "queue delivery paused: spool lease not renewed",
                   spool=self.name)

    def pause(self) -> None:
        if self._close is not None:
            self._close.cancel()
            self._close = None
        self.gate.clear()


class SpoolKeeper:
    def __init__(self, config: Config, db: object, queue: Queue) -> None:
        self.config = config
        self.db = db
        self.queue = queue
        self.lease = config.queue.lease
        self.interval = self.lease / 3
        self.node = config.node_name
        self.spools_dir = config.queue_root.parent
        self.leases: SpoolLeases | None = None
        self.own = _Held(self.node, queue, self.lease)
        self.taken: dict[str, _Held] = {}
        self._lost = False  # another node took our spool while we ran
        self._failing = False  # this round could not reach PostgreSQL
        self._outage = False  # logged as unreachable, not yet as back
        self._task: asyncio.Task | None = None

    # -- start and stop -------------------------------------------------------

    async def start(self) -> None:
        """Hold our own spool (waiting for its holder to hand it back), then deliver."""
        self.leases = await asyncio.to_thread(SpoolLeases, self.db, self.node, self.lease)
        loop = asyncio.get_running_loop()
        waiting_for = ""
        while True:
            at = loop.time()
            ok, holder = await self._db(self.leases.take_own)
            if ok and holder is None:
                break
            if ok and holder != waiting_for:
                logs.event(log, logging.WARNING,
                           "queue spool held by another node, waiting for it to hand it back",
                           spool=self.node, holder=holder)
                waiting_for = holder or ""
            if ok:
                await self._db(self.leases.want)
            await asyncio.sleep(min(self.interval, 1.0))
        self.own.renewed(at)
        await self.queue.start()
        logs.event(log, logging.INFO, "queue spool held", spool=self.node,
                   messages=self.queue.pending, lease=self.lease)
        self._task = asyncio.create_task(self._run(), name="queue-spool-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for name in list(self.taken):
            await self._let_go(name, "stopping", drained=self.taken[name].queue.pending == 0)
        self.own.pause()
        await self.queue.stop()
        await asyncio.to_thread(self.queue.spool.close_done)
        if self.leases is not None and not self._lost:
            # Left with mail in it, another node delivers it until we are back.
            await self._db(self.leases.release, self.node, self.queue.pending == 0)

    # -- every lease/3 ----------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._failing = False
            await self._keep_own()
            for name in list(self.taken):
                await self._keep_taken(name)
            if not self._failing:
                await self._adopt()

    async def _db(self, call: Callable[..., T], *args: object) -> tuple[bool, T | None]:
        """(True, what a lease call in a thread returned), or (False, None) when
        PostgreSQL failed (logged once an outage)."""
        try:
            result = await asyncio.to_thread(call, *args)
        except Exception as e:
            if not self._failing and not self._outage:
                logs.event(log, logging.WARNING, "queue spool lease: PostgreSQL unavailable",
                           error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            self._failing = self._outage = True
            return False, None
        if self._outage:
            self._outage = False
            logs.event(log, logging.WARNING, "queue spool lease: PostgreSQL reachable again")
        return True, result

    async def _keep_own(self) -> None:
        assert self.leases is not None
        at = asyncio.get_running_loop().time()
        if not self._lost:
            ok, got = await self._db(self.leases.renew, self.node)
            if not ok or got is None:
                return  # the gate closes by itself if this lasts
            if got[0]:
                self.own.renewed(at)
                return
            self._lost = True
            self.own.pause()
            logs.event(log, logging.WARNING,
                       "queue spool lease lost to another node, delivery paused", spool=self.node)
        ok, holder = await self._db(self.leases.take_own)
        if not ok:
            return
        if holder is not None:
            await self._db(self.leases.want)
            return
        await self.queue.idle()
        marks = await asyncio.to_thread(self.queue.spool.read_finished)
        gone = self.queue.spool.forget_finished(marks)
        self._lost = False
        self.own.renewed(at)
        logs.event(log, logging.WARNING, "queue spool taken back", spool=self.node,
                   finished_elsewhere=gone, messages=self.queue.pending)

    async def _keep_taken(self, name: str) -> None:
        assert self.leases is not None
        held = self.taken[name]
        at = asyncio.get_running_loop().time()
        ok, got = await self._db(self.leases.renew, name)
        if not ok or got is None:
            return
        renewed, wanted = got
        if not renewed:
            await self._let_go(name, "lease lost", release=False)
        elif wanted:
            held.renewed(at)
            await self._let_go(name, "handed back to its node")
        elif held.queue.pending == 0:
            await self._let_go(name, "drained", drained=True)
        else:
            held.renewed(at)

    async def _adopt(self) -> None:
        """Take over one spool whose node died (its lease ran out)."""
        assert self.leases is not None
        names = await asyncio.to_thread(self._spool_names)
        if not names:
            return
        _, orphans = await self._db(self.leases.orphans, names)
        for name in orphans or []:
            at = asyncio.get_running_loop().time()
            _, previous = await self._db(self.leases.take, name)
            if previous is None:
                continue
            spool = await asyncio.to_thread(Spool, self.spools_dir / name,
                                            self.config.queue.min_free_space)
            queue = self._queue_for(spool)
            held = self.taken[name] = _Held(name, queue, self.lease)
            held.renewed(at)
            await queue.start()
            logs.event(log, logging.WARNING, "queue spool taken over", spool=name,
                       node=self.node, previous=previous, messages=queue.pending)
            return

    def _spool_names(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.spools_dir)
                    if e.is_dir() and e.name != self.node and e.name not in self.taken]
        except FileNotFoundError:
            return []

    def _queue_for(self, spool: Spool) -> Queue:
        own = self.queue
        queue = Queue(self.config, spool, own.users, own.aliases)
        queue.takeover = True
        queue.intake = own
        queue.maildir = own.maildir  # its deliveries wake IMAP IDLE like ours
        queue.signing, queue.sealer = own.signing, own.sealer
        queue.modules, queue.encryption = own.modules, own.encryption
        queue.personalize = own.personalize
        return queue

    async def _let_go(self, name: str, why: str, release: bool = True,
                      drained: bool = False) -> None:
        """Stop delivering from a spool taken over: attempts in flight end, their
        done marks reach the disk, then (`release`) the lease goes."""
        held = self.taken.pop(name)
        held.pause()
        await held.queue.idle()
        await held.queue.stop()
        await asyncio.to_thread(held.queue.spool.close_done)
        if release and self.leases is not None:
            await self._db(self.leases.release, name, drained)
        logs.event(log, logging.WARNING, "queue spool let go", spool=name, node=self.node,
                   reason=why, messages=held.queue.pending)


def for_config(config: Config, db: object, queue: Queue) -> SpoolKeeper | None:
    """The keeper when nodes share a spool directory (storage.shared_dir), else None."""
    return SpoolKeeper(config, db, queue) if config.shared_dir is not None else None


async def start_queue(keeper: SpoolKeeper | None, queue: Queue) -> None:
    await (keeper.start() if keeper is not None else queue.start())


def stop_queue(keeper: SpoolKeeper | None, queue: Queue) -> Awaitable[None]:
    return keeper.stop() if keeper is not None else queue.stop()
