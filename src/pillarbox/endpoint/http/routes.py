"""Which URLs each listener serves: one line per route module.

A route module exports `routes(env: HTTPEnv) -> list[aiohttp.web.RouteDef]`
(`aiohttp.web.get(path, handler)`, ...); its handlers read the config through
`env.config()` at each request, so a reload is seen at once. To add URLs
(WKD, list unsubscribe, chatmail account creation), write the module and add
it to PUBLIC (listen.http and listen.https) and/or PRIVATE (listen.metrics).
"""

from __future__ import annotations

from aiohttp import web

from pillarbox.endpoint.http import (
    acme_challenge,
    autoconfig,
    chatmail_new,
    health,
    list_unsubscribe,
    metrics,
    mta_sts,
    wkd,
)
from pillarbox.endpoint.http.env import HTTPEnv

PUBLIC = [autoconfig, mta_sts, acme_challenge, health, metrics, list_unsubscribe, chatmail_new,
          wkd]
PRIVATE = [metrics, health]


def collect(modules: list, env: HTTPEnv) -> list[web.RouteDef]:
    out: list[web.RouteDef] = []
    for m in modules:
        out += m.routes(env)
    return out
