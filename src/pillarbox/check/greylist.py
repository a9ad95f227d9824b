"""Greylisting (kind "greylist"): the first attempt of a (client network,
sender, recipient) triplet gets 451 4.7.1 at RCPT; a retry after `delay`
and within `expire` of the first attempt passes. Once a triplet passed, its
(client network, sender domain) passes at once for `known_for`, so a
correspondent is delayed once, not once per recipient. The client network is
the address's /24 (IPv4) or /64 (IPv6): a sender's retry may come from
another host of its farm.

Authenticated mail is never greylisted. The tables live in SQLite under
data_dir (greylist.sqlite; a restart keeps them), written in a worker
thread; rows past their time are deleted as the tables are used, and at most
`max_entries` triplets are kept (the oldest go first).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sqlite3
import threading
import time
from pathlib import Path

from pillarbox import address, client_ip, logs, module
from pillarbox.check import Reply
from pillarbox.config import ConfigError, parse_duration

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


def network_of(ip: str) -> str:
    a = client_ip.parse(ip)
    if a is None:
        return ip[:64]
    prefix = 24 if a.version == 4 else 64
    return str(ipaddress.ip_network((a, prefix), strict=False))


class Greylist:
    """The tables and the decision; every method runs in a worker thread."""

    def __init__(self, path: Path, delay: float, expire: float, known_for: float,
                 max_entries: int) -> None:
        self.path, self.delay, self.expire = path, delay, expire
        self.known_for, self.max_entries = known_for, max_entries
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pruned = 0.0

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

    def passes(self, net: str, sender: str, rcpt: str, now: float) -> bool:
        domain = address.domain_of(sender).lower() if "@" in sender else ""
        sender, rcpt = sender.lower(), rcpt.lower()
        with self._lock:
            db = self._conn()
            if now - self._pruned > PRUNE_EVERY:
                self._prune(db, now)
            with db:
                row = db.execute("SELECT last FROM known WHERE net=? AND domain=?",
                                 (net, domain)).fetchone()
                if row is not None and now - row[0] < self.known_for:
                    db.execute("UPDATE known SET last=? WHERE net=? AND domain=?",
                               (now, net, domain))
                    return True
                row = db.execute("SELECT first FROM triplet WHERE net=? AND sender=? AND rcpt=?",
                                 (net, sender, rcpt)).fetchone()
                if row is None or now - row[0] >= self.expire:
                    db.execute("INSERT OR REPLACE INTO triplet VALUES (?, ?, ?, ?)",
                               (net, sender, rcpt, now))
                    return False
                if now - row[0] < self.delay:
                    return False
                db.execute("INSERT OR REPLACE INTO known VALUES (?, ?, ?)", (net, domain, now))
                db.execute("DELETE FROM triplet WHERE net=? AND sender=? AND rcpt=?",
                           (net, sender, rcpt))
                return True

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        self._pruned = now
        with db:
            db.execute("DELETE FROM triplet WHERE first <= ?", (now - self.expire,))
            db.execute("DELETE FROM known WHERE last <= ?", (now - self.known_for,))
            for table, col in (("triplet", "first"), ("known", "last")):
                db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                           f"ORDER BY {col} DESC LIMIT -1 OFFSET ?)", (self.max_entries,))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


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


class GreylistCheck:
    def __init__(self, name: str, options: dict, data_dir: Path) -> None:
        self.name = name
        d = _durations(options)
        self.table = Greylist(Path(data_dir) / FILENAME, d["delay"], d["expire"],
                              d["known_for"], options["max_entries"])

    def state(self, source: module.Source) -> _State:
        return _State(self, source)

    async def judge(self, source: module.Source, sender: str, rcpt: str) -> module.Verdict:
        net = network_of(source.client_ip)
        try:
            ok = await asyncio.to_thread(self.table.passes, net, sender, rcpt, time.time())
        except sqlite3.Error as e:  # a broken table must not stop mail
            log.warning("greylist table failed, letting mail through: %r", e)
            return module.ACCEPT
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
    make=lambda name, options, env: GreylistCheck(name, options, env.config.data_dir),
    validate=_validate,
    help="Greylisting: the first attempt of a (client /24 or /64, sender, recipient) "
         "gets 451 4.7.1 at RCPT; a retry after the delay passes.")
