"""Routing: turn each envelope recipient into final deliveries.

Aliases expand here (cascading, lists, catch-all, `|command`), once per
message; the result is saved with the queue state so a retry never expands
differently and never repeats a finished delivery.
"""

from __future__ import annotations

import logging

from pillarbox import srs as srs_
from pillarbox.address import domain_of
from pillarbox.directory.aliases import Aliases
from pillarbox.queue.spool import Delivery

log = logging.getLogger("pillarbox.route")


def expand(aliases: Aliases, rcpts: list[str], srs: srs_.Srs | None = None) -> list[Delivery]:
    """`srs`: when given, an SRS0 address in a local domain (a bounce to mail we
    forwarded) goes to the original sender it encodes."""
    out: list[Delivery] = []
    seen: set[tuple[str, str]] = set()

    def add(kind: str, to: str, rcpt: str, state: str = "pending", error: str = "",
            via: str = "") -> None:
        if (kind, to) in seen:
            return
        seen.add((kind, to))
        out.append(Delivery(kind=kind, to=to, rcpt=rcpt, state=state, last_error=error,
                            via=via))

    for rcpt in rcpts:
        target = rcpt
        if srs is not None and srs_.is_srs(rcpt) and domain_of(rcpt) in aliases.local_domains:
            orig = srs.reverse(rcpt)
            if orig is None:  # expired since RCPT
                add("local", rcpt, rcpt, "failed", "5.7.1 invalid or expired SRS address")
                continue
            target = orig
        x = aliases.expand(target)
        for user in x.local:
            add("local", user, rcpt, via=x.via.get(user, ""))
        for cmd in x.commands:
            add("pipe", cmd, rcpt)
        for addr in x.remote:
            add("remote", addr, rcpt)
        # A target behind an alias that cannot take mail is dropped, not
        # bounced: the sender may be forged, and RCPT accepted the alias
        # because another target could (no backscatter).
        for user, why in [(u, "5.1.1 no such user") for u in x.unknown] + [
                (u, "5.2.1 mailbox disabled") for u in x.disabled]:
            if user == rcpt:
                add("local", user, rcpt, "failed", why)
            else:
                log.warning("alias target dropped rcpt=%s target=%s reason=%r", rcpt, user, why)
        if x.empty and x.loop and not (x.unknown or x.disabled):
            add("local", rcpt, rcpt, "failed", "5.4.6 alias loop")
    return out
