"""Keys of the values set on each aiohttp Application."""

from __future__ import annotations

from aiohttp import web

# True for listen.metrics (operators only).
PRIVATE = web.AppKey("private", bool)
