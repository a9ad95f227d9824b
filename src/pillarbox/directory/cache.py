"""An in-memory copy of users and aliases for the server's hot path.

Every RCPT and every delivery looks addresses up; SQLite queries cost tens of
µs each, a dict lookup well under one. The copy is reloaded whenever another
process (the CLI) has committed a change, which SQLite's `data_version`
tells in one cheap pragma (on PostgreSQL: a count of the NOTIFYs the
directory tables' triggers send, so a change made on any node is seen by
all), so `pillarbox user disable` takes effect on the next command. When
the database cannot be read, the copy last loaded goes on serving. Quota
usage is added up in memory and written at most once a second (a crash loses
at most that second of accounting, never mail).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pillarbox.store import backend

if TYPE_CHECKING:
    from pillarbox.directory.users import User
    from pillarbox.store.postgresql import PgDatabase
    from pillarbox.store.sqlite import Database

log = logging.getLogger("pillarbox.directory")

# Portable (SQLite and PostgreSQL): add a delta to the usage, never below 0.
USED_UPDATE = ("UPDATE users SET used = CASE WHEN used + ? > 0 THEN used + ? ELSE 0 END "
               "WHERE address = ?")

FLUSH_EVERY = 1.0
FLUSH_RETRY = 10.0  # after a failed write (disk full)
CHECK_EVERY = 1.0
RELOAD_RETRY = 5.0  # after a failed reload (PostgreSQL down)


class DirectoryCache:
    def __init__(self, db: Database | PgDatabase) -> None:
        self.db = db
        self._version: int | None = None
        self.users: dict[str, User] = {}
        self.aliases: dict[str, list[str]] = {}
        self._pending_used: dict[str, int] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._checked = 0.0
        self._retry_at = 0.0
        self._failed = False  # the last reload failed
        self._loading = False  # a reload runs in a worker thread

    @property
    def stale(self) -> bool:
        return self._failed or self.db.unavailable

    def fresh(self) -> DirectoryCache:
        now = time.monotonic()
        # PostgreSQL's version is a counter in memory: look at every call, so a
        # change on another node counts from the moment its NOTIFY arrives.
        if ((now - self._checked > CHECK_EVERY or self.db.cheap_data_version)
                and now >= self._retry_at):
            self._checked = now
            try:
                version = self.db.data_version()
                if version == self._version:
                    self._failed = False  # the database answers again; nothing changed
                elif not self._reload_in_background(version):
                    self._reload()
                    self._version = version
                    self._failed = False
            except backend.errors() as e:
                # The database is down: no lookup waits on it again before RELOAD_RETRY.
                self._failed = True
                self._retry_at = now + RELOAD_RETRY
                log.warning("directory not reloaded, serving the copy last loaded error=%s", e)
        return self

    def invalidate(self) -> None:
        """Reload on the next lookup (the CLI changed something)."""
        self._checked = 0.0
        self._retry_at = 0.0
        self._version = None

    def _reload_in_background(self, version: int) -> bool:
        """On PostgreSQL, a change another node made is loaded in a worker thread
        while lookups go on with the copy they have (a query over the network
        must not hold up the event loop). False: load now instead (SQLite, the
        first load, after `invalidate`, or outside the event loop)."""
        if not self.db.cheap_data_version or self._version is None:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._loading:
            return True  # the next lookup after it finished looks again

        def done(fut: asyncio.Future) -> None:
            self._loading = False
            try:
                rows = fut.result()
            except backend.errors() as e:
                self._failed = True
                self._retry_at = time.monotonic() + RELOAD_RETRY
                log.warning("directory not reloaded, serving the copy last loaded error=%s", e)
                return
            self._install(*rows)
            self._version = version
            self._failed = False

        self._loading = True
        loop.run_in_executor(None, self._load).add_done_callback(done)
        return True

    def _load(self) -> tuple[list[tuple], dict[str, list[str]]]:
        users = self.db.execute("SELECT address, enabled, quota, used FROM users").fetchall()
        aliases: dict[str, list[str]] = {}
        for alias, target in self.db.execute("SELECT alias, target FROM aliases ORDER BY rowid"):
            aliases.setdefault(alias, []).append(target)
        return users, aliases

    def _install(self, rows: list[tuple], aliases: dict[str, list[str]]) -> None:
        """The loaded copy in place, plus the usage not yet written (event loop thread)."""
        from pillarbox.directory.users import User

        self.users = {address: User(address, bool(enabled), quota,
                                    used + self._pending_used.get(address, 0))
                      for address, enabled, quota, used in rows}
        self.aliases = aliases

    def _reload(self) -> None:
        self._install(*self._load())

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
        try:
            with self.db.transaction() as c:
                c.executemany(USED_UPDATE, [(d, d, a) for a, d in pending.items()])
        except backend.errors() as e:
            # Disk full, PostgreSQL down: keep the counts in memory and try again later.
            for a, d in pending.items():
                self._pending_used[a] = self._pending_used.get(a, 0) + d
            log.warning("quota usage not saved, retrying error=%r", e)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            if self._flush_handle is None:
                self._flush_handle = loop.call_later(FLUSH_RETRY, self.flush)
