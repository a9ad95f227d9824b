"""The IMAP4rev1 command grammar (RFC 3501 section 9, RFC 7888 LITERAL+).

The session reads one command as a list of line segments (without CRLF)
and the literals between them: a segment that ends in `{n}` or `{n+}` is
followed by a literal of n octets, then by the next segment. `parse_command`
turns that into a `Command` whose `args` are already checked against the
grammar of its verb, or raises `ParseError`, whose text goes to the client
in a BAD reply.
"""

from __future__ import annotations

import bisect
import datetime
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pillarbox.store import metadata

LITERAL_RE = re.compile(rb"~?\{(\d{1,20})(\+?)\}$")

# ATOM-CHAR: any CHAR except atom-specials  ( ) { SP CTL % * " \ ]
_ATOM_SPECIALS = set(b'(){ %*"\\]')
ATOM_CHARS = frozenset(c for c in range(0x21, 0x7F) if c not in _ATOM_SPECIALS)
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
LIST_CHARS = ASTRING_CHARS | {ord("%"), ord("*")}
TAG_CHARS = ASTRING_CHARS - {ord("+")}

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_MONTH_NUM = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}

SYSTEM_FLAGS = {"\\seen": "\\Seen", "\\answered": "\\Answered", "\\flagged": "\\Flagged",
                "\\deleted": "\\Deleted", "\\draft": "\\Draft", "\\recent": "\\Recent"}


class ParseError(Exception):
    """Malformed input; the message is the text of the BAD reply."""


# --------------------------------------------------------------------------
# values


MAX_MODSEQ = 2**63 - 1
STAR = 0  # `*` in a sequence set: the largest number in use


@dataclass(frozen=True)
class SeqSet:
    """A sequence set: ranges of (low, high), STAR (0) standing for `*`; `saved`
    for `$` (RFC 5182), the session's saved search result, resolved by the
    session before the command runs."""

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Ranges with `*` replaced by `largest`, each ordered low..high."""
        out = []
        for a, b in self.ranges:
            a = largest if a == STAR else a
            b = largest if b == STAR else b
            out.append((a, b) if a <= b else (b, a))
        return out

    def merged(self, largest: int) -> Ranges:
        """The set resolved once: overlaps (`*:1,1:*`) merged, then tested by bisection
        (a 55 KB set tested range by range against each of 3,000 messages took 5 s)."""
        out: list[list[int]] = []
        for a, b in sorted(self.resolve(largest)):
            if out and a <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return Ranges([a for a, _ in out], [b for _, b in out])

    def contains(self, n: int, largest: int) -> bool:
        return n in self.merged(largest)

    def select(self, numbers: list[int]) -> list[int]:
        """The members of sorted `numbers` inside the set (`*` = the last one)."""
        if not numbers:
            return []
        return [numbers[i] for i in self.merged(numbers[-1]).indexes(numbers)]

    def __str__(self) -> str:
        def one(n: int) -> str:
            return "*" if n == STAR else str(n)
        if self.saved:
            return "$"
        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


@dataclass(frozen=True)
class Ranges:
    """Disjoint ascending ranges lows[i]..highs[i] (a resolved SeqSet)."""

    lows: list[int]
    highs: list[int]

    def __contains__(self, n: int) -> bool:
        i = bisect.bisect_right(self.lows, n) - 1
        return i >= 0 and n <= self.highs[i]

    def indexes(self, numbers: Sequence[int]) -> Iterator[int]:
        """Ascending indexes of the members among sorted, distinct `numbers`."""
        for a, b in zip(self.lows, self.highs, strict=True):
            yield from range(bisect.bisect_left(numbers, a), bisect.bisect_right(numbers, b))


def seqset_from(numbers: list[int]) -> str:
    """Compact text form of a list of numbers: 1:3,7,9:10."""
    return runs_text(sorted(set(numbers)))


def runs_text(nums: list[int]) -> str:
    """`nums` in their given order, each run of ascending neighbours as a range."""
    out: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}:{nums[j]}")
        i = j + 1
    return ",".join(out)


def search_keys(key: tuple) -> Iterator[tuple]:
    """Every key of a parsed SEARCH key tree, the AND/NOT/OR nodes included."""
    stack = [key]
    while stack:
        k = stack.pop()
        yield k
        if k[0] == "AND":
            stack.extend(k[1])
        elif k[0] == "NOT":
            stack.append(k[1])
        elif k[0] == "OR":
            stack.extend(k[1:])


@dataclass
class FetchAtt:
    """One FETCH data item. `name` is upper case: FLAGS, UID, BODY, BODYSTRUCTURE,
    ENVELOPE, INTERNALDATE, RFC822, RFC822.SIZE, RFC822.HEADER, RFC822.TEXT,
    MODSEQ; BODY with `section` not None is BODY[...] (peek for BODY.PEEK)."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    @property
    def binary(self) -> bool:
        """BINARY[...] or BINARY.SIZE[...] (RFC 3516): decoded content."""
        return self.name in ("BINARY", "BINARY.SIZE")

    def response_name(self) -> str:
        if self.section is None:
            return self.name
        if self.name == "BINARY.SIZE":
            return f"BINARY.SIZE[{self.section}]"
        name = f"{'BINARY' if self.name == 'BINARY' else 'BODY'}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name


@dataclass
class Section:
    part: tuple[int, ...] = ()
    text: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = ".".join(map(str, self.part))
        if self.text:
            s = f"{s}.{self.text}" if s else self.text
        if self.fields:
            s += " (" + " ".join(self.fields) + ")"
        return s


