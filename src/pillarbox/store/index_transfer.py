"""The IMAP index in `pillarbox export` / `pillarbox import` (store/transfer.py).

Each user's index (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and MAILBOXID per
mailbox; UID, file name, flags, dates, size, MODSEQ and EMAILID per message;
the expunged UIDs QRESYNC reports; subscriptions; METADATA) travels as rows
with the owner's address in front, in the tables store/pg_mailbox_index.py
keeps on PostgreSQL. Where the index is:

- `shared` (storage.url on PostgreSQL and storage.shared_dir set): those tables;
- else: the SQLite file `pillarbox-index.sqlite` in each user's Maildir
  (found through the directory's users).

So a client keeps its UIDs and flags when an installation moves between the
two, once the Maildir files are copied along (they do not travel in the file).
The cached ENVELOPE/BODYSTRUCTURE/BODY responses stay behind: they are made
again at the first FETCH.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pillarbox.store.mailbox_index import INDEX_NAME, MIGRATIONS

Maildir = Callable[[str], Path]  # an address's Maildir (target/mailbox.py's maildir_path)

PREFIX = "mailbox_index_"
# The index's tables (SQLite names) and the columns that travel, without `owner`.
COLUMNS: dict[str, list[str]] = {
    "mailboxes": ["name", "uidvalidity", "uidnext", "highestmodseq", "special", "recentuid",
                  "expungedfloor", "mailboxid"],
    "messages": ["mailbox", "uid", "base", "fname", "flags", "internaldate", "size", "modseq",
                 "emailid", "savedate"],
    "expunged": ["mailbox", "uid", "modseq"],
    "subscriptions": ["name"],
    "meta": ["key", "value"],
    "metadata": ["mailboxid", "entry", "value"],
}
TABLES = [PREFIX + t for t in COLUMNS]  # the names in the export file


def columns(table: str) -> list[str]:
    """The columns of export table `table` (mailbox_index_...)."""
    return ["owner", *COLUMNS[table.removeprefix(PREFIX)]]


def _owners(q: Any) -> list[str]:
    return [r[0] for r in q.execute("SELECT address FROM users ORDER BY address").fetchall()]


@contextlib.contextmanager
def _sqlite_indexes(maildir: Maildir, owners: list[str], create: bool = False
                    ) -> Iterator[list[tuple[str, sqlite3.Connection]]]:
    out = []
    try:
        for owner in owners:
            root = maildir(owner)
            path = root / INDEX_NAME
            if create:
                for sub in ("tmp", "new", "cur"):
                    (root / sub).mkdir(parents=True, exist_ok=True)
                c = sqlite3.connect(path, isolation_level=None)
                migrate_sqlite(c)
            elif path.exists():
                c = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                    isolation_level=None)
            else:
                continue
            out.append((owner, c))
        yield out
    finally:
        for _, c in out:
            c.close()


def migrate_sqlite(c: sqlite3.Connection) -> None:
    """An index file brought to this pillarbox's schema (as MailStore does); one a
    newer pillarbox made is refused."""
    version = c.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(f"index schema version {version} is newer than "
                                    f"{len(MIGRATIONS)}: made by a newer pillarbox")
    for i, sql in enumerate(MIGRATIONS[version:], start=version + 1):
        c.execute("BEGIN IMMEDIATE")
        for stmt in filter(str.strip, sql.split(";")):
            c.execute(stmt)
        c.execute(f"PRAGMA user_version={i}")
        c.execute("COMMIT")


def read(q: Any, maildir: Maildir, shared: bool) -> dict[str, list[tuple]]:
    """The index rows of the directory's users per export table; `q` runs queries
    on the directory (and, shared, on the index tables) in the export's snapshot."""
    out: dict[str, list[tuple]] = {t: [] for t in TABLES}
    if shared:
        if q.execute("SELECT to_regclass('mailbox_index_mailboxes')").fetchone()[0] is None:
            return out  # no node has used the shared index yet
        for t in TABLES:  # rows of deleted users stay behind
            out[t] = [tuple(r) for r in q.execute(
                f"SELECT {', '.join(columns(t))} FROM {t} "
                "WHERE owner IN (SELECT address FROM users)").fetchall()]
        return out
    with _sqlite_indexes(maildir, _owners(q)) as found:
        for owner, c in found:
            c.execute("BEGIN")  # one snapshot of this user's index
            try:
                for t in TABLES:
                    cols = COLUMNS[t.removeprefix(PREFIX)]
                    out[t] += [(owner, *r) for r in c.execute(
                        f"SELECT {', '.join(cols)} FROM {t.removeprefix(PREFIX)}")]
            finally:
                c.execute("COMMIT")
    return out


def not_empty(db: Any, maildir: Maildir, shared: bool, owners: list[str]) -> list[str]:
    """What the target holds of the index already (an import needs it empty)."""
    if shared:
        if db.execute("SELECT to_regclass('mailbox_index_mailboxes')").fetchone()[0] is None:
            return []
        return [f"{t} ({n})" for t in TABLES
                if (n := db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])]
    full = []
    with _sqlite_indexes(maildir, owners) as found:
        for owner, c in found:
            if c.execute("SELECT COUNT(*) FROM mailboxes").fetchone()[0]:
                full.append(f"{maildir(owner) / INDEX_NAME} ({owner})")
    return full


def write_sqlite(maildir: Maildir, rows: dict[str, list[tuple]]) -> None:
    """Store the rows (owner first) into each owner's SQLite index, made if missing.
    (A shared target takes them as tables of the database, in the directory's
    transaction: transfer.py.)"""
    owners = sorted({r[0] for batch in rows.values() for r in batch})
    with _sqlite_indexes(maildir, owners, create=True) as found:
        for owner, c in found:
            c.execute("BEGIN IMMEDIATE")
            try:
                for t, batch in rows.items():
                    name, cols = t.removeprefix(PREFIX), COLUMNS[t.removeprefix(PREFIX)]
                    mine = [r[1:] for r in batch if r[0] == owner]
                    if mine:
                        c.executemany(f"INSERT INTO {name} ({', '.join(cols)}) VALUES "
                                      f"({', '.join('?' * len(cols))})", mine)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
