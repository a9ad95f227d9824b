"""Counters the rest of pillarbox bumps, for Prometheus' /metrics (endpoint/http/metrics.py).

One call per event, from the place the event happens; nothing here blocks or
fails. Gauges that a look at live state answers (sessions open, queue depth,
disk free) are not kept here: the /metrics handler reads them at scrape time.
Labels take values from small fixed sets (endpoint kinds, target kinds,
enhanced status codes), so a hostile client cannot grow the series.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

ACCEPTED = Counter("pillarbox_messages_accepted", "Messages accepted into the queue",
                   ["endpoint"], registry=REGISTRY)
REFUSED = Counter("pillarbox_messages_refused", "Refusals of a connection, sender, recipient "
                  "or message, by the dialogue stage and the enhanced status code",
                  ["endpoint", "stage", "reason"], registry=REGISTRY)
DELIVERIES = Counter("pillarbox_deliveries", "Delivery attempts by target and result "
                     "(sent, deferred, bounced)", ["target", "result"], registry=REGISTRY)
DELIVERY_SECONDS = Histogram(
    "pillarbox_delivery_seconds", "Time from acceptance to a successful delivery",
    ["target"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400))
LOGINS = Counter("pillarbox_logins", "Password checks by protocol and result (ok, failed)",
                 ["protocol", "result"], registry=REGISTRY)
TLS = Counter("pillarbox_tls_handshakes", "TLS handshakes completed, by protocol version",
              ["endpoint", "version"], registry=REGISTRY)

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def accepted(endpoint: str) -> None:
    ACCEPTED.labels(endpoint).inc()


def refused(endpoint: str, what: str, code: int, text: str) -> None:
    """`what`: the log event ("rcpt refused", ...); its first word is the stage."""
    m = _ENHANCED.match(text)
    REFUSED.labels(endpoint, what.split(" ", 1)[0], m.group(0) if m else str(code)).inc()


def delivery(target: str, result: str, seconds: float) -> None:
    DELIVERIES.labels(target, result).inc()
    if result == "sent":
        DELIVERY_SECONDS.labels(target).observe(max(0.0, seconds))


def login(protocol: str, ok: bool) -> None:
    LOGINS.labels(protocol, "ok" if ok else "failed").inc()


def tls_handshake(endpoint: str, transport: object) -> None:
    """After a handshake; a transport without TLS counts nothing."""
    get = getattr(transport, "get_extra_info", None)
    sslobj = get("ssl_object") if get is not None else None
    if sslobj is not None:
        TLS.labels(endpoint, sslobj.version() or "unknown").inc()
