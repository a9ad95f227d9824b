"""Which members a DSN to the list's bounce address is about.

A VERP address names the member itself; the queue's own DSNs for a list
post go to the plain `team+bounces@` (the queue entry's sender) and name the
failed recipients in their message/delivery-status part (RFC 3464
Final-Recipient fields).
"""

from __future__ import annotations

import re

_FINAL = re.compile(rb"^final-recipient:[ \t]*rfc822[ \t]*;[ \t]*<?([^\s<>]+@[^\s<>]+?)>?[ \t]*$",
                    re.I | re.M)
_ACTION = re.compile(rb"^action:[ \t]*(\w+)", re.I | re.M)
MAX_SCAN = 256 * 1024


def failed_recipients(message: bytes) -> list[str]:
    """The Final-Recipient addresses of a DSN whose action is failed (all of
    them when no Action field says otherwise); [] for anything else."""
    text = message[:MAX_SCAN].replace(b"\r\n", b"\n")
    out: list[str] = []
    # Per-recipient groups are separated by blank lines (RFC 3464 2.1).
    for group in text.split(b"\n\n"):
        m = _FINAL.search(group)
        if m is None:
            continue
        action = _ACTION.search(group)
        if action is not None and action.group(1).lower() != b"failed":
            continue  # delayed, delivered, relayed, expanded: no bounce
        addr = m.group(1).decode("utf-8", "replace").lower()
        if addr not in out:
            out.append(addr)
    return out
