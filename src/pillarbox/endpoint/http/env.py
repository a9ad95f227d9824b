"""What the HTTP route modules may see of the running server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pillarbox.config import Config


@dataclass
class HTTPEnv:
    """Callables, not values: a reload swaps the config and the contexts, and
    each request should see the current ones."""

    config: Callable[[], Config]
    # {endpoint kind: sessions open}, for /metrics
    sessions: Callable[[], dict[str, int]] = lambda: {}
    # [(state, messages, oldest received time or None)], for /metrics
    queue: Callable[[], list[tuple[str, int, float | None]]] = lambda: []
    # why the server is not ready (empty: ready), for /readyz; may block (run in a thread)
    not_ready: Callable[[], list[str]] = lambda: []
    # the user directory (chatmail's POST /new makes accounts in it)
    users: Callable[[], Any] = lambda: None
    # the OpenPGP key store (directory/keys.Keys), for WKD
    keys: Callable[[], Any] = lambda: None
    # ACME HTTP-01: token -> key authorization, filled by acme.Renewer
    challenges: dict[str, str] = field(default_factory=dict)

