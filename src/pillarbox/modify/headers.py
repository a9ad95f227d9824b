"""The `headers` modifier: remove, replace and add header fields.

    [module.strip_client]
    kind = "headers"
    remove = ["Received", "User-Agent", "X-Mailer"]
    replace = { "X-Originating-Network" = "internal" }
    add = { "X-Processed-By" = "pillarbox" }

Order: every field named in `remove` or `replace` goes (names are
case-insensitive); each `replace` field then takes the place of the first
field of its name that was there (or goes at the end if there was none);
the `add` fields go at the end, in the order written. Names and values are
checked when the config is loaded: a name is RFC 5322 printable ASCII
without ':', a value has no CR, LF or NUL. The body is never touched.
"""

from __future__ import annotations

import re
from typing import Any

from pillarbox import module

_NAME_RE = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext
MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


def _field(option: str, name: Any, value: Any) -> tuple[str, str]:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{option}: {name!r} is not a header field name "
                         "(printable ASCII without ':' or space)")
    if not isinstance(value, str):
        raise ValueError(f"{option}: the value of {name} must be a string")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"{option}: the value of {name} contains CR, LF or NUL")
    if len(name) + 2 + len(value.encode()) > MAX_LINE:
        raise ValueError(f"{option}: the field {name} is longer than {MAX_LINE} octets")
    return name, " " + value  # the raw value after the colon, as the pipeline carries it


def _table(option: str, value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        raise ValueError(f"{option}: expected a table of header name = value")
    return [_field(option, n, v) for n, v in value.items()]


def _names(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise ValueError("remove: expected a list of header field names")
    for name in value:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(f"remove: {name!r} is not a header field name")
    return frozenset(n.lower() for n in value)


class _State(module.BaseModifierState):
    def __init__(self, headers: HeadersModifier) -> None:
        self._m = headers

    async def header(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return self._m.apply(fields)


class HeadersModifier:
    def __init__(self, name: str, add: list[tuple[str, str]], remove: frozenset[str],
                 replace: list[tuple[str, str]]) -> None:
        self.name = name
        self._add = add
        self._replace = {n.lower(): (n, v) for n, v in replace}
        self._gone = remove | self._replace.keys()

    def apply(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        placed: set[str] = set()
        for name, value in fields:
            key = name.lower()
            if key not in self._gone:
                out.append((name, value))
            elif key in self._replace and key not in placed:
                out.append(self._replace[key])
                placed.add(key)
        out.extend(f for key, f in self._replace.items() if key not in placed)
        out.extend(self._add)
        return out

    def state(self, envelope: module.Envelope) -> module.ModifierState:
        return _State(self)


def _make(name: str, options: dict[str, Any], env: Any) -> HeadersModifier:
    return HeadersModifier(name, _table("add", options.get("add", {})),
                           _names(options.get("remove", [])),
                           _table("replace", options.get("replace", {})))


KIND = module.Kind(
    "headers", "modifier",
    (
        module.Option("add", dict, {}, help="fields to add at the end, name = value"),
        module.Option("remove", list, [], help="names of fields to remove (case-insensitive)"),
        module.Option("replace", dict, {},
                      help="name = value: every field of that name removed, this one put "
                           "in place of the first"),
    ),
    _make,
    help="add, remove or replace header fields",
)
