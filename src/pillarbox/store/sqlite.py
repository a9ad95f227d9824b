"""Embedded SQLite store: one database file in data_dir, WAL mode, migrations.

Each thread gets its own connection (sqlite3 connections are not shared
across threads); WAL lets the CLI write while the server reads.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

# Append-only: each entry moves the schema one version forward. Never edit a
# released entry; add a new one.
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
]


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.migrate()

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
        return c

    def migrate(self) -> None:
        c = self.conn()
        version = c.execute("PRAGMA user_version").fetchone()[0]
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

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self.conn().execute(sql, params)
