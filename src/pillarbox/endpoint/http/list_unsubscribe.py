"""One-click unsubscribe from a mailing list (RFC 8058) at
/lists/unsubscribe/TOKEN: the URL a `mailing_list` module's
`unsubscribe_url` points at (docs/LISTS.md).

A mail client's one-click button sends `POST` with the body
`List-Unsubscribe=One-Click`; that removes the member the token names
(lists/unsubscribe.py checks its HMAC). A `GET` (a person following the link,
or a scanner that fetches every link of a message) only shows a button that
sends the POST: RFC 8058 3.2 forbids unsubscribing on GET.
"""

from __future__ import annotations

import asyncio
import html

from aiohttp import web

from pillarbox.endpoint.http.env import HTTPEnv
from pillarbox.lists.store import ListStore
from pillarbox.lists.unsubscribe import read_token, unsubscribe
from pillarbox.store import backend

PATH = "/lists/unsubscribe/{token}"
MAX_FORM = 1024  # the one field RFC 8058 sends, with room to spare


def routes(env: HTTPEnv) -> list[web.RouteDef]:
    stores: dict[tuple[str, str], ListStore] = {}

    def store() -> ListStore:
        """The server's directory database (one pool with PostgreSQL), else one of our own."""
        db = getattr(env.users(), "db", None)
        if db is not None:
            return ListStore(db)
        cfg = env.config()
        key = (cfg.storage_url, str(cfg.data_dir))
        if key not in stores:
            stores[key] = ListStore.open(cfg.storage_url, cfg.data_dir)
        return stores[key]

    async def page(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        parsed = read_token(token)
        if parsed is None:
            raise web.HTTPNotFound(text="no such subscription\n")
        lst, member = html.escape(parsed[0]), html.escape(parsed[1])
        body = (f"<!doctype html><title>Unsubscribe</title><form method=post>"
                f"<p>Remove {member} from {lst}?</p>"
                "<input type=hidden name=List-Unsubscribe value=One-Click>"
                "<button>Unsubscribe</button></form>\n")
        return web.Response(text=body, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def one_click(request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_FORM:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM,
                                                actual_size=request.content_length or 0)
        form = await request.post()
        if form.get("List-Unsubscribe") != "One-Click":
            raise web.HTTPBadRequest(text="expected List-Unsubscribe=One-Click\n")
        try:
            done = await asyncio.to_thread(unsubscribe, request.match_info["token"], store())
        except backend.errors():  # PostgreSQL down: the client may press again
            raise web.HTTPServiceUnavailable(text="try again later\n",
                                             headers={"Retry-After": "60"}) from None
        if done is None:  # forged, malformed, or gone already: nothing to tell apart
            raise web.HTTPNotFound(text="no such subscription\n")
        return web.Response(text=f"{done[1]} left {done[0]}\n",
                            headers={"Cache-Control": "no-store"})

    return [web.get(PATH, page), web.post(PATH, one_click)]
