"""Who delivers which queued message, when several nodes share one PostgreSQL.

A row per queued message says when it is next due and which node holds it
(a *claim*) until when (its *lease*). A worker takes due work with
`SELECT ... FOR UPDATE SKIP LOCKED`, so two nodes asking at once get
disjoint messages and neither waits on the other's locks; it renews the
lease while a delivery runs, and gives the message back (`defer`) or
removes it (`finish`) when the attempt ends. A node that dies holds its
claims only until their leases run out; then any node claims them again.
Times are the database's clock (`clock_timestamp()`), so nodes whose clocks
disagree still agree on leases.

This is the claiming half of the queue on PostgreSQL (issue 19). The spool
(queue/spool.py) does not use it yet: messages and their bodies are still
in each node's data_dir. See docs/POSTGRESQL.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pillarbox.store.postgresql import PgDatabase

COMPONENT = "queue"
# PostgreSQL-only (the SQLite queue is segment files): the component's own steps.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE queue_claims (
            id          TEXT PRIMARY KEY,               -- the message's queue ID
            due         DOUBLE PRECISION NOT NULL,      -- next attempt, epoch seconds
            node        TEXT,                           -- the claim's holder, or NULL
            lease_until DOUBLE PRECISION,               -- the claim holds until then
            claims      BIGINT NOT NULL DEFAULT 0       -- times claimed (attempts begun)
        )""",
        "CREATE INDEX queue_claims_due ON queue_claims (due)",
    ],
]

DEFAULT_LEASE = 300.0  # seconds; a delivery renews it long before it runs out
_NOW = "extract(epoch FROM clock_timestamp())"


class Claims:
    def __init__(self, db: PgDatabase, node: str, lease: float = DEFAULT_LEASE) -> None:
        self.db = db
        self.node = node  # unique per running process (hostname + pid + start time)
        self.lease = lease
        db.migrate_component(COMPONENT, MIGRATIONS)

    def add(self, msg_id: str, due: float | None = None) -> None:
        """A newly queued message, due now (or at `due`), claimed by nobody."""
        if due is None:
            self.db.execute(f"INSERT INTO queue_claims (id, due) VALUES (?, {_NOW})", (msg_id,))
        else:
            self.db.execute("INSERT INTO queue_claims (id, due) VALUES (?, ?)", (msg_id, due))

    def claim_due(self, limit: int) -> list[str]:
        """Up to `limit` due messages nobody holds (or whose holder's lease ran
        out), now held by this node; oldest first."""
        rows = self.db.execute(
            f"UPDATE queue_claims SET node = ?, lease_until = {_NOW} + ?, claims = claims + 1 "
            f"WHERE id IN (SELECT id FROM queue_claims WHERE due <= {_NOW} "
            f"AND (lease_until IS NULL OR lease_until < {_NOW}) ORDER BY due LIMIT ? "
            "FOR UPDATE SKIP LOCKED) RETURNING id, due",
            (self.node, self.lease, limit)).fetchall()
        return [r[0] for r in sorted(rows, key=lambda r: r[1])]

    def renew(self, ids: list[str]) -> set[str]:
        """Extend this node's leases; the IDs it still holds (a lost one: another
        node took it after the lease ran out, so stop delivering it)."""
        if not ids:
            return set()
        rows = self.db.execute(
            f"UPDATE queue_claims SET lease_until = {_NOW} + ? "
            f"WHERE id = ANY(?) AND node = ? AND lease_until >= {_NOW} RETURNING id",
            (self.lease, list(ids), self.node)).fetchall()
        return {r[0] for r in rows}

    def defer(self, msg_id: str, due: float) -> bool:
        """Give a message back, next due at `due`; False if this node no longer held it."""
        return self.db.execute(
            "UPDATE queue_claims SET due = ?, node = NULL, lease_until = NULL "
            "WHERE id = ? AND node = ?", (due, msg_id, self.node)).rowcount == 1

    def finish(self, msg_id: str) -> bool:
        """The message is done (delivered, bounced or deleted); False if this node
        no longer held it (another may be delivering it again)."""
        return self.db.execute("DELETE FROM queue_claims WHERE id = ? AND node = ?",
                               (msg_id, self.node)).rowcount == 1

    def release_all(self) -> int:
        """A graceful stop: every claim of this node back, due as it was."""
        return self.db.execute("UPDATE queue_claims SET node = NULL, lease_until = NULL "
                               "WHERE node = ?", (self.node,)).rowcount
