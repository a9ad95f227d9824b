"""Prometheus /metrics: on listen.metrics, or on the public listeners with
`Authorization: Bearer <http.metrics_token>`; else 404, as if there were none.

Counters come from pillarbox.metrics (bumped where events happen); the gauges
here are read from live state at each scrape.
"""

from __future__ import annotations

import hmac
import shutil
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pillarbox import metrics
from pillarbox.endpoint.http.env import HTTPEnv
from pillarbox.endpoint.http.keys import PRIVATE


class LiveState(Collector):
    def __init__(self, env: HTTPEnv) -> None:
        self.env = env

    def collect(self):
        sessions = GaugeMetricFamily("pillarbox_sessions_open", "Connections open, by endpoint",
                                     labels=["endpoint"])
        for kind, n in sorted(self.env.sessions().items()):
            sessions.add_metric([kind], n)
        yield sessions
        depth = GaugeMetricFamily("pillarbox_queue_messages", "Messages in the queue, by state "
                                  "(new: not tried yet; deferred: tried, to be tried again)",
                                  labels=["state"])
        oldest = None
        for state, n, first in self.env.queue():
            depth.add_metric([state], n)
            if first is not None:
                oldest = first if oldest is None else min(oldest, first)
        yield depth
        yield GaugeMetricFamily("pillarbox_queue_oldest_seconds",
                                "Age of the oldest queued message (0: queue empty)",
                                value=0.0 if oldest is None else max(0.0, time.time() - oldest))
        try:
            free = shutil.disk_usage(self.env.config().data_dir).free
        except OSError:
            return
        yield GaugeMetricFamily("pillarbox_disk_free_bytes", "Free space on data_dir's disk",
                                value=free)


_registered: list[Collector] = []


def routes(env: HTTPEnv) -> list[web.RouteDef]:
    if not _registered:  # one server per process; the registry is the process's
        collector = LiveState(env)
        metrics.REGISTRY.register(collector)
        _registered.append(collector)

    async def scrape(request: web.Request) -> web.Response:
        if not request.app[PRIVATE]:
            token = env.config().http.metrics_token
            given = request.headers.get("Authorization", "")
            if not token or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise web.HTTPNotFound()
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                "Cache-Control": "no-store"})

    return [web.get("/metrics", scrape)]
