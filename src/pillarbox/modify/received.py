"""The Received trace header (RFC 5321 4.4) prepended to every accepted message."""

from __future__ import annotations

import time
from email.utils import formatdate

_date_cache: tuple[int, str] = (0, "")


def _now() -> str:
    """RFC 5322 date, formatted once a second (formatdate is slow on the hot path)."""
    global _date_cache
    sec = int(time.time())
    if _date_cache[0] != sec:
        _date_cache = (sec, formatdate(sec, localtime=False, usegmt=True))
    return _date_cache[1]


def header(*, helo: str, peer_ip: str, hostname: str, protocol: str, msg_id: str,
           rcpts: list[str], tls: str | None) -> bytes:
    helo_clean = "".join(c for c in helo if c.isprintable() and c not in "()\\")[:100] or "unknown"
    parts = [f"Received: from {helo_clean} ([{peer_ip}])", f"\r\n\tby {hostname} (pillarbox)"]
    parts.append(f" with {protocol} id {msg_id}")
    if tls:
        parts.append(f"\r\n\t(using {tls})")
    if len(rcpts) == 1:
        parts.append(f"\r\n\tfor <{rcpts[0]}>")
    parts.append(f"; {_now()}\r\n")
    return "".join(parts).encode("utf-8", "replace")
