"""Greylisting (kind "greylist"): the first attempt of a (client network,
sender, recipient) triplet gets 451 4.7.1 at RCPT; a retry after `delay`
and within `expire` of the first attempt passes. Once a triplet passed, its
(client network, sender domain) passes at once for `known_for`, so a
correspondent is delayed once, not once per recipient. The client network is
the address's /24 (IPv4) or /64 (IPv6): a sender's retry may come from
another host of its farm.

Authenticated mail is never greylisted. Where the tables live follows
`[storage] url`: on SQLite, greylist.sqlite under data_dir (a restart keeps
them); on PostgreSQL, the tables greylist_triplet and greylist_known there
(component `greylist` in pillarbox_schema, made on first use), shared by
every node, so a sender's retry to another node behind the same MX counts.
Either way the work runs in a worker thread, never on the event loop; rows
past their time are deleted as the tables are used, and at most
`max_entries` triplets are kept (the oldest go first). Times are the node's
clock (time.time()): nodes sharing the tables need clocks that agree (NTP).
A table that fails (PostgreSQL down) lets the mail through.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillarbox import address, client_ip, logs, module
from pillarbox.check import Reply
from pillarbox.config import ConfigError, parse_duration
from pillarbox.store import backend

if TYPE_CHECKING:
    from pillarbox.store.postgresql import PgDatabase

log = logging.getLogger("pillarbox.greylist")

FILENAME = "greylist.sqlite"
PRUNE_EVERY = 60.0  # seconds between deletions of rows past their time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplet (net TEXT, sender TEXT, rcpt TEXT, first REAL,
                                    PRIMARY KEY (net, sender, rcpt));
CREATE INDEX IF NOT EXISTS triplet_first ON triplet (first);
CREATE TABLE IF NOT EXISTS known (net TEXT, domain TEXT, last REAL,
                                  PRIMARY KEY (net, domain));
CREATE INDEX IF NOT EXISTS known_last ON known (last);
"""

COMPONENT = "greylist"
# PostgreSQL: the component's own steps (the SQLite file keeps its own schema above).
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE greylist_triplet (net TEXT NOT NULL, sender TEXT NOT NULL,
            rcpt TEXT NOT NULL, first DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (net, sender, rcpt))""",
        "CREATE INDEX greylist_triplet_first ON greylist_triplet (first)",
        """CREATE TABLE greylist_known (net TEXT NOT NULL, domain TEXT NOT NULL,
            last DOUBLE PRECISION NOT NULL, PRIMARY KEY (net, domain))""",
        "CREATE INDEX greylist_known_last ON greylist_known (last)",
    ],
]


def network_of(ip: str) -> str:
    a = client_ip.parse(ip)
    if a is None:
        return ip[:64]
    prefix = 24 if a.version == 4 else 64
    return str(ipaddress.ip_network((a, prefix), strict=False))


class SqliteTables:
    """greylist.sqlite in data_dir: one connection, one writer at a time."""

    triplet, known = "triplet", "known"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        # Opened on first use: in the serving process, as the service user.
        if self._db is None:
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # losing the last entries is harmless
            db.executescript(_SCHEMA)
            self.path.chmod(0o600)
            self._db = db
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock:
            db = self._conn()
            with db:
                yield db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class PgTables:
    """The tables in PostgreSQL, shared by the nodes; the pool's connections, so
    several checks run at once. The server's database when it has one."""

    triplet, known = "greylist_triplet", "greylist_known"

    def __init__(self, db: PgDatabase | None, url: str) -> None:
        self.db, self.url = db, url
        self._own = db is None
        self._ready = False
        self._lock = threading.Lock()

    def _database(self) -> PgDatabase:
        with self._lock:
            if self.db is None:
                from pillarbox.store.postgresql import PgDatabase

                self.db = PgDatabase(self.url, migrate=False)
            if not self._ready:  # made on first use: no database work when the check is made
                self.db.migrate_component(COMPONENT, MIGRATIONS)
                self._ready = True
            return self.db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._database().transaction() as tx:
            yield tx

    def close(self) -> None:
        with self._lock:
            if self._own and self.db is not None:
                self.db.close()
                self.db = None


