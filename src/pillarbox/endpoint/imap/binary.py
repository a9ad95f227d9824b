"""RFC 3516 BINARY: a body part's content with its Content-Transfer-Encoding
undone (FETCH BINARY[part], BINARY.PEEK, BINARY.SIZE).

Decoding costs by the octet: the session runs `decode` in a thread for a
large message, as it parses one, so a 50 MB base64 part never holds the
event loop.
"""

from __future__ import annotations

import binascii

from pillarbox.endpoint.imap import mime
from pillarbox.endpoint.imap.parser import FetchAtt

IDENTITY = frozenset({"", "7bit", "8bit", "binary"})


class UnknownCTE(Exception):
    """A Content-Transfer-Encoding this server cannot undo (NO [UNKNOWN-CTE])."""


def _leaf(root: mime.Part, numbers: tuple[int, ...]) -> mime.Part | None:
    """The part a section's numbers name (as BODY[n.m] does); None if there is none."""
    cur = root
    for i, n in enumerate(numbers):
        if i > 0 and cur.message is not None:
            cur = cur.message
        if cur.multipart:
            if n > len(cur.children):
                return None
            cur = cur.children[n - 1]
        elif n != 1:
            return None
    return cur


def content(root: mime.Part | object, numbers: tuple[int, ...]) -> bytes:
    """The decoded content of BINARY[numbers]; the whole message as stored for
    BINARY[], b"" for a part that does not exist."""
    if not numbers:
        return root.raw  # type: ignore[attr-defined]  # a Part or the session's _Whole
    assert isinstance(root, mime.Part)
    part = _leaf(root, numbers)
    if part is None:
        return b""
    if part.multipart or part.message is not None:
        return part.body  # a composite type has an identity encoding (RFC 2045 6.4)
    raw_cte = part.get("content-transfer-encoding") or b""
    cte = raw_cte.decode("ascii", "replace").strip().lower()
    if cte in IDENTITY:
        return part.body
    if cte == "base64":
        return _base64(part.body)
    if cte == "quoted-printable":
        return binascii.a2b_qp(part.body)
    raise UnknownCTE(cte[:40])


def _base64(body: bytes) -> bytes:
    """Lenient, as mail readers are: octets outside the alphabet (line ends,
    padding, junk) are skipped, padding is added; a stray last character is dropped."""
    compact = body.translate(None, _NOT_B64)
    if len(compact) % 4 == 1:
        compact = compact[:-1]
    return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4))


_NOT_B64 = bytes(c for c in range(256) if c not in
                 b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def decode(root: mime.Part | object, atts: list[FetchAtt]) -> dict[tuple[int, ...], bytes]:
    """The decoded content of each BINARY section `atts` name, by part numbers."""
    out: dict[tuple[int, ...], bytes] = {}
    for a in atts:
        if a.binary and a.section is not None and a.section.part not in out:
            out[a.section.part] = content(root, a.section.part)
    return out


def item(a: FetchAtt, decoded: dict[tuple[int, ...], bytes]) -> bytes:
    """The FETCH response item for a BINARY or BINARY.SIZE attribute."""
    assert a.section is not None
    data = decoded[a.section.part]
    if a.name == "BINARY.SIZE":
        return b"%s %d" % (a.response_name().encode(), len(data))
    if a.partial is not None:
        off, count = a.partial
        data = data[off:off + count]
    # literal8 (~{n}) only where it is needed: content with NUL octets
    prefix = b"~{%d}\r\n" if b"\0" in data else b"{%d}\r\n"
    return a.response_name().encode() + b" " + prefix % len(data) + data