@dataclass
class Command:
    tag: str
    name: str  # upper case; UID commands are "UID FETCH" etc.
    args: dict = field(default_factory=dict)

    @property
    def uid(self) -> bool:
        return self.name.startswith("UID ")


# --------------------------------------------------------------------------
# the reader


class Reader:
    def __init__(self, lines: list[bytes], literals: list[bytes]) -> None:
        if len(lines) != len(literals) + 1:
            raise ValueError("one more line than literals expected")
        self.lines = lines
        self.literals = literals
        self.li = 0  # current line
        self.pos = 0

    # -- low level
    @property
    def line(self) -> bytes:
        return self.lines[self.li]

    def peek(self) -> int:
        """The next octet, or -1 at the end of the current line."""
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def at_end(self) -> bool:
        return self.li == len(self.lines) - 1 and self.pos >= len(self.line)

    def expect(self, s: bytes, what: str | None = None) -> None:
        if self.line[self.pos:self.pos + len(s)].upper() != s.upper():
            raise ParseError(f"expected {what or repr(s.decode())} {self.where()}")
        self.pos += len(s)

    def accept(self, s: bytes) -> bool:
        if self.line[self.pos:self.pos + len(s)].upper() == s.upper():
            self.pos += len(s)
            return True
        return False

    def sp(self) -> None:
        if self.at_end():
            raise ParseError("missing arguments")
        if self.peek() != 0x20:
            raise ParseError(f"expected a space {self.where()}")
        self.pos += 1
        if self.peek() == 0x20:
            raise ParseError(f"unexpected second space {self.where()}")

    def end(self) -> None:
        if not self.at_end():
            raise ParseError(f"unexpected extra arguments {self.where()}")

    def where(self) -> str:
        rest = self.line[self.pos:self.pos + 20].decode("ascii", "replace")
        return f"at {rest!r}" if rest else "at end of line"

    def run(self, chars: frozenset[int]) -> bytes:
        start = self.pos
        line = self.line
        n = len(line)
        while self.pos < n and line[self.pos] in chars:
            self.pos += 1
        return line[start:self.pos]

    # -- grammar
    def atom(self, what: str = "an atom") -> str:
        a = self.run(ATOM_CHARS)
        if not a:
            raise ParseError(f"expected {what} {self.where()}")
        return a.decode("ascii")

    def number(self, what: str = "a number") -> int:
        digits = self.run(frozenset(b"0123456789"))
        if not digits or len(digits) > 10:
            raise ParseError(f"expected {what} {self.where()}")
        n = int(digits)
        if n > 0xFFFFFFFF:
            raise ParseError(f"number too large {self.where()}")
        return n

    def mod_sequence(self, what: str = "a mod-sequence") -> int:
        """mod-sequence-valzer (RFC 7162): 0 to 2^63-1, wider than a number."""
        digits = self.run(frozenset(b"0123456789"))
        if not digits or len(digits) > 19 or int(digits) > MAX_MODSEQ:
            raise ParseError(f"expected {what} {self.where()}")
        return int(digits)

    def nz_number(self, what: str = "a non-zero number") -> int:
        n = self.number(what)
        if n == 0:
            raise ParseError(f"expected {what}, got 0")
        return n

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        line = self.line
        while True:
            if self.pos >= len(line):
                raise ParseError("unterminated quoted string")
            c = line[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(line) or line[self.pos] not in (0x22, 0x5C):
                    raise ParseError("only \\\" and \\\\ may be escaped in a quoted string")
                c = line[self.pos]
                self.pos += 1
            elif c in (0x0D, 0x0A, 0):
                raise ParseError("quoted string with CR, LF or NUL")
            out.append(c)

    def literal(self, streamed_ok: bool = False) -> bytes:
        m = LITERAL_RE.fullmatch(self.line, self.pos)
        if m is None:
            raise ParseError(f"malformed literal {self.where()}")
        k = self.li
        if k >= len(self.literals):
            raise ParseError("literal without data")
        data = self.literals[k]
        if len(data) != int(m.group(1)):
            raise ParseError("literal length mismatch")
        if not streamed_ok and not isinstance(data, bytes | bytearray):
            raise ParseError("a literal this large is only taken as an APPEND message")
        self.li += 1
        self.pos = 0
        return data

    def at_string(self) -> bool:
        """Whether a quoted string or a literal starts here. `~` alone is an ATOM-CHAR
        (`SELECT ~foo`); only `~{` starts a literal8."""
        c = self.peek()
        return c in (0x22, 0x7B) or (c == 0x7E and self.line[self.pos + 1:self.pos + 2] == b"{")

    def string(self, what: str = "a string") -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if self.at_string():  # { or ~{
            return self.literal()
        raise ParseError(f"expected {what} {self.where()}")

    def astring(self, what: str = "a string") -> bytes:
        if self.at_string():
            return self.string(what)
        a = self.run(ASTRING_CHARS)
        if not a:
            raise ParseError(f"expected {what} {self.where()}")
        return a

    def nstring(self) -> bytes | None:
        if self.accept(b"NIL"):
            return None
        return self.string()

    def text_astring(self, what: str = "a string") -> str:
        try:
            return self.astring(what).decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"{what} is not valid UTF-8") from None

    def mailbox(self) -> str:
        name = self.text_astring("a mailbox name")
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        if self.at_string():
            raw = self.string()
        else:
            raw = self.run(LIST_CHARS)
            if not raw:
                raise ParseError(f"expected a mailbox pattern {self.where()}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("mailbox pattern is not valid UTF-8") from None

    def seq_number(self) -> int:
        if self.accept(b"*"):
            return STAR
        return self.nz_number("a sequence number or *")

    def seqset(self) -> SeqSet:
        if self.accept(b"$"):  # RFC 5182: the saved search result, alone
            return SeqSet((), saved=True)
        ranges = []
        while True:
            a = self.seq_number()
            b = self.seq_number() if self.accept(b":") else a
            ranges.append((a, b))
            if not self.accept(b","):
                return SeqSet(tuple(ranges))

    def flag(self) -> str:
        if self.accept(b"\\"):
            if self.accept(b"*"):
                return "\\*"
            name = "\\" + self.atom("a flag name")
            canon = SYSTEM_FLAGS.get(name.lower())
            if canon is None:
                raise ParseError(f"unknown system flag {name}")
            return canon
        return self.atom("a flag")

    def flag_list(self) -> list[str]:
        self.expect(b"(")
        flags = []
        if not self.accept(b")"):
            while True:
                flags.append(self.flag())
                if self.accept(b")"):
                    break
                self.sp()
        return flags

    def flag_list_any(self) -> list[str]:
        """( \\attr *(SP \\attr) ): mailbox attributes such as \\Sent."""
        self.expect(b"(")
        out: list[str] = []
        if self.accept(b")"):
            return out
        while True:
            self.accept(b"\\")
            out.append("\\" + self.atom("an attribute"))
            if self.accept(b")"):
                return out
            self.sp()

    def date(self) -> datetime.date:
        quoted = self.accept(b'"')
        m = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})").match(self.line, self.pos)
        if m is None or m.group(2).decode().lower() not in _MONTH_NUM:
            raise ParseError(f"expected a date like 1-Feb-2024 {self.where()}")
        self.pos = m.end()
        if quoted:
            self.expect(b'"')
        try:
            return datetime.date(int(m.group(3)), _MONTH_NUM[m.group(2).decode().lower()],
                                 int(m.group(1)))
        except ValueError:
            raise ParseError("no such date") from None

    def date_time(self) -> datetime.datetime:
        raw = self.quoted().decode("ascii", "replace")
        m = re.fullmatch(r"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)",
                         raw)
        if m is None or m.group(2).lower() not in _MONTH_NUM:
            raise ParseError(f"expected a date-time like \"01-Feb-2024 10:00:00 +0000\", "
                             f"got {raw[:40]!r}")
        sign = 1 if m.group(7) == "+" else -1
        tz = datetime.timezone(sign * datetime.timedelta(hours=int(m.group(8)),
                                                         minutes=int(m.group(9))))
        try:
            return datetime.datetime(int(m.group(3)), _MONTH_NUM[m.group(2).lower()],
                                     int(m.group(1)), int(m.group(4)), int(m.group(5)),
                                     int(m.group(6)), tzinfo=tz)
        except ValueError:
            raise ParseError("no such date-time") from None

    def paren_atoms(self) -> list[str]:
        """( atom *(SP atom) ), upper-cased; empty () allowed."""
        self.expect(b"(")
        out: list[str] = []
        if self.accept(b")"):
            return out
        while True:
            out.append(self.atom().upper())
            if self.accept(b")"):
                return out
            self.sp()

    def skip_paren(self) -> None:
        """Skip a parenthesized list (nested, with strings): for ignored options."""
        self.expect(b"(")
        depth = 1
        while depth:
            c = self.peek()
            if c == -1:
                if self.li < len(self.literals):
                    self.literal()
                    continue
                raise ParseError("unbalanced parentheses")
            if c == 0x22:
                self.quoted()
                continue
            if c in (0x7B, 0x7E) and LITERAL_RE.fullmatch(self.line, self.pos):
                self.literal()
                continue
            self.pos += 1
            if c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1


