"""The mailbox index: IMAP's view (UIDs, flags, dates) of a user's Maildir.

Bodies stay plain Maildir files (Dovecot, mutt and `mailbox.Maildir` read
them); this index adds what IMAP needs and Maildir lacks. One SQLite file
(WAL) per user, `<maildir>/pillarbox-index.sqlite`, holds per mailbox its
UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ, and per message its UID, file name,
flags, internal date, size, MODSEQ and (once fetched) its ENVELOPE and
BODYSTRUCTURE responses.

Delivery knows nothing of it: the MX only drops files into `new/`. When a
session looks at a mailbox (`sync`), files found in `new/` are moved to
`cur/` with a `:2,` info suffix and given the next UID, as Dovecot does;
files that vanished from `cur/` are expunged, and flag letters changed by
another program are taken over. Flags live in the file name too
(`:2,DFRST` = Draft, Flagged, Answered, Seen, Deleted); keywords only here.

Mailboxes: INBOX is the Maildir root; the others are Maildir++ folders,
`.Sent`, `.Lists.pillarbox` (hierarchy delimiter ".").

With `[storage] url` on PostgreSQL and `[storage] shared_dir`, several nodes
share the Maildirs and the index lives in PostgreSQL (pg_mailbox_index.py):
the same SQL through `self.db`, and every change first takes the mailbox's
row lock and catches up with what other nodes committed (`_locked`).

All methods run on the server's event loop thread: one process owns the
index (or, shared, its in-memory copy), and every change to it is made
between two awaits, so sessions of one user on one node never race. A store
keeps the index of each mailbox in memory; the SQLite file (or PostgreSQL) is
its durable copy. Listeners (the sessions that have a mailbox
selected) are told after every change, so they can send EXISTS, EXPUNGE and
FETCH to their clients.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import itertools
import logging
import os
import re
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pillarbox.store import backend, line_ends

if TYPE_CHECKING:
    from pillarbox.store.pg_mailbox_index import PgIndex

log = logging.getLogger("pillarbox.imap.index")
# target/mailbox.py's file names: TIME.MUSECPpidQcount.HOST,S=size
_OWN_DELIVERY = re.compile(r"\d+\.M\d+P\d+Q\d+\.[^,:/]+,S=(\d+)(?:[,:]|$)")

INDEX_NAME = "pillarbox-index.sqlite"
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
               "Archive": "\\Archive"}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_LETTER_OF = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
_FLAG_OF = {v: k for k, v in _LETTER_OF.items()}
MAX_MAILBOX_NAME = 255

MIGRATIONS = [
    """
    CREATE TABLE mailboxes (
        name          TEXT PRIMARY KEY,
        uidvalidity   INTEGER NOT NULL,
        uidnext       INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL DEFAULT 1,
        special       TEXT
    );
    CREATE TABLE messages (
        mailbox      TEXT NOT NULL,
        uid          INTEGER NOT NULL,
        base         TEXT NOT NULL,
        fname        TEXT NOT NULL,
        flags        TEXT NOT NULL DEFAULT '',
        internaldate REAL NOT NULL,
        size         INTEGER NOT NULL,
        modseq       INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (mailbox, uid)
    );
    CREATE UNIQUE INDEX messages_base ON messages (mailbox, base);
    CREATE TABLE subscriptions (name TEXT PRIMARY KEY);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # The FETCH ENVELOPE / BODYSTRUCTURE / BODY responses, filled on first
    # fetch: a Maildir file never changes, so neither do they.
    """
    ALTER TABLE messages ADD COLUMN envelope BLOB;
    ALTER TABLE messages ADD COLUMN bodystructure BLOB;
    ALTER TABLE messages ADD COLUMN body BLOB;
    """,
    # First-login set-up (INBOX, the special-use folders, their subscriptions)
    # is one transaction that ends by setting meta 'provisioned'; an index
    # made before that already has its folders.
    """
    INSERT OR IGNORE INTO meta (key, value)
        SELECT 'provisioned', 1 WHERE EXISTS (SELECT 1 FROM mailboxes);
    """,
    # \Recent (RFC 3501 2.3.2): the highest UID a session has been shown. Above
    # it a message is recent for the first session to select the mailbox (or to
    # be told of it), which moves the mark. Existing mail is not recent.
    """
    ALTER TABLE mailboxes ADD COLUMN recentuid INTEGER NOT NULL DEFAULT 0;
    UPDATE mailboxes SET recentuid = uidnext - 1;
    """,
    # QRESYNC (RFC 7162): the UIDs expunged, with the MODSEQ of their expunge,
    # so a client that reconnects learns exactly which of its messages went.
    # Kept up to EXPUNGED_KEPT per mailbox; `expungedfloor` is the MODSEQ up to
    # which expunges may be missing (pruned, or made before this table).
    """
    CREATE TABLE expunged (
        mailbox TEXT NOT NULL,
        uid     INTEGER NOT NULL,
        modseq  INTEGER NOT NULL,
        PRIMARY KEY (mailbox, uid)
    );
    CREATE INDEX expunged_modseq ON expunged (mailbox, modseq);
    ALTER TABLE mailboxes ADD COLUMN expungedfloor INTEGER NOT NULL DEFAULT 0;
    UPDATE mailboxes SET expungedfloor = highestmodseq;
    """,
    # OBJECTID (RFC 8474): a MAILBOXID per mailbox (kept by RENAME) and an EMAILID
    # per message (kept by COPY and MOVE); SAVEDATE (RFC 8514): when the message
    # came into its mailbox, for the mail already there its internal date (the
    # delivery time, or the date an APPEND gave). Columns added, rows kept.
    # METADATA (RFC 5464): entries per mailbox (by MAILBOXID, so RENAME keeps them)
    # and of the server (mailboxid '').
    """
    ALTER TABLE mailboxes ADD COLUMN mailboxid TEXT;
    UPDATE mailboxes SET mailboxid = 'F' || lower(hex(randomblob(12)));
    ALTER TABLE messages ADD COLUMN emailid TEXT;
    UPDATE messages SET emailid = 'M' || lower(hex(randomblob(12)));
    ALTER TABLE messages ADD COLUMN savedate REAL;
    UPDATE messages SET savedate = internaldate;
    CREATE TABLE metadata (
        mailboxid TEXT NOT NULL,
        entry     TEXT NOT NULL,
        value     BLOB NOT NULL,
        PRIMARY KEY (mailboxid, entry)
    );
    """,
]
# Expunged UIDs remembered per mailbox; past it the oldest quarter is pruned and
# a client resyncing from before then is told every UID it may know that is gone.
EXPUNGED_KEPT = 10_000
STRUCTURE_CHUNK = 500  # UIDs per query when reading cached structures
STRUCTURE_ORDER = ("ENVELOPE", "BODYSTRUCTURE", "BODY")  # as structures() returns them
STRUCTURES = frozenset(STRUCTURE_ORDER)

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def disk_full(e: BaseException) -> bool:
    """Is this the disk (or a disk quota) being full, from the OS or from SQLite?"""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, sqlite3.Error):
        return (getattr(e, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return False


class MailboxError(Exception):
    """A mailbox operation that cannot be done; the text is for the client (NO)."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code  # response code such as NONEXISTENT, ALREADYEXISTS


@dataclass
class Message:
    uid: int
    base: str
    fname: str
    flags: frozenset[str]
    internaldate: float
    size: int
    modseq: int
    emailid: str = ""  # RFC 8474 EMAILID: the same for a copy, kept by MOVE
    savedate: float = 0.0  # RFC 8514: when it came into this mailbox


@dataclass
class Box:
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special: str | None
    recent_uid: int = 0  # UIDs above it are \Recent for the next session to take them
    # Expunges up to this MODSEQ may be unrecorded (pruned, or older than the table).
    expunged_floor: int = 0
    msgs: dict[int, Message] = field(default_factory=dict)  # in UID order
    by_base: dict[str, int] = field(default_factory=dict)
    cur_mtime: int = -1
    loaded: bool = False
    # Keywords used in the mailbox since it was loaded: sessions announce new ones
    # (FLAGS, PERMANENTFLAGS) before a FETCH shows them.
    keywords: set[str] = field(default_factory=set)
    mailboxid: str = ""  # RFC 8474 MAILBOXID: kept by RENAME, new for a new mailbox


def split_name(fname: str) -> tuple[str, str]:
    """Maildir file name -> (base, info letters after ':2,')."""
    base, sep, info = fname.partition(":2,")
    return base, info if sep else ""


def _keywords(flags: Iterable[str]) -> Iterator[str]:
    return (f for f in flags if not f.startswith("\\"))


def flags_from_letters(info: str) -> set[str]:
    return {_FLAG_OF[c] for c in info if c in _FLAG_OF}


def letters_for(flags: Iterable[str], keep: str = "") -> str:
    """The info letters for `flags`, keeping letters we do not map (P, a-z)."""
    letters = {_LETTER_OF[f] for f in flags if f in _LETTER_OF}
    letters |= {c for c in keep if c not in _FLAG_OF}
    return "".join(sorted(letters))


def valid_name(name: str) -> str | None:
    """None if `name` can be a mailbox (folder) name, else why not."""
    if not name or len(name) > MAX_MAILBOX_NAME:
        return "mailbox names must be 1 to 255 characters long"
    if name.startswith(".") or name.endswith(".") or ".." in name:
        return "mailbox names must not start or end with \".\" nor hold empty levels"
    if "/" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "mailbox names must not hold \"/\" or control characters"
    if "*" in name or "%" in name:
        return "mailbox names must not hold wildcards"
    if not _modified_utf7(name):
        return ("mailbox names are ASCII, other characters in modified UTF-7 "
                "(RFC 3501 5.1.3; Entw&APw-rfe for Entwürfe)")
    return None


_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")


def _modified_utf7(name: str) -> bool:
    """Is `name` valid modified UTF-7? IMAP4rev1 clients send names in it and
    other clients show them decoded, so a raw UTF-8 name would look garbled."""
    if not name.isascii():
        return False
    pos = 0
    while (amp := name.find("&", pos)) >= 0:
        m = _SHIFTED.match(name, amp)
        if m is None:
            return False
        b64 = m.group(1)
        if b64:
            try:
                raw = base64.b64decode(b64.replace(",", "/") + "=" * (-len(b64) % 4),
                                       validate=True)
                text = raw.decode("utf-16-be")
            except (ValueError, UnicodeDecodeError):
                return False
            if len(raw) % 2 or any(0x20 <= ord(c) <= 0x7E for c in text):
                return False  # printable ASCII must stand for itself
        pos = m.end()
    return True


def new_object_id(kind: str) -> str:
    """An RFC 8474 objectid: "F" for a mailbox, "M" for a message, then 24 hex digits."""
    return kind + secrets.token_hex(12)


def new_base() -> str:
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOST}"


@dataclass
class Written:
    """A message `MailStore.write_file` wrote durably into tmp/, not yet in cur/."""

    tmp: Path
    base: str
    fname: str  # its name in cur/


@dataclass
class TmpMessage:
    """A message already written (not yet fsync'd) into the user's Maildir tmp/,
    as a large APPEND literal is streamed: `write_file` takes it instead of bytes."""

    path: Path
    size: int
    failed: bool = False  # the write failed (disk full): the data was read and dropped

    def __len__(self) -> int:
        return self.size

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class MailStore:
    """One user's mailboxes: Maildir files plus their index."""

    def __init__(self, root: Path, index: PgIndex | None = None) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.boxes: dict[str, Box] = {}
        self.listeners: set = set()  # objects with .selected (name) and .notify()
        self.on_change: list[Callable[[str], None]] = []
        # Told the bytes added (> 0) or removed (< 0) by APPEND, COPY, EXPUNGE,
        # MOVE, DELETE and by other programs' changes to cur/ (seen at `sync`), so
        # quota usage follows at once. Deliveries are counted by the queue.
        self.usage_changed: Callable[[int], None] | None = None
        self.users = 0  # sessions holding this store open
        self.expunged_kept = EXPUNGED_KEPT  # a test may lower it
        # With PostgreSQL (store/pg_mailbox_index.py) several nodes share the index:
        # every write takes the mailbox's row lock and first catches up from it.
        self.shared = index is not None
        self._empty_blob = "x''"
        if index is not None:
            self.db = index
            self._empty_blob = index.empty_blob
            with self._locked():
                if not self.boxes and index.adopt(root / INDEX_NAME):  # moved to PostgreSQL
                    self._refresh_boxes()
                self._load_boxes()
            return
        self._open_sqlite(root / INDEX_NAME)

    def _open_sqlite(self, index: Path) -> None:
        made = not index.exists()
        self.db = sqlite3.connect(index, isolation_level=None, check_same_thread=False,
                                  timeout=30)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            self._load_boxes()
        except BaseException:
            # Disk full on a first login: leave no half-made index behind; the
            # next login starts afresh.
            self.db.close()
            if made:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{index}{suffix}").unlink(missing_ok=True)
            raise

    # -- set-up -------------------------------------------------------------

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):  # a newer pillarbox's index: do not touch it
            raise sqlite3.DatabaseError(
                f"{self.root / INDEX_NAME} has schema version {version}, this pillarbox "
                f"knows up to {len(MIGRATIONS)}: it was used by a newer pillarbox")
        for i, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction():
                for stmt in filter(str.strip, sql.split(";")):
                    self.db.execute(stmt)
                self.db.execute(f"PRAGMA user_version={i}")

    def close(self) -> None:
        self.db.close()

    def _load_boxes(self) -> None:
        for name, v, n, m, special, recent, floor, mailboxid in self.db.execute(
                "SELECT name, uidvalidity, uidnext, highestmodseq, special, recentuid, "
                "expungedfloor, mailboxid FROM mailboxes"):
            self.boxes[name] = Box(name, v, n, m, special, recent, floor, mailboxid=mailboxid)
        provisioned = self.db.execute(
            "SELECT 1 FROM meta WHERE key = 'provisioned'").fetchone() is not None
        add: dict[str, str | None] = {}
        if "INBOX" not in self.boxes:
            add["INBOX"] = None
        # Folders made by another program (or before the index existed).
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            entries = []
        for e in entries:
            if e.name.startswith(".") and e.is_dir() and (Path(e.path) / "cur").is_dir():
                name = e.name[1:]
                if name not in self.boxes and valid_name(name) is None:
                    add[name] = SPECIAL_USE.get(name)
        if not provisioned:  # first login: the special-use folders, subscribed
            for name, use in SPECIAL_USE.items():
                if name not in self.boxes and name not in add:
                    self._make_folder(name)
                    add[name] = use
        if not add and provisioned:
            return
        # All of it in one transaction: a full disk leaves nothing half-made,
        # and the next login does the whole set-up again.
        with self._transaction():
            boxes = [self._insert_box(name, use) for name, use in add.items()]
            if not provisioned:
                self.db.executemany("INSERT INTO subscriptions (name) VALUES (?) "
                                    "ON CONFLICT DO NOTHING",
                                    [(n,) for n in ["INBOX", *SPECIAL_USE]])
                self.db.execute("INSERT INTO meta (key, value) VALUES ('provisioned', 1) "
                                "ON CONFLICT DO NOTHING")
        for box in boxes:
            self.boxes[box.name] = box

    def _next_uidvalidity(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        v = max(int(time.time()), (row[0] + 1) if row else 1)
        self.db.execute("DELETE FROM meta WHERE key = 'uidvalidity'")
        self.db.execute("INSERT INTO meta (key, value) VALUES ('uidvalidity', ?)", (v,))
        return v

    def _insert_box(self, name: str, special: str | None) -> Box:
        """The row of a new mailbox (inside a transaction); its Box, not yet in self.boxes."""
        v = self._next_uidvalidity()
        mailboxid = new_object_id("F")
        self.db.execute("INSERT INTO mailboxes (name, uidvalidity, uidnext, special, mailboxid) "
                        "VALUES (?, ?, 1, ?, ?)", (name, v, special, mailboxid))
        return Box(name, v, 1, 1, special, mailboxid=mailboxid)

    def _add_box(self, name: str, special: str | None) -> Box:
        with self._locked():
            if name in self.boxes:  # another node made it meanwhile
                return self.boxes[name]
            with self._transaction():
                box = self._insert_box(name, special)
            self.boxes[name] = box
        return box

    def _make_folder(self, name: str) -> None:
        path = self.path(name)
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        (path / "maildirfolder").touch()

    # -- names and paths ----------------------------------------------------

    def path(self, name: str) -> Path:
        return self.root if name == "INBOX" else self.root / ("." + name)

    def exists(self, name: str) -> bool:
        return name in self.boxes

    def names(self) -> list[str]:
        return sorted(self.boxes, key=lambda n: (n != "INBOX", n))

    def box(self, name: str) -> Box:
        box = self.boxes.get(name)
        if box is None:
            raise MailboxError(f"no mailbox named {name[:100]!r}", "NONEXISTENT")
        if not box.loaded:
            for uid, base, fname, flags, idate, size, modseq, emailid, saved in self.db.execute(
                    "SELECT uid, base, fname, flags, internaldate, size, modseq, emailid, "
                    "savedate FROM messages WHERE mailbox = ? ORDER BY uid", (name,)):
                box.msgs[uid] = msg = Message(uid, base, fname, frozenset(flags.split()), idate,
                                              size, modseq, emailid, saved)
                box.by_base[base] = uid
                box.keywords.update(_keywords(msg.flags))
            box.loaded = True
        return box

    def take_recent(self, name: str) -> int:
        r"""A session (read-write) is shown the mailbox up to its last UID: the
        messages above the old mark are \Recent for it alone. Returns the old mark."""
        box = self.box(name)
        old, last = box.recent_uid, box.uidnext - 1
        if last > old:
            box.recent_uid = last
            try:
                with contextlib.nullcontext() if self.shared else self._transaction():
                    self.db.execute("UPDATE mailboxes SET recentuid = ? WHERE name = ? "
                                    "AND recentuid < ?", (last, name, last))
            except backend.errors() as e:  # disk full: \Recent is not worth failing for
                log.warning("could not keep the recent mark mailbox=%r error=%r", name, e)
        return old

    def file(self, name: str, msg: Message) -> Path:
        return self.path(name) / "cur" / msg.fname

    # -- mailbox operations -------------------------------------------------

    def create(self, name: str, special: str | None = None) -> None:
        if name.upper() == "INBOX" or name in self.boxes:
            raise MailboxError(f"mailbox {name[:100]!r} already exists", "ALREADYEXISTS")
        why = valid_name(name)
        if why:
            raise MailboxError(why, "CANNOT")
        path = self.path(name)
        existed = path.exists()
        try:
            with self._locked():  # made by one node at a time
                if name in self.boxes:
                    raise MailboxError(f"mailbox {name[:100]!r} already exists", "ALREADYEXISTS")
                self._make_folder(name)
                self._add_box(name, special)
        except MailboxError:
            raise
        except BaseException:
            # Not indexed: remove the folder we made, or a later login would adopt it.
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            raise

    def delete(self, name: str) -> None:
        with self._locked(name, owner=True):  # no other node writes into it meanwhile
            self._delete(name)

    def _delete(self, name: str) -> None:
        if name == "INBOX":
            raise MailboxError("INBOX cannot be deleted", "CANNOT")
        box = self.box(name)
        with self._transaction():
            self.db.execute("DELETE FROM messages WHERE mailbox = ?", (name,))
            self.db.execute("DELETE FROM expunged WHERE mailbox = ?", (name,))
            self.db.execute("DELETE FROM mailboxes WHERE name = ?", (name,))
            self.db.execute("DELETE FROM metadata WHERE mailboxid = ?", (box.mailboxid,))
        del self.boxes[name]
        self._usage(-sum(m.size for m in box.msgs.values()))
        path = self.path(name)
        trash = self.root / "tmp" / f".deleted-{new_base()}"
        try:
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except FileNotFoundError:
            pass
        box.msgs.clear()
        self._changed(name)

    def rename(self, old: str, new: str) -> None:
        moved = [n for n in self.boxes if n == old or n.startswith(old + ".")]
        with self._locked(*moved, owner=True):
            self._rename(old, new)

    def _rename(self, old: str, new: str) -> None:
        if old == "INBOX":
            raise MailboxError("renaming INBOX is not supported; move its messages instead",
                               "CANNOT")
        self.box(old)
        if new.upper() == "INBOX" or new in self.boxes:
            raise MailboxError(f"mailbox {new[:100]!r} already exists", "ALREADYEXISTS")
        why = valid_name(new)
        if why:
            raise MailboxError(why, "CANNOT")
        moves = [(n, new + n[len(old):]) for n in list(self.boxes)
                 if n == old or n.startswith(old + ".")]
        for _, b in moves:
            if b in self.boxes:
                raise MailboxError(f"mailbox {b[:100]!r} already exists", "ALREADYEXISTS")
        with self._transaction():
            for a, b in moves:
                os.rename(self.path(a), self.path(b))
                self.db.execute("UPDATE mailboxes SET name = ? WHERE name = ?", (b, a))
                self.db.execute("UPDATE messages SET mailbox = ? WHERE mailbox = ?", (b, a))
                self.db.execute("UPDATE expunged SET mailbox = ? WHERE mailbox = ?", (b, a))
                self.db.execute("INSERT INTO subscriptions (name) SELECT ? WHERE EXISTS "
                                "(SELECT 1 FROM subscriptions WHERE name = ?) "
                                "ON CONFLICT DO NOTHING", (b, a))
                self.db.execute("DELETE FROM subscriptions WHERE name = ?", (a,))
        for a, b in moves:
            box = self.boxes.pop(a)
            box.name = b
            self.boxes[b] = box
            self._changed(a)

    def subscriptions(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM subscriptions")}

    def subscribe(self, name: str) -> None:
        self.db.execute("INSERT INTO subscriptions (name) VALUES (?) ON CONFLICT DO NOTHING",
                        (name,))

    def unsubscribe(self, name: str) -> None:
        self.db.execute("DELETE FROM subscriptions WHERE name = ?", (name,))

    # -- sync with the files ------------------------------------------------

    def sync(self, name: str) -> list[int]:
        """Take in files from new/ (and changes made to cur/ by others); return new UIDs.
        Shared (PostgreSQL): first what other nodes committed, then the files under
        the mailbox's row lock, so a file another node is taking in is not taken twice."""
        if not self.shared:
            return self._sync(name)
        box = self.box(name)
        row = self.db.execute("SELECT uidnext, highestmodseq, expungedfloor, recentuid "
                              "FROM mailboxes WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] < box.uidnext:  # deleted or made anew elsewhere
            self.refresh()
            if name not in self.boxes:
                return []
            box = self.box(name)
        elif self._catch_up(box, row):
            self._changed(name)
        path = self.path(name)
        try:
            incoming = any(not f.startswith(".") for f in os.listdir(path / "new"))
            cur_mtime = os.stat(path / "cur").st_mtime_ns
        except FileNotFoundError:
            incoming, cur_mtime = False, box.cur_mtime
        if not incoming and cur_mtime == box.cur_mtime:
            return []
        with self._locked(name):
            return self._sync(name)

    def _sync(self, name: str) -> list[int]:
        box = self.box(name)
        path = self.path(name)
        found: list[tuple[str, str, os.stat_result]] = []  # (base, fname, stat)
        try:
            incoming = sorted(os.listdir(path / "new"))
        except FileNotFoundError:
            incoming = []
        for fn in incoming:
            if fn.startswith("."):
                continue
            base, info = split_name(fn)
            dest = f"{base}:2,{info}"
            try:
                os.rename(path / "new" / fn, path / "cur" / dest)
                st = os.stat(path / "cur" / dest)
            except FileNotFoundError:
                continue
            found.append((base, dest, st))
        vanished: list[int] = []
        changed: list[tuple[Message, str]] = []
        try:
            cur_mtime = os.stat(path / "cur").st_mtime_ns
        except FileNotFoundError:
            cur_mtime = box.cur_mtime
        from_new = len(found)
        if cur_mtime != box.cur_mtime:
            box.cur_mtime = cur_mtime
            on_disk: dict[str, str] = {}
            for fn in os.listdir(path / "cur"):
                if not fn.startswith("."):
                    on_disk[split_name(fn)[0]] = fn
            taken = {b for b, _, _ in found}
            for uid, msg in box.msgs.items():
                fn = on_disk.pop(msg.base, None)
                if fn is None:
                    vanished.append(uid)
                elif fn != msg.fname:
                    changed.append((msg, fn))
            for base, fn in sorted(on_disk.items()):
                if base in taken:
                    continue
                try:
                    st = os.stat(path / "cur" / fn)
                except FileNotFoundError:
                    continue
                found.append((base, fn, st))
        if not (found or vanished or changed):
            return []
        found = [self._crlf(path, *f) for f in found]
        # Files another program (mutt, a script) put into cur/ or removed count at
        # once; new/ holds deliveries, counted when the Maildir writer made them.
        outside = (sum(st.st_size for _, _, st in found[from_new:])
                   - sum(box.msgs[u].size for u in vanished))
        new_uids: list[int] = []
        try:
            with self._transaction():
                modseq = box.highestmodseq + 1
                for uid in vanished:
                    self.db.execute("DELETE FROM messages WHERE mailbox = ? AND uid = ?",
                                    (name, uid))
                floor = self._bury(box, vanished, modseq)
                for msg, fn in changed:
                    keywords = {f for f in msg.flags if f not in _LETTER_OF}
                    flags = frozenset(flags_from_letters(split_name(fn)[1]) | keywords)
                    self.db.execute("UPDATE messages SET fname = ?, flags = ?, modseq = ? "
                                    "WHERE mailbox = ? AND uid = ?",
                                    (fn, " ".join(sorted(flags)), modseq, name, msg.uid))
                uid = box.uidnext
                added = []
                now = time.time()
                for i, (base, fn, st) in enumerate(found):
                    flags = frozenset(flags_from_letters(split_name(fn)[1]))
                    # SAVEDATE: a delivery was saved when its file was written into
                    # new/; a file another program put into cur/, when it is seen.
                    saved = st.st_mtime if i < from_new else now
                    m = Message(uid, base, fn, flags, st.st_mtime, st.st_size, modseq,
                                new_object_id("M"), saved)
                    self.db.execute(
                        "INSERT INTO messages (mailbox, uid, base, fname, flags, internaldate,"
                        " size, modseq, emailid, savedate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (name, uid, base, fn, " ".join(sorted(flags)), st.st_mtime, st.st_size,
                         modseq, m.emailid, saved))
                    added.append(m)
                    uid += 1
                self.db.execute("UPDATE mailboxes SET uidnext = ?, highestmodseq = ? "
                                "WHERE name = ?", (uid, modseq, name))
        except BaseException:
            # The index is full (disk): back to new/, to be taken in later and
            # not counted a second time as another program's files.
            for _, fn, _ in found[:from_new]:
                with contextlib.suppress(OSError):
                    os.rename(path / "cur" / fn, path / "new" / fn)
            box.cur_mtime = -1
            raise
        box.uidnext, box.highestmodseq, box.expunged_floor = uid, modseq, floor
        for u in vanished:
            del box.by_base[box.msgs.pop(u).base]
        for msg, fn in changed:
            keywords = {f for f in msg.flags if f not in _LETTER_OF}
            msg.fname = fn
            msg.flags = frozenset(flags_from_letters(split_name(fn)[1]) | keywords)
            msg.modseq = modseq
        for m in added:
            box.msgs[m.uid] = m
            box.by_base[m.base] = m.uid
            new_uids.append(m.uid)
        self._usage(outside)
        self._changed(name)
        return new_uids

    @staticmethod
    def _crlf(path: Path, base: str, fname: str, st: os.stat_result
              ) -> tuple[str, str, os.stat_result]:
        """A file just taken in, with its bare LFs made CRLF (line_ends.py).
        Our own deliveries (target/mailbox.py's names, their size in S=) came
        through SMTP, which refuses bare LFs: not read again on the event loop."""
        m = _OWN_DELIVERY.match(fname)
        if m is not None and int(m.group(1)) == st.st_size:
            return base, fname, st
        try:
            done = line_ends.to_crlf(path, fname, st)
        except OSError as e:  # gone meanwhile, or the disk is full: served as it is
            if not isinstance(e, FileNotFoundError):
                log.warning("could not convert bare LFs to CRLF file=%s error=%r",
                            path / "cur" / fname, e)
            return base, fname, st
        if done is None:
            return base, fname, st
        return split_name(done[0])[0], done[0], done[1]

    # -- message operations -------------------------------------------------

    def store_flags(self, name: str, uids: list[int], mode: str, flags: Iterable[str],
                    unchangedsince: int | None = None) -> tuple[list[Message], list[int]]:
        """Set/add/remove flags; return (messages changed, UIDs that failed UNCHANGEDSINCE)."""
        with self._locked(name):
            return self._store_flags(name, uids, mode, flags, unchangedsince)

    def _store_flags(self, name: str, uids: list[int], mode: str, flags: Iterable[str],
                     unchangedsince: int | None) -> tuple[list[Message], list[int]]:
        box = self.box(name)
        flags = frozenset(flags)
        path = self.path(name) / "cur"
        changed: list[Message] = []
        failed: list[int] = []
        modseq = box.highestmodseq + 1
        before: list[tuple[Message, str, frozenset[str], int]] = []
        try:
            with self._transaction():
                for uid in uids:
                    msg = box.msgs.get(uid)
                    if msg is None:
                        continue
                    if unchangedsince is not None and msg.modseq > unchangedsince:
                        failed.append(uid)
                        continue
                    if mode == "add":
                        new = msg.flags | flags
                    elif mode == "remove":
                        new = msg.flags - flags
                    else:
                        new = flags
                    if new == msg.flags:
                        continue
                    base, info = split_name(msg.fname)
                    fname = f"{base}:2,{letters_for(new, info)}"
                    if fname != msg.fname:
                        try:
                            os.rename(path / msg.fname, path / fname)
                        except FileNotFoundError:
                            continue  # gone meanwhile; the next sync expunges it
                    before.append((msg, msg.fname, msg.flags, msg.modseq))
                    self.db.execute("UPDATE messages SET fname = ?, flags = ?, modseq = ? "
                                    "WHERE mailbox = ? AND uid = ?",
                                    (fname, " ".join(sorted(new)), modseq, name, uid))
                    msg.fname, msg.flags, msg.modseq = fname, new, modseq
                    box.keywords.update(_keywords(new))
                    changed.append(msg)
                if changed:
                    self.db.execute("UPDATE mailboxes SET highestmodseq = ? WHERE name = ?",
                                    (modseq, name))
        except BaseException:
            # The index is full (disk): files and memory back as the index has them.
            for msg, fname, old_flags, old_modseq in before:
                if msg.fname != fname:
                    with contextlib.suppress(OSError):
                        os.rename(path / msg.fname, path / fname)
                msg.fname, msg.flags, msg.modseq = fname, old_flags, old_modseq
            raise
        if changed:
            box.highestmodseq = modseq
            self._changed(name)
        return changed, failed

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error. Shared, it joins
        the `_locked` transaction around it (or is one of its own, under the
        owner's lock)."""
        if self.shared:
            with self.db.transaction():
                yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL at COMMIT).
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise

    # -- several nodes (PostgreSQL) --------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *names: str, owner: bool = False) -> Iterator[None]:
        """Shared: a transaction holding the row locks of mailboxes `names` and, with
        `owner` or no names, the owner's lock (making, renaming, deleting mailboxes),
        caught up with what other nodes committed before anything is numbered.
        SQLite: nothing (one process owns the index)."""
        if not self.shared or self.db.in_transaction:
            yield
            return
        with self.db.transaction(tuple(set(names)), owner=owner):
            if names and not owner:
                for name in set(names):
                    box = self.boxes.get(name)
                    if box is None:
                        continue
                    row = self.db.execute(
                        "SELECT uidnext, highestmodseq, expungedfloor, recentuid FROM mailboxes "
                        "WHERE name = ?", (name,)).fetchone()
                    if row is None or row[0] < box.uidnext:  # deleted (or made anew)
                        self._refresh_boxes()
                    elif self._catch_up(box, row):
                        self._changed(name)
            else:
                self._refresh_boxes()
            yield

    def refresh(self) -> None:
        """Another node changed this user's mailboxes (a notification): catch up."""
        if self.shared:
            self._refresh_boxes()

    def _refresh_boxes(self) -> None:
        """Take over the mailbox list as committed (made, renamed, deleted elsewhere)
        and catch up every loaded mailbox; listeners of changed ones are told."""
        by_id = {b.mailboxid: b for b in self.boxes.values()}
        fresh: dict[str, Box] = {}
        changed: set[str] = set()
        for name, v, n, m, special, recent, floor, mailboxid in self.db.execute(
                "SELECT name, uidvalidity, uidnext, highestmodseq, special, recentuid, "
                "expungedfloor, mailboxid FROM mailboxes"):
            box = by_id.get(mailboxid)
            if box is None or box.uidvalidity != v:
                box = Box(name, v, n, m, special, recent, floor, mailboxid=mailboxid)
                changed.add(name)
            else:
                if box.name != name:  # renamed elsewhere
                    changed |= {box.name, name}
                    box.name = name
                if self._catch_up(box, (n, m, floor, recent)):
                    changed.add(name)
            fresh[name] = box
        changed |= set(self.boxes) - set(fresh)
        self.boxes.clear()
        self.boxes.update(fresh)
        for name in changed:
            self._changed(name)

    def _catch_up(self, box: Box, row: tuple) -> bool:
        """Apply what other nodes committed to `box` since its HIGHESTMODSEQ, given
        its row (uidnext, highestmodseq, expungedfloor, recentuid); True if anything
        changed. Rows and expunges above the row's MODSEQ wait for the next time
        (committed after the row was read)."""
        uidnext, top, floor, recent = row
        box.recent_uid = max(box.recent_uid, recent)
        if top <= box.highestmodseq:
            return False
        known = box.highestmodseq
        if box.loaded and floor > known:  # expunges we would need were pruned: reload
            box.msgs.clear()
            box.by_base.clear()
            box.loaded = False
        elif box.loaded:
            for (uid,) in self.db.execute(
                    "SELECT uid FROM expunged WHERE mailbox = ? AND modseq > ? AND modseq <= ?",
                    (box.name, known, top)):
                msg = box.msgs.pop(uid, None)
                if msg is not None:
                    box.by_base.pop(msg.base, None)
            added = []
            for uid, base, fname, flags, idate, size, modseq, emailid, saved in self.db.execute(
                    "SELECT uid, base, fname, flags, internaldate, size, modseq, emailid, "
                    "savedate FROM messages WHERE mailbox = ? AND modseq > ? AND modseq <= ? "
                    "ORDER BY uid", (box.name, known, top)):
                flagset = frozenset(flags.split())
                msg = box.msgs.get(uid)
                if msg is None:
                    msg = Message(uid, base, fname, flagset, idate, size, modseq, emailid, saved)
                    added.append(msg)
                else:
                    msg.fname, msg.flags, msg.modseq = fname, flagset, modseq
                box.keywords.update(_keywords(flagset))
            if added:
                in_order = bool(box.msgs) and added[0].uid < next(reversed(box.msgs))
                for msg in added:
                    box.msgs[msg.uid] = msg
                    box.by_base[msg.base] = msg.uid
                if in_order:  # keep box.msgs in UID order
                    box.msgs = dict(sorted(box.msgs.items()))
        box.uidnext, box.highestmodseq, box.expunged_floor = uidnext, top, floor
        return True

    # -- cached ENVELOPE / BODYSTRUCTURE / BODY -------------------------------

    def structures(self, name: str, uids: list[int],
                   wanted: frozenset[str] = STRUCTURES) -> dict[int, tuple[bytes, bytes, bytes]]:
        """The cached (envelope, bodystructure, body) of those of `uids` that have them.
        Only the `wanted` ones are read (ENVELOPE, BODYSTRUCTURE, BODY): the others
        are b"" (a FLAGS ENVELOPE sync need not read two larger blobs per message)."""
        cols = ", ".join(c.lower() if c in wanted else self._empty_blob
                         for c in STRUCTURE_ORDER)
        out: dict[int, tuple[bytes, bytes, bytes]] = {}
        for i in range(0, len(uids), STRUCTURE_CHUNK):
            chunk = uids[i:i + STRUCTURE_CHUNK]
            lo, hi = min(chunk), max(chunk)
            if hi - lo < 2 * len(chunk):  # dense (a sync's 1:*): a range scan, filtered
                asked = set(chunk)
                rows = self.db.execute(
                    f"SELECT uid, {cols} FROM messages WHERE mailbox = ? "
                    "AND uid BETWEEN ? AND ? AND envelope IS NOT NULL", (name, lo, hi))
                for uid, env, bs, body in rows:
                    if uid in asked:
                        out[uid] = (env, bs, body)
                continue
            marks = ",".join("?" * len(chunk))
            for uid, env, bs, body in self.db.execute(
                    f"SELECT uid, {cols} FROM messages WHERE mailbox = ? "
                    f"AND envelope IS NOT NULL AND uid IN ({marks})", (name, *chunk)):
                out[uid] = (env, bs, body)
        return out

    def save_structures(self, name: str, rows: dict[int, tuple[bytes, bytes, bytes]]) -> None:
        """Keep computed structures (a message expunged meanwhile just matches no row)."""
        if not rows:
            return
        with contextlib.nullcontext() if self.shared else self._transaction():
            self.db.executemany(
                "UPDATE messages SET envelope = ?, bodystructure = ?, body = ? "
                "WHERE mailbox = ? AND uid = ?",
                [(*v, name, uid) for uid, v in rows.items()])

    def _copy_structures(self, src: str, dst: str, pairs: list[tuple[int, int]]) -> None:
        """A copy has the same content: carry its cached structures along."""
        with self._transaction():
            self.db.executemany(
                "UPDATE messages SET (envelope, bodystructure, body) = "
                "(SELECT envelope, bodystructure, body FROM messages WHERE mailbox = ? AND uid = ?)"
                " WHERE mailbox = ? AND uid = ?",
                [(src, old, dst, new) for old, new in pairs])

    @staticmethod
    def write_file(folder: Path, data: bytes | TmpMessage, flags: Iterable[str],
                   date: float | None, binary: bool = False) -> Written:
        """Blocking (run it in a thread): write a message durably into a file in
        tmp/, with CRLF line ends; `add_file` then moves it into folder/cur/.

        Not into cur/ from here: a file there that is not indexed yet is taken
        in by another session's sync, which may flag, move or expunge it before
        its APPEND is done (issue 13: one APPEND in 900 failed under load).
        A `binary` message (an IMAP literal8) is kept octet for octet: its bare
        LFs may be content, not line ends."""
        if isinstance(data, TmpMessage):  # streamed already: make it durable
            tmp, view = data.path, memoryview(b"")
            fd = os.open(tmp, os.O_WRONLY)
        else:
            if not binary and data.count(b"\n") != data.count(b"\r\n"):  # bare LFs sent
                data = line_ends.crlf(data)
            tmp, view = folder / "tmp" / f"{new_base()},S={len(data)}", memoryview(data)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = len(data)
        try:
            try:
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if isinstance(data, TmpMessage) and not binary and line_ends.has_bare_lf(tmp):
                fixed = tmp.with_name(tmp.name + ".crlf")
                size = line_ends.rewrite(tmp, fixed)
                os.rename(fixed, tmp)
            if date is not None:
                os.utime(tmp, (date, date))
        except OSError:
            tmp.unlink(missing_ok=True)  # disk full: no partial message stays behind
            raise
        base = f"{new_base()},S={size}"
        return Written(tmp, base, f"{base}:2,{letters_for(flags)}")

    def add_file(self, name: str, written: Written, flags: Iterable[str]) -> Message:
        """Move a file `write_file` made into name/cur/ and index it, in one step on
        the event loop (no sync sees it unindexed); returns it with its UID.
        The caller makes the move durable (`fsync_dir` of cur/) before saying OK."""
        with self._locked(name):
            return self._add_file(name, written, flags)

    def _add_file(self, name: str, written: Written, flags: Iterable[str]) -> Message:
        box = self.box(name)
        dest = self.path(name) / "cur" / written.fname
        try:
            os.rename(written.tmp, dest)
        except OSError:
            written.tmp.unlink(missing_ok=True)
            raise
        try:
            st = os.stat(dest)
            return self._insert(box, [(written.base, written.fname, frozenset(flags),
                                       st.st_mtime, st.st_size, new_object_id("M"))])[0]
        except BaseException:
            # Not indexed (the index is full): the file goes too, or a later sync
            # would take in a message whose APPEND said NO.
            dest.unlink(missing_ok=True)
            raise

    def drop(self, name: str, uid: int) -> None:
        """Remove one message at once, file and index row (an APPEND that could
        not be made durable); nothing if another session removed it already."""
        with self._locked(name):
            box = self.box(name)
            msg = box.msgs.get(uid)
            if msg is None:
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name) / "cur" / msg.fname)
            self._remove(box, [uid])

    def _insert(self, box: Box, rows: list[tuple[str, str, frozenset, float, int, str]]
                ) -> list[Message]:
        """Index new files of `box`: rows of (base, fname, flags, internal date, size,
        EMAILID); their SAVEDATE is now."""
        modseq = box.highestmodseq + 1
        uid = box.uidnext
        out = []
        saved = time.time()
        with self._transaction():
            for base, fname, flags, idate, size, emailid in rows:
                self.db.execute(
                    "INSERT INTO messages (mailbox, uid, base, fname, flags, internaldate, size,"
                    " modseq, emailid, savedate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (box.name, uid, base, fname, " ".join(sorted(flags)), idate, size, modseq,
                     emailid, saved))
                out.append(Message(uid, base, fname, flags, idate, size, modseq, emailid,
                                   saved))
                uid += 1
            self.db.execute("UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE name = ?",
                            (uid, modseq, box.name))
        box.uidnext, box.highestmodseq = uid, modseq
        for m in out:
            box.msgs[m.uid] = m
            box.by_base[m.base] = m.uid
            box.keywords.update(_keywords(m.flags))
        self._usage(sum(m.size for m in out))
        self._changed(box.name)
        return out

    def copy(self, src: str, uids: list[int], dst: str, move: bool = False
             ) -> list[tuple[int, int]]:
        """Copy (hard link, else copy) or move messages; return [(old UID, new UID)]."""
        with self._locked(src, dst):
            return self._copy(src, uids, dst, move)

    def _copy(self, src: str, uids: list[int], dst: str, move: bool) -> list[tuple[int, int]]:
        sbox, dbox = self.box(src), self.box(dst)
        spath, dpath = self.path(src) / "cur", self.path(dst) / "cur"
        rows, pairs_src = [], []
        try:
            for uid in uids:
                msg = sbox.msgs.get(uid)
                if msg is None:
                    continue
                base = msg.base if move and msg.base not in dbox.by_base else \
                    f"{new_base()},S={msg.size}"
                fname = f"{base}:2,{split_name(msg.fname)[1]}"
                try:
                    if move:
                        os.rename(spath / msg.fname, dpath / fname)
                    else:
                        try:
                            os.link(spath / msg.fname, dpath / fname)
                        except OSError:
                            try:
                                shutil.copy2(spath / msg.fname, dpath / fname)
                            except OSError:
                                (dpath / fname).unlink(missing_ok=True)  # a partial copy
                                raise
                except FileNotFoundError:
                    continue
                rows.append((base, fname, msg.flags, msg.internaldate, msg.size, msg.emailid))
                pairs_src.append(uid)
            if not rows:
                return []
            added = self._insert(dbox, rows)
        except BaseException:
            # Disk full (a copy, or the index): undo the files, or the next sync
            # would take them in as new messages of a COPY that said NO.
            for (_, fname, *_), uid in zip(rows, pairs_src, strict=True):
                with contextlib.suppress(OSError):
                    if move:
                        os.rename(dpath / fname, spath / sbox.msgs[uid].fname)
                    else:
                        os.unlink(dpath / fname)
            raise
        pairs = list(zip(pairs_src, [m.uid for m in added], strict=True))
        self._copy_structures(src, dst, pairs)
        if move:
            self._remove(sbox, pairs_src)
        return pairs

    def expunge(self, name: str, uids: list[int] | None = None) -> list[int]:
        """Delete the messages flagged \\Deleted (only those in `uids` if given)."""
        with self._locked(name):
            return self._expunge(name, uids)

    def _expunge(self, name: str, uids: list[int] | None) -> list[int]:
        box = self.box(name)
        path = self.path(name) / "cur"
        gone = []
        for uid, msg in list(box.msgs.items()):
            if "\\Deleted" not in msg.flags or (uids is not None and uid not in uids):
                continue
            try:
                os.unlink(path / msg.fname)
            except FileNotFoundError:
                pass
            gone.append(uid)
        if gone:
            self._remove(box, gone)
        return gone

    def size_of(self, name: str, uids: list[int]) -> int:
        box = self.box(name)
        return sum(box.msgs[u].size for u in uids if u in box.msgs)

    def _remove(self, box: Box, uids: list[int]) -> None:
        modseq = box.highestmodseq + 1
        with self._transaction():
            self.db.executemany("DELETE FROM messages WHERE mailbox = ? AND uid = ?",
                                [(box.name, u) for u in uids])
            floor = self._bury(box, uids, modseq)
            self.db.execute("UPDATE mailboxes SET highestmodseq = ? WHERE name = ?",
                            (modseq, box.name))
        box.highestmodseq, box.expunged_floor = modseq, floor
        freed = 0
        for u in uids:
            msg = box.msgs.pop(u, None)
            if msg is not None:
                box.by_base.pop(msg.base, None)
                freed += msg.size
        self._usage(-freed)
        self._changed(box.name)

    def _bury(self, box: Box, uids: list[int], modseq: int) -> int:
        """Inside a transaction: keep the expunged UIDs with their MODSEQ, pruning
        the oldest past EXPUNGED_KEPT; returns the (new) floor, set after commit."""
        floor = box.expunged_floor
        if not uids:
            return floor
        self.db.executemany("DELETE FROM expunged WHERE mailbox = ? AND uid = ?",
                            [(box.name, u) for u in uids])
        self.db.executemany("INSERT INTO expunged (mailbox, uid, modseq) VALUES (?, ?, ?)",
                            [(box.name, u, modseq) for u in uids])
        kept = self.expunged_kept
        count = self.db.execute("SELECT COUNT(*) FROM expunged WHERE mailbox = ?",
                                (box.name,)).fetchone()[0]
        if count > kept:
            # Down to three quarters, whole expunges at a time (one MODSEQ each).
            cut = self.db.execute(
                "SELECT modseq FROM expunged WHERE mailbox = ? ORDER BY modseq "
                "LIMIT 1 OFFSET ?", (box.name, count - kept * 3 // 4 - 1)).fetchone()[0]
            self.db.execute("DELETE FROM expunged WHERE mailbox = ? AND modseq <= ?",
                            (box.name, cut))
            floor = max(floor, cut)
            self.db.execute("UPDATE mailboxes SET expungedfloor = ? WHERE name = ?",
                            (floor, box.name))
        return floor

    def expunged_since(self, name: str, modseq: int) -> list[int] | None:
        """The UIDs expunged after `modseq`, ascending; None if expunges that
        late may have been pruned (the caller then reports every UID not present)."""
        box = self.box(name)
        if modseq < box.expunged_floor:
            return None
        return [r[0] for r in self.db.execute(
            "SELECT uid FROM expunged WHERE mailbox = ? AND modseq > ? ORDER BY uid",
            (name, modseq))]

    # -- status -------------------------------------------------------------

    def status(self, name: str) -> dict[str, int]:
        box = self.box(name)
        try:
            incoming = sum(1 for f in os.listdir(self.path(name) / "new")
                           if not f.startswith("."))
        except FileNotFoundError:
            incoming = 0
        recent = 0
        for uid in reversed(box.msgs):  # in UID order: the recent ones are last
            if uid <= box.recent_uid:
                break
            recent += 1
        return {
            "MESSAGES": len(box.msgs) + incoming,
            "RECENT": recent + incoming,
            "UIDNEXT": box.uidnext + incoming,
            "UIDVALIDITY": box.uidvalidity,
            "UNSEEN": sum(1 for m in box.msgs.values() if "\\Seen" not in m.flags) + incoming,
            "HIGHESTMODSEQ": box.highestmodseq,
            "SIZE": sum(m.size for m in box.msgs.values()),
            "DELETED": sum(1 for m in box.msgs.values() if "\\Deleted" in m.flags),
        }

    # -- change notification ------------------------------------------------

    def _usage(self, delta: int) -> None:
        if delta and self.usage_changed is not None:
            self.usage_changed(delta)

    def _changed(self, name: str) -> None:
        for listener in list(self.listeners):
            if listener.selected == name:
                listener.notify()
        for cb in self.on_change:
            cb(name)


class StoreRegistry:
    """The open MailStores of the process, one per Maildir, shared by sessions."""

    def __init__(self, mail_root: Path) -> None:
        self.mail_root = mail_root
        self.stores: dict[Path, MailStore] = {}
        # Set by pg_mailbox_index.attach with PostgreSQL: (owner, Maildir) -> its index.
        self.shared_index: Callable[[str, Path], PgIndex] | None = None
        self.tell_others: Callable[[Path], None] | None = None  # a delivery, for other nodes
        self.closers: list[Callable[[], None]] = []

    def open(self, path: Path, owner: str = "") -> MailStore:
        store = self.stores.get(path)
        if store is None:
            index = self.shared_index(owner, path) if self.shared_index is not None else None
            store = self.stores[path] = MailStore(path, index)
        store.users += 1
        return store

    def release(self, store: MailStore) -> None:
        store.users -= 1
        if store.users <= 0 and not store.listeners:
            self.stores.pop(store.root, None)
            store.close()

    def delivered(self, path: Path) -> None:
        """MaildirWriter.on_delivered: a file arrived in path/new/ (INBOX), or in
        a folder's (plus-addressing: [delivery] detail_folder)."""
        self._wake(path, refresh=False)
        if self.tell_others is not None:
            self.tell_others(path)

    def changed_elsewhere(self, path: Path) -> None:
        """Another node changed (or delivered into) the Maildir `path`: catch up
        and wake the sessions that have one of its mailboxes selected."""
        self._wake(path, refresh=True)

    def _wake(self, path: Path, refresh: bool) -> None:
        store, name = self.stores.get(path), "INBOX"
        if store is None and path.name.startswith("."):
            store, name = self.stores.get(path.parent), path.name[1:]
        if store is None:
            return
        try:
            if refresh:
                store.refresh()
            if name not in store.boxes and valid_name(name) is None and (path / "cur").is_dir():
                store._add_box(name, None)  # a folder the delivery made: listed at once
        except (OSError, *backend.errors()) as e:
            log.warning("could not index mailboxes path=%s error=%r", path, e)
        for listener in list(store.listeners):
            if refresh or listener.selected == name:
                listener.notify()

    def caught_up_all(self) -> None:
        """After a lost link: notifications may have been missed, catch up every store."""
        for path in list(self.stores):
            self.changed_elsewhere(path)

    def close_all(self) -> None:
        """At shutdown: close the stores no session holds (the others close with
        their last session; every change is committed as it is made)."""
        for path, store in list(self.stores.items()):
            if store.users <= 0:
                store.close()
                del self.stores[path]
        for close in self.closers:
            close()
