"""/healthz (the process answers) and /readyz (it can take mail) for load balancers."""

from __future__ import annotations

import asyncio

from aiohttp import web

from pillarbox.endpoint.http.env import HTTPEnv


def routes(env: HTTPEnv) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    async def readyz(request: web.Request) -> web.Response:
        problems = await asyncio.to_thread(env.not_ready)
        if problems:
            return web.Response(status=503, text="".join(p + "\n" for p in problems),
                                headers={"Cache-Control": "no-store"})
        return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]
