"""The socket side of a line-based endpoint (SMTP, IMAP): an asyncio Protocol
that buffers input and wakes one session coroutine, the table of live
connections that the connection limits count, and the deadlines that bound
every phase of a session.

A thin Protocol instead of asyncio streams: the streams layer (a
StreamReader, a timeout context and a timer per read) cost several times the
SMTP work itself on our profiles. Deadlines are checked by one sweep per
server (`sweep`) instead of a timer per read.

Deadlines, as Postfix's smtpd_per_request_deadline and smtpd_min_data_rate:
a command has `timeout` seconds from its first byte to be complete (one byte
now and then no longer keeps a session); message data (SMTP DATA, an IMAP
literal) buys 1/min_rate seconds per byte, never more than `timeout` ahead;
a reply must drain at min_rate too. Whenever a session waits for its client
(input, a handshake, a reply to drain) there is a deadline, and a connection
past it is closed whatever it is doing; the server's own work in between
(a password check, a disk write) is not the client's time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import ssl
import time
from typing import Protocol

from pillarbox import logs, metrics

log = logging.getLogger("pillarbox.connection")

MAX_BUFFER = 1 << 20  # unread input held per connection before we stop reading


class Disconnect(Exception):
    """The peer went away (or we are closing): end the session quietly."""


class SessionTable:
    """The live connections of one protocol family (SMTP, IMAP), and how many
    come from each address: what the connection limits count. A connection is
    in it from its TCP accept (before any TLS handshake) until it is gone."""

    def __init__(self, limit: int, per_ip: int) -> None:
        self.limit = limit
        self.per_ip_limit = per_ip
        self.conns: set[Connection] = set()
        self.per_ip: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self.conns)

    def __iter__(self):
        return iter(list(self.conns))

    def add(self, conn: Connection) -> str | None:
        """Count a new connection; None if it may stay, else why not
        ("address" or "total"), and then it is not counted."""
        ip = conn.peer_ip
        if self.per_ip[ip] >= self.per_ip_limit:
            return "address"
        if len(self.conns) >= self.limit:
            return "total"
        self.conns.add(conn)
        self.per_ip[ip] += 1
        return None

    def discard(self, conn: Connection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
            ip = conn.peer_ip
            self.per_ip[ip] -= 1
            if not self.per_ip[ip]:
                del self.per_ip[ip]


class Codec(Protocol):
    """A transformation of the byte stream both ways (see Connection.codec);
    `take` raises a ValueError on corrupt input."""

    pending: bool

    def feed(self, data: bytes) -> None: ...

    def take(self, room: int) -> bytes: ...

    def encode(self, data: bytes) -> bytes: ...


class Connection(asyncio.Protocol):
    """Subclasses set `table`, `kind`, `timeout` (limits.command_timeout) and
    `min_rate` (limits.min_data_rate), `implicit_tls` for a port that speaks
    TLS from the start (asyncio's server does that handshake: we are made
    once it is done), and implement `start()`, which begins the session
    coroutine, and `refusal()`."""

    table: SessionTable
    kind: str
    timeout: float
    min_rate: float
    implicit_tls = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None  # TLS once started, else raw
        self.raw: asyncio.Transport | None = None  # the TCP connection, unless implicit TLS
        self.peer_ip = "unknown"
        self.buf = bytearray()
        self.closed = False  # no more I/O: lost, or closed by us
        self.deadline = math.inf  # monotonic time by which the client's phase must end
        self.drain_deadline = math.inf  # ... by which what we wrote must have drained
        self._idle = False  # waiting for a command's first byte
        self._rate = 0.0  # in message data: bytes per second each byte is credited at
        self._cap = math.inf  # no deadline of this message's transfer goes beyond
        self._waiter: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        # A stream codec over the connection (IMAP COMPRESS=DEFLATE): feed/take
        # input within a room, encode output, `pending` while input is held.
        self.codec: Codec | None = None

    def start(self) -> None:
        raise NotImplementedError

    def refusal(self, why: str) -> bytes:
        """What to say to a connection over a limit before closing it."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.raw = None if self.implicit_tls else self.transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else "unknown"
        self.deadline = time.monotonic() + self.timeout
        why = self.table.add(self)
        if why is None:
            if self.implicit_tls:
                metrics.tls_handshake(self.kind, transport)
            self.start()
            return
        logs.event(log, logging.INFO, "connection refused", client=logs.client(self.peer_ip),
                   endpoint=self.kind, reason="too many connections"
                   + (" from this address" if why == "address" else ""))
        line = self.refusal(why)
        if line:
            transport.write(line)  # type: ignore[attr-defined]
        self.closed = True
        transport.close()

    # -- deadlines ------------------------------------------------------------

    def await_command(self, idle: float) -> None:
        """Between commands: the next may take `idle` seconds to begin, and must
        then be complete within `timeout` of its first byte."""
        self._rate = 0.0
        if self.buf:
            self._idle = False
            self.deadline = time.monotonic() + self.timeout
        else:
            self._idle = True
            self.deadline = time.monotonic() + idle

    def await_transfer(self, size: int) -> None:
        """Message data of at most `size` octets follows: it must keep up min_rate
        (each byte buys 1/min_rate seconds, never more than `timeout` ahead), and
        all of it arrive within timeout + size/min_rate."""
        now = time.monotonic()
        self._idle = False
        self._rate = self.min_rate
        self._cap = now + self.timeout + size / self.min_rate
        self.deadline = now + self.timeout

    def working(self) -> None:
        """A command is in: the server's turn, no deadline until it waits for
        the client again (`wait_data` gives a wait within a command `timeout`)."""
        self._idle = False
        self._rate = 0.0
        self.deadline = math.inf

    def expired(self, now: float) -> bool:
        return now > self.deadline or now > self.drain_deadline

    def expire(self, goodbye: bytes) -> None:
        """The deadline passed: say `goodbye` if the session waits for input, and
        close; a close still unfinished at the next sweep becomes an abort."""
        if self.closed:
            self.abort()
            return
        logs.event(log, logging.INFO, "deadline passed, closing",
                   client=logs.client(self.peer_ip), endpoint=self.kind)
        self.close_saying(goodbye)
        self.deadline = self.drain_deadline = time.monotonic()

    # -- input ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.codec is not None:
            self.codec.feed(data)
            if not self._decode():
                return
        else:
            self.buf += data
        if self._idle:  # a command's first byte: it has `timeout` to be complete
            self._idle = False
            self.deadline = time.monotonic() + self.timeout
        elif self._rate:
            ahead = time.monotonic() + self.timeout
            self.deadline = min(ahead, self._cap, self.deadline + len(data) / self._rate)
        if self.transport is not None and (len(self.buf) > MAX_BUFFER or
                                           (self.codec is not None and self.codec.pending)):
            self.transport.pause_reading()  # resumed when the session catches up
        self.wake()

    def start_codec(self, codec: Codec) -> None:
        """From now on input and output go through `codec`; input already
        buffered (sent after the command that started it) is its first."""
        self.codec = codec
        if self.buf:
            codec.feed(bytes(self.buf))
            self.buf.clear()
            self._decode()

    def _decode(self) -> bool:
        """Move what the codec holds into the buffer, as far as there is room;
        False if its stream is corrupt (the connection is closed then)."""
        assert self.codec is not None
        try:
            self.buf += self.codec.take(MAX_BUFFER - len(self.buf))
        except ValueError as e:
            logs.event(log, logging.INFO, "corrupt compressed input, closing",
                       client=logs.client(self.peer_ip), endpoint=self.kind, error=str(e))
            self.close()
            return False
        return True

    def wake(self) -> None:
        """Let a session waiting for input look again (input, or another event)."""
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.table.discard(self)
        self._wake_all()

    def _wake_all(self) -> None:
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
        if self.deadline == math.inf:  # more input within a command (AUTH, a literal's line)
            self.deadline = time.monotonic() + self.timeout
        if self.codec is not None:
            before = len(self.buf)  # input held compressed: inflate more of it first
            while self.codec.pending and len(self.buf) == before < MAX_BUFFER:
                if not self._decode():
                    raise Disconnect()
            if len(self.buf) > before:
                return
        if self.transport is not None and len(self.buf) < MAX_BUFFER:
            self.transport.resume_reading()
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.closed and not self.buf:
            raise Disconnect()

    # -- output -------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise Disconnect()
        if self.codec is not None:
            data = self.codec.encode(data)
        self.transport.write(data)
        if self._drain is not None:
            # A peer that reads slowly: what is queued must drain at min_rate.
            queued = self.transport.get_write_buffer_size()
            self.drain_deadline = time.monotonic() + self.timeout + queued / self.min_rate
            try:
                await self._drain
            finally:
                self.drain_deadline = math.inf

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Begin TLS (STARTTLS, or an implicit-TLS port); the handshake has
        `timeout` seconds. On failure the connection is dropped at once and
        Disconnect raised: asyncio does not tell us when a connection is reset
        mid-handshake, so nothing else would free its slot."""
        assert self.raw is not None
        self.working()
        self.deadline = time.monotonic() + self.timeout
        self.buf.clear()  # anything sent in clear before the handshake is dropped
        try:
            async with asyncio.timeout(self.timeout):
                new = await asyncio.get_running_loop().start_tls(
                    self.raw, self, context, server_side=True,
                    ssl_handshake_timeout=self.timeout)
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError, RuntimeError) as e:
            logs.event(log, logging.INFO, "TLS handshake failed",
                       client=logs.client(self.peer_ip), endpoint=self.kind, error=repr(e))
            new = None
        if new is None or self.closed:
            self.abort()
            raise Disconnect()
        self.transport = new  # type: ignore[assignment]
        metrics.tls_handshake(self.kind, new)
        self.buf.clear()

    # -- the end --------------------------------------------------------------------

    def close(self) -> None:
        """Hang up after what was written: TLS close_notify, then the TCP close,
        without waiting for the peer's close_notify (asyncio would, up to 30 s;
        on implicit-TLS ports its server waits server.TLS_CLOSE_GRACE)."""
        if self.closed or self.transport is None:
            return
        self.closed = True
        self.transport.close()  # with TLS: flushes, queues close_notify on the raw transport
        if self.raw is not None and self.raw is not self.transport:
            self.raw.close()  # the connection stays counted until it is gone
        self.deadline = time.monotonic() + self.timeout
        self._wake_all()

    def abort(self) -> None:
        """Drop the connection now, and its slot."""
        self.closed = True
        self.table.discard(self)
        transport = self.raw or self.transport
        if transport is not None:
            transport.abort()
        self._wake_all()

    def close_saying(self, line: bytes) -> None:
        """Close, saying `line` first if the session is waiting for input (between
        commands, in IMAP IDLE, in message data), where it cannot cut into
        another reply."""
        if self.transport is not None and not self.closed and self._waiter is not None:
            self.transport.write(self.codec.encode(line) if self.codec is not None else line)
        self.close()


async def sweep(table: SessionTable, goodbye: bytes, every: float) -> None:
    """Every `every` seconds, close the connections past their deadline,
    saying `goodbye` to those waiting for input."""
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        for conn in table:
            if conn.expired(now):
                conn.expire(goodbye)


def sweep_interval(timeout: float) -> float:
    return min(10.0, max(timeout / 4, 0.2))


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
