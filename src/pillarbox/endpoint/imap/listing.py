"""Which mailboxes LIST and LSUB name, and with which attributes.

RFC 3501 LIST and LSUB, and LIST-EXTENDED (RFC 5258): selection options
SUBSCRIBED, REMOTE (no remote mailboxes here: no effect), RECURSIVEMATCH and
SPECIAL-USE (RFC 6154), return options SUBSCRIBED, CHILDREN and SPECIAL-USE,
several patterns, and CHILDINFO. STATUS return options (RFC 5819) are the
session's: it sends a STATUS after each selectable mailbox listed here.

Attributes always given: \\HasChildren or \\HasNoChildren (allowed without
the CHILDREN return option, RFC 5258 4) and the special-use attribute
(RFC 6154 allows it in every LIST). A name that is no mailbox but has
mailboxes below it (`Lists` of `Lists.pillarbox`) is \\Noselect, as RFC 3501
has it; a subscribed name with no mailbox is \\NonExistent (RFC 5258).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pillarbox.endpoint.imap import mime

DELIMITER = "."


@dataclass
class Listed:
    name: str
    attrs: list[str] = field(default_factory=list)
    childinfo: list[str] = field(default_factory=list)  # RFC 5258 CHILDINFO criteria
    selectable: bool = True

    def line(self, verb: str, quote: Callable[[str], bytes] = mime.quote) -> bytes:
        out = (f"* {verb} ({' '.join(self.attrs)}) \"{DELIMITER}\" ".encode()
               + quote(self.name))
        if self.childinfo:
            out += b' ("CHILDINFO" (' + " ".join(
                f'"{c}"' for c in self.childinfo).encode() + b"))"
        return out + b"\r\n"


class Pattern:
    """One list-mailbox pattern after its reference (RFC 3501 6.3.8)."""

    def __init__(self, ref: str, pattern: str) -> None:
        full = ref + pattern if not ref or ref.endswith(DELIMITER) or \
            pattern.startswith(DELIMITER) else ref + DELIMITER + pattern
        rx = "".join(".*" if c == "*" else "[^.]*" if c == "%" else re.escape(c)
                     for c in full) + r"\Z"
        self._rx = re.compile(rx, re.S)
        self._rx_inbox = re.compile(rx, re.S | re.I)  # INBOX is case-insensitive

    def match(self, name: str) -> bool:
        return (self._rx_inbox if name == "INBOX" else self._rx).match(name) is not None


def _order(names) -> list[str]:
    return sorted(names, key=lambda x: (x != "INBOX", x))


def _ancestors(name: str) -> list[str]:
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


class Tree:
    """The user's mailboxes, their special uses and subscriptions."""

    def __init__(self, mailboxes: dict[str, str | None], subscribed: set[str]) -> None:
        self.mailboxes = mailboxes  # name -> special-use attribute
        self.subscribed = subscribed
        self.every = set(mailboxes)  # the mailboxes and the names above them
        for n in mailboxes:
            self.every.update(_ancestors(n))
        self.parents = {a for n in self.every for a in _ancestors(n)[-1:]}

    def _attrs(self, name: str, missing: str) -> list[str]:
        attrs = [missing] if name not in self.mailboxes else []
        attrs.append("\\HasChildren" if name in self.parents else "\\HasNoChildren")
        special = self.mailboxes.get(name)
        if special:
            attrs.append(special)
        return attrs

    def plain(self, ref: str, pattern: str) -> list[Listed]:
        """RFC 3501 LIST."""
        if pattern == "":
            return [Listed("", ["\\Noselect"], selectable=False)]
        p = Pattern(ref, pattern)
        return [Listed(n, self._attrs(n, "\\Noselect"), selectable=n in self.mailboxes)
                for n in _order(self.every) if p.match(n)]

    def lsub(self, ref: str, pattern: str) -> list[Listed]:
        """RFC 3501 LSUB: a subscribed child whose parent is not subscribed lists
        the parent, \\Noselect, where the pattern stops short of the child (6.3.9)."""
        if pattern == "":
            return [Listed("", ["\\Noselect"], selectable=False)]
        p = Pattern(ref, pattern)
        stand_ins = set()
        for s in self.subscribed:
            if not p.match(s):
                stand_ins |= {a for a in _ancestors(s)
                              if a not in self.subscribed and p.match(a)}
        out = []
        for n in _order(self.subscribed | stand_ins):
            if not p.match(n):
                continue
            attrs = self._attrs(n, "\\Noselect")
            if n in stand_ins and "\\Noselect" not in attrs:
                attrs.insert(0, "\\Noselect")
            out.append(Listed(n, attrs, selectable=n in self.mailboxes and n not in stand_ins))
        return out

    def extended(self, ref: str, patterns: list[str], select: list[str],
                 returns: list[str]) -> list[Listed]:
        """RFC 5258 LIST: the names matching any pattern that meet the selection
        criteria, and with RECURSIVEMATCH those having a descendant that does."""
        by_sub = "SUBSCRIBED" in select
        by_use = "SPECIAL-USE" in select
        recursive = "RECURSIVEMATCH" in select
        show_sub = by_sub or "SUBSCRIBED" in returns
        ps = [Pattern(ref, p) for p in patterns]

        def meets(n: str) -> bool:
            return ((not by_sub or n in self.subscribed)
                    and (not by_use or bool(self.mailboxes.get(n))))

        # Subscribed names with no mailbox only when selected by subscription.
        universe = self.every | self.subscribed if by_sub else self.every
        meeting = {n for n in universe if meets(n)}
        # RECURSIVEMATCH (RFC 5258 3): a parent of a name that meets the criteria
        # but matches no pattern is listed, with CHILDINFO saying why.
        with_match_below = set()
        if recursive:
            for n in meeting:
                if not any(p.match(n) for p in ps):
                    with_match_below.update(_ancestors(n))
        out = []
        for n in _order(universe):
            if not any(p.match(n) for p in ps):
                continue
            if n not in meeting and n not in with_match_below:
                continue
            attrs = self._attrs(n, "\\Noselect" if n in self.every else "\\NonExistent")
            if show_sub and n in self.subscribed:
                attrs.append("\\Subscribed")
            item = Listed(n, attrs, selectable=n in self.mailboxes)
            if n in with_match_below and by_sub:
                item.childinfo = ["SUBSCRIBED"]
            out.append(item)
        return out
