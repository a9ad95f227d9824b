"""Users: addresses, argon2id password hashes, enabled flag, quota."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from pillarbox.address import normalize
from pillarbox.directory.cache import DirectoryCache
from pillarbox.store.sqlite import Database

_hasher = PasswordHasher()  # argon2id with the library's current recommended cost


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash("pillarbox-dummy-password-for-timing")


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


class Users:
    def __init__(self, db: Database, cache: DirectoryCache | None = None) -> None:
        self.db = db
        self.cache = cache  # the server's in-memory copy; the CLI goes to SQLite

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
            (address, _hasher.hash(password), quota, time.time()),
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

    def set_password(self, address: str, password: str) -> None:
        address = self._require(address)
        if not password:
            raise DirectoryError("the password must not be empty")
        self.db.execute(
            "UPDATE users SET password_hash = ? WHERE address = ?",
            (_hasher.hash(password), address),
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
        self.db.execute(
            "UPDATE users SET used = MAX(0, used + ?) WHERE address = ?", (delta, address.lower())
        )

    def set_used(self, address: str, used: int) -> None:
        self.db.execute("UPDATE users SET used = ? WHERE address = ?", (used, address.lower()))
        if self.cache is not None:
            self.cache.invalidate()

    def list(self) -> list[User]:
        rows = self.db.execute(
            "SELECT address, enabled, quota, used FROM users ORDER BY address"
        ).fetchall()
        return [User(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    def authenticate(self, address: str, password: str) -> str | None:
        """Return the canonical address if the password is right and the user enabled.

        Slow on purpose (argon2id): call it from a worker thread.
        """
        try:
            address = normalize(address)
        except ValueError:
            return None
        row = self.db.execute(
            "SELECT password_hash, enabled FROM users WHERE address = ?", (address,)
        ).fetchone()
        try:
            # Verify even for unknown users so timing does not reveal which exist.
            _hasher.verify(row[0] if row else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return None
        if not row or not row[1]:
            return None
        return address

