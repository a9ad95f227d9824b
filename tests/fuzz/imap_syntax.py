"""A strict checker of the RFC 3501 (section 9) grammar of ENVELOPE and BODY /
BODYSTRUCTURE, for the fuzz targets: it raises SyntaxError at the first octet
that the grammar does not allow, so "any message gives valid IMAP" can be tested.

It is written from the ABNF, not from the server's code, so it does not share
the server's mistakes. Strings follow IMAP4rev1: a quoted string holds only
7-bit TEXT-CHARs (no NUL, CR, LF) with only \\" and \\\\ escaped; a literal holds
CHAR8s (any octet but NUL).
"""

from __future__ import annotations

import re

_LITERAL = re.compile(rb"\{(\d{1,10})\}\r\n")
_NUMBER = re.compile(rb"\d{1,10}")
_LITERAL_END = re.compile(rb"\{(\d+)\}\r\n")


class Checker:
    def __init__(self, data: bytes) -> None:
        self.d = data
        self.i = 0

    # -- lexical
    def fail(self, what: str):
        raise SyntaxError(f"expected {what} at {self.i}: {self.d[self.i:self.i + 40]!r}")

    def peek(self) -> bytes:
        return self.d[self.i:self.i + 1]

    def expect(self, s: bytes) -> None:
        if self.d[self.i:self.i + len(s)] != s:
            self.fail(repr(s))
        self.i += len(s)

    def accept(self, s: bytes) -> bool:
        if self.d[self.i:self.i + len(s)] == s:
            self.i += len(s)
            return True
        return False

    def end(self) -> None:
        if self.i != len(self.d):
            self.fail("the end")

    def number(self) -> int:
        m = _NUMBER.match(self.d, self.i)
        if m is None or int(m.group()) > 0xFFFFFFFF:
            self.fail("a number")
        self.i = m.end()
        return int(m.group())

    def string(self) -> tuple[bytes, bool]:
        """(value, quoted?)"""
        if self.accept(b'"'):
            out = bytearray()
            while True:
                c = self.d[self.i:self.i + 1]
                if not c:
                    self.fail("the end of a quoted string")
                self.i += 1
                if c == b'"':
                    return bytes(out), True
                if c == b"\\":
                    c = self.d[self.i:self.i + 1]
                    if c not in (b'"', b"\\"):
                        self.fail('\\" or \\\\')
                    self.i += 1
                elif c in (b"\x00", b"\r", b"\n") or c[0] > 0x7F:
                    self.i -= 1
                    self.fail("a TEXT-CHAR in a quoted string")
                out += c
        m = _LITERAL.match(self.d, self.i)
        if m is None:
            self.fail("a string")
        n = int(m.group(1))
        start = m.end()
        data = self.d[start:start + n]
        if len(data) != n:
            self.fail(f"{n} literal octets")
        if b"\x00" in data:
            self.i = start + data.index(b"\x00")
            self.fail("a CHAR8 (no NUL) in a literal")
        self.i = start + n
        return data, False

    def nstring(self) -> bytes | None:
        if self.accept(b"NIL"):
            return None
        return self.string()[0]

    # -- ENVELOPE
    def envelope(self) -> None:
        self.expect(b"(")
        self.nstring()  # date
        self.expect(b" ")
        self.nstring()  # subject
        for _ in range(6):  # from, sender, reply-to, to, cc, bcc
            self.expect(b" ")
            self.address_list()
        self.expect(b" ")
        self.nstring()  # in-reply-to
        self.expect(b" ")
        self.nstring()  # message-id
        self.expect(b")")

    def address_list(self) -> None:
        if self.accept(b"NIL"):
            return
        self.expect(b"(")
        self.address()
        while self.peek() == b"(":
            self.address()
        self.expect(b")")

    def address(self) -> None:
        self.expect(b"(")
        for k in range(4):  # name, adl, mailbox, host
            if k:
                self.expect(b" ")
            self.nstring()
        self.expect(b")")

    # -- BODY / BODYSTRUCTURE
    def body(self, extended: bool) -> None:
        self.expect(b"(")
        if self.peek() == b"(":
            self.body(extended)
            while self.peek() == b"(":
                self.body(extended)
            self.expect(b" ")
            self.string()  # media-subtype
            if extended and self.accept(b" "):
                self.params()
                self.ext_tail()
        else:
            self.one_part(extended)
        self.expect(b")")

    def one_part(self, extended: bool) -> None:
        mtype, mquoted = self.string()
        self.expect(b" ")
        subtype, squoted = self.string()
        self.expect(b" ")
        self.params()
        self.expect(b" ")
        self.nstring()  # id
        self.expect(b" ")
        self.nstring()  # description
        self.expect(b" ")
        self.string()  # encoding
        self.expect(b" ")
        self.number()  # octets
        if mquoted and squoted and (mtype.upper(), subtype.upper()) == (b"MESSAGE", b"RFC822"):
            self.expect(b" ")
            self.envelope()
            self.expect(b" ")
            self.body(extended)
            self.expect(b" ")
            self.number()  # lines
        elif mquoted and mtype.upper() == b"TEXT":
            self.expect(b" ")
            self.number()  # lines
        if extended and self.accept(b" "):
            self.nstring()  # md5
            self.ext_tail()

    def ext_tail(self) -> None:
        """[SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc *(SP body-extension)]]]"""
        if not self.accept(b" "):
            return
        if not self.accept(b"NIL"):
            self.expect(b"(")
            self.string()
            self.expect(b" ")
            self.params()
            self.expect(b")")
        if not self.accept(b" "):
            return
        if self.peek() == b"(":
            self.i += 1
            self.string()
            while self.accept(b" "):
                self.string()
            self.expect(b")")
        else:
            self.nstring()
        if not self.accept(b" "):
            return
        self.nstring()  # location
        while self.accept(b" "):
            self.extension()

    def extension(self) -> None:
        if self.accept(b"("):
            self.extension()
            while self.accept(b" "):
                self.extension()
            self.expect(b")")
        elif self.peek().isdigit():
            self.number()
        else:
            self.nstring()

    def params(self) -> None:
        if self.accept(b"NIL"):
            return
        self.expect(b"(")
        self.string()
        self.expect(b" ")
        self.string()
        while self.accept(b" "):
            self.string()
            self.expect(b" ")
            self.string()
        self.expect(b")")


def check_envelope(data: bytes) -> None:
    c = Checker(data)
    c.envelope()
    c.end()


def check_body(data: bytes, extended: bool) -> None:
    c = Checker(data)
    c.body(extended)
    c.end()


def imaplib_chunks(response: bytes) -> list:
    """A response as imaplib hands it on: (line ending in {n}, literal) tuples and
    plain lines, which is what imapclient's response parser takes."""
    out: list = []
    pos = 0
    while True:
        m = _LITERAL_END.search(response, pos)
        if m is None:
            out.append(response[pos:])
            return out
        n = int(m.group(1))
        out.append((response[pos:m.end() - 2], response[m.end():m.end() + n]))
        pos = m.end() + n
