"""Fuzz target: the MIME tree, ENVELOPE and BODYSTRUCTURE of any message bytes.

Property: whatever bytes a message holds (8-bit and NUL in header fields,
broken encoded words and RFC 2231 parameters, deep multipart nesting, huge or
missing boundaries, bare CR/LF), mime.Part parses it, ENVELOPE / BODY /
BODYSTRUCTURE come out in valid RFC 3501 syntax (checked by imap_syntax and
by imapclient's response parser), and every section and search helper answers
without raising.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from imapclient.response_parser import parse_fetch_response

from pillarbox.endpoint.imap import mime
from pillarbox.endpoint.imap.parser import Section

from .imap_syntax import check_body, check_envelope, imaplib_chunks

HEADER_NAMES = [
    b"From", b"To", b"Cc", b"Bcc", b"Sender", b"Reply-To", b"Subject", b"Date", b"Message-ID",
    b"In-Reply-To", b"Content-Type", b"Content-Transfer-Encoding", b"Content-Disposition",
    b"Content-ID", b"Content-Description", b"Content-Language", b"Content-Location",
    b"Content-MD5", b"MIME-Version", b"X-Whatever", b"from", b"CONTENT-TYPE",
]

# Pieces that header values are made of: address syntax, encoded words good and
# broken, RFC 2231 parameters, and the octets that broke things before.
PIECES = [
    b"<", b">", b"@", b",", b";", b":", b"\"", b"\\", b"(", b")", b"[", b"]", b" ", b"\t", b".",
    b"=", b"*", b"'", b"%", b"?", b"alice", b"example.org", b"Bob Example",
    b"=?utf-8?q?Bj=C3=B6rn?=", b"=?utf-8?b?w7w=?=", b"=?utf-8?b?!!!?=", b"=?bogus?x?zz?=",
    b"=?iso-8859-1?q?caf=E9?=", b"=?utf-8?q?", b"?=", b"=?", b"undisclosed-recipients:;",
    b"text/plain", b"multipart/mixed", b"multipart/digest", b"message/rfc822",
    b"charset=utf-8", b"charset*=x''%ZZ", b"name*0*=utf-8''%E2", b"name*1=\"\xe9\"",
    b"filename=\"a.txt\"", b"attachment", b"inline", b"base64", b"quoted-printable", b"8bit",
    b"\x00", b"\xff", b"\xfe", b"\xe4", b"\xc3\xbc", b"\x80", b"\r", b"\n", b"\r\n ",
    b"\x01", b"\x7f", b"{5}", b"NIL", b"%", b"\xef\xbf\xbd",
]

value = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=8)), max_size=12).map(
    b"".join)
field = st.tuples(st.one_of(st.sampled_from(HEADER_NAMES), st.binary(min_size=1, max_size=6)),
                  st.sampled_from([b":", b": ", b" : ", b":\t"]), value).map(b"".join)
eol = st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r"])


@st.composite
def header(draw, extra: bytes = b"") -> bytes:
    fields = draw(st.lists(field, max_size=8))
    nl = draw(eol)
    lines = [f for f in fields]
    if extra:
        lines.insert(draw(st.integers(0, len(lines))), extra)
    return b"".join(f + nl for f in lines) + draw(st.sampled_from([b"\r\n", b"\n", b""]))


leaf = st.builds(lambda h, b: h + b, header(), st.binary(max_size=200))


@st.composite
def multipart(draw, children) -> bytes:
    parts = draw(st.lists(children, max_size=4))
    boundary = draw(st.one_of(
        st.binary(min_size=1, max_size=12),
        st.sampled_from([b"b", b"=_x", b"\xff", b"\"", b" "]),
        st.integers(70, 5000).map(lambda n: b"B" * n),  # a huge one
    ))
    quoted = draw(st.booleans())
    b_param = b'"' + boundary + b'"' if quoted else boundary
    subtype = draw(st.sampled_from([b"mixed", b"digest", b"alternative", b"", b"x\xff"]))
    h = draw(header(extra=b"Content-Type: multipart/" + subtype + b"; boundary=" + b_param))
    nl = draw(eol)
    body = draw(st.binary(max_size=20))  # preamble
    for p in parts:
        body += nl + b"--" + boundary + draw(st.sampled_from([nl, b" \t" + nl, b""])) + p
    if draw(st.booleans()):
        body += nl + b"--" + boundary + b"--" + nl
    return h + body + draw(st.binary(max_size=20))


@st.composite
def rfc822(draw, children) -> bytes:
    return draw(header(extra=b"Content-Type: message/rfc822")) + draw(children)


message = st.one_of(
    st.binary(max_size=500),
    st.recursive(leaf, lambda c: st.one_of(multipart(c), rfc822(c)), max_leaves=12),
)

REGRESSIONS = [
    # issue 9: an 8-bit octet in the domain of From crashed every ENVELOPE
    b"From: Bob <bob@ex\xe4mple.org>\r\nTo: a@b\x00c\r\n\r\nbody\r\n",
]


def _deep(n: int) -> bytes:
    """n nested multiparts (deeper than the parser follows)."""
    out = b"leaf\r\n"
    for i in range(n):
        out = (b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
               + out + b"\r\n--b%d--\r\n" % i)
    return out


def _check_fetch_line(env: bytes, bs: bytes, body: bytes) -> None:
    """The three as one FETCH response, through imapclient's parser."""
    line = b"1 (ENVELOPE " + env + b" BODYSTRUCTURE " + bs + b" BODY " + body + b")"
    parsed = parse_fetch_response(imaplib_chunks(line), uid_is_key=False)
    assert set(parsed[1]) >= {b"ENVELOPE", b"BODYSTRUCTURE", b"BODY"}


def _paths(p: mime.Part, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [prefix] if prefix else []
    if p.multipart:
        for i, c in enumerate(p.children, 1):
            out += _paths(c, prefix + (i,))
    elif p.message is not None:
        out += _paths(p.message, prefix + (1,)) if p.message.multipart else []
    return out


@given(message)
@example(REGRESSIONS[0])
@example(_deep(40))
@example(b"Content-Type: multipart/mixed; boundary=" + b"x" * 100_000 + b"\r\n\r\n--"
         + b"x" * 100_000 + b"\r\n\r\n")
def test_any_message_gives_valid_envelope_and_bodystructure(raw: bytes) -> None:
    p = mime.Part(raw)
    env = mime.envelope(p)
    bs = mime.bodystructure(p)
    body = mime.bodystructure(p, extended=False)
    check_envelope(env)
    check_body(bs, extended=True)
    check_body(body, extended=False)
    _check_fetch_line(env, bs, body)
    # Every section of every part, and the helpers SEARCH uses.
    for path in [(), *_paths(p)]:
        for text in ("", "HEADER", "TEXT", "MIME", "HEADER.FIELDS"):
            if text == "MIME" and not path:
                continue
            sec = Section(path, text, ["FROM", "SUBJECT"] if text == "HEADER.FIELDS" else [])
            assert isinstance(mime.section(p, sec), bytes)
    for name in ("from", "to", "subject", "x-whatever"):
        assert isinstance(mime.decoded_header(p, name), str)
    assert isinstance(mime.body_text(raw), str)
