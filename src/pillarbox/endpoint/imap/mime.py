"""MIME structure on the raw bytes of a message, for FETCH and SEARCH.

IMAP sizes, line counts and sections are about the octets as stored, which
the `email` package does not keep; so the tree is cut here, on bytes, and the
`email` package is used only to read header fields and parameters.
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.policy
import email.utils
import re

from pillarbox.endpoint.imap import addrlist
from pillarbox.endpoint.imap.parser import Section

_FIELD_RE = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:", re.M)
MAX_DEPTH = 20  # nesting of multiparts and messages followed; deeper ones are leaves
# Parts one message is cut into: each costs a parse, and a 25 MB message could
# otherwise hold millions and keep FETCH BODYSTRUCTURE busy for a minute.
MAX_PARTS = 10_000


def split(raw: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body)."""
    if raw.startswith(b"\r\n"):
        return raw[:2], raw[2:]
    if raw.startswith(b"\n"):
        return raw[:1], raw[1:]
    i = raw.find(b"\r\n\r\n")
    # A bare-LF blank line wins only if it comes first: look for one before i only, not
    # through the whole body (a CRLF message has none, and a 1 MB body took a ms to scan).
    j = raw.find(b"\n\n", 0, i + 1 if i >= 0 else len(raw))
    if i >= 0 and (j < 0 or i < j):
        return raw[: i + 4], raw[i + 4:]
    if j >= 0:
        return raw[: j + 2], raw[j + 2:]
    return raw, b""


