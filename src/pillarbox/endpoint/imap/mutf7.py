"""Modified UTF-7 (RFC 3501 5.1.3), the mailbox names of IMAP4rev1.

The store keeps names as IMAP4rev1 clients send them: ASCII, other
characters in modified UTF-7. An IMAP4rev2 session speaks UTF-8 (RFC 9051
5.1), so its names are converted at the boundary with these two.
"""

from __future__ import annotations

import base64
import re

_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")


def encode(name: str) -> str:
    """UTF-8 text as modified UTF-7. Only non-ASCII characters are shifted, and
    `&` becomes `&-`; control characters stay as they are, so that the store's
    name check refuses them as it refuses them from any client."""
    out = []
    run: list[str] = []

    def shift() -> None:
        if run:
            b64 = base64.b64encode("".join(run).encode("utf-16-be")).decode("ascii")
            out.append("&" + b64.rstrip("=").replace("/", ",") + "-")
            run.clear()

    for c in name:
        if ord(c) < 0x80:
            shift()
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    shift()
    return "".join(out)


def decode(name: str) -> str:
    """A modified UTF-7 name as text; a name that is not valid modified UTF-7
    (none the store accepts) comes back unchanged."""
    if "&" not in name:
        return name
    out = []
    pos = 0
    while (amp := name.find("&", pos)) >= 0:
        m = _SHIFTED.match(name, amp)
        if m is None:
            return name
        out.append(name[pos:amp])
        b64 = m.group(1)
        if not b64:
            out.append("&")
        else:
            try:
                raw = base64.b64decode(b64.replace(",", "/") + "=" * (-len(b64) % 4),
                                       validate=True)
                out.append(raw.decode("utf-16-be"))
            except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
                return name
        pos = m.end()
    out.append(name[pos:])
    return "".join(out)
