"""Which database holds the shared state: the embedded SQLite file or PostgreSQL.

`[storage] url` chooses: empty means SQLite in data_dir, `postgresql://...`
means a PostgreSQL database that several nodes share (docs/POSTGRESQL.md
says what lives there so far). Both backends offer the same small surface
(`execute`, `transaction`, `data_version`, `schema_version`, `migrate`),
so the directory code does not know which one it talks to.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pillarbox.store.postgresql import PgDatabase
    from pillarbox.store.sqlite import Database


class StoreUnavailable(Exception):
    """The database cannot be reached now (PostgreSQL down or restarting); try again later."""


class IndexUnavailable(StoreUnavailable):
    """The IMAP index on PostgreSQL cannot be reached now (store/pg_mailbox_index.py)."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer pillarbox; this one must not touch it."""


def errors() -> tuple[type[BaseException], ...]:
    """The exceptions a database call may raise that are about the database, not a bug."""
    out: tuple[type[BaseException], ...] = (sqlite3.Error, StoreUnavailable)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return out
    return out + (psycopg.Error,)


def integrity_errors() -> tuple[type[BaseException], ...]:
    """A constraint refused the write (a row with that key exists already)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, psycopg.IntegrityError)


def is_postgresql(url: str) -> bool:
    return url.startswith("postgresql://")


def load_driver(url: str) -> None:
    """Import the database driver now (with everything it imports lazily), before
    `serve` drops root: the service user may not be able to read the modules."""
    if is_postgresql(url):
        import zoneinfo  # noqa: F401  psycopg's C module imports it at its first load

        import pillarbox.store.pg_mailbox_index  # noqa: F401
        import pillarbox.store.postgresql  # noqa: F401


def open_database(url: str, data_dir: Path, migrate: bool = True) -> Database | PgDatabase:
    """The directory database named by `[storage] url`, migrated unless `migrate` is false
    (then only checked not to be newer than this program)."""
    if is_postgresql(url):
        from pillarbox.store.postgresql import PgDatabase

        return PgDatabase(url, migrate=migrate)
    from pillarbox.store.sqlite import Database

    return Database(data_dir / "pillarbox.db", migrate=migrate)