# --------------------------------------------------------------------------
# commands

NO_ARGS = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "EXPUNGE", "UNSELECT",
           "IDLE", "NAMESPACE", "UNAUTHENTICATE"}
MAILBOX_ONLY = {"DELETE", "SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT"}
UID_COMMANDS = {"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE", "SORT", "THREAD"}


def parse_command(lines: list[bytes], literals: list[bytes] | None = None) -> Command:
    r = Reader(lines, literals or [])
    tag_raw = r.run(TAG_CHARS)
    if not tag_raw:
        raise ParseError("missing or malformed tag")
    tag = tag_raw.decode("ascii")
    try:
        r.sp()
        name = r.atom("a command name").upper()
        cmd = Command(tag, name)
        if name == "UID":
            r.sp()
            sub = r.atom("a UID command").upper()
            if sub not in UID_COMMANDS:
                raise ParseError(f"UID {sub} is not a UID command")
            cmd.name = f"UID {sub}"
            name = sub
        if not r.at_end() and name not in NO_ARGS:
            r.sp()
        parser = _PARSERS.get(name)
        if name in NO_ARGS:
            if name == "EXPUNGE" and cmd.uid:
                r.sp()
                cmd.args["set"] = r.seqset()
        elif name in MAILBOX_ONLY:
            cmd.args["mailbox"] = r.mailbox()
        elif parser is None:
            raise ParseError(f"unknown command {name[:30]}")
        else:
            parser(r, cmd)
        r.end()
    except ParseError as e:
        e.tag = tag  # type: ignore[attr-defined]
        raise
    return cmd


def parse_tag(line: bytes) -> str | None:
    m = re.match(rb"[\x21-\x7e]+", line)
    if m is None:
        return None
    tag = m.group(0)
    if any(c not in TAG_CHARS for c in tag):
        return None
    return tag.decode("ascii")


