"""SORT (RFC 5256, with RFC 5957's DISPLAYFROM/DISPLAYTO): the order of
messages by their header data, and the base subject and sent date that
THREAD uses as well.

Pure functions over `Facts`, what SORT and THREAD need of one message, read
from its header only. Strings compare under i;ascii-casemap (RFC 4790: a-z
taken as A-Z, then octet order, which for `str` is code point order).
"""

from __future__ import annotations

import datetime
import email.utils
import re
from dataclasses import dataclass
from pathlib import Path

from pillarbox.endpoint.imap import addrlist, mime
from pillarbox.store.mailbox_index import Message

HEADER_READ = 64 * 1024  # octets read at a time looking for the end of the header
MAX_HEADER = 512 * 1024  # a header longer than this is cut: its fields after are not seen
_FIELDS = ("date", "subject", "from", "to", "cc", "message-id", "references", "in-reply-to")


@dataclass
class Facts:
    """One message as SORT and THREAD see it."""

    seq: int
    uid: int
    arrival: float  # the internal date
    size: int
    sent: float  # the Date field in UTC, the internal date when missing or broken
    subject: str  # decoded (RFC 2047), unfolded
    from_: list[addrlist.Address]
    to: list[addrlist.Address]
    cc: list[addrlist.Address]
    message_id: str
    references: str
    in_reply_to: str


def facts(seq: int, uid: int, arrival: float, size: int, header: bytes) -> Facts:
    """The Facts of a message from its header octets."""
    values: dict[str, list[bytes]] = {n: [] for n in _FIELDS}
    for name, block in mime.fields(header):
        if name in values:
            values[name].append(mime.field_value(block))

    def text(name: str) -> str:
        v = values[name]
        return v[0].decode("utf-8", "replace") if v else ""

    def addresses(name: str) -> list[addrlist.Address]:
        return [a for a in mime.addresses(values[name]) if not a.is_group_marker]

    return Facts(seq, uid, arrival, size, sent_date(text("date"), arrival),
                 mime.decoded_words(text("subject")), addresses("from"), addresses("to"),
                 addresses("cc"), text("message-id"), text("references"), text("in-reply-to"))


def read_header(path: Path) -> bytes:
    """The header of a message file (up to MAX_HEADER octets), not its body."""
    out = b""
    with path.open("rb") as f:
        while len(out) < MAX_HEADER:
            chunk = f.read(HEADER_READ)
            if not chunk:
                break
            start = max(0, len(out) - 3)
            out += chunk
            if out.startswith((b"\r\n", b"\n")) or b"\n\r\n" in out[start:] \
                    or b"\n\n" in out[start:]:
                break
    return mime.split(out)[0]


def read_facts(folder: Path, found: list[tuple[int, int, Message]],
               files: bool = True) -> list[Facts]:
    """The Facts of (sequence number, UID, indexed message) triples; with files False
    from the index alone (for ARRIVAL and SIZE). A file gone meanwhile is left out."""
    out = []
    for seq, uid, msg in found:
        try:
            header = read_header(folder / msg.fname) if files else b""
        except FileNotFoundError:
            continue
        out.append(facts(seq, uid, msg.internaldate, msg.size, header))
    return out


def sent_date(value: str, arrival: float) -> float:
    """RFC 5256 2.2: the Date field as a UTC time, else the internal date."""
    if not value.strip():
        return arrival
    try:
        d = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return arrival
    try:
        if d.tzinfo is None:  # -0000: a time in UTC of unknown local zone
            return d.replace(tzinfo=datetime.UTC).timestamp()
        return d.timestamp()
    except (OverflowError, ValueError, OSError):
        return arrival


_CASEMAP = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def casemap(s: str) -> str:
    """The i;ascii-casemap form of a string: ASCII letters in upper case only."""
    return s.translate(_CASEMAP)


# RFC 5256 2.1 (ABNF): subj-blob, subj-refwd, subj-leader, subj-trailer, subj-fwd.
_WSP_RUN = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])$", re.I)
_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:", re.I)
_BLOB_RE = re.compile(_BLOB)


def base_subject(subject: str) -> tuple[str, bool]:
    """(the base subject, whether the subject marks a reply or forward), RFC 5256 2.1.
    `subject` is decoded already (step 1's RFC 2047 part)."""
    s = _WSP_RUN.sub(" ", subject)  # step 1: tabs and continuations to one space
    refwd = False
    while True:
        while True:  # step 2: trailing "(fwd)" and spaces
            m = _TRAILER.search(s)
            if m is None:
                break
            refwd = refwd or m.group(0) not in (" ", "\t")
            s = s[:m.start()]
        while True:  # steps 3 to 5
            before = s
            while True:  # step 3: leading spaces and "re:", "[list] fwd:"
                if s[:1] in (" ", "\t"):
                    s = s[1:]
                    continue
                m = _REFWD.match(s)
                if m is None:
                    break
                refwd = True
                s = s[m.end():]
            m = _BLOB_RE.match(s)  # step 4: a leading "[blob]" if text is left after it
            if m is not None and s[m.end():].strip(" \t"):
                s = s[m.end():]
            if s == before:
                break
        # step 6: "[fwd: subject]" is the subject forwarded
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            refwd = True
            continue
        return s, refwd


def subject_key(subject: str) -> str:
    """The base subject as compared: under i;ascii-casemap."""
    return casemap(base_subject(subject)[0])


def _mailbox(addrs: list[addrlist.Address]) -> str:
    """RFC 5256: the addr-mailbox of the first address."""
    return casemap(addrs[0].mailbox or "") if addrs else ""


def _display(addrs: list[addrlist.Address]) -> str:
    """RFC 5957: the first address's display name (decoded), else its addr-spec."""
    if not addrs:
        return ""
    a = addrs[0]
    if a.name:
        name = mime.decoded_words(a.name).strip()
        if name:
            return casemap(name)
    spec = a.mailbox or ""
    if a.host and a.host != addrlist.MISSING_HOST:
        spec += "@" + a.host
    return casemap(spec)


_KEYS = {
    "ARRIVAL": lambda f: f.arrival,
    "CC": lambda f: _mailbox(f.cc),
    "DATE": lambda f: f.sent,
    "FROM": lambda f: _mailbox(f.from_),
    "SIZE": lambda f: f.size,
    "SUBJECT": lambda f: subject_key(f.subject),
    "TO": lambda f: _mailbox(f.to),
    "DISPLAYFROM": lambda f: _display(f.from_),
    "DISPLAYTO": lambda f: _display(f.to),
}


def sort(messages: list[Facts], criteria: list[tuple[str, bool]]) -> list[Facts]:
    """The messages in the order of `criteria` [(key, reverse)], ties in
    sequence number order (RFC 5256 3: REVERSE turns its own key only)."""
    out = sorted(messages, key=lambda f: f.seq)
    # A key named again decides nothing its first use left equal: dropped, so that
    # a line of thousands of keys costs no more than nine.
    firsts: dict[str, bool] = {}
    for key, reverse in criteria:
        firsts.setdefault(key, reverse)
    # Stable sorts from the last key to the first (a reversed sort stays stable).
    for key, reverse in reversed(firsts.items()):
        out.sort(key=_KEYS[key], reverse=reverse)
    return out
