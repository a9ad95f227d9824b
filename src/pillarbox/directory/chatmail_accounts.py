"""Chatmail accounts: made on first login, a cleartext opt-in, the last login
by day (docs/CHATMAIL.md).

In `mode = "chatmail"` a login (IMAP or SMTP AUTH) for an unknown address of
a served domain makes the account when the local part is `[a-z0-9._-]` of
the configured length, the password is long enough and the server has room
(free disk in data_dir, available memory); otherwise the login fails as a
wrong password would. Later logins need the same password (the account is an
ordinary user from then on). `new_account()` makes a random one (for the
HTTP endpoint's `POST /new`, which is not here).

The last login is kept as the day only (00:00 UTC of that day): enough for
expiry, and it tells nobody when during the day someone was on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from pillarbox.address import AddressError, normalize
from pillarbox.directory.users import DirectoryError, Users
from pillarbox.store import backend
from pillarbox.store.sqlite import Database

log = logging.getLogger("pillarbox.chatmail")

LOCALPART_RE = re.compile(r"[a-z0-9._-]+")
DAY = 86400
# What `new_account` draws from: letters and digits only, so an address is
# easy to read out and never starts or ends with a dot.
_RANDOM_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def day_of(now: float) -> int:
    return int(now) // DAY * DAY


def allows_cleartext(db: Database, address: str) -> bool:
    row = db.execute("SELECT allow_cleartext FROM chatmail_users WHERE address = ?",
                     (address.lower(),)).fetchone()
    return bool(row and row[0])


def set_allow_cleartext(db: Database, address: str, on: bool) -> None:
    db.execute("INSERT INTO chatmail_users (address, allow_cleartext) VALUES (?, ?) "
               "ON CONFLICT(address) DO UPDATE SET allow_cleartext = excluded.allow_cleartext",
               (address.lower(), int(on)))


def last_logins(db: Database) -> dict[str, int | None]:
    return {a: t for a, t in db.execute("SELECT address, last_login FROM chatmail_users")}


def set_last_login(db: Database, address: str, day: int) -> None:
    db.execute("INSERT INTO chatmail_users (address, last_login) VALUES (?, ?) "
               "ON CONFLICT(address) DO UPDATE SET last_login = excluded.last_login",
               (address.lower(), day))


def forget(db: Database, address: str) -> None:
    db.execute("DELETE FROM chatmail_users WHERE address = ?", (address.lower(),))
    db.execute("DELETE FROM chatmail_tokens WHERE address = ?", (address.lower(),))
    db.execute("DELETE FROM chatmail_push_pending WHERE address = ?", (address.lower(),))


def free_memory() -> int | None:
    """Available memory in bytes (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_disk(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Accounts:
    """Create-on-login and the last-login record for one server."""

    def __init__(self, users: Users, config: Any, clock: Any = time.time) -> None:
        self.users = users
        self.config = config
        self.settings = config.chatmail
        self.clock = clock
        self._seen: dict[str, int] = {}  # address -> day already written

    def why_not(self, address: str, password: str) -> str | None:
        """Why this login may not make an account (for the debug log), or None."""
        s = self.settings
        local, _, domain = address.rpartition("@")
        if not self.config.is_local_domain(domain):
            return "not a served domain"
        if not s.username_min_length <= len(local) <= s.username_max_length:
            return "local part length"
        if not LOCALPART_RE.fullmatch(local):
            return "local part characters"
        if len(password) < s.password_min_length:
            return "password too short"
        return self.no_room()

    def no_room(self) -> str | None:
        try:
            if free_disk(self.config.data_dir) < self.settings.min_free_disk:
                return "too little free disk"
        except OSError:
            return "free disk unknown"
        mem = free_memory()
        if mem is not None and mem < self.settings.min_free_memory:
            return "too little free memory"
        return None

    def _create(self, address: str, password: str) -> bool:
        """Blocking (argon2): True if this call made the account."""
        try:
            self.users.add(address, password, quota=self.settings.max_mailbox_size)
        except (DirectoryError, *backend.integrity_errors()):
            return False  # a concurrent first login (on any node) made it: the password decides
        set_last_login(self.users.db, address, day_of(self.clock()))
        if self.users.cache is not None:
            self.users.cache.invalidate()
        return True

    async def create_on_login(self, address: str, password: str) -> bool:
        """Called by Users.check_password for an unknown address."""
        try:
            address = normalize(address)
        except AddressError:
            return False
        why = self.why_not(address, password)
        if why is not None:
            log.debug("no account made: %s", why)
            return False
        made = await asyncio.to_thread(self._create, address, password)
        if made:
            log.info("account made on first login")
        return made

    def logged_in(self, address: str) -> None:
        """Record the day of a successful login (one write per user and day)."""
        day = day_of(self.clock())
        if self._seen.get(address) == day:
            return
        if len(self._seen) > 100_000:
            self._seen.clear()
        self._seen[address] = day
        try:
            set_last_login(self.users.db, address, day)
        except backend.errors() as e:
            log.warning("last login not recorded error=%r", e)

    def attach(self) -> None:
        self.users.creator = self.create_on_login
        self.users.on_login = self.logged_in


def new_account(users: Users, config: Any) -> tuple[str, str]:
    """A fresh random account: (address, password). For `POST /new` on the
    HTTP endpoint (issue 16) to call; raises DirectoryError without room."""
    s = config.chatmail
    accounts = Accounts(users, config)
    why = accounts.no_room()
    if why is not None:
        raise DirectoryError(f"no new accounts now: {why}")
    for _ in range(10):
        local = "".join(secrets.choice(_RANDOM_CHARS) for _ in range(s.username_max_length))
        address = f"{local}@{config.domains[0]}"
        password = secrets.token_urlsafe(max(s.password_min_length, 20))
        if accounts._create(address, password):
            return address, password
    raise DirectoryError("could not find a free address")


def dcaccount_qr(hostname: str) -> str:
    """The QR content a Delta Chat app scans to make an account here."""
    return f"DCACCOUNT:https://{hostname}/new"


# -- push device tokens (IMAP METADATA /private/devicetoken) --------------------

MAX_TOKENS = 20  # per user: a phone, a tablet, a reinstall or two
TOKEN_LIFETIME = 90 * DAY  # a token not set again for this long is dropped
MAX_TOKEN = 4096  # octets


def add_token(db: Database, address: str, token: str, now: float) -> None:
    address = address.lower()
    # ON CONFLICT rather than SQLite's INSERT OR REPLACE: PostgreSQL runs it too.
    db.execute("INSERT INTO chatmail_tokens (address, token, added) VALUES (?, ?, ?) "
               "ON CONFLICT (address, token) DO UPDATE SET added = excluded.added",
               (address, token, int(now)))
    db.execute("DELETE FROM chatmail_tokens WHERE address = ? AND token NOT IN ("
               "SELECT token FROM chatmail_tokens WHERE address = ? ORDER BY added DESC "
               "LIMIT ?)", (address, address, MAX_TOKENS))


def tokens(db: Database, address: str, now: float) -> list[str]:
    rows = db.execute("SELECT token FROM chatmail_tokens WHERE address = ? AND added > ? "
                      "ORDER BY added", (address.lower(), int(now) - TOKEN_LIFETIME))
    return [r[0] for r in rows]


def remove_token(db: Database, address: str, token: str | None = None) -> None:
    if token is None:
        db.execute("DELETE FROM chatmail_tokens WHERE address = ?", (address.lower(),))
    else:
        db.execute("DELETE FROM chatmail_tokens WHERE address = ? AND token = ?",
                   (address.lower(), token))


# -- push notifications waiting for a retry (push.py) ---------------------------

def save_pending_push(db: Database, address: str, token: str, attempt: int,
                      first_try: float, next_try: float) -> None:
    db.execute("INSERT INTO chatmail_push_pending (address, token, attempt, first_try, next_try) "
               "VALUES (?, ?, ?, ?, ?) ON CONFLICT (address, token) DO UPDATE SET "
               "attempt = excluded.attempt, first_try = excluded.first_try, "
               "next_try = excluded.next_try",
               (address.lower(), token, attempt, first_try, next_try))


def pending_pushes(db: Database, limit: int) -> list[tuple[str, str, int, float, float]]:
    """(address, token, attempt, first_try, next_try), the soonest first; rows
    of a token removed meanwhile are dropped."""
    db.execute("DELETE FROM chatmail_push_pending WHERE NOT EXISTS (SELECT 1 FROM "
               "chatmail_tokens t WHERE t.address = chatmail_push_pending.address "
               "AND t.token = chatmail_push_pending.token)")
    rows = db.execute("SELECT address, token, attempt, first_try, next_try "
                      "FROM chatmail_push_pending ORDER BY next_try LIMIT ?", (limit,))
    return [tuple(r) for r in rows]


def forget_pending_push(db: Database, address: str, token: str) -> None:
    db.execute("DELETE FROM chatmail_push_pending WHERE address = ? AND token = ?",
               (address.lower(), token))