def _login(r: Reader, cmd: Command) -> None:
    cmd.args["user"] = r.text_astring("a user name")
    r.sp()
    cmd.args["password"] = r.text_astring("a password")


def _authenticate(r: Reader, cmd: Command) -> None:
    cmd.args["mechanism"] = r.atom("a SASL mechanism").upper()
    cmd.args["initial"] = None
    if not r.at_end():
        r.sp()
        cmd.args["initial"] = r.run(frozenset(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")).decode()
        if not cmd.args["initial"]:
            raise ParseError(f"expected a base64 initial response {r.where()}")


@dataclass
class QresyncParam:
    """SELECT/EXAMINE (QRESYNC (uidvalidity modseq [known-uids [seq-match-data]]))."""

    uidvalidity: int
    modseq: int
    known_uids: SeqSet | None = None
    seq_match: tuple[SeqSet, SeqSet] | None = None  # (known sequence numbers, their UIDs)


def _select(r: Reader, cmd: Command) -> None:
    cmd.args["mailbox"] = r.mailbox()
    cmd.args["condstore"] = False
    cmd.args["qresync"] = None
    if not r.at_end():
        r.sp()
        # select-params (RFC 4466): CONDSTORE, QRESYNC (...); other atoms ignored.
        r.expect(b"(")
        while not r.accept(b")"):
            opt = r.atom("a SELECT parameter").upper()
            if opt == "CONDSTORE":
                cmd.args["condstore"] = True
            elif opt == "QRESYNC":
                if cmd.args["qresync"] is not None:
                    raise ParseError("QRESYNC given twice")
                r.sp()
                cmd.args["qresync"] = _qresync_param(r)
            if r.peek() != 0x29:
                r.sp()


def _qresync_param(r: Reader) -> QresyncParam:
    r.expect(b"(")
    uidvalidity = r.nz_number("a UIDVALIDITY")
    r.sp()
    param = QresyncParam(uidvalidity, r.mod_sequence())
    if r.accept(b")"):
        return param
    r.sp()
    if r.peek() != 0x28:
        param.known_uids = _star_free_set(r, "known UIDs")
        if r.accept(b")"):
            return param
        r.sp()
    r.expect(b"(", "seq-match-data")
    seqs = _star_free_set(r, "known sequence numbers")
    r.sp()
    uids = _star_free_set(r, "known UIDs")
    if _size(seqs) != _size(uids):  # they pair one to one
        raise ParseError("seq-match-data: the two sets differ in size")
    param.seq_match = (seqs, uids)
    r.expect(b")")
    r.expect(b")")
    return param


def _size(s: SeqSet) -> int:
    return sum(abs(b - a) + 1 for a, b in s.ranges)


def _star_free_set(r: Reader, what: str) -> SeqSet:
    """A sequence set without `*` (RFC 7162 known-uids and seq-match-data)."""
    s = r.seqset()
    if s.saved:  # SELECT empties the saved result: `$` would name nothing
        raise ParseError(f"\"$\" is not allowed in {what}")
    if any(STAR in pair for pair in s.ranges):
        raise ParseError(f"\"*\" is not allowed in {what}")
    return s


def _create(r: Reader, cmd: Command) -> None:
    cmd.args["mailbox"] = r.mailbox()
    cmd.args["use"] = []
    if not r.at_end():  # RFC 6154 CREATE-SPECIAL-USE: (USE (\Sent))
        r.sp()
        r.expect(b"(")
        r.expect(b"USE")
        r.sp()
        cmd.args["use"] = r.flag_list_any()
        r.expect(b")")


def _rename(r: Reader, cmd: Command) -> None:
    cmd.args["old"] = r.mailbox()
    r.sp()
    cmd.args["new"] = r.mailbox()


LIST_SELECT = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}  # RFC 5258, 6154
LIST_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"}  # and STATUS (RFC 5819)
MAX_LIST_PATTERNS = 100


def _list(r: Reader, cmd: Command) -> None:
    """LIST / LSUB; for LIST the RFC 5258 forms: selection options, several
    patterns, RETURN options (with STATUS (...) of RFC 5819). `extended` says
    whether any of them was used (LIST-EXTENDED rules then apply)."""
    lsub = cmd.name == "LSUB"
    cmd.args.update({"select_opts": [], "extended": False, "return": [], "status": None})
    if r.peek() == 0x28 and not lsub:
        opts = r.paren_atoms()
        for o in opts:
            if o not in LIST_SELECT:
                raise ParseError(f"unknown LIST selection option {o[:30]}")
        if "RECURSIVEMATCH" in opts and "SUBSCRIBED" not in opts:
            # RFC 5258 3: only with an option whose matches can be below a parent
            raise ParseError("RECURSIVEMATCH needs the SUBSCRIBED selection option")
        cmd.args.update(select_opts=opts, extended=True)
        r.sp()
    cmd.args["reference"] = r.text_astring("a reference name")
    r.sp()
    if r.peek() == 0x28 and not lsub:
        r.pos += 1
        patterns = [r.list_mailbox()]
        while not r.accept(b")"):
            r.sp()
            patterns.append(r.list_mailbox())
            if len(patterns) > MAX_LIST_PATTERNS:
                raise ParseError(f"at most {MAX_LIST_PATTERNS} patterns")
        cmd.args["extended"] = True
    else:
        patterns = [r.list_mailbox()]
    cmd.args["patterns"] = patterns
    cmd.args["pattern"] = patterns[0]  # the first (or only) one
    if not r.at_end() and not lsub:
        r.sp()
        r.expect(b"RETURN")
        r.sp()
        _list_return(r, cmd)
        cmd.args["extended"] = True


def _list_return(r: Reader, cmd: Command) -> None:
    r.expect(b"(")
    opts: list[str] = []
    if r.accept(b")"):
        return
    while True:
        o = r.atom("a return option").upper()
        if o == "STATUS":
            if cmd.args["status"] is not None:
                raise ParseError("STATUS given twice")
            r.sp()
            cmd.args["status"] = _status_items(r)
        elif o in LIST_RETURN:
            opts.append(o)
        else:
            raise ParseError(f"unknown LIST return option {o[:30]}")
        if r.accept(b")"):
            break
        r.sp()
    cmd.args["return"] = opts


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                "SIZE", "APPENDLIMIT", "MAILBOXID", "DELETED"}  # DELETED: RFC 9051


