"""An in-memory copy of users and aliases for the server's hot path.

Every RCPT and every delivery looks addresses up; SQLite queries cost tens of
µs each, a dict lookup well under one. The copy is reloaded whenever another
process (the CLI) has committed a change, which SQLite's `data_version`
tells in one cheap pragma, so `pillarbox user disable` takes effect on the
next command. Quota usage is added up in memory and written at most once a
second (a crash loses at most that second of accounting, never mail).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import TYPE_CHECKING

from pillarbox.store.sqlite import Database

if TYPE_CHECKING:
    from pillarbox.directory.users import User

log = logging.getLogger("pillarbox.directory")

FLUSH_EVERY = 1.0
FLUSH_RETRY = 10.0  # after a failed write (disk full)
CHECK_EVERY = 1.0


class DirectoryCache:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._version: int | None = None
        self.users: dict[str, User] = {}
        self.aliases: dict[str, list[str]] = {}
        self._pending_used: dict[str, int] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._checked = 0.0

    def fresh(self) -> DirectoryCache:
        now = time.monotonic()
        if now - self._checked > CHECK_EVERY:
            self._checked = now
            version = self.db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._reload()
                self._version = version
        return self

    def invalidate(self) -> None:
        """Reload on the next lookup (the CLI changed something)."""
        self._checked = 0.0
        self._version = None

    def _reload(self) -> None:
        from pillarbox.directory.users import User

        users = {}
        for address, enabled, quota, used in self.db.execute(
            "SELECT address, enabled, quota, used FROM users"
        ):
            users[address] = User(address, bool(enabled), quota, used
                                  + self._pending_used.get(address, 0))
        aliases: dict[str, list[str]] = {}
        for alias, target in self.db.execute("SELECT alias, target FROM aliases ORDER BY rowid"):
            aliases.setdefault(alias, []).append(target)
        self.users, self.aliases = users, aliases

    def add_used(self, address: str, delta: int) -> None:
        user = self.users.get(address)
        if user is not None:
            user.used = max(0, user.used + delta)
        self._pending_used[address] = self._pending_used.get(address, 0) + delta
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_handle = loop.call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending_used:
            return
        pending, self._pending_used = self._pending_used, {}
        c = self.db.conn()
        try:
            c.execute("BEGIN IMMEDIATE")
            c.executemany("UPDATE users SET used = MAX(0, used + ?) WHERE address = ?",
                          [(d, a) for a, d in pending.items()])
            c.execute("COMMIT")
        except sqlite3.Error as e:
            # Disk full: keep the counts in memory and try again later.
            if c.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
            for a, d in pending.items():
                self._pending_used[a] = self._pending_used.get(a, 0) + d
            log.warning("quota usage not saved, retrying error=%r", e)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            if self._flush_handle is None:
                self._flush_handle = loop.call_later(FLUSH_RETRY, self.flush)
