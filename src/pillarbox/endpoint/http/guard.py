"""What keeps slow or greedy HTTP clients from holding the endpoint
([http] request_timeout, max_connections_per_ip):

- a request's header must arrive within request_timeout of the connection's
  start or of the previous response (aiohttp's keep-alive timer closes a
  connection still waiting for a complete header then: app.py sets it);
- its body, and the handler's answer, within request_timeout of the header
  (`deadline`, a middleware): else 408 and the connection is closed;
- one address holds at most max_connections_per_ip connections: one more
  gets 503 and is closed (`GuardedSite`, in front of aiohttp's protocol).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

from aiohttp import web

REFUSAL_GRACE = 1.0  # seconds a refused connection may take to read its 503
_BUSY = b"too many connections from your address, try later\n"
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nServer: pillarbox\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
           b"Retry-After: 10\r\nConnection: close\r\n\r\n%s" % (len(_BUSY), _BUSY))
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def deadline(timeout: float):
    """A middleware: the handler (with its reading of the body) has `timeout`
    seconds; then the client gets 408 and the connection is closed."""

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            async with asyncio.timeout(timeout) as cm:
                return await handler(request)
        except TimeoutError:
            if not cm.expired():
                raise  # the handler's own, not ours
            response = web.Response(status=408, text="request not complete in time\n")
            response.force_close()
            return response
    return middleware


class AddressSlots:
    """Open connections per client address, at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count: collections.Counter[str] = collections.Counter()

    def take(self, ip: str) -> bool:
        if self.count[ip] >= self.limit:
            return False
        self.count[ip] += 1
        return True

    def give_back(self, ip: str) -> None:
        self.count[ip] -= 1
        if self.count[ip] <= 0:
            del self.count[ip]


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the per-address limit."""

    def __init__(self, inner: asyncio.Protocol, slots: AddressSlots) -> None:
        self.inner: asyncio.Protocol | None = inner
        self.slots = slots
        self.ip: str | None = None  # set while the connection holds a slot
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unix"
        if self.slots.take(ip):
            self.ip = ip
            assert self.inner is not None
            self.inner.connection_made(transport)
            return
        self.inner = None  # refused: aiohttp never sees it
        self.transport.write(REFUSAL)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the 503, then EOF
        asyncio.get_running_loop().call_later(REFUSAL_GRACE, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return None  # refused: close now

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip is not None:
            self.slots.give_back(self.ip)
            self.ip = None
        if self.inner is not None:
            self.inner.connection_lost(exc)


class GuardedSite(web.SockSite):
    """A SockSite whose connections go through GuardedProtocol (aiohttp's
    SockSite.start, with the protocol factory wrapped)."""

    def __init__(self, runner: web.BaseRunner, sock, slots: AddressSlots, **kw) -> None:
        super().__init__(runner, sock, **kw)
        self.slots = slots

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        factory = self._runner.server
        assert factory is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GuardedProtocol(factory(), self.slots), sock=self._sock,
            ssl=self._ssl_context, backlog=self._backlog)
