"""METADATA entries (RFC 5464) of one user, in that user's mailbox index.

An entry belongs to the server (the user's own server-wide entries, key '')
or to a mailbox, by its MAILBOXID: RENAME keeps a mailbox's entries, DELETE
drops them (`MailStore.delete`), a new mailbox of the same name starts empty.
Names are kept in lower case (entry names are case-insensitive); values are
octets. /private and /shared are both stored per user: no one else reads
this user's mailboxes, so /shared is shared with no one.

Entries are meant to last (the chatmail push tokens live under /private/):
a change is committed with SQLite's synchronous=FULL, not the index's
NORMAL, so an OK survives a power cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from pillarbox.store.mailbox_index import MailboxError, MailStore

SERVER = ""  # the "mailbox" of server entries
MAX_ENTRY_NAME = 1024  # octets
# Entry names: "/private" or "/shared", then components of printable ASCII other
# than "/", "*" and "%" (RFC 5464 3.2: no wildcards, no empty component).
_COMPONENT = r"/[\x21-\x24\x26-\x29\x2b-\x2e\x30-\x7e]+"
ENTRY_RE = re.compile(rf"/(?:private|shared)(?:{_COMPONENT})*\Z", re.I)


class MetadataError(Exception):
    """A SETMETADATA that cannot be done; `code` is the METADATA response code."""

    def __init__(self, text: str, code: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class Limits:
    max_size: int  # octets of one value
    max_entries: int  # entries of the user, server and mailboxes together


def valid_entry(name: str) -> bool:
    return len(name) <= MAX_ENTRY_NAME and ENTRY_RE.match(name) is not None


class Metadata:
    """The METADATA entries in a MailStore's index."""

    def __init__(self, store: MailStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits

    def _owner(self, mailbox: str) -> str:
        """The key of a mailbox's entries ('' for the server); NO if it does not exist."""
        if mailbox == SERVER:
            return SERVER
        box = self.store.boxes.get(mailbox)
        if box is None:
            raise MailboxError(f"no mailbox named {mailbox[:100]!r}", "NONEXISTENT")
        return box.mailboxid

    def get(self, mailbox: str, entries: list[str], depth: int | None
            ) -> Iterator[tuple[str, bytes | None]]:
        """(entry, value) for each asked entry (None if it has no value), then its
        descendants to `depth` levels (None: all of them), in name order."""
        owner = self._owner(mailbox)
        db = self.store.db
        seen: set[str] = set()
        for entry in entries:
            name = entry.lower()
            if name in seen:
                continue
            seen.add(name)
            row = db.execute("SELECT value FROM metadata WHERE mailboxid = ? AND entry = ?",
                             (owner, name)).fetchone()
            if depth == 0:
                yield name, row[0] if row else None
                continue
            if row is not None:
                yield name, row[0]
            prefix = name + "/"
            # Range scan on the primary key: names from "prefix" up to "prefix" + max.
            for child, value in db.execute(
                    "SELECT entry, value FROM metadata WHERE mailboxid = ? AND entry > ? "
                    "AND entry < ? ORDER BY entry", (owner, prefix, prefix + "\U0010ffff")):
                if child in seen:
                    continue
                if depth is not None and child.count("/") - name.count("/") > depth:
                    continue
                seen.add(child)
                yield child, value

    def set(self, mailbox: str, changes: list[tuple[str, bytes | None]]) -> None:
        """Set (or, for None, remove) entries, all or none of them."""
        owner = self._owner(mailbox)
        for name, value in changes:
            if value is not None and len(value) > self.limits.max_size:
                raise MetadataError(f"{name[:100]}: the value is too large",
                                    f"MAXSIZE {self.limits.max_size}")
        db = self.store.db
        sqlite = not self.store.shared  # PostgreSQL commits durably anyway
        if sqlite:
            db.execute("PRAGMA synchronous=FULL")
        try:
            with self.store._transaction():
                before = db.execute("SELECT count(*) FROM metadata").fetchone()[0]
                for name, value in changes:
                    if value is None:
                        db.execute("DELETE FROM metadata WHERE mailboxid = ? AND entry = ?",
                                   (owner, name.lower()))
                    else:
                        db.execute("DELETE FROM metadata WHERE mailboxid = ? AND entry = ?",
                                   (owner, name.lower()))
                        db.execute("INSERT INTO metadata (mailboxid, entry, value) "
                                   "VALUES (?, ?, ?)", (owner, name.lower(), value))
                count = db.execute("SELECT count(*) FROM metadata").fetchone()[0]
                if count > max(before, self.limits.max_entries):
                    # Rolled back by the transaction: nothing of this command stays.
                    raise MetadataError(
                        f"at most {self.limits.max_entries} entries per user", "TOOMANY")
        finally:
            if sqlite:
                db.execute("PRAGMA synchronous=NORMAL")
