"""Address rewriting: `replace_sender` rewrites the envelope sender,
`replace_rcpt` each envelope recipient, from a static table and then a list
of regular expressions.

    [module.old_domain]
    kind = "replace_rcpt"
    table = { "@old-domain.test" = "@example.test", "info@example.test" = "ann@example.test" }
    regex = [["(.+)\\+[^@]*@example\\.test", "\\1@example.test"]]

The table is looked up by the whole address first, then by `@domain` (both
case-insensitive); a `@domain` value keeps the local part and replaces the
domain, an address value replaces the whole address. The regexes then apply
in order, each to the result of the one before, when it matches the whole
address (Python `re`, domain lowercased; the replacement may use `\\1` and
`\\g<name>`). A result that is not a valid address is dropped with a log line
and the address stays as it was. The null sender is never rewritten.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pillarbox import address, module

log = logging.getLogger("pillarbox.modify.rewrite")

_GROUP_REF = re.compile(r"\\(\d+)|\\g<([^>]*)>")


def _key(entry: str, what: str) -> str:
    """A table key or value in canonical form: `@domain` or `local@domain` (lowercased)."""
    if entry.startswith("@"):
        return "@" + address.normalize_domain(entry[1:])
    if what == "value":
        local, domain = address.split(entry)
        return f"{local}@{domain}"
    return address.normalize(entry)


def _table(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("table: expected a table of address or @domain = replacement")
    table: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise ValueError(f"table: the replacement for {k!r} must be a string")
        try:
            table[_key(k, "key")] = _key(v, "value")
        except address.AddressError as e:
            raise ValueError(f"table: {k!r} = {v!r}: {e}") from None
    return table


def _regexes(value: Any) -> list[tuple[re.Pattern[str], str]]:
    if not isinstance(value, list):
        raise ValueError("regex: expected a list of [pattern, replacement] pairs")
    rules = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"regex: entry {i + 1} is not a [pattern, replacement] pair "
                             "of strings")
        pattern, replacement = pair
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"regex: entry {i + 1} {pattern!r}: {e}") from None
        for m in _GROUP_REF.finditer(replacement):
            number, name = m.groups()
            if (number is not None and int(number) > compiled.groups) or \
                    (name is not None and name not in compiled.groupindex
                     and not (name.isdigit() and int(name) <= compiled.groups)):
                raise ValueError(f"regex: entry {i + 1} {replacement!r} refers to a group "
                                 f"that {pattern!r} does not have")
        rules.append((compiled, replacement))
    return rules


class Rewriter:
    """The table and the regexes of one instance; `rewrite` is the whole job."""

    def __init__(self, name: str, table: dict[str, str],
                 regexes: list[tuple[re.Pattern[str], str]]) -> None:
        self.name = name
        self._table = table
        self._regexes = regexes

    def rewrite(self, addr: str, msg_id: str = "") -> str:
        try:
            local, domain = address.split(addr)
        except address.AddressError:
            return addr  # not ours to judge (the null sender, a bare name)
        current = f"{local}@{domain}"
        try:
            new = self._table.get(address.normalize(current))
        except address.AddressError:  # lowercasing made the local part too long
            new = None
        new = new or self._table.get("@" + domain)
        if new is not None:
            current = local + new if new.startswith("@") else new
        for pattern, replacement in self._regexes:
            m = pattern.fullmatch(current)
            if m:
                try:
                    current = m.expand(replacement)
                except (re.error, IndexError) as e:
                    log.warning("rewrite skipped id=%s module=%s address=%s error=%r",
                                msg_id, self.name, addr, e)
        if current == addr:
            return addr
        try:
            new_local, new_domain = address.split(current)
        except address.AddressError:
            log.warning("rewrite dropped id=%s module=%s address=%s result=%r: not an address",
                        msg_id, self.name, addr, current)
            return addr
        return f"{new_local}@{new_domain}"


class _SenderState(module.BaseModifierState):
    def __init__(self, rewriter: Rewriter, msg_id: str) -> None:
        self._rewriter = rewriter
        self._msg_id = msg_id

    async def sender(self, sender: str) -> str:
        return self._rewriter.rewrite(sender, self._msg_id) if sender else sender


class _RcptState(module.BaseModifierState):
    def __init__(self, rewriter: Rewriter, msg_id: str) -> None:
        self._rewriter = rewriter
        self._msg_id = msg_id

    async def rcpt(self, rcpt: str) -> list[str]:
        return [self._rewriter.rewrite(rcpt, self._msg_id)]


class ReplaceSender(Rewriter):
    def state(self, envelope: module.Envelope) -> module.ModifierState:
        return _SenderState(self, envelope.msg_id)


class ReplaceRcpt(Rewriter):
    def state(self, envelope: module.Envelope) -> module.ModifierState:
        return _RcptState(self, envelope.msg_id)


def _options(options: dict[str, Any]) -> tuple[dict[str, str], list[tuple[re.Pattern[str], str]]]:
    return _table(options.get("table", {})), _regexes(options.get("regex", []))


def _make_sender(name: str, options: dict[str, Any], env: Any) -> ReplaceSender:
    return ReplaceSender(name, *_options(options))


def _make_rcpt(name: str, options: dict[str, Any], env: Any) -> ReplaceRcpt:
    return ReplaceRcpt(name, *_options(options))


_OPTIONS = (
    module.Option("table", dict, {},
                  help="address or @domain = replacement address or @domain"),
    module.Option("regex", list, [],
                  help="[pattern, replacement] pairs, whole-address match, applied in order "
                       "after the table"),
)

KINDS = (
    module.Kind("replace_sender", "modifier", _OPTIONS, _make_sender,
                help="rewrite the envelope sender by a table and regular expressions"),
    module.Kind("replace_rcpt", "modifier", _OPTIONS, _make_rcpt,
                help="rewrite each envelope recipient by a table and regular expressions"),
)
