"""Who delivers from which spool, when nodes share a directory and PostgreSQL.

Under `[storage] shared_dir` each node accepts mail into its own spool
(shared_dir/queue/NODE). A row per spool says which process delivers from it
(its *holder*) and until when (its *lease*); the holder renews it every
lease/3. Only the holder delivers, writes done marks and state files, or
compacts; only the spool's own node appends to it.
When a node dies, its lease runs out and another node takes the spool over
(`take`), delivers what it holds and gives it back when the owner asks
(`want`, answered at the holder's next renewal) or lets go of it once
empty (`release(drained=True)`: nobody needs to take it again).
Times are the database's clock, so nodes whose clocks disagree still agree.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pillarbox.store.postgresql import PgDatabase

COMPONENT = "queue_spools"
# PostgreSQL-only (a lone node needs no leases): the component's own steps.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE queue_spool_leases (
            spool        TEXT PRIMARY KEY,            -- the spool's directory name (its node)
            holder       TEXT,                        -- NODE/pid/token delivering from it, or NULL
            lease_until  DOUBLE PRECISION,            -- the holder's lease, epoch seconds
            wanted_until DOUBLE PRECISION,            -- its owner asks for it back until then
            drained      BOOLEAN NOT NULL DEFAULT FALSE  -- emptied by a takeover: leave it be
        )""",
    ],
]

_NOW = "extract(epoch FROM clock_timestamp())"


class SpoolLeases:
    def __init__(self, db: PgDatabase, node: str, lease: float) -> None:
        self.db = db
        self.node = node
        # This process: a restarted node is another holder than its dead predecessor.
        self.me = f"{node}/{os.getpid()}/{secrets.token_hex(3)}"
        self.lease = lease
        db.migrate_component(COMPONENT, MIGRATIONS)

    def take_own(self) -> str | None:
        """Hold this node's own spool. None when held now; else who holds it.

        Taken from nobody, from an expired lease, or from an earlier process
        of this node (dead: two processes with one node name would share a
        spool, which is never right)."""
        self.db.execute("INSERT INTO queue_spool_leases (spool) VALUES (?) "
                        "ON CONFLICT DO NOTHING", (self.node,))
        rows = self.db.execute(
            f"UPDATE queue_spool_leases SET holder = ?, lease_until = {_NOW} + ?, "
            "wanted_until = NULL, drained = FALSE WHERE spool = ? AND (holder IS NULL "
            f"OR holder = ? OR lease_until < {_NOW} OR split_part(holder, '/', 1) = ?) "
            "RETURNING spool", (self.me, self.lease, self.node, self.me, self.node)).fetchall()
        if rows:
            return None
        row = self.db.execute("SELECT holder FROM queue_spool_leases WHERE spool = ?",
                              (self.node,)).fetchone()
        return row[0] if row and row[0] else "?"

    def want(self) -> None:
        """Ask the holder of this node's spool to give it back (at its next renewal)."""
        self.db.execute(f"UPDATE queue_spool_leases SET wanted_until = {_NOW} + ? "
                        "WHERE spool = ?", (self.lease, self.node))

    def orphans(self, spools: list[str]) -> list[str]:
        """Which of these spools (not ours) nobody delivers from, that may hold mail
        and whose node is not asking for them."""
        rows = self.db.execute(
            "SELECT spool FROM queue_spool_leases WHERE spool = ANY(?) AND spool <> ? "
            f"AND NOT drained AND (holder IS NULL OR lease_until < {_NOW}) "
            f"AND coalesce(wanted_until, 0) < {_NOW} ORDER BY spool",
            (spools, self.node)).fetchall()
        return [r[0] for r in rows]

    def take(self, spool: str) -> str | None:
        """Take another node's spool over; the holder it had (None: not taken,
        someone was quicker or its owner is back)."""
        rows = self.db.execute(
            "WITH old AS (SELECT spool, holder FROM queue_spool_leases WHERE spool = ? "
            f"AND NOT drained AND (holder IS NULL OR lease_until < {_NOW}) "
            f"AND coalesce(wanted_until, 0) < {_NOW} FOR UPDATE) "
            f"UPDATE queue_spool_leases l SET holder = ?, lease_until = {_NOW} + ? "
            "FROM old WHERE l.spool = old.spool RETURNING coalesce(old.holder, '-')",
            (spool, self.me, self.lease)).fetchall()
        return rows[0][0] if rows else None

    def renew(self, spool: str) -> tuple[bool, bool]:
        """(still held, its owner wants it back). Renewed even after the lease ran
        out, as long as nobody took the spool meanwhile."""
        row = self.db.execute(
            f"UPDATE queue_spool_leases SET lease_until = {_NOW} + ? "
            "WHERE spool = ? AND holder = ? "
            f"RETURNING coalesce(wanted_until, 0) > {_NOW}",
            (self.lease, spool, self.me)).fetchone()
        if row is None:
            return False, False
        return True, bool(row[0]) and spool != self.node

    def release(self, spool: str, drained: bool = False) -> bool:
        """Let go of a spool (after its deliveries in flight ended)."""
        return self.db.execute(
            "UPDATE queue_spool_leases SET holder = NULL, lease_until = NULL, drained = ? "
            "WHERE spool = ? AND holder = ?", (drained, spool, self.me)).rowcount == 1