def _status_items(r: Reader) -> list[str]:
    items = r.paren_atoms()
    if not items:
        raise ParseError("STATUS needs at least one item")
    for it in items:
        if it not in STATUS_ITEMS:
            raise ParseError(f"unknown STATUS item {it[:30]}")
    return list(dict.fromkeys(items))


def _status(r: Reader, cmd: Command) -> None:
    cmd.args["mailbox"] = r.mailbox()
    r.sp()
    cmd.args["items"] = _status_items(r)


# -- METADATA (RFC 5464)

def _entry(r: Reader) -> str:
    raw = r.astring("an entry name")
    name = raw.decode("ascii", "replace")
    if not metadata.valid_entry(name):
        raise ParseError(f"invalid entry name {name[:60]!r}: /private/... or /shared/... "
                         "without wildcards or empty parts")
    return name


def _getmetadata(r: Reader, cmd: Command) -> None:
    cmd.args.update(maxsize=None, depth=0)
    if r.peek() == 0x28:
        r.pos += 1
        while True:
            opt = r.atom("MAXSIZE or DEPTH").upper()
            r.sp()
            if opt == "MAXSIZE":
                cmd.args["maxsize"] = r.number("a size")
            elif opt == "DEPTH":
                d = r.atom("0, 1 or infinity").lower()
                if d not in ("0", "1", "infinity"):
                    raise ParseError(f"DEPTH must be 0, 1 or infinity, not {d[:30]!r}")
                cmd.args["depth"] = None if d == "infinity" else int(d)
            else:
                raise ParseError(f"unknown GETMETADATA option {opt[:30]}")
            if r.accept(b")"):
                break
            r.sp()
        r.sp()
    cmd.args["mailbox"] = r.mailbox()  # "" for the server's entries
    r.sp()
    if r.peek() == 0x28:
        r.pos += 1
        entries = [_entry(r)]
        while not r.accept(b")"):
            r.sp()
            entries.append(_entry(r))
            if len(entries) > MAX_LIST_PATTERNS:
                raise ParseError(f"at most {MAX_LIST_PATTERNS} entries")
    else:
        entries = [_entry(r)]
    cmd.args["entries"] = entries


def _setmetadata(r: Reader, cmd: Command) -> None:
    cmd.args["mailbox"] = r.mailbox()
    r.sp()
    r.expect(b"(")
    changes: list[tuple[str, bytes | None]] = []
    while True:
        name = _entry(r)
        r.sp()
        value = r.nstring()  # a literal8 (~{n}) too: values are octets
        changes.append((name, value))
        if len(changes) > MAX_LIST_PATTERNS:
            raise ParseError(f"at most {MAX_LIST_PATTERNS} entries")
        if r.accept(b")"):
            break
        r.sp()
    cmd.args["changes"] = changes


MAX_APPEND_MESSAGES = 1000  # messages in one MULTIAPPEND (each needs a literal anyway)
MAX_CATENATE_PARTS = 100  # TEXT and URL parts of one CATENATE (RFC 4469 allows a limit)
MAX_CATENATE_TOTAL = 1000  # ... of all the CATENATEs of one MULTIAPPEND


@dataclass
class AppendMessage:
    """One message of an APPEND (RFC 3502 MULTIAPPEND: one or more): a literal
    (`binary` for a literal8, RFC 3516), or CATENATE parts (RFC 4469):
    ("TEXT", data) and ("URL", url)."""

    flags: list[str]
    date: datetime.datetime | None
    data: object = None  # bytes, or a TmpMessage for a literal streamed to disk
    binary: bool = False
    parts: list[tuple[str, object]] | None = None


def _append(r: Reader, cmd: Command) -> None:
    cmd.args["mailbox"] = r.mailbox()
    messages: list[AppendMessage] = []
    parts = 0
    while True:
        r.sp()
        messages.append(_append_message(r))
        parts += len(messages[-1].parts or ())
        if parts > MAX_CATENATE_TOTAL:
            raise ParseError(f"more than {MAX_CATENATE_TOTAL} CATENATE parts in one APPEND")
        if r.at_end():
            break
        if len(messages) >= MAX_APPEND_MESSAGES:
            raise ParseError(f"more than {MAX_APPEND_MESSAGES} messages in one APPEND")
    cmd.args["messages"] = messages
    first = messages[0]  # the single-message view, as before MULTIAPPEND
    cmd.args.update(flags=first.flags, date=first.date, message=first.data)


