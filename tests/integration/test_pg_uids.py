"""UIDs and MODSEQs allocated by several nodes on a real PostgreSQL (issue 19).

Two `PgDatabase`s (two pools) stand for two nodes sharing the database.
"""

from __future__ import annotations

import random
import threading

import psycopg
import pytest

from pillarbox.store.pg_uids import CHANNEL, UidAllocator
from pillarbox.store.postgresql import PgDatabase

ALICE = "alice@example.test"


@pytest.fixture
def nodes(postgres):
    url = postgres.new_database()
    a, b = PgDatabase(url), PgDatabase(url)
    yield UidAllocator(a), UidAllocator(b)
    a.close()
    b.close()


def test_nodes_allocating_at_once_never_share_a_uid_or_modseq(nodes):
    a, b = nodes
    validity = a.create(ALICE, "INBOX")
    assert b.create(ALICE, "INBOX") == validity, "UIDVALIDITY changed on a second create"
    got = []
    lock = threading.Lock()
    go = threading.Barrier(4)

    def work(alloc: UidAllocator, seed: int) -> None:
        rnd = random.Random(seed)
        go.wait()
        for _ in range(40):
            x = alloc.allocate(ALICE, "INBOX", rnd.randint(0, 3))
            with lock:
                got.append(x)

    threads = [threading.Thread(target=work, args=(n, i)) for i, n in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    uids = [u for x in got for u in range(x.first_uid, x.first_uid + x.count)]
    assert sorted(uids) == list(range(1, len(uids) + 1)), "a UID given twice or skipped"
    modseqs = sorted(x.modseq for x in got)
    assert modseqs == list(range(2, 2 + len(got))), "a MODSEQ given twice"
    assert {x.uidvalidity for x in got} == {validity}


def test_a_later_uid_commits_only_after_the_earlier_one(nodes):
    """Node A's transaction holds UID 1 while it writes; node B's UID 2 waits for
    A's commit, so no client sees 2 before 1."""
    a, b = nodes
    a.create(ALICE, "INBOX")
    done = threading.Event()
    result = []

    def node_b() -> None:
        result.append(b.allocate(ALICE, "INBOX", 1))
        done.set()

    with a.db.transaction() as tx:
        first = UidAllocator.allocate_in(tx, ALICE, "INBOX", 1)
        t = threading.Thread(target=node_b)
        t.start()
        assert not done.wait(0.5), "node B got its UID while A's was not committed"
    t.join(10)
    assert done.is_set()
    assert (first.first_uid, result[0].first_uid) == (1, 2)
    assert result[0].modseq > first.modseq


def test_an_allocation_wakes_listeners_on_other_nodes(nodes, postgres):
    a, _ = nodes
    a.create(ALICE, "INBOX")
    with psycopg.connect(a.db.url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        a.allocate(ALICE, "INBOX", 1)
        got = [n.payload for n in listener.notifies(timeout=1.0, stop_after=1)]
    assert got == [ALICE], "no notification within a second"


def test_unknown_mailbox_is_an_error_not_a_new_row(nodes):
    a, _ = nodes
    with pytest.raises(KeyError):
        a.allocate(ALICE, "Nope", 1)
