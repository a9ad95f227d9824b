"""Queue claims on a real PostgreSQL (issue 19): several nodes take due work
without overlap, without waiting on each other's locks, and a dead node's
work comes back after its lease.

Each `Claims` below stands for one node; they share one database, as nodes do.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pillarbox.queue.pg_claims import Claims
from pillarbox.store.postgresql import PgDatabase


@pytest.fixture
def db(postgres):
    d = PgDatabase(postgres.new_database())
    yield d
    d.close()


def _expire_leases(db: PgDatabase, node: str) -> None:
    """Stands for the lease running out (the node died): its end moved to the past."""
    db.execute("UPDATE queue_claims SET lease_until = lease_until - 3600 WHERE node = ?",
               (node,))


def test_two_nodes_claiming_at_once_get_disjoint_work_and_all_of_it(db):
    a, b = Claims(db, "node-a"), Claims(db, "node-b")
    ids = [f"m{i:03d}" for i in range(300)]
    db.executemany("INSERT INTO queue_claims (id, due) VALUES (?, 0)", [(i,) for i in ids])
    got: dict[str, list[str]] = {"node-a": [], "node-b": []}
    start = threading.Barrier(2)

    def drain(claims: Claims) -> None:
        start.wait()
        while batch := claims.claim_due(7):
            got[claims.node] += batch

    threads = [threading.Thread(target=drain, args=(c,)) for c in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(got["node-a"]) & set(got["node-b"]), "a message claimed by both nodes"
    assert sorted(got["node-a"] + got["node-b"]) == ids
    assert got["node-a"] and got["node-b"], "one node got nothing: no concurrency shown"


def test_a_dead_nodes_claims_come_back_after_the_lease(db):
    a, b = Claims(db, "node-a", lease=60), Claims(db, "node-b", lease=60)
    a.add("m1")
    a.add("m2")
    assert sorted(a.claim_due(10)) == ["m1", "m2"]
    assert b.claim_due(10) == [], "claimed work was handed out again within its lease"
    assert a.renew(["m1", "m2"]) == {"m1", "m2"}
    _expire_leases(db, "node-a")  # node A died; its leases ran out
    assert sorted(b.claim_due(10)) == ["m1", "m2"]
    # Node A comes back from a long pause: it holds nothing any more.
    assert a.renew(["m1", "m2"]) == set()
    assert a.finish("m1") is False
    assert a.defer("m2", 0) is False
    assert b.finish("m1") is True
    assert db.execute("SELECT id, node FROM queue_claims").fetchall() == [("m2", "node-b")]


def test_deferred_work_is_due_again_only_at_its_time(db):
    a = Claims(db, "node-a")
    a.add("m1")
    assert a.claim_due(1) == ["m1"]
    now = db.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0]
    assert a.defer("m1", float(now) + 3600) is True
    assert a.claim_due(1) == []
    db.execute("UPDATE queue_claims SET due = due - 7200")  # an hour later
    assert a.claim_due(1) == ["m1"]
    assert db.execute("SELECT claims FROM queue_claims").fetchone() == (2,)


def test_a_row_locked_by_another_node_is_skipped_not_waited_for(db, postgres):
    a = Claims(db, "node-a")
    for i in ("m1", "m2", "m3"):
        a.add(i)
    with psycopg.connect(db.url) as other:  # another node mid-claim holds m1's lock
        other.execute("SELECT id FROM queue_claims WHERE id = 'm1' FOR UPDATE")
        started = time.monotonic()
        got = a.claim_due(10)
        assert time.monotonic() - started < 2.0, "the claim waited on another node's lock"
        assert sorted(got) == ["m2", "m3"]
        other.rollback()
    assert a.claim_due(10) == ["m1"]


def test_a_graceful_stop_gives_the_claims_back(db):
    a, b = Claims(db, "node-a"), Claims(db, "node-b")
    a.add("m1")
    assert a.claim_due(5) == ["m1"]
    assert a.release_all() == 1
    assert b.claim_due(5) == ["m1"]