def fields(header: bytes) -> list[tuple[str, bytes]]:
    """[(lower-case name, raw field block incl. folding and line end)]."""
    out: list[tuple[str, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and out:
            name, block = out[-1]
            out[-1] = (name, block + line)
            continue
        name, sep, _ = line.partition(b":")
        if not sep:
            continue
        out.append((name.strip().decode("ascii", "replace").lower(), line))
    return out


def field_value(block: bytes) -> bytes:
    """The unfolded value of a raw field block."""
    value = block.partition(b":")[2]
    return re.sub(rb"\r?\n([ \t])", rb"\1", value).strip(b"\r\n").strip()


class _Count:
    """Parts a message may still be cut into (shared by the whole tree)."""

    def __init__(self) -> None:
        self.left = MAX_PARTS


class Part:
    def __init__(self, raw: bytes, default_type: str = "text/plain", depth: int = 0,
                 count: _Count | None = None) -> None:
        count = count if count is not None else _Count()
        self.raw = raw
        self.header, self.body = split(raw)
        self.fields = fields(self.header)
        msg = email.message.Message()
        for name in ("content-type", "content-transfer-encoding", "content-id",
                     "content-description", "content-disposition", "content-language",
                     "content-location", "content-md5"):
            v = self.get(name)
            if v is not None:
                msg[name] = v.decode("utf-8", "replace")
        msg.set_default_type(default_type)
        self._msg = msg
        ctype = msg.get_content_type()
        if "content-type" in msg and "/" not in (msg.get("content-type") or "").split(";")[0]:
            ctype = default_type
        self.maintype, _, self.subtype = ctype.partition("/")
        self.children: list[Part] = []
        self.message: Part | None = None
        if self.maintype == "multipart":
            boundary = msg.get_param("boundary") if depth < MAX_DEPTH else None
            if isinstance(boundary, tuple):
                boundary = email.utils.collapse_rfc2231_value(boundary)
            if boundary and count.left > 0:
                sub_default = "message/rfc822" if self.subtype == "digest" else "text/plain"
                pieces = split_multipart(self.body, boundary.encode("utf-8", "replace"),
                                         count.left)
                count.left -= len(pieces)
                self.children = [Part(p, sub_default, depth + 1, count) for p in pieces]
            if not self.children:  # no parts (or too deep): one empty text part, as
                self.children = [Part(b"\r\n", "text/plain", MAX_DEPTH)]  # BODY needs 1+
        elif (self.maintype, self.subtype) == ("message", "rfc822"):  # too deep: empty
            self.message = Part(self.body if depth < MAX_DEPTH else b"\r\n", "text/plain",
                                depth + 1, count)

    def get(self, name: str) -> bytes | None:
        name = name.lower()
        for n, block in self.fields:
            if n == name:
                return field_value(block)
        return None

    def get_all(self, name: str) -> list[bytes]:
        name = name.lower()
        return [field_value(b) for n, b in self.fields if n == name]

    @property
    def multipart(self) -> bool:
        return self.maintype == "multipart"

    def params(self) -> list[tuple[str, str]]:
        if "content-type" not in self._msg:
            return [("charset", "us-ascii")] if self.maintype == "text" else []
        out = []
        for k, v in (self._msg.get_params() or [])[1:]:
            if isinstance(v, tuple):
                v = email.utils.collapse_rfc2231_value(v)
            out.append((k, v))
        if self.maintype == "text" and not any(k.lower() == "charset" for k, _ in out):
            out.insert(0, ("charset", "us-ascii"))  # RFC 2045 5.2 default
        return out

    def header_fields(self, names: list[str], negate: bool) -> bytes:
        wanted = {n.lower() for n in names}
        blocks = [b for n, b in self.fields if (n in wanted) != negate]
        return b"".join(blocks) + b"\r\n"


def split_multipart(body: bytes, boundary: bytes, limit: int = MAX_PARTS) -> list[bytes]:
    """The parts between the delimiters; at most `limit`, the last one then running
    to the end of the body."""
    delim = b"--" + boundary
    parts: list[bytes] = []
    if body.startswith(delim):
        idx = 0
    else:
        idx = body.find(b"\n" + delim)
        if idx < 0:
            return []
        idx += 1
    while True:
        after = idx + len(delim)
        if body[after:after + 2] == b"--":
            break
        eol = body.find(b"\n", after)
        if eol < 0:
            break
        start = eol + 1
        nxt = body.find(b"\n" + delim, start - 1) if start > 0 else -1
        if nxt < 0 or len(parts) + 1 >= limit:
            parts.append(body[start:])
            break
        end = nxt - 1 if nxt > 0 and body[nxt - 1:nxt] == b"\r" else nxt
        parts.append(body[start:max(start, end)])
        idx = nxt + 1
    return parts


# --------------------------------------------------------------------------
# sections


def section(root: Part, sec: Section) -> bytes:
    """The octets of BODY[sec]; b"" for a section that does not exist."""
    cur = root
    for i, n in enumerate(sec.part):
        if i > 0 and cur.message is not None:
            cur = cur.message
        if cur.multipart:
            if n > len(cur.children):
                return b""
            cur = cur.children[n - 1]
        elif n != 1:
            return b""
    if not sec.part:
        if not sec.text:
            return root.raw
        target = root
    else:
        if not sec.text:
            return cur.body
        if sec.text == "MIME":
            return cur.header
        if cur.message is None:
            return b""
        target = cur.message
    if sec.text == "HEADER":
        return target.header
    if sec.text == "TEXT":
        return target.body
    return target.header_fields(sec.fields, negate=sec.text == "HEADER.FIELDS.NOT")


# --------------------------------------------------------------------------
# response syntax


def quote(s: bytes | str | None) -> bytes:
    """An IMAP string: NIL, "quoted" or a {n} literal."""
    if s is None:
        return b"NIL"
    if isinstance(s, str):
        s = s.encode("utf-8", "surrogateescape")
    # No IMAP4rev1 string may hold NUL (a literal is CHAR8, %x01-ff): header text loses it.
    s = s.replace(b"\x00", b"")
    if len(s) < 1000 and not re.search(rb"[\x00\r\n\x80-\xff]", s):
        return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(s) + s


def _nstring(v: bytes | None) -> bytes:
    return quote(v) if v else b"NIL"


def _raw(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


# Each address field is read up to here for ENVELOPE and SEARCH (about 2,000
# addresses): parsing is linear, and a sender could fill a 25 MB message with
# one To field that every FETCH ENVELOPE would parse on the event loop.
MAX_ADDRESS_FIELD = 64 * 1024


def addresses(values: list[bytes]) -> list[addrlist.Address]:
    """The address structures of one or more address-list fields (their octets
    that are not UTF-8 kept as surrogates), each cut at its last comma before
    MAX_ADDRESS_FIELD."""
    out = []
    for v in values:
        if len(v) > MAX_ADDRESS_FIELD:
            cut = v.rfind(b",", 0, MAX_ADDRESS_FIELD)
            v = v[:cut if cut > 0 else MAX_ADDRESS_FIELD]
        out += addrlist.parse(v.decode("utf-8", "surrogateescape"))
    return out


def _address_list(addrs: list[addrlist.Address]) -> bytes:
    if not addrs:
        return b"NIL"
    # Header octets that are not UTF-8 came in as surrogates: they go back out as
    # the same octets (in a literal), never as an encoding error.
    return b"(" + b"".join(
        b"(" + b" ".join(quote(_raw(v)) if v is not None else b"NIL"
                         for v in (a.name, a.adl, a.mailbox, a.host)) + b")"
        for a in addrs) + b")"


def envelope(p: Part) -> bytes:
    frm = addresses(p.get_all("from"))
    # RFC 3501 7.4.2: a Sender or Reply-To that is absent or empty is From.
    sender = addresses(p.get_all("sender")) or frm
    reply_to = addresses(p.get_all("reply-to")) or frm
    items = [
        _nstring(p.get("date")),
        _nstring(p.get("subject")),
        _address_list(frm),
        _address_list(sender),
        _address_list(reply_to),
        _address_list(addresses(p.get_all("to"))),
        _address_list(addresses(p.get_all("cc"))),
        _address_list(addresses(p.get_all("bcc"))),
        _nstring(p.get("in-reply-to")),
        _nstring(p.get("message-id")),
    ]
    return b"(" + b" ".join(items) + b")"


def _params(pairs: list[tuple[str, str]]) -> bytes:
    if not pairs:
        return b"NIL"
    return b"(" + b" ".join(quote(k.upper()) + b" " + quote(v) for k, v in pairs) + b")"


def _disposition(p: Part) -> bytes:
    v = p.get("content-disposition")
    if v is None:
        return b"NIL"
    m = email.message.Message()
    m["content-disposition"] = v.decode("utf-8", "replace")
    params = m.get_params(header="content-disposition") or []
    if not params:
        return b"NIL"
    kind = params[0][0]
    rest = []
    for k, val in params[1:]:
        if isinstance(val, tuple):
            val = email.utils.collapse_rfc2231_value(val)
        rest.append((k, val))
    return b"(" + quote(kind.upper()) + b" " + _params(rest) + b")"


def _lines(body: bytes) -> int:
    n = body.count(b"\n")
    return n + 1 if body and not body.endswith(b"\n") else n


def bodystructure(p: Part, extended: bool = True) -> bytes:
    if p.multipart:
        out = b"(" + b"".join(bodystructure(c, extended) for c in p.children)
        out += b" " + quote(p.subtype.upper())
        if extended:
            params = [(k, v) for k, v in p.params()]
            out += b" " + _params(params) + b" " + _disposition(p) + b" " + \
                _nstring(p.get("content-language")) + b" " + _nstring(p.get("content-location"))
        return out + b")"
    enc = p.get("content-transfer-encoding")
    fields_ = [
        quote(p.maintype.upper()), quote(p.subtype.upper()), _params(p.params()),
        _nstring(p.get("content-id")), _nstring(p.get("content-description")),
        quote(enc.decode("ascii", "replace").upper() if enc else "7BIT"),
        str(len(p.body)).encode(),
    ]
    if p.message is not None:
        fields_ += [envelope(p.message), bodystructure(p.message, extended),
                    str(_lines(p.body)).encode()]
    elif p.maintype == "text":
        fields_.append(str(_lines(p.body)).encode())
    if extended:
        fields_ += [_nstring(p.get("content-md5")), _disposition(p),
                    _nstring(p.get("content-language")), _nstring(p.get("content-location"))]
    return b"(" + b" ".join(fields_) + b")"


# --------------------------------------------------------------------------
# search helpers


def decoded_words(text: str) -> str:
    """Text with its RFC 2047 encoded words decoded (left as is when broken)."""
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text


def decoded_header(p: Part, name: str) -> str:
    return "\n".join(decoded_words(v.decode("utf-8", "replace")) for v in p.get_all(name))


def body_text(raw: bytes) -> str:
    """The decoded text of the message's text parts, for BODY/TEXT search."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_maintype() not in ("text", "message"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            out.append(payload.decode(charset, "replace"))
        except LookupError:
            out.append(payload.decode("utf-8", "replace"))
    return "\n".join(out)
