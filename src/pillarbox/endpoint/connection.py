"""The socket side of a line-based endpoint (SMTP, IMAP): an asyncio Protocol
that buffers input and wakes one session coroutine.

A thin Protocol instead of asyncio streams: the streams layer (a
StreamReader, a timeout context and a timer per read) cost several times the
SMTP work itself on our profiles. Idle connections are found by one sweep per
server (`sweep_idle`) instead of a timer per read.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

MAX_BUFFER = 1 << 20  # unread input held per connection before we stop reading


class Disconnect(Exception):
    """The peer went away (or we are closing): end the session quietly."""


class Connection(asyncio.Protocol):
    """Subclasses set `sessions` (the server's set of live connections) and
    implement `start()`, which begins the session coroutine."""

    sessions: set

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False
        self.last_active = time.monotonic()
        self._waiter: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.sessions.add(self)
        self.start()

    def refuse(self, line: bytes) -> None:
        """Say why and hang up before any session starts (e.g. too many connections)."""
        assert self.transport is not None
        self.transport.write(line)
        self.transport.close()
        self.closed = True
        self.sessions.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_active = time.monotonic()
        if len(self.buf) > MAX_BUFFER and self.transport is not None:
            self.transport.pause_reading()  # resumed when the session catches up
        self.wake()

    def wake(self) -> None:
        """Let a session waiting for input look again (input, or another event)."""
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sessions.discard(self)
        for f in (self._waiter, self._drain):
            if f is not None and not f.done():
                f.set_result(None)

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def wait_data(self) -> None:
        """Until input arrives (or `wake` is called)."""
        if self.closed:
            raise Disconnect()
        if self.transport is not None and len(self.buf) < MAX_BUFFER:
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.closed and not self.buf:
            raise Disconnect()

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise Disconnect()
        self.transport.write(data)
        if self._drain is not None:
            await self._drain

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def close_saying(self, line: bytes) -> None:
        """Close, saying `line` first if the session is waiting for input (between
        commands, or in IMAP IDLE), where it cannot cut into another reply."""
        if self.transport is not None and not self.closed and self._waiter is not None:
            self.transport.write(line)
        self.close()

    def timed_out(self, now: float, limit: float) -> bool:
        return self._waiter is not None and now - self.last_active > limit


async def sweep_idle(sessions: set, limit: Callable[[Connection], float], goodbye: bytes,
                     every: float) -> None:
    """Every `every` seconds, close connections that have waited for input
    longer than `limit(conn)` seconds, saying `goodbye` first."""
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        for conn in list(sessions):
            if conn.timed_out(now, limit(conn)):
                try:
                    if conn.transport is not None:
                        conn.transport.write(goodbye)
                finally:
                    conn.close()


class MemoryBudget:
    """Bytes that all sessions together may hold in memory at once (IMAP
    literals): a session waits for its share, first come first served, so many
    large APPENDs at a time cost at most `limit`, not their sum."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    async def acquire(self, n: int) -> int:
        """Wait until n bytes (at most the whole budget) are free; return what was taken."""
        n = min(n, self.limit)
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            return n
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted just as we were cancelled
                self.release(n)
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        while self._waiters:
            m, fut = self._waiters[0]
            if fut.done():  # its session went away while waiting
                self._waiters.popleft()
                continue
            if self.used + m > self.limit:
                break
            self._waiters.popleft()
            self.used += m
            fut.set_result(None)
