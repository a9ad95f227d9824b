"""The IMAP mailbox index on PostgreSQL, shared by several nodes (issue 19).

With `[storage] url = "postgresql://..."` every node delivers into the same
Maildirs (`[storage] shared_dir`), and the index MailStore keeps per user
(UIDs, flags, MODSEQ, expunges, subscriptions, METADATA) lives here instead
of in the per-Maildir SQLite file. MailStore keeps its logic and its
in-memory copy; this module is only its persistence:

- Tables hold every user's rows with an `owner` column (the address). A view
  per table in the schema `pillarbox_mailbox` shows one owner's rows, the one
  named by the transaction's `pillarbox.owner` setting, under the names the
  SQLite index uses (`mailboxes`, `messages`, ...), so MailStore's SQL is
  written once for both backends. Inserts through a view take the owner from
  the same setting (the column default).
- `transaction(lock=names)` takes the row locks of those mailboxes (`SELECT
  ... FOR UPDATE`) and, without names or with `owner` (mailboxes made,
  renamed, deleted), first a per-owner advisory lock, all held to the commit:
  MailStore catches up from the committed rows inside it before it numbers
  anything, so two nodes never give out the same UID or MODSEQ. A write
  transaction sends `NOTIFY pillarbox_mailbox` with the Maildir (relative to
  mail_root) at commit.
- `attach` wires this into `serve`: StoreRegistry opens PgIndexes, deliveries
  are announced, and a `Listener` thread hands the other nodes' announcements
  to the event loop, where StoreRegistry wakes that user's sessions.
- `PgIndex.adopt`: a user's first login here takes over the SQLite index left
  in the Maildir (a single node's, or `pillarbox import-maildir`'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from pillarbox.store import backend
from pillarbox.store.postgresql import Result, _reason, _Tx, listen

if TYPE_CHECKING:
    from pillarbox.store.mailbox_index import StoreRegistry
    from pillarbox.store.postgresql import PgDatabase

log = logging.getLogger("pillarbox.imap.index")

COMPONENT = "mailbox_index"
CHANNEL = "pillarbox_mailbox"  # NOTIFY payload: the owner whose mailboxes changed
ANNOUNCE_DELAY = 0.01  # seconds deliveries are gathered into one round of NOTIFYs
SCHEMA = "pillarbox_mailbox"
OWNER_LOCK = 0x6D627869  # advisory locks (this, hashtext(owner)): "mbxi", its own key space
_OWNER = "current_setting('pillarbox.owner')"

# (view name, base table, columns, primary key, extra indexes)
_TABLES = [
    ("mailboxes", "mailbox_index_mailboxes",
     "name TEXT NOT NULL, uidvalidity BIGINT NOT NULL, uidnext BIGINT NOT NULL, "
     "highestmodseq BIGINT NOT NULL DEFAULT 1, special TEXT, "
     "recentuid BIGINT NOT NULL DEFAULT 0, expungedfloor BIGINT NOT NULL DEFAULT 0, "
     "mailboxid TEXT", "name", []),
    ("messages", "mailbox_index_messages",
     "mailbox TEXT NOT NULL, uid BIGINT NOT NULL, base TEXT NOT NULL, fname TEXT NOT NULL, "
     "flags TEXT NOT NULL DEFAULT '', internaldate DOUBLE PRECISION NOT NULL, "
     "size BIGINT NOT NULL, modseq BIGINT NOT NULL DEFAULT 1, envelope BYTEA, "
     "bodystructure BYTEA, body BYTEA, emailid TEXT, savedate DOUBLE PRECISION",
     "mailbox, uid", ["UNIQUE (owner, mailbox, base)", "(owner, mailbox, modseq)"]),
    ("subscriptions", "mailbox_index_subscriptions", "name TEXT NOT NULL", "name", []),
    ("meta", "mailbox_index_meta", "key TEXT NOT NULL, value BIGINT NOT NULL", "key", []),
    ("expunged", "mailbox_index_expunged",
     "mailbox TEXT NOT NULL, uid BIGINT NOT NULL, modseq BIGINT NOT NULL", "mailbox, uid",
     ["(owner, mailbox, modseq)"]),
    ("metadata", "mailbox_index_metadata",
     "mailboxid TEXT NOT NULL, entry TEXT NOT NULL, value BYTEA NOT NULL",
     "mailboxid, entry", []),
]


def _first_migration() -> list[str]:
    out = [f"CREATE SCHEMA {SCHEMA}"]
    for view, table, columns, key, indexes in _TABLES:
        out.append(f"CREATE TABLE {table} (owner TEXT NOT NULL DEFAULT {_OWNER}, {columns}, "
                   f"PRIMARY KEY (owner, {key}))")
        for i, spec in enumerate(indexes):
            unique, cols = ("UNIQUE ", spec[7:]) if spec.startswith("UNIQUE ") else ("", spec)
            out.append(f"CREATE {unique}INDEX {table}_{i} ON {table} {cols}")
        names = ", ".join(c.split()[0] for c in columns.split(", ") if c.split()[0].islower())
        out.append(f"CREATE VIEW {SCHEMA}.{view} AS SELECT {names} FROM {table} "
                   f"WHERE owner = {_OWNER}")
    return out


MIGRATIONS: list[list[str]] = [_first_migration()]


def prepare(db: PgDatabase) -> int:
    """Make or migrate the tables (`serve` at its start, `pillarbox migrate`); the
    number of migrations applied."""
    return db.migrate_component(COMPONENT, MIGRATIONS)


class PgIndex:
    """One owner's index: what MailStore calls `db` (execute, executemany) plus
    `transaction`. Calls outside a transaction run in one of their own."""

    empty_blob = "''::bytea"  # SQLite's x'' is a bit string here

    def __init__(self, db: PgDatabase, owner: str, key: str) -> None:
        self.pg = db
        self.owner = owner
        self.key = key  # the NOTIFY payload: the Maildir relative to mail_root
        self._tx: _Tx | None = None

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    @contextlib.contextmanager
    def transaction(self, lock: tuple[str, ...] = (), owner: bool = False) -> Iterator[None]:
        """A transaction scoped to the owner, holding the row locks of `lock` and,
        with `owner` or without names, the owner's advisory lock (taken first);
        nested calls join it."""
        if self._tx is not None:
            yield
            return
        with _unavailable(), self.pg.transaction() as tx:
            # One round trip: the scope, the owner's lock, the notification (sent at commit).
            take = (", pg_advisory_xact_lock(?, hashtext(?))" if owner or not lock else "")
            tx.execute(f"SELECT set_config('search_path', '{SCHEMA}', true), "
                       f"set_config('pillarbox.owner', ?, true){take}, pg_notify(?, ?)",
                       (self.owner, *((OWNER_LOCK, self.owner) if take else ()), CHANNEL,
                        self.key))
            if lock:
                marks = ",".join("?" * len(lock))
                tx.execute(f"SELECT name FROM mailboxes WHERE name IN ({marks}) ORDER BY name "
                           "FOR UPDATE", tuple(sorted(lock)))
            self._tx = tx
            try:
                yield
            finally:
                self._tx = None

    def adopt(self, index: Path) -> bool:
        """Inside a transaction, for an owner with no index here yet: take over the
        SQLite index in the Maildir (a single-node pillarbox's, or `pillarbox
        import-maildir`'s), so clients keep their UIDVALIDITY, UIDs and flags."""
        if self._tx is None or not index.exists():
            return False
        from pillarbox.store import index_transfer

        c = sqlite3.connect(index, isolation_level=None)
        try:
            index_transfer.migrate_sqlite(c)
            for table, cols in index_transfer.COLUMNS.items():
                rows = c.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
                if rows:
                    self._tx.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                                         f"({', '.join('?' * len(cols))})", rows)
        finally:
            c.close()
        log.info("IMAP index taken over from %s owner=%s", index, self.owner)
        return True

    def execute(self, sql: str, params: tuple = ()) -> Result:
        if self._tx is not None:
            return self._tx.execute(sql, params)
        with self._read() as tx:
            return tx.execute(sql, params)

    def executemany(self, sql: str, seq) -> Result:
        if self._tx is not None:
            return self._tx.executemany(sql, seq)
        with self._read() as tx:
            return tx.executemany(sql, seq)

    @contextlib.contextmanager
    def _read(self) -> Iterator[_Tx]:
        """A short transaction without locks (a read, or a write no number depends on)."""
        with _unavailable(), self.pg.transaction() as tx:
            tx.execute(f"SELECT set_config('search_path', '{SCHEMA}', true), "
                       "set_config('pillarbox.owner', ?, true)", (self.owner,))
            yield tx

    def close(self) -> None:
        """The pool is the process's: nothing of our own to close."""


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """PostgreSQL unreachable, said as the index's (IMAP answers name what is down)."""
    try:
        yield
    except backend.IndexUnavailable:
        raise
    except backend.StoreUnavailable as e:
        raise backend.IndexUnavailable(str(e)) from None


class Listener:
    """A thread LISTENing on pillarbox_mailbox; each payload (a Maildir relative
    to mail_root) goes to `on_change` on the event loop, and `on_lost` is called
    after a reconnection (notifications sent meanwhile are lost)."""

    def __init__(self, url: str, call: Callable[[Callable, object], None],
                 on_change: Callable[[str], None], on_lost: Callable[[], None]) -> None:
        self.url = url
        self.call = call  # loop.call_soon_threadsafe
        self.on_change = on_change
        self.on_lost = on_lost
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-mailbox-listen",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()

    def _run(self) -> None:
        def connected(was_down: bool) -> None:
            if was_down:
                log.warning("PostgreSQL reachable again; mailboxes caught up")
                self.call(self.on_lost)

        def lost(e: psycopg.Error, was_down: bool) -> None:
            if not was_down:
                log.warning("PostgreSQL unreachable, mailbox notifications stopped "
                            "error=%s", _reason(e))

        try:
            listen(self.url, CHANNEL, self._closing, connected=connected, lost=lost,
                   notified=lambda payload: self.call(self.on_change, payload))
        except RuntimeError:  # the event loop closed: the process is stopping
            return


def relative_key(mail_root: os.PathLike, path: os.PathLike) -> str:
    """A Maildir's name in notifications: its path under mail_root."""
    return os.path.relpath(path, mail_root)


def attach(stores: StoreRegistry, db: PgDatabase, loop: asyncio.AbstractEventLoop) -> None:
    """`serve` with PostgreSQL: the stores keep their index in `db`, deliveries are
    announced to the other nodes, and their announcements wake our sessions."""
    prepare(db)
    root = stores.mail_root
    stores.shared_index = lambda owner, path: PgIndex(db, owner, relative_key(root, path))

    pending: set[str] = set()  # Maildirs delivered into, announced together

    def announce(keys: set[str]) -> None:  # in a worker thread: off the event loop
        try:
            with db.transaction() as tx:
                for key in sorted(keys):
                    tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, key))
        except backend.errors() as e:  # they see it at their next command
            log.warning("could not announce deliveries maildirs=%d error=%s", len(keys), e)

    def flush() -> None:
        keys = set(pending)
        pending.clear()
        loop.run_in_executor(None, announce, keys)

    def tell_others(path: Path) -> None:
        if not pending:
            loop.call_later(ANNOUNCE_DELAY, flush)
        pending.add(relative_key(root, path))

    stores.tell_others = tell_others
    listener = Listener(db.url, loop.call_soon_threadsafe,
                        lambda key: stores.changed_elsewhere(root / key), stores.caught_up_all)
    stores.closers.append(listener.close)
