"""GETMETADATA and SETMETADATA (RFC 5464) over the entries of store/metadata.py.

The session parses the command (parser.py) and sends what these return: the
untagged METADATA response and the tagged reply's result.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pillarbox.endpoint.imap import mime
from pillarbox.store.metadata import Metadata, MetadataError

_QUOTABLE = re.compile(rb"[\x20-\x21\x23-\x5b\x5d-\x7e]{0,1000}\Z")


def value(v: bytes | None) -> bytes:
    """An entry's value: NIL, "quoted", a {n} literal, or a ~{n} literal8 when it
    holds NUL (values are octets: RFC 5464 5 allows literal8)."""
    if v is None:
        return b"NIL"
    if _QUOTABLE.match(v):
        return b'"' + v + b'"'
    return (b"~{%d}\r\n" if b"\x00" in v else b"{%d}\r\n") % len(v) + v


def get(meta: Metadata, args: dict,
        quote: Callable[[str], bytes] = mime.quote) -> tuple[bytes, tuple[str, str]]:
    """The METADATA response for a GETMETADATA (b"" if it names nothing) and its
    tagged result: OK, with [METADATA LONGENTRIES n] if MAXSIZE held some back."""
    mailbox, maxsize = args["mailbox"], args["maxsize"]
    items: list[bytes] = []
    longest = 0
    for name, v in meta.get(mailbox, args["entries"], args["depth"]):
        if maxsize is not None and v is not None and len(v) > maxsize:
            longest = max(longest, len(v))
            continue
        items.append(name.encode() + b" " + value(v))
    line = (b"* METADATA " + quote(mailbox) + b" (" + b" ".join(items) + b")\r\n"
            if items else b"")
    if longest:
        return line, ("OK", f"[METADATA LONGENTRIES {longest}] GETMETADATA completed")
    return line, ("OK", "GETMETADATA completed")


def set_(meta: Metadata, args: dict) -> tuple[str, str]:
    try:
        meta.set(args["mailbox"], args["changes"])
    except MetadataError as e:
        return ("NO", f"[METADATA {e.code}] {e}")
    return ("OK", "SETMETADATA completed")
