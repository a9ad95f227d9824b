"""Several nodes' queues on one PostgreSQL and a shared directory (issue 19).

Each node accepts into its own spool (shared_dir/queue/NODE) and delivers from
it while it holds the spool's lease; a node whose lease ran out (killed) has
its spool delivered by another node, which hands it back when the node
returns. Messages are counted by Message-ID in the shared Maildirs.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from pathlib import Path

import pytest

from .support import ALICE, free_ports, make_message, wait_until

pytestmark = pytest.mark.parametrize("storage", ["postgresql"], indirect=True)

SENDER = "sender@remote.test"
LEASE = 2  # seconds
_MSGID = re.compile(rb"^Message-ID: <([^>]+)>", re.M | re.I)


def _nodes(make_server, shared: Path, *names: str, **over) -> list:
    return [make_server({"storage.shared_dir": str(shared), "storage.node": name,
                         "queue.lease": f"{LEASE}s", **over.get(name, {})})
            for name in names]


def _delivered(shared: Path, addr: str = ALICE) -> Counter:
    """Message-IDs in addr's Maildir (new and cur), with how often each is there."""
    local, domain = addr.split("@")
    found: Counter = Counter()
    for sub in ("new", "cur"):
        d = shared / "mail" / domain / local / sub
        if not d.is_dir():
            continue
        for f in d.iterdir():
            try:
                m = _MSGID.search(f.read_bytes()[:8192])
            except FileNotFoundError:
                continue
            if m:
                found[m.group(1).decode()] += 1
    return found


class Burst:
    """Messages to ALICE through a node on `threads` connections; remembers the
    Message-IDs that got a 250 and stops at the first failure of a connection."""

    def __init__(self, node, tag: str, count: int, threads: int = 1) -> None:
        self.accepted: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(node, f"{tag}{t}", count))
                         for t in range(threads)]
        for t in self._threads:
            t.start()

    def _send(self, node, tag: str, count: int) -> None:
        try:
            with node.smtp() as s:
                for i in range(count):
                    msg_id = f"{tag}-{i}@burst.test"
                    msg = make_message(SENDER, ALICE, msg_id, date_and_id=False,
                                       headers={"Message-ID": f"<{msg_id}>"})
                    s.sendmail(SENDER, [ALICE], msg)
                    with self._lock:
                        self.accepted.append(msg_id)
        except (OSError, Exception):  # the node was killed: what got 250 is counted
            pass

    def join(self) -> list[str]:
        for t in self._threads:
            t.join(30)
        return list(self.accepted)


def _exactly_once(shared: Path, accepted: list[str]) -> Counter:
    """Await every accepted message in the Maildir; the counts."""
    wait_until(lambda: set(accepted) <= set(_delivered(shared)), 20,
               f"{len(accepted)} accepted messages delivered")
    return _delivered(shared)


def _last_log(node) -> str:
    """The stderr of the node's latest start."""
    return node.logs[-1].read_text(errors="replace")


def _queue_empty(*nodes) -> None:
    for node in nodes:
        wait_until(lambda n=node: n.queue_list() == [], 15, f"{node.root.name}'s queue empty")


def test_burst_half_to_each_node_is_delivered_exactly_once(make_server, tmp_path):
    shared = tmp_path / "shared"
    a, b = _nodes(make_server, shared, "a", "b")
    bursts = [Burst(a, "a", 15, threads=2), Burst(b, "b", 15, threads=2)]
    accepted = [i for burst in bursts for i in burst.join()]
    assert len(accepted) == 60
    _queue_empty(a, b)
    counts = _exactly_once(shared, accepted)
    assert {i: n for i, n in counts.items() if n != 1} == {}
    assert set(counts) == set(accepted)
    assert (shared / "queue" / "a").is_dir() and (shared / "queue" / "b").is_dir()


def test_node_killed_mid_burst_its_mail_is_delivered_by_the_other_after_the_lease(
        make_server, tmp_path):
    """A takes a burst with one delivery worker, so mail waits in its spool; killed
    with SIGKILL mid-burst, B takes its spool over once the lease ran out and
    delivers every message A answered 250 to. A repeat is allowed only for what
    A was delivering at the kill (its one worker)."""
    shared = tmp_path / "shared"
    a, b = _nodes(make_server, shared, "a", "b", a={"queue.workers": 1})
    burst = Burst(a, "k", 40, threads=6)

    def backlog() -> bool:
        done = _delivered(shared)
        waiting = [i for i in list(burst.accepted) if i not in done]
        return len(waiting) >= 5

    wait_until(backlog, 20, "A to hold at least 5 accepted, undelivered messages")
    a.kill9()
    accepted = burst.join()
    counts = _exactly_once(shared, accepted)
    repeated = {i: n for i, n in counts.items() if n > 1}
    assert sum(n - 1 for n in repeated.values()) <= 1, repeated
    log = b.log_text()
    m = re.search(r"queue spool taken over spool=a node=b previous=a/\S+ messages=(\d+)", log)
    assert m, log[-3000:]
    assert int(m.group(1)) >= 1  # A's backlog, delivered by B
    wait_until(lambda: "queue spool let go spool=a node=b reason=drained" in b.log_text(),
               LEASE * 2, "B to let go of A's emptied spool")

    # A comes back: its spool is its own again (B let it go drained) and
    # nothing is delivered twice from now on.
    a.start()
    wait_until(lambda: "queue spool held spool=a messages=0" in _last_log(a), LEASE * 3,
               "A to hold its spool again")
    more = [Burst(a, "r", 10), Burst(b, "s", 10)]
    accepted += [i for burst in more for i in burst.join()]
    _queue_empty(a, b)
    after = _exactly_once(shared, accepted)
    assert {i: n for i, n in after.items() if n > 1} == repeated