class Greylist:
    """The decision over either store's tables; every method runs in a worker thread."""

    def __init__(self, tables: SqliteTables | PgTables | Path, delay: float, expire: float,
                 known_for: float, max_entries: int) -> None:
        self.tables = SqliteTables(tables) if isinstance(tables, Path) else tables
        self.delay, self.expire = delay, expire
        self.known_for, self.max_entries = known_for, max_entries
        self._pruned = 0.0

    def _conn(self) -> sqlite3.Connection:  # the SQLite file's connection (tests look in)
        assert isinstance(self.tables, SqliteTables)
        return self.tables._conn()

    def passes(self, net: str, sender: str, rcpt: str, now: float) -> bool:
        domain = address.domain_of(sender).lower() if "@" in sender else ""
        sender, rcpt = sender.lower(), rcpt.lower()
        t, k = self.tables.triplet, self.tables.known
        if now - self._pruned > PRUNE_EVERY:
            self._prune(now)
        with self.tables.transaction() as db:
            row = db.execute(f"SELECT last FROM {k} WHERE net=? AND domain=?",
                             (net, domain)).fetchone()
            if row is not None and now - row[0] < self.known_for:
                db.execute(f"UPDATE {k} SET last=? WHERE net=? AND domain=?", (now, net, domain))
                return True
            row = db.execute(f"SELECT first FROM {t} WHERE net=? AND sender=? AND rcpt=?",
                             (net, sender, rcpt)).fetchone()
            if row is None or now - row[0] >= self.expire:
                db.execute(f"INSERT INTO {t} (net, sender, rcpt, first) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (net, sender, rcpt) DO UPDATE SET first = excluded.first",
                           (net, sender, rcpt, now))
                return False
            if now - row[0] < self.delay:
                return False
            db.execute(f"INSERT INTO {k} (net, domain, last) VALUES (?, ?, ?) "
                       "ON CONFLICT (net, domain) DO UPDATE SET last = excluded.last",
                       (net, domain, now))
            db.execute(f"DELETE FROM {t} WHERE net=? AND sender=? AND rcpt=?",
                       (net, sender, rcpt))
            return True

    def _prune(self, now: float) -> None:
        self._pruned = now
        # One table per transaction: a decision takes `known` before `triplet`.
        for table, col, keep in ((self.tables.triplet, "first", self.expire),
                                 (self.tables.known, "last", self.known_for)):
            with self.tables.transaction() as db:
                db.execute(f"DELETE FROM {table} WHERE {col} <= ?", (now - keep,))
                # Past max_entries, the oldest go (ties at the cut go too).
                db.execute(f"DELETE FROM {table} WHERE {col} <= (SELECT {col} FROM {table} "
                           f"ORDER BY {col} DESC LIMIT 1 OFFSET ?)", (self.max_entries,))

    def close(self) -> None:
        self.tables.close()


class _State(module.BaseCheckState):
    def __init__(self, check: GreylistCheck, source: module.Source) -> None:
        self.check, self.source = check, source
        self.sender = ""

    async def mail(self, sender: str) -> module.Verdict:
        self.sender = sender  # a new message
        return module.ACCEPT

    async def rcpt(self, rcpt: str) -> module.Verdict:
        if self.source.auth:
            return module.ACCEPT
        return await self.check.judge(self.source, self.sender, rcpt)


def tables_for(config: Any, db: Any) -> SqliteTables | PgTables:
    """Where the tables live: PostgreSQL (the server's database `db` if it is
    that one) with `[storage] url` on it, else greylist.sqlite in data_dir."""
    url = getattr(config, "storage_url", "")
    if backend.is_postgresql(url):
        return PgTables(db if getattr(db, "kind", "") == "postgresql" else None, url)
    return SqliteTables(Path(config.data_dir) / FILENAME)


class GreylistCheck:
    def __init__(self, name: str, options: dict, tables: SqliteTables | PgTables) -> None:
        self.name = name
        d = _durations(options)
        self.table = Greylist(tables, d["delay"], d["expire"], d["known_for"],
                              options["max_entries"])
        self._failing = False  # the table failed last time: say so once, and once it works

    def state(self, source: module.Source) -> _State:
        return _State(self, source)

    async def judge(self, source: module.Source, sender: str, rcpt: str) -> module.Verdict:
        net = network_of(source.client_ip)
        try:
            ok = await asyncio.to_thread(self.table.passes, net, sender, rcpt, time.time())
        except (*backend.errors(), backend.SchemaTooNew) as e:  # must not stop mail
            if not self._failing:
                self._failing = True
                log.warning("greylist table failed, letting mail through: %s", e)
            return module.ACCEPT
        if self._failing:
            self._failing = False
            log.warning("greylist table works again")
        if ok:
            return module.ACCEPT
        logs.event(log, logging.INFO, "greylisted", client=logs.client(source.client_ip),
                   endpoint=source.endpoint, **{"from": f"<{sender}>"}, to=f"<{rcpt}>")
        return module.Verdict(reject=Reply(451, "4.7.1 Greylisted, please try again later"))

    async def close(self) -> None:
        await asyncio.to_thread(self.table.close)


def _durations(options: dict) -> dict[str, float]:
    out = {}
    for key in ("delay", "expire", "known_for"):
        try:
            out[key] = parse_duration(options[key], key)
        except ConfigError as e:
            raise ValueError(str(e)) from None
    if out["expire"] <= out["delay"]:
        raise ValueError("expire: must be longer than delay")
    return out


def _validate(options: dict) -> None:
    _durations(options)
    if options["max_entries"] < 1000:
        raise ValueError("max_entries: must be at least 1000")


KIND = module.Kind(
    name="greylist", role="check",
    options=(
        module.Option("delay", str, "5m",
                      help="how long a new triplet is refused (451 4.7.1) before a retry passes"),
        module.Option("expire", str, "4h",
                      help="a retry later than this after the first attempt starts over"),
        module.Option("known_for", str, "35d",
                      help="a (client network, sender domain) that passed once passes at "
                           "once for this long after its last message"),
        module.Option("max_entries", int, 100000,
                      help="triplets and known senders kept, each (the oldest go first)"),
    ),
    make=lambda name, options, env: GreylistCheck(
        name, options, tables_for(env.config, getattr(env.users, "db", None))),
    validate=_validate,
    help="Greylisting: the first attempt of a (client /24 or /64, sender, recipient) "
         "gets 451 4.7.1 at RCPT; a retry after the delay passes.")
