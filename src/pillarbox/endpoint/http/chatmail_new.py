"""`POST /new` in chatmail mode: a fresh random account, as chatmail relays
answer it, for Delta Chat's "create a profile on this server" (the QR code
`DCACCOUNT:https://HOSTNAME/new`, docs/CHATMAIL.md).

The answer is `{"email": ..., "password": ...}`; outside chatmail mode the
URL does not exist (404). No room for accounts (free disk or memory below
the `[chatmail]` minimums) is 503, so the app can tell the user to try later.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from pillarbox.directory.chatmail_accounts import new_account
from pillarbox.directory.users import DirectoryError
from pillarbox.endpoint.http.env import HTTPEnv

log = logging.getLogger("pillarbox.http")


def routes(env: HTTPEnv) -> list[web.RouteDef]:
    async def new(request: web.Request) -> web.Response:
        cfg = env.config()
        if cfg.mode != "chatmail" or env.users() is None:
            raise web.HTTPNotFound(text="no such page\n")
        try:
            address, password = await asyncio.to_thread(new_account, env.users(), cfg)
        except DirectoryError as e:
            log.warning("no account made for POST /new: %s", e)
            raise web.HTTPServiceUnavailable(text="no new accounts now, try again later\n",
                                             headers={"Retry-After": "600"}) from None
        log.info("account made for POST /new")
        return web.json_response({"email": address, "password": password},
                                 headers={"Cache-Control": "no-store"})

    return [web.post("/new", new)]