def _append_message(r: Reader) -> AppendMessage:
    flags: list[str] = []
    date = None
    if r.peek() == 0x28:
        flags = [f for f in r.flag_list() if f != "\\Recent"]
        if "\\*" in flags:
            raise ParseError("\\* is not a flag")
        r.sp()
    if r.peek() == 0x22:
        date = r.date_time()
        r.sp()
    if r.accept(b"CATENATE"):
        r.sp()
        return AppendMessage(flags, date, parts=_catenate_parts(r))
    if r.peek() not in (0x7B, 0x7E):
        raise ParseError(f"expected the message as a literal {r.where()}")
    binary = r.peek() == 0x7E
    return AppendMessage(flags, date, r.literal(streamed_ok=True), binary)


def _catenate_parts(r: Reader) -> list[tuple[str, object]]:
    r.expect(b"(")
    parts: list[tuple[str, object]] = []
    while True:
        kind = r.atom("TEXT or URL").upper()
        r.sp()
        if kind == "TEXT":
            if r.peek() not in (0x7B, 0x7E):
                raise ParseError(f"expected a literal after TEXT {r.where()}")
            parts.append(("TEXT", r.literal(streamed_ok=True)))
        elif kind == "URL":
            parts.append(("URL", r.astring("an IMAP URL").decode("utf-8", "replace")))
        else:
            raise ParseError(f"expected TEXT or URL, got {kind[:30]!r}")
        if len(parts) > MAX_CATENATE_PARTS:
            raise ParseError(f"more than {MAX_CATENATE_PARTS} CATENATE parts")
        if r.accept(b")"):
            return parts
        r.sp()


def _enable(r: Reader, cmd: Command) -> None:
    caps = [r.atom("a capability").upper()]
    while not r.at_end():
        r.sp()
        caps.append(r.atom("a capability").upper())
    cmd.args["capabilities"] = caps


def _id(r: Reader, cmd: Command) -> None:
    params: dict[str, str | None] = {}
    if r.accept(b"NIL"):
        cmd.args["params"] = params
        return
    r.expect(b"(")
    if not r.accept(b")"):
        while True:
            k = r.string().decode("utf-8", "replace")
            r.sp()
            v = r.nstring()
            params[k] = v.decode("utf-8", "replace") if v is not None else None
            if r.accept(b")"):
                break
            r.sp()
    cmd.args["params"] = params


def _compress(r: Reader, cmd: Command) -> None:
    cmd.args["mechanism"] = r.atom("a compression mechanism").upper()


def _getquota(r: Reader, cmd: Command) -> None:
    cmd.args["root"] = r.text_astring("a quota root")


def _setquota(r: Reader, cmd: Command) -> None:
    cmd.args["root"] = r.text_astring("a quota root")
    r.sp()
    r.skip_paren()  # the resource limits: refused anyway, the CLI sets quotas


def _copy(r: Reader, cmd: Command) -> None:
    cmd.args["set"] = r.seqset()
    r.sp()
    cmd.args["mailbox"] = r.mailbox()


def _store(r: Reader, cmd: Command) -> None:
    cmd.args["set"] = r.seqset()
    r.sp()
    cmd.args["unchangedsince"] = None
    if r.peek() == 0x28:  # RFC 7162 (UNCHANGEDSINCE n)
        r.expect(b"(")
        r.expect(b"UNCHANGEDSINCE")
        r.sp()
        cmd.args["unchangedsince"] = r.mod_sequence()
        r.expect(b")")
        r.sp()
    mode = "set"
    if r.accept(b"+"):
        mode = "add"
    elif r.accept(b"-"):
        mode = "remove"
    r.expect(b"FLAGS", "FLAGS, +FLAGS or -FLAGS")
    silent = r.accept(b".SILENT")
    r.sp()
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        flags = [r.flag()]
        while not r.at_end():
            r.sp()
            flags.append(r.flag())
    for f in flags:
        if f in ("\\Recent", "\\*"):
            raise ParseError(f"{f} cannot be stored")
    cmd.args.update(mode=mode, silent=silent, flags=flags)


# -- FETCH

_FETCH_SIMPLE = {"FLAGS", "UID", "ENVELOPE", "INTERNALDATE", "RFC822", "RFC822.SIZE",
                 "RFC822.HEADER", "RFC822.TEXT", "BODYSTRUCTURE", "BODY", "MODSEQ",
                 "SAVEDATE", "EMAILID", "THREADID"}
_FETCH_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_ATT_NAME = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")


def _fetch_att(r: Reader) -> FetchAtt:
    name = r.run(_ATT_NAME).decode().upper()
    if name in ("BODY", "BODY.PEEK") and r.peek() == 0x5B:  # [
        r.pos += 1
        section = _section(r)
        r.expect(b"]")
        return FetchAtt("BODY", section, _partial(r), peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):  # RFC 3516
        r.expect(b"[")
        part: list[int] = []
        while r.peek() != 0x5D:
            part.append(r.nz_number("a part number"))
            if not r.accept(b"."):
                break
        r.expect(b"]", "] (a BINARY section is part numbers only)")
        section = Section(tuple(part))
        if name == "BINARY.SIZE":
            return FetchAtt(name, section, peek=True)  # a size never sets \Seen
        return FetchAtt("BINARY", section, _partial(r), peek=name == "BINARY.PEEK")
    if name in _FETCH_SIMPLE:
        return FetchAtt(name)
    raise ParseError(f"unknown FETCH item {name[:30] or r.where()}")


def _partial(r: Reader) -> tuple[int, int] | None:
    if not r.accept(b"<"):
        return None
    offset = r.number()
    r.expect(b".")
    count = r.nz_number("a non-zero octet count")
    r.expect(b">")
    return (offset, count)


def section_spec(text: str) -> Section:
    """A section as an IMAP URL writes it (;SECTION=1.2.MIME, RFC 5092)."""
    r = Reader([text.encode("utf-8")], [])
    sec = _section(r)
    r.end()
    return sec


