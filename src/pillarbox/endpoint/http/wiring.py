"""Starts the HTTP endpoint and the ACME renewer for server.py, and tells
them what they may see of the running server (an HTTPEnv)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from pillarbox.endpoint.http.acme import Renewer
from pillarbox.endpoint.http.env import HTTPEnv
from pillarbox.store import backend

KINDS = ("http", "https", "metrics")


def make_env(server: Any) -> HTTPEnv:
    """`server`: pillarbox.server.Server (config, smtp, imap, queue, users, serving)."""

    def sessions() -> dict[str, int]:
        out = {k: 0 for k in ("smtp", "submission", "submissions", "imap", "imaps")}
        for table in (server.smtp.sessions, server.imap.sessions):
            for conn in table:
                out[conn.kind] = out.get(conn.kind, 0) + 1
        return out

    def queue() -> list[tuple[str, int, float | None]]:
        spool = server.queue.spool
        counts = {"new": [0, None], "deferred": [0, None]}
        for msg_id, entry in list(spool.index.items()):
            c = counts["deferred" if msg_id in spool.has_state else "new"]
            c[0] += 1
            c[1] = entry.env.received if c[1] is None else min(c[1], entry.env.received)
        return [(state, n, first) for state, (n, first) in counts.items()]

    def not_ready() -> list[str]:
        problems = []
        if not server.serving:
            problems.append("starting: the queue is not loaded yet")
        if not server.queue.spool.has_room():
            problems.append("disk: below queue.min_free_space")
        try:
            server.users.db.execute("SELECT 1").fetchone()
        except backend.errors() as e:
            problems.append(f"store: {e}")
        return problems

    return HTTPEnv(config=lambda: server.config, sessions=sessions, queue=queue,
                   not_ready=not_ready, users=lambda: server.users,
                   keys=lambda: server.queue.encryption.keys)


async def start(server: Any, sockets: dict[str, list[socket.socket]],
                tls: ssl.SSLContext) -> tuple[Any, Renewer, asyncio.Task]:
    """Serve on the bound sockets (none: nothing served, and aiohttp's server
    not even loaded: None) and run the renewer (idle while [acme] directory is
    empty)."""
    env = make_env(server)
    endpoint = None
    if any(sockets.values()):
        from pillarbox.endpoint.http.app import HTTPEndpoint
        endpoint = HTTPEndpoint(env)
        await endpoint.start(sockets, tls)
    renewer = Renewer(env, server.reload_tls)
    return endpoint, renewer, asyncio.create_task(renewer.run())