def test_restarted_node_gets_its_spool_back_from_the_node_that_took_it(make_server,
                                                                         tmp_path):
    """B holds A's spool with a deferred message when A restarts: A waits until
    B hands it back, B lets go (its attempts ended), A then holds the message;
    B never attempts it again."""
    shared = tmp_path / "shared"
    (closed,) = free_ports(1)  # nobody listens: remote delivery defers
    route = f'[[route]]\ndomains = ["later.test"]\nhost = "127.0.0.1:{closed}"\n'
    a = make_server({"storage.shared_dir": str(shared), "storage.node": "a",
                     "queue.lease": f"{LEASE}s"}, extra_toml=route)
    b = make_server({"storage.shared_dir": str(shared), "storage.node": "b",
                     "queue.lease": f"{LEASE}s"}, extra_toml=route)
    with a.submission(user=ALICE) as s:
        s.sendmail(ALICE, ["someone@later.test"], make_message(ALICE, "someone@later.test", "x"))
    states = shared / "queue" / "a" / "state"
    wait_until(lambda: any(states.iterdir()), 10, "A's first attempt deferred and recorded")
    a.kill9()
    wait_until(lambda: "queue spool taken over spool=a" in b.log_text(), LEASE * 4,
               "B to take A's spool over")
    assert re.search(r"queue spool taken over spool=a \S+ \S+ messages=1", b.log_text())
    a.start()  # listening; it serves once B handed the spool back
    wait_until(lambda: re.search(r"queue spool held spool=a messages=1", _last_log(a)),
               LEASE * 3, "A to hold its spool again")
    assert "queue spool held by another node, waiting for it to hand it back spool=a " \
        "holder=b/" in _last_log(a)
    log_b = b.log_text()
    assert "queue spool let go spool=a node=b reason=\"handed back to its node\" messages=1" \
        in log_b, log_b[-2000:]
    (entry,) = a.queue_list()
    assert "later.test" in str(entry)
    # B attempted nothing (the message was not due yet) and holds nothing of A's now.
    assert log_b.count("delivery deferred") == 0


def test_postgresql_restarted_mid_burst_loses_nothing(make_server, tmp_path, postgres):
    """Mail keeps being accepted (into each node's spool, on disk) while PostgreSQL
    is down; delivery pauses when the leases cannot be renewed and goes on when
    it is back: every message that got a 250 arrives, once."""
    shared = tmp_path / "shared"
    a, b = _nodes(make_server, shared, "a", "b")

    def burst(tag: str) -> list[str]:
        bursts = [Burst(a, f"a{tag}", 10, threads=2), Burst(b, f"b{tag}", 10, threads=2)]
        return [i for x in bursts for i in x.join()]

    accepted = burst("before")
    postgres.stop_server()
    try:
        during = burst("during")
        assert len(during) == 40  # all got 250: stored in the spools, no database needed
        wait_until(lambda: all("queue delivery paused" in n.log_text() for n in (a, b)),
                   LEASE * 3, "both nodes to pause delivery")
        accepted += during + burst("paused")
    finally:
        postgres.start_server()
    accepted += burst("after")
    assert len(accepted) == 160
    _queue_empty(a, b)
    counts = _exactly_once(shared, accepted)
    assert {i: n for i, n in counts.items() if n != 1} == {}


def test_node_frozen_past_its_lease_asks_for_its_spool_back(make_server, tmp_path):
    """A frozen (SIGSTOP) with mail waiting: B takes A's spool over and delivers
    it; A thawed finds its lease gone, asks for the spool back, gets it once B
    let go, forgets what B delivered, and goes on: nothing is delivered twice but
    what A was delivering when frozen (its one worker)."""
    import os
    import signal

    shared = tmp_path / "shared"
    a, b = _nodes(make_server, shared, "a", "b", a={"queue.workers": 1})
    burst = Burst(a, "f", 30, threads=6)

    def backlog() -> bool:
        done = _delivered(shared)
        return len([i for i in list(burst.accepted) if i not in done]) >= 5

    wait_until(backlog, 20, "A to hold at least 5 accepted, undelivered messages")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "queue spool taken over spool=a" in b.log_text(), LEASE * 4,
                   "B to take the frozen A's spool over")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    accepted = burst.join()
    wait_until(lambda: "queue spool taken back spool=a" in a.log_text(), LEASE * 4,
               "A to get its spool back")
    assert "queue spool lease lost to another node, delivery paused spool=a" in a.log_text()
    m = re.search(r"queue spool taken back spool=a finished_elsewhere=(\d+)", a.log_text())
    assert m and int(m.group(1)) >= 1, a.log_tail()  # what B delivered, A forgot
    assert "reason=\"handed back to its node\"" in b.log_text()
    accepted += Burst(a, "g", 10).join()
    _queue_empty(a, b)
    counts = _exactly_once(shared, accepted)
    repeated = {i: n for i, n in counts.items() if n > 1}
    assert sum(n - 1 for n in repeated.values()) <= 1, repeated