def _section(r: Reader) -> Section:
    sec = Section()
    if r.peek() == 0x5D:
        return sec
    part: list[int] = []
    while 0x30 <= r.peek() <= 0x39:
        part.append(r.nz_number("a part number"))
        if not r.accept(b"."):
            sec.part = tuple(part)
            return sec
    sec.part = tuple(part)
    text = r.run(_ATT_NAME).decode().upper()
    if text in ("HEADER", "TEXT") or (text == "MIME" and part):
        sec.text = text
    elif text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        sec.text = text
        r.sp()
        r.expect(b"(")
        while True:
            sec.fields.append(r.astring("a header field name").decode("ascii", "replace")
                              .upper())
            if r.accept(b")"):
                break
            r.sp()
    else:
        raise ParseError(f"unknown section text {text[:30]!r}")
    return sec


def _fetch(r: Reader, cmd: Command) -> None:
    cmd.args["set"] = r.seqset()
    r.sp()
    atts: list[FetchAtt] = []
    if r.peek() == 0x28:
        r.pos += 1
        while True:
            atts.append(_fetch_att(r))
            if r.accept(b")"):
                break
            r.sp()
    else:
        save = r.pos
        word = r.run(_ATT_NAME).decode().upper()
        if word in _FETCH_MACROS:
            atts = [FetchAtt(n) for n in _FETCH_MACROS[word]]
        else:
            r.pos = save
            atts.append(_fetch_att(r))
    cmd.args["changedsince"] = None
    cmd.args["vanished"] = False
    if not r.at_end():
        r.sp()
        r.expect(b"(")
        while True:
            mod = r.atom("a FETCH modifier").upper()
            if mod == "CHANGEDSINCE":
                r.sp()
                cmd.args["changedsince"] = r.mod_sequence()
            elif mod == "VANISHED":
                # RFC 7162 3.2.6: UID FETCH only, and only with CHANGEDSINCE.
                if not cmd.uid:
                    raise ParseError("VANISHED is a UID FETCH modifier")
                cmd.args["vanished"] = True
            else:
                raise ParseError(f"unknown FETCH modifier {mod[:30]}")
            if r.accept(b")"):
                break
            r.sp()
        if cmd.args["vanished"] and cmd.args["changedsince"] is None:
            raise ParseError("VANISHED needs CHANGEDSINCE")
    cmd.args["atts"] = atts


# -- SEARCH

_SEARCH_FLAG_KEYS = {
    "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
    "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN", "SAVEDATESUPPORTED",
}
_SEARCH_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_SEARCH_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
                     "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}
_SEARCH_ARG_KEYS = _SEARCH_STRING_KEYS | _SEARCH_DATE_KEYS | {
    "LARGER", "SMALLER", "KEYWORD", "UNKEYWORD", "HEADER", "UID", "NOT", "OR", "MODSEQ"}


def _search_string(r: Reader, charset: str) -> str:
    raw = r.astring("a search string")
    try:
        return raw.decode("utf-8" if charset in ("UTF-8", "US-ASCII") else "ascii")
    except UnicodeDecodeError:
        raise ParseError("search string is not valid in its charset") from None


def _search_key(r: Reader, charset: str, depth: int = 0) -> tuple:
    if depth > 50:
        raise ParseError("search keys nested too deeply")
    c = r.peek()
    if c == 0x28:
        r.pos += 1
        keys = [_search_key(r, charset, depth + 1)]
        while not r.accept(b")"):
            r.sp()
            keys.append(_search_key(r, charset, depth + 1))
        return ("AND", keys)
    if c in (0x2A, 0x24) or 0x30 <= c <= 0x39:  # *, $ or a digit
        return ("SEQ", r.seqset())
    key = r.atom("a search key").upper()
    if key in _SEARCH_FLAG_KEYS:
        return (key,)
    if key not in _SEARCH_ARG_KEYS:
        raise ParseError(f"unknown search key {key[:30]}")
    r.sp()
    if key in _SEARCH_STRING_KEYS:
        return (key, _search_string(r, charset))
    if key in _SEARCH_DATE_KEYS:
        return (key, r.date())
    if key in ("LARGER", "SMALLER"):
        return (key, r.number())
    if key in ("KEYWORD", "UNKEYWORD"):
        return (key, r.flag())
    if key == "HEADER":
        name = r.astring("a header field name").decode("ascii", "replace")
        r.sp()
        return (key, name, _search_string(r, charset))
    if key == "UID":
        return (key, r.seqset())
    if key == "NOT":
        return (key, _search_key(r, charset, depth + 1))
    if key == "OR":
        a = _search_key(r, charset, depth + 1)
        r.sp()
        return (key, a, _search_key(r, charset, depth + 1))
    if key == "MODSEQ":
        if r.peek() == 0x22:
            # "/flags/\\seen" all: per-flag MODSEQs are not kept; the message's
            # own MODSEQ is never lower, so matching on it misses nothing.
            r.quoted()
            r.sp()
            kind = r.atom("priv, shared or all").lower()
            if kind not in ("priv", "shared", "all"):
                raise ParseError(f"expected priv, shared or all, got {kind[:30]!r}")
            r.sp()
        return (key, r.mod_sequence())
    raise ParseError(f"unknown search key {key[:30]}")


SEARCH_RETURN = {"MIN", "MAX", "ALL", "COUNT", "SAVE", "PARTIAL"}  # RFC 4731, 5182, 5267


