"""ACME HTTP-01 answers (RFC 8555 8.3) at /.well-known/acme-challenge/TOKEN,
while acme.Renewer has an order under way."""

from __future__ import annotations

from aiohttp import web

from pillarbox.endpoint.http.env import HTTPEnv

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def routes(env: HTTPEnv) -> list[web.RouteDef]:
    async def challenge(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        answer = env.challenges.get(token) if set(token) <= _TOKEN_CHARS else None
        if answer is None:
            raise web.HTTPNotFound()
        return web.Response(text=answer, content_type="application/octet-stream")

    return [web.get("/.well-known/acme-challenge/{token}", challenge)]
