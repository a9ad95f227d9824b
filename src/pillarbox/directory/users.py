"""Users: addresses, argon2id password hashes, enabled flag, quota."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pillarbox.address import AddressError, domain_of, normalize, normalize_domain
from pillarbox.directory import passwords
from pillarbox.directory.cache import USED_UPDATE, DirectoryCache

if TYPE_CHECKING:
    from pillarbox.store.postgresql import PgDatabase
    from pillarbox.store.sqlite import Database

# Each argon2id check takes 64 MiB and ~70 ms of a core. Two threads of their
# own bound both under a login burst, and keep the default pool (spool writes,
# DKIM, Maildir batches) free while they work.
ARGON2_THREADS = 2
# A successful login is remembered `login_cache` seconds ([limits]), so clients
# that reconnect often (mbsync, chat clients) do not pay argon2 each time. Keyed
# by an HMAC of the password under a per-process random key; dropped when the
# stored hash changes.
AUTH_CACHE_MAX = 10_000


class DirectoryError(Exception):
    """A directory operation that cannot be done, with a message for the user."""


@dataclass
class User:
    address: str
    enabled: bool
    quota: int  # bytes, 0 = unlimited
    used: int

    @property
    def over_quota(self) -> bool:
        return self.quota > 0 and self.used >= self.quota


def sender_pattern(pattern: str) -> str:
    """A sender right in canonical form: `user@domain`, `@domain` or `*` (any address)."""
    pattern = pattern.strip()
    try:
        if pattern == "*":
            return pattern
        if pattern.startswith("@"):
            return "@" + normalize_domain(pattern[1:])
        return normalize(pattern)
    except AddressError as e:
        raise DirectoryError(f"{e}; a sender right is an address, @domain or *") from None


def sender_allowed(rights: list[str], address: str) -> bool:
    return "*" in rights or address in rights or ("@" + domain_of(address)) in rights


class Users:
    def __init__(self, db: Database | PgDatabase, cache: DirectoryCache | None = None,
                 login_cache: float = 600.0) -> None:
        self.db = db
        self.cache = cache  # the server's in-memory copy; the CLI goes to SQLite
        self.login_cache = login_cache
        self._argon2: concurrent.futures.ThreadPoolExecutor | None = None
        self._auth_key = os.urandom(32)
        self._auth_cache: dict[tuple[str, bytes], tuple[float, str]] = {}
        # chatmail mode (directory/chatmail_accounts.py): make an unknown
        # address's account at its first login; record each login's day.
        self.creator: Any = None
        self.on_login: Any = None

    def directory_stale(self) -> bool:
        """The server's copy may miss changes: the database cannot be read now."""
        return self.cache is not None and self.cache.stale

    def get(self, address: str) -> User | None:
        if self.cache is not None:
            return self.cache.fresh().users.get(address.lower())
        row = self.db.execute(
            "SELECT address, enabled, quota, used FROM users WHERE address = ?", (address.lower(),)
        ).fetchone()
        return User(row[0], bool(row[1]), row[2], row[3]) if row else None

    def add(self, address: str, password: str, quota: int = 0) -> User:
        address = normalize(address)
        if not password:
            raise DirectoryError("the password must not be empty")
        if self.get(address):
            raise DirectoryError(f"user {address} already exists")
        self.db.execute(
            "INSERT INTO users (address, password_hash, quota, created) VALUES (?, ?, ?, ?)",
            (address, passwords.hash_password(password), quota, time.time()),
        )
        return User(address, True, quota, 0)

    def _require(self, address: str) -> str:
        address = normalize(address)
        if not self.get(address):
            raise DirectoryError(f"no such user {address}; see `pillarbox user list`")
        return address

    def delete(self, address: str) -> None:
        address = self._require(address)
        self.db.execute("DELETE FROM users WHERE address = ?", (address,))
        self.db.execute("DELETE FROM sender_rights WHERE address = ?", (address,))

    # -- sender rights: addresses a user may send as besides its own and its aliases

    def sender_rights(self, address: str) -> list[str]:
        rows = self.db.execute("SELECT pattern FROM sender_rights WHERE address = ? "
                               "ORDER BY pattern", (address.lower(),)).fetchall()
        return [r[0] for r in rows]

    def allow_sender(self, address: str, pattern: str) -> str:
        address = self._require(address)
        pattern = sender_pattern(pattern)
        self.db.execute("INSERT INTO sender_rights (address, pattern) VALUES (?, ?) "
                        "ON CONFLICT DO NOTHING", (address, pattern))
        return pattern

    def disallow_sender(self, address: str, pattern: str) -> str:
        address = self._require(address)
        pattern = sender_pattern(pattern)
        cur = self.db.execute("DELETE FROM sender_rights WHERE address = ? AND pattern = ?",
                              (address, pattern))
        if cur.rowcount == 0:
            raise DirectoryError(f"{address} has no sender right {pattern}")
        return pattern

    def set_password(self, address: str, password: str) -> None:
        address = self._require(address)
        if not password:
            raise DirectoryError("the password must not be empty")
        self.db.execute(
            "UPDATE users SET password_hash = ? WHERE address = ?",
            (passwords.hash_password(password), address),
        )

    def set_enabled(self, address: str, enabled: bool) -> None:
        address = self._require(address)
        self.db.execute("UPDATE users SET enabled = ? WHERE address = ?", (int(enabled), address))

    def set_quota(self, address: str, quota: int) -> None:
        address = self._require(address)
        self.db.execute("UPDATE users SET quota = ? WHERE address = ?", (quota, address))

    def add_used(self, address: str, delta: int) -> None:
        if self.cache is not None:
            self.cache.add_used(address.lower(), delta)
            return
        self.db.execute(USED_UPDATE, (delta, delta, address.lower()))

    def set_used(self, address: str, used: int) -> None:
        self.db.execute("UPDATE users SET used = ? WHERE address = ?", (used, address.lower()))
        if self.cache is not None:
            self.cache.invalidate()

    def list(self) -> list[User]:
        rows = self.db.execute(
            "SELECT address, enabled, quota, used FROM users ORDER BY address"
        ).fetchall()
        return [User(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    def _password_row(self, address: str) -> tuple[str, bool] | None:
        row = self.db.execute(
            "SELECT password_hash, enabled FROM users WHERE address = ?", (address,)
        ).fetchone()
        return (row[0], bool(row[1])) if row else None

    def authenticate(self, address: str, password: str) -> str | None:
        """Return the canonical address if the password is right and the user enabled.

        Slow on purpose (argon2id); the server uses `check_password` instead.
        """
        try:
            address = normalize(address)
        except ValueError:
            return None
        row = self._password_row(address)
        ok = passwords.verify(row[0] if row else None, password)
        return address if ok and row and row[1] else None

    async def check_password(self, address: str, password: str) -> str | None:
        """`authenticate` for the event loop: argon2 in its own small pool, with a cache."""
        try:
            address = normalize(address)
        except ValueError:
            return None
        row = await asyncio.to_thread(self._password_row, address)
        if row is None and self.creator is not None:
            # Made now, or by a concurrent first login: either way, read it again.
            await self.creator(address, password)
            row = await asyncio.to_thread(self._password_row, address)
        key = (address, hmac.digest(self._auth_key, password.encode("utf-8", "surrogatepass"),
                                    hashlib.sha256))
        now = time.monotonic()
        hit = self._auth_cache.get(key)
        if row and hit and hit[0] > now and hit[1] == row[0]:
            if row[1] and self.on_login is not None:
                self.on_login(address)
            return address if row[1] else None
        if self._argon2 is None:
            self._argon2 = concurrent.futures.ThreadPoolExecutor(ARGON2_THREADS, "argon2")
        stored = await asyncio.get_running_loop().run_in_executor(
            self._argon2, self._check, address, row, password)
        if stored is None:
            return None
        if self.login_cache > 0:
            if len(self._auth_cache) >= AUTH_CACHE_MAX:
                self._auth_cache.clear()
            self._auth_cache[key] = (now + self.login_cache, stored)
        if self.on_login is not None:
            self.on_login(address)
        return address

    def _check(self, address: str, row: tuple[str, bool] | None, password: str) -> str | None:
        """Blocking: verify (at full cost for an unknown user too). For an enabled user
        with the right password, return the stored hash, replaced first by a current
        one when it has older parameters (unless `user passwd` changed it meanwhile)."""
        stored = row[0] if row else None
        if not passwords.verify(stored, password) or row is None or not row[1]:
            return None
        assert stored is not None
        if not passwords.needs_rehash(stored):
            return stored
        new = passwords.hash_password(password)
        changed = self.db.execute(
            "UPDATE users SET password_hash = ? WHERE address = ? AND password_hash = ?",
            (new, address, stored)).rowcount
        return new if changed else stored
