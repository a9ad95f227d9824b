"""Embedded SQLite store: one database file in data_dir, WAL mode, migrations.

Each thread gets its own connection (sqlite3 connections are not shared
across threads); WAL lets the CLI write while the server reads.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from pillarbox.store.backend import SchemaTooNew

# Append-only: each entry moves the schema one version forward. Never edit a
# released entry; add a new one. These are also PostgreSQL's migrations (one
# source of truth): store/postgresql.py translates each entry's types
# (INTEGER, REAL, BLOB, INTEGER PRIMARY KEY) and takes PG_OVERRIDES[n] instead
# of an entry it cannot translate. Keep to plain CREATE/ALTER TABLE/INDEX.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        address       TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        enabled       INTEGER NOT NULL DEFAULT 1,
        quota         INTEGER NOT NULL DEFAULT 0,   -- bytes, 0 = unlimited
        used          INTEGER NOT NULL DEFAULT 0,   -- bytes in the mailbox
        created       REAL NOT NULL
    );
    CREATE TABLE aliases (
        alias  TEXT NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (alias, target)
    );
    """,
    # Per-user exceptions to "send only as yourself or an alias you own": a full
    # address, "@domain", or "*" (issue 9, From header check).
    """
    CREATE TABLE sender_rights (
        address TEXT NOT NULL,
        pattern TEXT NOT NULL,
        PRIMARY KEY (address, pattern)
    );
    """,
    # Mailing lists (issue 18): the lists, their members, posts held for a
    # moderator, subscriptions waiting for confirmation, bounces per member.
    """
    CREATE TABLE lists (
        address        TEXT PRIMARY KEY,
        name           TEXT NOT NULL DEFAULT '',
        owners         TEXT NOT NULL DEFAULT '',
        moderators     TEXT NOT NULL DEFAULT '',
        policy         TEXT NOT NULL DEFAULT 'members',
        subject_prefix TEXT NOT NULL DEFAULT '',
        reply_to       TEXT NOT NULL DEFAULT 'author',
        max_size       INTEGER NOT NULL DEFAULT 0,
        archive        TEXT NOT NULL DEFAULT '',
        secret         TEXT NOT NULL,
        created        REAL NOT NULL
    );
    CREATE TABLE list_members (
        list     TEXT NOT NULL,
        address  TEXT NOT NULL,
        enabled  INTEGER NOT NULL DEFAULT 1,
        added    REAL NOT NULL,
        PRIMARY KEY (list, address)
    );
    CREATE TABLE list_held (
        token    TEXT PRIMARY KEY,
        list     TEXT NOT NULL,
        sender   TEXT NOT NULL,
        subject  TEXT NOT NULL DEFAULT '',
        reason   TEXT NOT NULL DEFAULT '',
        approved INTEGER NOT NULL DEFAULT 0,
        message  BLOB NOT NULL,
        created  REAL NOT NULL
    );
    CREATE TABLE list_pending (
        token    TEXT PRIMARY KEY,
        list     TEXT NOT NULL,
        address  TEXT NOT NULL,
        action   TEXT NOT NULL,
        created  REAL NOT NULL
    );
    CREATE TABLE list_bounces (
        list     TEXT NOT NULL,
        address  TEXT NOT NULL,
        at       REAL NOT NULL
    );
    CREATE INDEX list_bounces_member ON list_bounces (list, address)
    """,
    # chatmail mode (issue 17): incoming cleartext opt-in, last login (a day, in
    # seconds since the epoch at 00:00 UTC), accounts made on first login.
    """
    CREATE TABLE chatmail_users (
        address         TEXT PRIMARY KEY,
        allow_cleartext INTEGER NOT NULL DEFAULT 0,
        last_login      INTEGER
    );
    CREATE TABLE chatmail_tokens (
        address TEXT NOT NULL,
        token   TEXT NOT NULL,
        added   INTEGER NOT NULL,
        PRIMARY KEY (address, token)
    );
    """,
    # OpenPGP public keys for encryption at rest (issue 14, directory/keys.py):
    # one per user; `effective` is the Autocrypt effective date of a learned key.
    """
    CREATE TABLE openpgp_keys (
        address     TEXT PRIMARY KEY,
        cert        BLOB NOT NULL,
        fingerprint TEXT NOT NULL,
        source      TEXT NOT NULL,
        effective   INTEGER NOT NULL DEFAULT 0,
        updated     INTEGER NOT NULL
    );
    """,
    # chatmail push notifications waiting for a retry (push.py): one per token,
    # kept across restarts; times in seconds since the epoch.
    """
    CREATE TABLE chatmail_push_pending (
        address   TEXT NOT NULL,
        token     TEXT NOT NULL,
        attempt   INTEGER NOT NULL,
        first_try REAL NOT NULL,
        next_try  REAL NOT NULL,
        PRIMARY KEY (address, token)
    );
    """,
]


class Database:
    kind = "sqlite"
    cheap_data_version = False  # a query: the directory cache asks once a second
    unavailable = False  # a local file: never "down"

    def __init__(self, path: Path, migrate: bool = True) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        if migrate:
            self.migrate()
        else:
            self.check_schema()

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
        return c

    def schema_version(self) -> int:
        return self.conn().execute("PRAGMA user_version").fetchone()[0]

    def check_schema(self) -> int:
        """The schema version, refused when a newer pillarbox made it."""
        version = self.schema_version()
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"{self.path} has schema version {version}, this pillarbox knows up to "
                f"{len(MIGRATIONS)}: it was used by a newer pillarbox; run that version")
        return version

    def migrate(self) -> int:
        """Apply the migrations not yet applied; the number applied."""
        c = self.conn()
        version = self.check_schema()
        for i, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            c.execute("BEGIN IMMEDIATE")
            try:
                for stmt in filter(str.strip, sql.split(";")):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version={i}")
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction:  # SQLite may have rolled back itself (disk full)
                    c.execute("ROLLBACK")
                raise
        return len(MIGRATIONS) - version

    def data_version(self) -> int:
        """Changes when another connection (the CLI, another process) commits."""
        return self.conn().execute("PRAGMA data_version").fetchone()[0]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; yields an object with execute/executemany."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:  # SQLite may have rolled back itself (disk full)
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self.conn().execute(sql, params)
