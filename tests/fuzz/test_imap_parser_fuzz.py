"""Fuzz target: the IMAP command parser (endpoint/imap/parser.py).

Property: any octets a client sends, cut into lines and literals the way the
session reads them, either parse into a Command that the session has a
handler for, or raise ParseError (whose text becomes a BAD reply); never any
other exception. Sequence sets that parse resolve and select consistently.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from pillarbox.endpoint.imap.parser import LITERAL_RE, STAR, ParseError, parse_command
from pillarbox.endpoint.imap.session import Session

MAX_LITERAL = 4096  # the fuzz framing takes literals up to this size


def frame(data: bytes) -> tuple[list[bytes], list[bytes]] | None:
    """One command as Session.read_command cuts it: a line, and when it ends in
    {n} / {n+} / ~{n}, n octets of literal, then the next line. None if the data
    ends inside the command."""
    lines: list[bytes] = []
    literals: list[bytes] = []
    rest = data
    while True:
        line, nl, rest = rest.partition(b"\n")
        if not nl:
            return None
        lines.append(line[:-1] if line.endswith(b"\r") else line)
        m = LITERAL_RE.search(lines[-1])
        if m is None:
            return lines, literals
        n = int(m.group(1))
        if n > MAX_LITERAL or len(rest) < n:
            return None
        literals.append(rest[:n])
        rest = rest[n:]


def check(data: bytes) -> None:
    framed = frame(data)
    if framed is None:
        return
    try:
        cmd = parse_command(*framed)
    except ParseError as e:
        assert isinstance(str(e), str)
        return
    assert hasattr(Session, "cmd_" + cmd.name.replace(" ", "_")), cmd.name
    seqset = cmd.args.get("set")
    if seqset is not None:
        for largest in (1, 7, 2**32 - 1):
            ranges = seqset.resolve(largest)
            assert all(1 <= a <= b for a, b in ranges)
        numbers = list(range(1, 30))
        picked = seqset.select(numbers)
        assert picked == [n for n in numbers if seqset.contains(n, numbers[-1])]
        assert STAR not in picked


VERBS = [
    b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"LOGIN", b"AUTHENTICATE", b"SELECT",
    b"EXAMINE", b"CREATE", b"DELETE", b"RENAME", b"SUBSCRIBE", b"UNSUBSCRIBE", b"LIST", b"LSUB",
    b"STATUS", b"APPEND", b"CHECK", b"CLOSE", b"EXPUNGE", b"SEARCH", b"FETCH", b"STORE",
    b"COPY", b"MOVE", b"UID FETCH", b"UID STORE", b"UID SEARCH", b"UID COPY", b"UID MOVE",
    b"UID EXPUNGE", b"UID", b"IDLE", b"NAMESPACE", b"ENABLE", b"ID", b"UNSELECT", b"GETQUOTA",
    b"GETQUOTAROOT", b"SETQUOTA", b"uid fetch", b"fetch", b"SORT", b"THREAD", b"UID SORT",
    b"UID THREAD",
]
TOKENS = [
    b" ", b"  ", b"(", b")", b"[", b"]", b"<", b">", b".", b"*", b":", b",", b"%", b"\\", b'"',
    b"{", b"}", b"+", b"-", b"~", b"NIL", b"INBOX", b"1", b"0", b"2:4", b"*:1", b"1:*",
    b"4294967295", b"4294967296", b"99999999999", b"9223372036854775807", b'"quoted"',
    b'"esc\\"aped\\\\"', b'"\\x"', b"{0}\r\n", b"{3}\r\nabc", b"{3+}\r\nabc", b"~{2}\r\nab",
    b"{5}\r\nab", b"\\Seen", b"\\Deleted", b"\\Recent", b"\\*", b"\\Bogus", b"$Label",
    b"FLAGS", b"+FLAGS", b"-FLAGS.SILENT", b"(UNCHANGEDSINCE 5)", b"BODY", b"BODY.PEEK",
    b"BODY[]", b"BODY[1.2.HEADER]", b"BODY.PEEK[HEADER.FIELDS (FROM TO)]", b"BODY[TEXT]<0.10>",
    b"BODY[1.MIME]", b"BODY[MIME]", b"ENVELOPE", b"BODYSTRUCTURE", b"RFC822.SIZE", b"ALL",
    b"FAST", b"FULL", b"UID", b"MODSEQ", b"(CHANGEDSINCE 1)", b"(VANISHED)", b"CHARSET",
    b"UTF-8", b"US-ASCII", b"KOI8-R", b"RETURN", b"(MIN MAX COUNT ALL)", b"OR", b"NOT",
    b"HEADER", b"SUBJECT", b"FROM", b"TEXT", b"SINCE", b"1-Feb-2024", b'"31-Feb-2024"',
    b"LARGER", b"KEYWORD", b'"/flags/\\\\seen"', b"priv", b'"01-Feb-2024 10:00:00 +0000"',
    b'"99-Foo-2024 10:00:00 +0000"', b"(CONDSTORE)", b"(USE (\\Sent))", b"RETURN (SUBSCRIBED)",
    b"(SUBSCRIBED)", b"(MESSAGES UIDNEXT)", b"(STORAGE 100)", b"PLAIN", b"AGFsaWNlAHNlY3JldA==",
    b"=", b"\x00", b"\xff", b"\xc3\xa4", b"\r", b"\t", b"\x7f", b"$", b"(REVERSE DATE)",
    b"(SUBJECT DISPLAYFROM)", b"REFERENCES", b"ORDEREDSUBJECT", b"(SAVE MIN)",
]

tag = st.one_of(st.sampled_from([b"a1", b"*", b"+", b"A.B", b"t\xff", b""]),
                st.binary(min_size=1, max_size=4))
args = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=20).map(
    b"".join)
command = st.builds(lambda t, v, a, end: t + b" " + v + a + end, tag, st.sampled_from(VERBS),
                    args, st.sampled_from([b"\r\n", b"\n"]))


@given(st.one_of(command, st.binary(max_size=300).map(lambda b: b + b"\r\n")))
@example(b"a FETCH 1:*,*:1 (FLAGS)\r\n")
@example(b"a UID FETCH 1 (BODY[1.2.3.HEADER.FIELDS (A {1}\r\nB)])\r\n")
@example(b"a LOGIN {3}\r\nabc {0}\r\n\r\n")
@example(b"a SEARCH CHARSET {5}\r\nUTF-8 ALL\r\n")
@example(b"a SETQUOTA \"\" (STORAGE {2}\r\n10)\r\n")
@example(b"a\xff NOOP\r\n")
@example(b"a UID SORT (REVERSE ARRIVAL) UTF-8 UID $ NOT $\r\n")
@example(b"a THREAD REFERENCES {5}\r\nUTF-8 ALL\r\n")
@example(b"a STORE 1 (UNCHANGEDSINCE 99999999999999999999) FLAGS ()\r\n")
def test_any_command_parses_or_raises_parse_error(data: bytes) -> None:
    check(data)


@given(st.lists(st.tuples(st.one_of(st.just("*"), st.integers(1, 2**32 - 1)),
                          st.one_of(st.none(), st.just("*"), st.integers(1, 2**32 - 1))),
                min_size=1, max_size=30))
def test_sequence_sets_round_trip(items) -> None:
    text = ",".join(f"{a}" if b is None else f"{a}:{b}" for a, b in items).encode()
    cmd = parse_command([b"t FETCH " + text + b" FLAGS"])
    seqset = cmd.args["set"]
    again = parse_command([b"t FETCH " + str(seqset).encode() + b" FLAGS"]).args["set"]
    assert again == seqset
    largest = 50
    expected = set()
    for a, b in items:
        lo = largest if a == "*" else a
        hi = lo if b is None else largest if b == "*" else b
        lo, hi = min(lo, hi), max(lo, hi)
        expected.update(n for n in range(1, largest + 1) if lo <= n <= hi)
    numbers = list(range(1, largest + 1))
    assert seqset.select(numbers) == sorted(expected)
