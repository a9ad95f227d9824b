"""Ending asyncio tasks at a stop, bounded in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable


async def cancel_all(tasks: Iterable[asyncio.Task], timeout: float) -> set[asyncio.Task]:
    """Cancel the tasks, again and again until they have ended or `timeout` passed;
    return those still running.

    A cancel can be lost (asyncio.wait_for on Python 3.11 swallows it when the
    inner call finishes at the same moment), so one cancel is not enough.
    """
    deadline = time.monotonic() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending and time.monotonic() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    return pending
