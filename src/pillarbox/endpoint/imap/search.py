"""SEARCH: evaluates a parsed search key against the messages of a mailbox.

Keys on flags, UIDs, sizes and internal dates need only the index; keys on
headers, body text and sent dates read the message file (in a thread, with one
parse per message however many keys need it).
"""

from __future__ import annotations

import datetime
import email.utils
from pathlib import Path

from pillarbox.endpoint.imap import addrlist, mime
from pillarbox.store.mailbox_index import Message


class Searcher:
    """Evaluates a parsed SEARCH key against messages (in a thread when files are read)."""

    _FILE_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO", "HEADER",
                  "SENTBEFORE", "SENTON", "SENTSINCE"}

    def __init__(self, keys: tuple, folder: Path, nseq: int, last_uid: int,
                 recent: set[int]) -> None:
        self.folder = folder
        self.nseq = nseq
        self.last_uid = last_uid
        self.recent = recent
        self.needs_file = uses(keys, self._FILE_KEYS)
        self.keys = self._resolve(keys)

    def _resolve(self, key: tuple) -> tuple:
        """The key with its sequence sets resolved once, not once per message."""
        k = key[0]
        if k == "SEQ":
            return (k, key[1].merged(self.nseq))
        if k == "UID":
            return (k, key[1].merged(self.last_uid))
        if k == "AND":
            return (k, [self._resolve(x) for x in key[1]])
        if k == "NOT":
            return (k, self._resolve(key[1]))
        if k == "OR":
            return (k, self._resolve(key[1]), self._resolve(key[2]))
        return key

    def run(self, cands: list[tuple[int, int, Message]]) -> list[tuple[int, int]]:
        out = []
        for seq, uid, msg in cands:
            self._cache: dict = {}
            try:
                if self._match(self.keys, seq, uid, msg):
                    out.append((seq, uid))
            except FileNotFoundError:
                continue
        return out

    def _part(self, msg: Message) -> mime.Part:
        p = self._cache.get("part")
        if p is None:
            p = self._cache["part"] = mime.Part((self.folder / msg.fname).read_bytes())
        return p

    def _body(self, msg: Message) -> str:
        b = self._cache.get("body")
        if b is None:
            b = self._cache["body"] = mime.body_text(self._part(msg).raw).casefold()
        return b

    def _addresses(self, msg: Message, name: str) -> str:
        """An address field as the user reads it, for FROM/TO/CC/BCC: each address
        as `Display Name <local@domain>` (names decoded, comments and the spaces
        between an address's parts gone), group names too; the decoded text when
        nothing in it reads as an address."""
        key = "addr-" + name
        text = self._cache.get(key)
        if text is None:
            part = self._part(msg)
            lines = []
            for a in mime.addresses(part.get_all(name)):
                if a.host is None:
                    lines.append(mime.decoded_words(a.mailbox) if a.mailbox else "")
                    continue
                addr = f"{a.mailbox}@{a.host}" if a.host != addrlist.MISSING_HOST \
                    else a.mailbox or ""
                lines.append(f"{mime.decoded_words(a.name)} <{addr}>" if a.name
                             else f"<{addr}>")
            text = "\n".join(lines) if lines else mime.decoded_header(part, name)
            text = self._cache[key] = text.encode("utf-8", "replace").decode().casefold()
        return text

    def _sent(self, msg: Message) -> datetime.date | None:
        v = self._part(msg).get("date")
        if not v:
            return None
        try:
            return email.utils.parsedate_to_datetime(v.decode("ascii", "replace")).date()
        except (TypeError, ValueError, IndexError):
            return None

    def _match(self, key: tuple, seq: int, uid: int, msg: Message) -> bool:
        k = key[0]
        f = msg.flags
        if k == "AND":
            return all(self._match(x, seq, uid, msg) for x in key[1])
        if k == "ALL":
            return True
        if k == "NOT":
            return not self._match(key[1], seq, uid, msg)
        if k == "OR":
            return self._match(key[1], seq, uid, msg) or self._match(key[2], seq, uid, msg)
        if k == "SEQ":
            return seq in key[1]
        if k == "UID":
            return uid in key[1]
        simple = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
                  "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}
        if k in simple:
            return simple[k] in f
        if k.startswith("UN") and k[2:] in simple:
            return simple[k[2:]] not in f
        if k == "RECENT":
            return uid in self.recent
        if k == "OLD":
            return uid not in self.recent
        if k == "NEW":
            return uid in self.recent and "\\Seen" not in f
        if k == "KEYWORD":
            return key[1] in f
        if k == "UNKEYWORD":
            return key[1] not in f
        if k == "LARGER":
            return msg.size > key[1]
        if k == "SMALLER":
            return msg.size < key[1]
        if k == "MODSEQ":
            return msg.modseq >= key[1]
        if k in ("BEFORE", "ON", "SINCE"):
            d = datetime.datetime.fromtimestamp(msg.internaldate, datetime.UTC).date()
            return cmp_date(k, d, key[1])
        if k in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):  # RFC 8514
            d = datetime.datetime.fromtimestamp(msg.savedate, datetime.UTC).date()
            return cmp_date(k[5:], d, key[1])
        if k == "SAVEDATESUPPORTED":  # every mailbox keeps save dates
            return True
        if k in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            d = self._sent(msg)
            return d is not None and cmp_date(k[4:], d, key[1])
        if k in ("BCC", "CC", "FROM", "TO"):
            return key[1].casefold() in self._addresses(msg, k)
        if k == "SUBJECT":
            return key[1].casefold() in mime.decoded_header(self._part(msg), k).casefold()
        if k == "HEADER":
            part = self._part(msg)
            if not key[2]:
                return part.get(key[1]) is not None
            return key[2].casefold() in mime.decoded_header(part, key[1]).casefold()
        if k == "BODY":
            return key[1].casefold() in self._body(msg)
        if k == "TEXT":
            needle = key[1].casefold()
            part = self._part(msg)
            return (needle in mime.decoded_words(part.header.decode("utf-8", "replace"))
                    .casefold() or needle in self._body(msg))
        return False


def uses(key: tuple, names: set[str] | frozenset[str]) -> bool:
    """Whether a parsed SEARCH key uses any of `names` anywhere."""
    k = key[0]
    if k in names:
        return True
    if k == "AND":
        return any(uses(x, names) for x in key[1])
    if k == "NOT":
        return uses(key[1], names)
    if k == "OR":
        return uses(key[1], names) or uses(key[2], names)
    return False


def cmp_date(op: str, d: datetime.date, ref: datetime.date) -> bool:
    if op == "BEFORE":
        return d < ref
    if op == "ON":
        return d == ref
    return d >= ref
