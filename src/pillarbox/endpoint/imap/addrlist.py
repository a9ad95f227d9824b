"""Address-list header fields (RFC 5322 3.4, with the obsolete syntax of 4.4)
read into the address structures of an IMAP ENVELOPE (RFC 3501 7.4.2).

`email.utils.getaddresses` flattens groups, drops source routes and keeps
comments in display names; ENVELOPE needs all three right, and SEARCH
FROM/TO/CC/BCC must see an address written with comments
(`<user (comment)@ (comment) domain.org>`) as user@domain.org. The reader is
tolerant: any text gives a list (possibly empty), never an exception, in one
pass over it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPECIALS = frozenset('()<>[]:;@\\,."')
_WSP = frozenset(" \t\r\n")
_WSP_RUN = re.compile(r"[ \t\r\n]+")
_ATOM_RUN = re.compile(r'[^()<>\[\]:;@\\,." \t\r\n]+')
_ATEXT_EXTRA = frozenset("!#$%&'*+-/=?^_`{|}~.")
# RFC 3501: NIL host means group syntax; UW imapd and Dovecot give a mailbox
# without a domain this host instead, so it is never taken for a group marker.
MISSING_HOST = ".MISSING-HOST-NAME."


@dataclass(frozen=True)
class Address:
    """One ENVELOPE address structure. A group start has only `mailbox` (the
    group's name); a group end has nothing."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None

    @property
    def is_group_marker(self) -> bool:
        return self.host is None


GROUP_END = Address(None, None, None, None)

Token = tuple[str, str]  # (kind, text): "atom", "quoted", "literal", "comment" or a special


def _tokens(text: str) -> list[Token]:
    out: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WSP:
            i = _WSP_RUN.match(text, i).end()  # type: ignore[union-attr]
        elif c == "(":  # a comment, nested, with quoted-pairs
            depth, j, buf = 1, i + 1, []
            while j < n:
                d = text[j]
                j += 1
                if d == "\\" and j < n:
                    buf.append(text[j])
                    j += 1
                    continue
                if d == "(":
                    depth += 1
                elif d == ")":
                    depth -= 1
                    if not depth:
                        break
                buf.append(d)
            out.append(("comment", "".join(buf)))
            i = j
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(("quoted", "".join(buf)))
            i = j + 1
        elif c == "[":
            j = text.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("literal", text[i:j]))
            i = j
        elif c in "<>:;@,.":
            out.append((c, c))
            i += 1
        elif c in _SPECIALS:  # a stray ) ] or \: part of a word, as a lenient reader would
            out.append(("atom", c))
            i += 1
        else:
            j = _ATOM_RUN.match(text, i).end()  # type: ignore[union-attr]
            out.append(("atom", text[i:j]))
            i = j
    return out


def _phrase(words: list[Token]) -> str:
    """A display name: words one space apart, quotes removed, "Q." kept together."""
    out: list[str] = []
    for kind, text in words:
        if out and kind != ".":
            out.append(" ")
        out.append(text)
    return "".join(out)


def _dot_text(words: list[Token]) -> str:
    """A local part or domain from its words and dots, the CFWS between them gone;
    a quoted word that needs its quotes keeps them."""
    out = []
    for kind, text in words:
        if kind == "quoted" and not (text and all(c.isalnum() or c in _ATEXT_EXTRA
                                                  for c in text)):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(text)
    return "".join(out)


class _Reader:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.comment: str | None = None  # the last comment of the current address

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def words(self, stops: str) -> list[Token]:
        """Tokens up to one whose kind is in `stops` (or the end), comments set aside."""
        out = []
        while (kind := self.peek()) is not None and kind not in stops:
            tok = self.toks[self.i]
            self.i += 1
            if kind == "comment":
                self.comment = " ".join(tok[1].split()) or self.comment
            else:
                out.append(tok)
        return out

    def angle(self) -> tuple[str | None, str, str | None]:
        """After "<": (source route, local part, domain); up to and past ">"."""
        route = None
        if self.peek() == "@":  # obs-route: @a,@b:
            save = self.i
            hops = []
            while self.peek() == "@":
                self.i += 1
                hops.append("@" + _dot_text(self.words("@,:>;")))
                while self.peek() == ",":
                    self.i += 1
                    self.words("@:>;,")
            if self.peek() == ":":
                self.i += 1
                route = ",".join(hops)
            else:  # no route after all: <@domain>
                self.i = save
        local = _dot_text(self.words("@>,;"))
        domain = None
        if self.peek() == "@":
            self.i += 1
            domain = _dot_text(self.words(">,;"))
        if self.peek() == ">":
            self.i += 1
        return route, local, domain


def parse(text: str) -> list[Address]:
    """The address structures of one address-list field value."""
    r = _Reader(text)
    out: list[Address] = []
    in_group = False
    while r.peek() is not None:
        r.comment = None
        phrase = r.words("<:@,;")
        stop = r.peek()
        if stop == ":":
            r.i += 1
            if in_group:  # groups do not nest: a missing ";" ends the one before
                out.append(GROUP_END)
            out.append(Address(None, None, _phrase(phrase), None))
            in_group = True
            continue
        if stop == "<":
            r.i += 1
            route, local, domain = r.angle()
            if local or domain or phrase:  # not the null address <>
                out.append(Address(_phrase(phrase) or None, route, local,
                                   domain or MISSING_HOST))
            r.words(",;")  # anything after ">" up to the next address
        elif stop == "@":
            r.i += 1
            domain = _dot_text(r.words(",;<"))
            r.words(",;")
            out.append(Address(r.comment, None, _dot_text(phrase), domain or MISSING_HOST))
        elif phrase:  # a local part alone
            out.append(Address(r.comment, None, _dot_text(phrase), MISSING_HOST))
        if r.peek() == ";":
            if in_group:
                out.append(GROUP_END)
                in_group = False
        if r.peek() in (",", ";"):
            r.i += 1
    if in_group:
        out.append(GROUP_END)
    return out
