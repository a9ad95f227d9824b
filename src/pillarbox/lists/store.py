"""Lists, members, held posts, pending confirmations and bounces in the
directory database (store/sqlite.py, the migration "Mailing lists"): the one
`[storage] url` names, SQLite in data_dir or PostgreSQL shared by the nodes.
SQL both backends understand (ON CONFLICT, the backend's `transaction`).

Blocking: the target calls it from worker threads where a list may be large
(10,000 members), the CLI directly. Database failures raise the backend's
errors (store/backend.errors()).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pillarbox.store.backend import open_database

if TYPE_CHECKING:
    from pillarbox.store.postgresql import PgDatabase
    from pillarbox.store.sqlite import Database

POLICIES = ("members", "anyone", "moderated")
REPLY_TO = ("author", "list")
# `list set` keys and the column each is kept in.
SETTINGS = ("name", "owners", "moderators", "policy", "subject_prefix", "reply_to",
            "max_size", "archive")


class ListError(ValueError):
    """A list command that cannot be done; the text says why."""


@dataclass
class MailingList:
    address: str
    name: str
    owners: list[str]
    moderators: list[str]
    policy: str
    subject_prefix: str
    reply_to: str
    max_size: int
    archive: str
    secret: str

    @property
    def local(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def list_id(self) -> str:
        """RFC 2919 list-id: the address with its @ turned into a dot."""
        return f"{self.local}.{self.domain}"

    @property
    def display(self) -> str:
        return self.name or self.local

    def at(self, suffix: str) -> str:
        """`team-request@d` for suffix "-request", `team+x@d` for "+x"."""
        return f"{self.local}{suffix}@{self.domain}"

    def staff(self) -> set[str]:
        return set(self.owners) | set(self.moderators)


@dataclass
class Held:
    token: str
    list: str
    sender: str
    subject: str
    reason: str
    approved: bool
    created: float


def _addresses(text: str) -> list[str]:
    return [a for a in text.replace(",", " ").split() if a]


_COLUMNS = ("address, name, owners, moderators, policy, subject_prefix, reply_to, max_size, "
            "archive, secret")


class ListStore:
    def __init__(self, db: Database | PgDatabase) -> None:
        self.db = db

    @classmethod
    def open(cls, storage_url: str, data_dir: Path) -> ListStore:
        """The lists of the database `[storage] url` names (migrated, as the CLI opens it)."""
        return cls(open_database(storage_url, data_dir))

    # -- lists --------------------------------------------------------------------

    def get(self, address: str) -> MailingList | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM lists WHERE address = ?",
                              (address.lower(),)).fetchone()
        if row is None:
            return None
        return MailingList(row[0], row[1], _addresses(row[2]), _addresses(row[3]), row[4],
                           row[5], row[6], row[7], row[8], row[9])

    def all(self) -> list[MailingList]:
        rows = self.db.execute("SELECT address FROM lists ORDER BY address").fetchall()
        return [x for (a,) in rows if (x := self.get(a)) is not None]

    def create(self, address: str, name: str = "", owners: list[str] | None = None) -> None:
        if self.get(address) is not None:
            raise ListError(f"list {address} exists already")
        self.db.execute(
            "INSERT INTO lists (address, name, owners, secret, created) VALUES (?, ?, ?, ?, ?)",
            (address.lower(), name, " ".join(owners or []), secrets.token_hex(16), time.time()))

    def delete(self, address: str) -> None:
        self._need(address)
        with self.db.transaction() as tx:
            for table, col in (("lists", "address"), ("list_members", "list"),
                               ("list_held", "list"), ("list_pending", "list"),
                               ("list_bounces", "list")):
                tx.execute(f"DELETE FROM {table} WHERE {col} = ?", (address.lower(),))

    def set(self, address: str, key: str, value: str) -> None:
        self._need(address)
        if key not in SETTINGS:
            raise ListError(f"unknown setting {key!r}; expected one of {', '.join(SETTINGS)}")
        stored: str | int = value
        if key == "policy" and value not in POLICIES:
            raise ListError(f"policy: expected one of {', '.join(POLICIES)}, got {value!r}")
        if key == "reply_to" and value not in REPLY_TO:
            raise ListError(f"reply_to: expected one of {', '.join(REPLY_TO)}, got {value!r}")
        if key == "max_size":
            if not value.isdigit():
                raise ListError(f"max_size: expected a number of bytes (0: no limit), "
                                f"got {value!r}")
            stored = int(value)
        if key in ("owners", "moderators"):
            stored = " ".join(a.lower() for a in _addresses(value))
        if any(c in str(stored) for c in "\r\n"):
            raise ListError(f"{key}: no line breaks")
        self.db.execute(f"UPDATE lists SET {key} = ? WHERE address = ?",
                        (stored, address.lower()))

    def _need(self, address: str) -> MailingList:
        lst = self.get(address)
        if lst is None:
            raise ListError(f"no list {address}")
        return lst

    # -- members ------------------------------------------------------------------

    def add_members(self, address: str, members: list[str]) -> int:
        self._need(address)
        now = time.time()
        with self.db.transaction() as tx:
            return tx.executemany(
                "INSERT INTO list_members (list, address, added) VALUES (?, ?, ?) "
                "ON CONFLICT (list, address) DO NOTHING",
                [(address.lower(), m.lower(), now) for m in members]).rowcount

    def remove_members(self, address: str, members: list[str]) -> int:
        self._need(address)
        n = 0
        for m in members:
            n += self.db.execute("DELETE FROM list_members WHERE list = ? AND address = ?",
                                 (address.lower(), m.lower())).rowcount
            self.db.execute("DELETE FROM list_bounces WHERE list = ? AND address = ?",
                            (address.lower(), m.lower()))
        return n

    def members(self, address: str) -> list[tuple[str, bool]]:
        rows = self.db.execute("SELECT address, enabled FROM list_members WHERE list = ? "
                               "ORDER BY address", (address.lower(),)).fetchall()
        return [(a, bool(e)) for a, e in rows]

    def recipients(self, address: str) -> list[str]:
        """The members a post goes to: the enabled ones."""
        rows = self.db.execute("SELECT address FROM list_members WHERE list = ? AND enabled = 1",
                               (address.lower(),)).fetchall()
        return [a for (a,) in rows]

    def is_member(self, address: str, member: str) -> bool:
        return self.db.execute("SELECT 1 FROM list_members WHERE list = ? AND address = ?",
                               (address.lower(), member.lower())).fetchone() is not None

    def disable(self, address: str, member: str) -> bool:
        """Disable an enabled member; False if it was not (or no longer) enabled, so
        that of two bounces handled at once only one disables and tells the owners."""
        return self.db.execute("UPDATE list_members SET enabled = 0 WHERE list = ? AND "
                               "address = ? AND enabled = 1",
                               (address.lower(), member.lower())).rowcount == 1

    def set_enabled(self, address: str, member: str, enabled: bool) -> None:
        self.db.execute("UPDATE list_members SET enabled = ? WHERE list = ? AND address = ?",
                        (int(enabled), address.lower(), member.lower()))
        if enabled:
            self.db.execute("DELETE FROM list_bounces WHERE list = ? AND address = ?",
                            (address.lower(), member.lower()))

    # -- held posts ---------------------------------------------------------------

    def hold(self, address: str, sender: str, subject: str, reason: str,
             message: bytes) -> str:
        token = secrets.token_hex(12)
        self.db.execute("INSERT INTO list_held (token, list, sender, subject, reason, message, "
                        "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (token, address.lower(), sender, subject[:200], reason, message,
                         time.time()))
        return token

    def held(self, address: str | None = None) -> list[Held]:
        sql = "SELECT token, list, sender, subject, reason, approved, created FROM list_held"
        rows = (self.db.execute(sql + " WHERE list = ? ORDER BY created", (address.lower(),))
                if address else self.db.execute(sql + " ORDER BY created")).fetchall()
        return [Held(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]

    def held_one(self, token: str) -> Held | None:
        return next((h for h in self.held() if h.token == token.lower()), None)

    def mark_approved(self, token: str) -> bool:
        return self.db.execute("UPDATE list_held SET approved = 1 WHERE token = ?",
                               (token.lower(),)).rowcount == 1

    def take_held(self, token: str) -> tuple[Held, bytes] | None:
        """The held post, removed from the hold queue (None: no such token)."""
        h = self.held_one(token)
        if h is None:
            return None
        row = self.db.execute("SELECT message FROM list_held WHERE token = ?",
                              (h.token,)).fetchone()
        if row is None or self.db.execute("DELETE FROM list_held WHERE token = ?",
                                          (h.token,)).rowcount != 1:
            return None  # taken meanwhile
        return h, bytes(row[0])

    # -- confirmations ------------------------------------------------------------

    def pending(self, address: str, member: str, action: str) -> str:
        token = secrets.token_hex(12)
        self.db.execute("INSERT INTO list_pending (token, list, address, action, created) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (token, address.lower(), member.lower(), action, time.time()))
        return token

    def has_pending(self, token: str) -> bool:
        return self.db.execute("SELECT 1 FROM list_pending WHERE token = ?",
                               (token.lower(),)).fetchone() is not None

    def take_pending(self, token: str) -> tuple[str, str, str] | None:
        """(list, address, action), removed; None when unknown."""
        row = self.db.execute("SELECT list, address, action FROM list_pending WHERE token = ?",
                              (token.lower(),)).fetchone()
        if row is None or self.db.execute("DELETE FROM list_pending WHERE token = ?",
                                          (token.lower(),)).rowcount != 1:
            return None
        return row[0], row[1], row[2]

    # -- bounces ------------------------------------------------------------------

    def record_bounce(self, address: str, member: str, window: float) -> int:
        """Count a bounce of `member`; the number within the last `window` seconds."""
        now = time.time()
        self.db.execute("INSERT INTO list_bounces (list, address, at) VALUES (?, ?, ?)",
                        (address.lower(), member.lower(), now))
        self.db.execute("DELETE FROM list_bounces WHERE list = ? AND address = ? AND at < ?",
                        (address.lower(), member.lower(), now - window))
        return self.db.execute("SELECT COUNT(*) FROM list_bounces WHERE list = ? AND "
                               "address = ?", (address.lower(), member.lower())).fetchone()[0]
