"""Showing untrusted text: control and format characters escaped, so that a log
line, an SMTP reply or a CLI listing stays one honest line on a terminal."""

from __future__ import annotations


def _escape_char(c: str) -> str:
    o = ord(c)
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def escape(text: str) -> str:
    """`text` with every non-printable character (C0, C1, DEL, bidi marks, ...) as \\xNN."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)
