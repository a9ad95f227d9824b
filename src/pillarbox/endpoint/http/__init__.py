"""The HTTP(S) endpoint: autoconfig, MTA-STS, metrics, health, ACME challenges (docs/HTTP.md).

Each role is one module exporting `routes(env) -> list[aiohttp.web.RouteDef]`;
routes.py lists them. Adding a URL = a module and one line there.
"""
