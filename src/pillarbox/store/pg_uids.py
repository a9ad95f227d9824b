"""UIDs and MODSEQs for mailboxes that several nodes write (issue 19).

Each mailbox has one row holding UIDVALIDITY, the next UID and the highest
MODSEQ. A node that adds messages (or changes flags) takes the numbers it
needs with one `UPDATE ... RETURNING` inside the transaction that also
writes the messages (`allocate_in`): the row lock it takes is held until
that commit, so no two nodes ever get the same UID or MODSEQ, and messages
become visible in UID order (a client that saw UID 7 never finds a 6
appearing later). UIDVALIDITY comes from a sequence when the mailbox is
made and never changes afterwards.

Every allocation also sends `NOTIFY pillarbox_mailbox, '<user>'` at commit,
so IMAP sessions on other nodes (IDLE) can look at once.

This is the allocation half of the mailbox index on PostgreSQL; the index
(store/mailbox_index.py) does not use it yet: mailboxes are still each
node's own Maildir plus SQLite index. See docs/POSTGRESQL.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pillarbox.store.postgresql import PgDatabase

COMPONENT = "mailbox"
CHANNEL = "pillarbox_mailbox"
MIGRATIONS: list[list[str]] = [
    [
        "CREATE SEQUENCE mailbox_uidvalidity START WITH 1",
        """CREATE TABLE mailbox_counters (
            owner         TEXT NOT NULL,       -- the user's address
            name          TEXT NOT NULL,       -- the mailbox name, as IMAP shows it
            uidvalidity   BIGINT NOT NULL,
            uidnext       BIGINT NOT NULL DEFAULT 1,
            highestmodseq BIGINT NOT NULL DEFAULT 1,
            PRIMARY KEY (owner, name)
        )""",
    ],
]


@dataclass(frozen=True)
class Allocation:
    uidvalidity: int
    first_uid: int  # the UIDs are first_uid .. first_uid + count - 1
    count: int
    modseq: int  # the MODSEQ of this change (higher than every earlier one)


class UidAllocator:
    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        db.migrate_component(COMPONENT, MIGRATIONS)

    def create(self, owner: str, name: str) -> int:
        """Make the mailbox's counters if missing; its UIDVALIDITY (stable)."""
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO mailbox_counters (owner, name, uidvalidity) "
                       "VALUES (?, ?, nextval('mailbox_uidvalidity')) ON CONFLICT DO NOTHING",
                       (owner, name))
            row = tx.execute("SELECT uidvalidity FROM mailbox_counters "
                             "WHERE owner = ? AND name = ?", (owner, name)).fetchone()
        assert row is not None
        return row[0]

    def allocate(self, owner: str, name: str, count: int) -> Allocation:
        """`allocate_in` in a transaction of its own (nothing else to write)."""
        with self.db.transaction() as tx:
            return self.allocate_in(tx, owner, name, count)

    @staticmethod
    def allocate_in(tx, owner: str, name: str, count: int) -> Allocation:
        """`count` new UIDs (0 for a flag change) and the next MODSEQ, within the
        caller's transaction `tx` (which writes the messages before it commits)."""
        row = tx.execute(
            "UPDATE mailbox_counters SET uidnext = uidnext + ?, "
            "highestmodseq = highestmodseq + 1 WHERE owner = ? AND name = ? "
            "RETURNING uidvalidity, uidnext - ?, highestmodseq",
            (count, owner, name, count)).fetchone()
        if row is None:
            raise KeyError(f"no mailbox {name!r} for {owner}")
        tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, owner))  # sent at commit
        return Allocation(row[0], row[1], count, row[2])
