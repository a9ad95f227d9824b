"""RFC 4469 CATENATE: an APPENDed message made of TEXT literals and IMAP URLs
(RFC 5092) naming messages or parts of them in the user's own mailboxes.

Only the user's own store is reached: a URL is read as a mailbox of that
store, and one that names a user (imap://user@host/...) must name the
logged-in user. URLAUTH URLs are refused. Bounds: the number of parts is
capped by the parser (parser.MAX_CATENATE_PARTS), the result by the
APPEND size limit, checked as each part is added.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from dataclasses import dataclass

from pillarbox.endpoint.imap import mime, mutf7
from pillarbox.endpoint.imap.parser import ParseError, Section, section_spec
from pillarbox.store.mailbox_index import MailStore, TmpMessage

THREAD_AT = 256 * 1024  # parts read and parsed in a thread from this size on


class BadURL(Exception):
    """NO [BADURL url]: a URL that names nothing this user may read."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(why)
        self.url = url

    @property
    def text(self) -> str:
        """The URL as it may stand in [BADURL ...]: url-resp-text excludes CR,
        LF, "\\" and "]"."""
        return re.sub(r"[\r\n\\\]]", "", self.url)[:200]


class TooBig(Exception):
    """The catenated messages are larger than the APPEND limit, or their URLs
    would read more than READ_FACTOR times it."""


READ_FACTOR = 4  # message octets one APPEND's URLs may read, in APPEND limits


@dataclass
class Budget:
    """What the CATENATEs of one APPEND command may still make and read."""

    make: int
    read: int

    @classmethod
    def for_limit(cls, limit: int) -> Budget:
        return cls(limit, READ_FACTOR * limit)


@dataclass
class IMAPURL:
    mailbox: str
    uidvalidity: int | None
    uid: int
    section: Section | None
    partial: tuple[int, int | None] | None


def parse_url(url: str, user: str, selected: str | None) -> IMAPURL:
    """An imapurl or a URL relative to the selected mailbox, as RFC 4469 allows."""
    rest = url
    if rest[:7].lower() == "imap://":
        authority, slash, path = rest[7:].partition("/")
        if not slash:
            raise BadURL(url, "no mailbox in the URL")
        userinfo, at, _host = authority.rpartition("@")
        if at:
            name = urllib.parse.unquote(userinfo.split(";", 1)[0])
            if name.lower() != user.lower():
                raise BadURL(url, "the URL names another user")
        rest = path
    elif rest.startswith("/"):
        rest = rest[1:]
    elif not rest.startswith(";") or selected is None:
        raise BadURL(url, "not an IMAP URL of this server")
    segments = rest.split("/")
    if rest.startswith(";"):  # relative: ;UID=n/... in the selected mailbox
        mailbox, uidvalidity = selected, None
    else:
        head, *params = segments.pop(0).split(";")
        mailbox = urllib.parse.unquote(head, errors="strict") if head else ""
        uidvalidity = None
        for p in params:
            key, _, value = p.partition("=")
            if key.upper() != "UIDVALIDITY" or not value.isdigit():
                raise BadURL(url, f"unexpected {key[:20]!r} after the mailbox")
            uidvalidity = int(value)
    assert mailbox is not None
    if not mailbox:
        raise BadURL(url, "no mailbox in the URL")
    if mailbox.upper() == "INBOX":
        mailbox = "INBOX"
    if not mailbox.isascii():  # RFC 5092 3.4: UTF-8 there; the store's is modified UTF-7
        mailbox = mutf7.encode(mailbox)
    found: dict[str, str] = {}
    for seg in segments:
        key, eq, value = seg.lstrip(";").partition("=")
        key = key.upper()
        if not seg.startswith(";") or not eq or key in found or \
                key not in ("UID", "SECTION", "PARTIAL"):
            raise BadURL(url, f"unexpected {seg[:30]!r} (URLAUTH is not supported)")
        found[key] = urllib.parse.unquote(value)
    if not found.get("UID", "").isdigit() or not 0 < int(found["UID"]) < 2**32:
        raise BadURL(url, "the URL names no message (;UID=n)")
    section = None
    if "SECTION" in found:
        try:
            section = section_spec(found["SECTION"])
        except ParseError as e:
            raise BadURL(url, f"bad section: {e}") from None
    partial = None
    if "PARTIAL" in found:
        m = re.fullmatch(r"(\d{1,10})(?:\.(\d{1,10}))?", found["PARTIAL"])
        if m is None or m.group(2) == "0":
            raise BadURL(url, "bad ;PARTIAL=offset.length")
        partial = (int(m.group(1)), int(m.group(2)) if m.group(2) else None)
    return IMAPURL(mailbox, uidvalidity, int(found["UID"]), section, partial)


async def fetch(store: MailStore, url: str, user: str, selected: str | None,
                budget: Budget) -> bytes:
    """The octets a URL names: a message, or a section of it, or part of either."""
    u = parse_url(url, user, selected)
    if not store.exists(u.mailbox):
        raise BadURL(url, "no such mailbox")
    store.sync(u.mailbox)
    box = store.box(u.mailbox)
    if u.uidvalidity is not None and u.uidvalidity != box.uidvalidity:
        raise BadURL(url, "UIDVALIDITY does not match")
    msg = box.msgs.get(u.uid)
    if msg is None:
        raise BadURL(url, "no such message")
    if msg.size > budget.read:  # a thousand URLs to a part of one large message
        raise TooBig()
    budget.read -= msg.size
    path = store.file(u.mailbox, msg)
    big = msg.size > THREAD_AT
    try:
        raw = await asyncio.to_thread(path.read_bytes) if big else path.read_bytes()
    except FileNotFoundError:
        raise BadURL(url, "the message was expunged") from None
    data = raw
    if u.section is not None:
        sec = u.section
        data = (await asyncio.to_thread(_section, raw, sec) if big else _section(raw, sec))
    if u.partial is not None:
        off, length = u.partial
        data = data[off:off + length] if length is not None else data[off:]
    if not data:
        raise BadURL(url, "the URL names no data")
    return data


def _section(raw: bytes, sec: Section) -> bytes:
    return mime.section(mime.Part(raw), sec)


async def assemble(store: MailStore, parts: list[tuple[str, object]], user: str,
                   selected: str | None, budget: Budget) -> bytes:
    """The message CATENATE parts make, within the command's budget (else TooBig)."""
    out = bytearray()
    for kind, value in parts:
        if kind == "URL":
            assert isinstance(value, str)
            data = await fetch(store, value, user, selected, budget)
        elif isinstance(value, TmpMessage):  # a large TEXT literal, streamed to disk
            if value.failed:
                raise OSError(28, "No space left on device")
            data = await asyncio.to_thread(value.path.read_bytes)
        else:
            assert isinstance(value, bytes | bytearray)
            data = bytes(value)
        if len(data) > budget.make:
            raise TooBig()
        budget.make -= len(data)
        out += data
    return bytes(out)
