"""Whose an Authentication-Results field is: its authserv-id (RFC 8601 2.2).

Only this server writes fields naming its own hostname; one that arrives from
outside claiming it is forged (the session removes it, ARC sealing copies only
ours)."""

from __future__ import annotations

import re


def _skip_cfws(text: str) -> str:
    """`text` without its leading white space and (nested) comments."""
    i, depth = 0, 0
    while i < len(text):
        c = text[i]
        if depth and c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth and not c.isspace():
            break
        i += 1
    return text[i:]


def claims_host(field_value: str, hostname: str) -> bool:
    """Does an Authentication-Results field value claim to be from `hostname`
    (its authserv-id, RFC 8601 2.2, equals it, case-insensitive)? Comments
    and white space before the id are skipped, so they cannot hide it."""
    rest = _skip_cfws(field_value)
    if rest.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', rest)
        ident = re.sub(r"\\(.)", r"\1", m.group(1)) if m else rest[1:]
    else:
        ident = re.split(r"[\s;()]", rest, maxsplit=1)[0]
    ident = ident.strip().rstrip(".").lower()
    return bool(ident) and ident == hostname.strip().rstrip(".").lower()