def _partial_range(r: Reader) -> tuple[int, int]:
    """RFC 5267 4.4 `first:last` (1-based positions in the result), or RFC 9394's
    `-first:-last` counted from its end; as (low, high), both of one sign."""
    neg = r.accept(b"-")
    lo = r.nz_number("a PARTIAL range")
    r.expect(b":")
    if neg != r.accept(b"-"):
        raise ParseError("a PARTIAL range is both positive or both negative")
    hi = r.nz_number("a PARTIAL range")
    lo, hi = min(lo, hi), max(lo, hi)
    return (-hi, -lo) if neg else (lo, hi)


def _return_options(r: Reader, cmd: Command, what: str) -> None:
    """RETURN (...) of SEARCH (RFC 4731) and SORT (RFC 5267): args return (option
    names; () is (ALL)) and partial (the PARTIAL range or None)."""
    r.expect(b"(")
    opts: list[str] = []
    cmd.args["partial"] = None
    while not r.accept(b")"):
        if opts:
            r.sp()
        o = r.atom("a return option").upper()
        if o not in SEARCH_RETURN:
            raise ParseError(f"unknown {what} return option {o[:30]}")
        if o == "PARTIAL":
            if cmd.args["partial"] is not None:
                raise ParseError("PARTIAL given twice")
            r.sp()
            cmd.args["partial"] = _partial_range(r)
        opts.append(o)
    if "PARTIAL" in opts and "ALL" in opts:
        raise ParseError("PARTIAL and ALL exclude each other")
    cmd.args["return"] = opts or ["ALL"]  # RETURN () is RETURN (ALL)


def _search(r: Reader, cmd: Command) -> None:
    charset = "US-ASCII"
    cmd.args["return"] = None
    cmd.args["partial"] = None
    if r.accept(b"RETURN "):  # RFC 4731 ESEARCH
        _return_options(r, cmd, "SEARCH")
    try:
        if cmd.args["return"] is not None:
            r.sp()
        if r.accept(b"CHARSET "):
            charset = r.astring("a charset").decode("ascii", "replace").upper()
            r.sp()
        _search_program(r, cmd, charset)
    except ParseError as e:
        # RFC 5182 2.1: a SEARCH with SAVE that fails (BAD too) empties `$`.
        e.resets_saved = "SAVE" in (cmd.args["return"] or ())  # type: ignore[attr-defined]
        raise


def _search_program(r: Reader, cmd: Command, charset: str) -> None:
    """The search keys after the charset: args charset and keys (an AND of them)."""
    cmd.args["charset"] = charset
    if charset not in ("US-ASCII", "UTF-8"):
        cmd.args["keys"] = ("ALL",)  # the session answers NO [BADCHARSET]
        r.li, r.pos = len(r.lines) - 1, len(r.lines[-1])
        return
    keys = [_search_key(r, charset)]
    while not r.at_end():
        r.sp()
        keys.append(_search_key(r, charset))
    cmd.args["keys"] = ("AND", keys)


SORT_KEYS = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
             "DISPLAYFROM", "DISPLAYTO"}  # RFC 5256, RFC 5957
THREAD_ALGORITHMS = {"ORDEREDSUBJECT", "REFERENCES"}


def _sort(r: Reader, cmd: Command) -> None:
    """SORT [RETURN (...)] (criteria) charset keys: criteria as [(key, reverse)];
    RETURN (ESORT, RFC 5267) as for SEARCH."""
    cmd.args["return"] = None
    cmd.args["partial"] = None
    if r.accept(b"RETURN "):
        _return_options(r, cmd, "SORT")
        r.sp()
    try:
        _sort_rest(r, cmd)
    except ParseError as e:
        # RFC 5182 2.1 (ESORT's SAVE too): a SORT with SAVE that fails empties `$`.
        e.resets_saved = "SAVE" in (cmd.args["return"] or ())  # type: ignore[attr-defined]
        raise


def _sort_rest(r: Reader, cmd: Command) -> None:
    """SORT's (criteria) charset keys."""
    r.expect(b"(")
    criteria: list[tuple[str, bool]] = []
    while True:
        word = r.atom("a sort key").upper()
        reverse = word == "REVERSE"
        if reverse:
            r.sp()
            word = r.atom("a sort key").upper()
        if word not in SORT_KEYS:
            raise ParseError(f"unknown sort key {word[:30]}")
        criteria.append((word, reverse))
        if r.accept(b")"):
            break
        r.sp()
    cmd.args["criteria"] = criteria
    r.sp()
    _charset_and_program(r, cmd)


def _thread(r: Reader, cmd: Command) -> None:
    algorithm = r.atom("a threading algorithm").upper()
    if algorithm not in THREAD_ALGORITHMS:
        raise ParseError(f"unknown threading algorithm {algorithm[:30]}")
    cmd.args["algorithm"] = algorithm
    r.sp()
    _charset_and_program(r, cmd)


def _charset_and_program(r: Reader, cmd: Command) -> None:
    """SORT and THREAD: a charset (not optional there), then the search keys."""
    charset = r.astring("a charset").decode("ascii", "replace").upper()
    r.sp()
    _search_program(r, cmd, charset)


_PARSERS = {
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _create,
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _list,
    "STATUS": _status,
    "APPEND": _append,
    "ENABLE": _enable,
    "ID": _id,
    "GETQUOTA": _getquota,
    "COMPRESS": _compress,
    "SETQUOTA": _setquota,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SEARCH": _search,
    "GETMETADATA": _getmetadata,
    "SETMETADATA": _setmetadata,
    "SORT": _sort,
    "THREAD": _thread,
}
