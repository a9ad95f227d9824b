"""The aiohttp server behind listen.http, listen.https and listen.metrics."""

from __future__ import annotations

import logging
import socket
import ssl

import aiohttp.web_response
from aiohttp import web

from pillarbox.endpoint.http import guard, routes
from pillarbox.endpoint.http.env import HTTPEnv
from pillarbox.endpoint.http.keys import PRIVATE

log = logging.getLogger("pillarbox.http")

# aiohttp names itself and its version in every Server header, also on the
# 400s its parser sends before any handler or signal runs; say only our name.
aiohttp.web_response.SERVER_SOFTWARE = "pillarbox"  # type: ignore[attr-defined]

HSTS = "max-age=31536000"
# The request line and each header field; more or longer: 400 (aiohttp's parser).
MAX_LINE = 8190
MAX_HEADERS = 64
KEEPALIVE = 15.0  # seconds an idle keep-alive connection stays open
LINGER = 10.0  # at most this long an unread request body is read and dropped


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request (hostile input, answered 400) as an
    error with a traceback: make it one info line, as the mail endpoints do."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.msg} error=%r"
            record.args = (*(record.args or ()), record.exc_info[1])  # type: ignore[misc]
            record.exc_info = None
            record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return log.isEnabledFor(logging.INFO)


request_log = logging.getLogger("pillarbox.http.request")
request_log.addFilter(_OneLine())


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response: no version, no sniffing, no framing; HSTS over HTTPS."""
    h = response.headers
    h["Server"] = "pillarbox"
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    if request.secure:
        h["Strict-Transport-Security"] = HSTS


def make_app(env: HTTPEnv, private: bool) -> web.Application:
    settings = env.config().http
    app = web.Application(client_max_size=settings.max_request_size,
                          middlewares=[guard.deadline(settings.request_timeout)])
    app[PRIVATE] = private
    app.on_response_prepare.append(_headers)
    app.add_routes(routes.collect(routes.PRIVATE if private else routes.PUBLIC, env))
    return app


class HTTPEndpoint:
    """Serves on sockets bound by the server (before privileges were dropped)."""

    def __init__(self, env: HTTPEnv) -> None:
        self.env = env
        self._runners: list[web.AppRunner] = []
        self.slots = guard.AddressSlots(env.config().http.max_connections_per_ip)

    async def start(self, sockets: dict[str, list[socket.socket]],
                    tls: ssl.SSLContext) -> None:
        """`sockets`: per listen kind (http, https, metrics); `tls` for https,
        a context that follows reloads (tls.following)."""
        # The keep-alive timer also closes a connection whose next request's
        # header is not complete by then (guard.py): request_timeout bounds it.
        timeout = self.env.config().http.request_timeout
        for private, kinds in ((False, ("http", "https")), (True, ("metrics",))):
            socks = [(k, s) for k in kinds for s in sockets.get(k, [])]
            if not socks:
                continue
            runner = web.AppRunner(make_app(self.env, private), access_log=None,
                                   handle_signals=False,
                                   keepalive_timeout=min(KEEPALIVE, timeout),
                                   lingering_time=min(LINGER, timeout),
                                   logger=request_log,
                                   max_line_size=MAX_LINE, max_field_size=MAX_LINE,
                                   max_headers=MAX_HEADERS, shutdown_timeout=1.0)
            await runner.setup()
            self._runners.append(runner)
            for kind, sock in socks:
                site = guard.GuardedSite(runner, sock, self.slots,
                                         ssl_context=tls if kind == "https" else None)
                await site.start()

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
