"""The MTA-STS policy (RFC 8461) at https://mta-sts.DOMAIN/.well-known/mta-sts.txt.

The text is dnsrecords.mta_sts_policy, the very one whose hash is the id in
the `_mta-sts` TXT record `pillarbox dns` prints, so the two always agree.
"""

from __future__ import annotations

from aiohttp import web

from pillarbox import dnsrecords
from pillarbox.endpoint.http.env import HTTPEnv


def routes(env: HTTPEnv) -> list[web.RouteDef]:
    async def policy(request: web.Request) -> web.Response:
        cfg = env.config()
        host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
        # RFC 8461 3.3: fetched over HTTPS from mta-sts.<one of our domains> only.
        if not request.secure or not host.startswith("mta-sts.") or not cfg.is_local_domain(
                host.removeprefix("mta-sts.")):
            raise web.HTTPNotFound(text="no MTA-STS policy here\n")
        return web.Response(text=dnsrecords.mta_sts_policy(cfg), content_type="text/plain",
                            charset="utf-8")

    return [web.get("/.well-known/mta-sts.txt", policy)]
