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


# -- as a module (kind "received") -------------------------------------------------
# The SMTP session writes this field itself on the default pipeline (the hot
# path); the modifier is the same field for pipelines that name it.

from pillarbox import module  # noqa: E402


class _State(module.BaseModifierState):
    def __init__(self, hostname: str, envelope: module.Envelope) -> None:
        self.hostname, self.envelope = hostname, envelope

    async def header(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        src = self.envelope.source
        protocol = "ESMTP" + ("S" if src.tls else "") + ("A" if src.auth else "")
        raw = header(helo=src.helo or "unknown", peer_ip=src.client_ip,
                     hostname=self.hostname, protocol=protocol, msg_id=self.envelope.msg_id,
                     rcpts=self.envelope.rcpts, tls=src.tls).decode()
        return [("Received", raw[len("Received:"):].rstrip("\r\n")), *fields]


class ReceivedModifier:
    def __init__(self, name: str, hostname: str) -> None:
        self.name, self.hostname = name, hostname

    def state(self, envelope: module.Envelope) -> _State:
        return _State(self.hostname, envelope)


KIND = module.Kind(
    name="received", role="modifier", options=(),
    make=lambda name, options, env: ReceivedModifier(name, env.config.hostname),
    help="Adds the Received field (client name and address, protocol, queue id, TLS).")
