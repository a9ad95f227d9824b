"""The IMAP index on PostgreSQL, shared by two nodes (issue 19).

Two `serve` processes on their own ports share one database and one
`[storage] shared_dir` (so one set of Maildirs): what one node's sessions do,
or deliver, the other node's sessions see.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from .imap_raw import RawIMAP, code_number
from .pg_server import sharing_mail
from .support import ALICE, make_message, wait_until

pytestmark = pytest.mark.parametrize("storage", ["postgresql"], indirect=True)

SENDER = "sender@remote.test"
SEEN_WITHIN = 1.0  # seconds for a delivery on one node to reach IDLE on the other


@pytest.fixture
def nodes(make_server, storage, tmp_path):
    make = sharing_mail(make_server, storage, tmp_path)  # one shared_dir, two node names
    return make(), make()


def _send(server, subject: str) -> None:
    with server.smtp() as s:
        assert s.sendmail(SENDER, [ALICE], make_message(SENDER, ALICE, subject)) == {}


def _uids(imap: RawIMAP) -> list[int]:
    untagged, _ = imap.ok("UID SEARCH ALL")
    (line,) = [u for u in untagged if u.startswith(b"SEARCH")]
    return [int(x) for x in line.split()[1:]]


def _exists(untagged: list[bytes]) -> int | None:
    found = [int(u.split()[0]) for u in untagged if u.endswith(b" EXISTS")]
    return found[-1] if found else None


def _await_exists(imap: RawIMAP, n: int, within: float) -> float:
    """In IDLE: read until `* n EXISTS`; how long it took. Fails after `within` s."""
    start = time.monotonic()
    imap.sock.settimeout(within)
    try:
        while True:
            line = imap.line()
            if line == b"* %d EXISTS" % n:
                return time.monotonic() - start
    except TimeoutError:
        raise AssertionError(f"no '* {n} EXISTS' within {within}s") from None
    finally:
        imap.sock.settimeout(10)


def _deliver(server, n: int, into: RawIMAP) -> None:
    """n messages sent to `server`; waits until `into`'s INBOX has them."""
    want = len(_uids(into)) + n
    for i in range(n):
        _send(server, f"m{i}")
    deadline = time.monotonic() + 10
    while len(_uids(into)) < want:
        assert time.monotonic() < deadline, "the messages did not arrive"
        time.sleep(0.05)


def test_idle_on_one_node_sees_a_delivery_and_a_flag_by_the_other_within_a_second(nodes):
    a, b = nodes
    with RawIMAP(a.imaps_port, ALICE) as imap:
        untagged, _ = imap.ok("SELECT INBOX")
        assert _exists(untagged) == 0
        imap.sock.sendall(b"i1 IDLE\r\n")
        assert imap.line().startswith(b"+")
        _send(b, "delivered by node B")
        took = _await_exists(imap, 1, SEEN_WITHIN)
        assert took < SEEN_WITHIN
        with RawIMAP(b.imaps_port, ALICE) as on_b:  # a flag set on node B, still idling
            on_b.ok("SELECT INBOX")
            on_b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
            start = time.monotonic()
            imap.sock.settimeout(SEEN_WITHIN)
            line = imap.line()
            while b"FETCH" not in line:
                line = imap.line()
            imap.sock.settimeout(10)
            assert b"\\Flagged" in line and time.monotonic() - start < SEEN_WITHIN, line
        imap.sock.sendall(b"DONE\r\n")
        while not (line := imap.line()).startswith(b"i1 "):
            assert line.startswith(b"* "), line
        assert line.startswith(b"i1 OK"), line
        untagged, _ = imap.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"delivered by node B" in untagged[0], untagged


def test_a_flag_set_on_one_node_is_seen_on_the_other(nodes):
    a, b = nodes
    with RawIMAP(a.imaps_port, ALICE) as on_a, RawIMAP(b.imaps_port, ALICE) as on_b:
        on_a.ok("SELECT INBOX")
        _deliver(b, 2, on_a)
        on_b.ok("SELECT INBOX")
        on_b.ok("UID STORE 2 +FLAGS.SILENT (\\Flagged $Important)")
        untagged, _ = on_a.ok("NOOP")
        fetched = [u for u in untagged if b"FETCH" in u]
        assert len(fetched) == 1 and fetched[0].startswith(b"2 FETCH"), untagged
        assert b"\\Flagged" in fetched[0] and b"$Important" in fetched[0], fetched
        untagged, _ = on_a.ok("UID FETCH 1:* (FLAGS)")
        assert b"\\Flagged" not in untagged[0] and b"\\Flagged" in untagged[1], untagged
        # And back: cleared on node A, seen on node B.
        on_a.ok("UID STORE 2 -FLAGS.SILENT (\\Flagged)")
        untagged, _ = on_b.ok("UID FETCH 2 (FLAGS)")
        assert b"\\Flagged" not in b" ".join(untagged), untagged


def test_expunge_on_one_node_is_seen_on_the_other(nodes):
    a, b = nodes
    with RawIMAP(a.imaps_port, ALICE) as on_a, RawIMAP(b.imaps_port, ALICE) as on_b:
        on_a.ok("SELECT INBOX")
        _deliver(a, 3, on_a)
        on_b.ok("SELECT INBOX")
        on_b.ok("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        untagged, _ = on_b.ok("EXPUNGE")
        assert b"2 EXPUNGE" in untagged, untagged
        untagged, _ = on_a.ok("NOOP")
        assert b"2 EXPUNGE" in untagged, untagged
        assert _uids(on_a) == [1, 3]
        # A MOVE on node A: node B sees it leave INBOX and arrive in Archive.
        untagged, tagged = on_a.ok("UID MOVE 3 Archive")
        untagged, _ = on_b.ok("NOOP")
        assert b"2 EXPUNGE" in untagged, untagged
        untagged, _ = on_b.ok("STATUS Archive (MESSAGES UIDNEXT)")
        assert b"MESSAGES 1" in untagged[0], untagged


def test_appends_on_both_nodes_at_once_get_distinct_ascending_uids(nodes):
    a, b = nodes
    per_node = 15
    got: dict[str, list[int]] = {}
    go = threading.Barrier(2)
    errors = []

    def work(server, who: str) -> None:
        try:
            with RawIMAP(server.imaps_port, ALICE) as imap:
                go.wait()
                uids = []
                for i in range(per_node):
                    tagged = imap.append("INBOX", make_message(SENDER, ALICE, f"{who}{i}"))
                    assert tagged.startswith(b"OK"), tagged
                    uids.append(int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1)))
                got[who] = uids
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s, w)) for s, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for uids in got.values():
        assert uids == sorted(uids) and len(set(uids)) == per_node, uids
    every = got["a"] + got["b"]
    assert sorted(every) == list(range(1, 2 * per_node + 1)), got
    for server in (a, b):
        with RawIMAP(server.imaps_port, ALICE) as imap:
            imap.ok("SELECT INBOX")
            assert _uids(imap) == list(range(1, 2 * per_node + 1))


def test_two_nodes_taking_in_one_new_dir_at_once_give_each_file_one_uid(nodes):
    """Deliveries land in new/ while sessions on both nodes poll: every file ends up
    with exactly one UID, the same on both nodes."""
    a, b = nodes
    n = 20
    stop = threading.Event()
    seen: dict[str, list[int]] = {}

    def poll(server, who: str) -> None:
        with RawIMAP(server.imaps_port, ALICE) as imap:
            imap.ok("SELECT INBOX")
            while not stop.is_set():
                imap.ok("NOOP")
            seen[who] = _uids(imap)

    threads = [threading.Thread(target=poll, args=(s, w)) for s, w in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    try:
        for i in range(n):
            _send(a if i % 2 else b, f"burst {i}")
        with RawIMAP(a.imaps_port, ALICE) as check:
            check.ok("SELECT INBOX")
            deadline = time.monotonic() + 10
            while len(_uids(check)) < n:
                assert time.monotonic() < deadline, _uids(check)
                time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert seen["a"] == seen["b"] == list(range(1, n + 1)), seen
    with RawIMAP(b.imaps_port, ALICE) as imap:
        untagged, _ = imap.ok("SELECT INBOX")
        assert _exists(untagged) == n
        untagged, _ = imap.ok("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subjects = sorted(re.search(rb"Subject: ([^\r\n]+)", u).group(1) for u in untagged)
        assert subjects == sorted(b"burst %d" % i for i in range(n))


def test_a_restart_keeps_uidvalidity_and_uids(nodes):
    a, b = nodes
    with RawIMAP(a.imaps_port, ALICE) as imap:
        imap.ok("SELECT INBOX")
        _deliver(b, 3, imap)
        imap.ok("UID STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        imap.ok("EXPUNGE")
        _deliver(b, 2, imap)  # 3 and two more: 3, 4, 5
        untagged, _ = imap.ok("SELECT INBOX")
        validity = code_number(untagged, "UIDVALIDITY")
        before = _uids(imap)
    assert before == [3, 4, 5]
    a.stop()
    b.stop()
    a.start()
    with RawIMAP(a.imaps_port, ALICE) as imap:
        untagged, _ = imap.ok("SELECT INBOX")
        assert code_number(untagged, "UIDVALIDITY") == validity
        assert _uids(imap) == before
        assert code_number(untagged, "UIDNEXT") == 6


def test_database_down_mailbox_commands_unavailable_then_the_session_goes_on(nodes, postgres):
    a, b = nodes
    with RawIMAP(a.imaps_port, ALICE) as imap:
        imap.ok("SELECT INBOX")
        _deliver(b, 1, imap)
        postgres.stop_server()
        try:
            for command in ("UID STORE 1 +FLAGS (\\Flagged)", "CREATE Later", "EXPUNGE"):
                _, tagged = imap.cmd(command)
                assert tagged.startswith(b"NO [UNAVAILABLE] The mailbox index is unavailable"), (
                    command, tagged)
            imap.ok("NOOP")  # the session goes on, from what it holds
            untagged, _ = imap.ok("UID SEARCH ALL")
            assert untagged == [b"SEARCH 1"], untagged
            untagged, _ = imap.ok("UID FETCH 1 (FLAGS)")
            assert b"\\Flagged" not in untagged[0], untagged
        finally:
            postgres.start_server()
        wait_until(lambda: imap.cmd("UID STORE 1 +FLAGS (\\Flagged)")[1].startswith(b"OK"), 10,
                   "STORE in the same session after PostgreSQL returned")
        untagged, _ = imap.ok("UID FETCH 1 (FLAGS)")
        assert b"\\Flagged" in untagged[0], untagged
    # Node B learns of the change made after the outage.
    with RawIMAP(b.imaps_port, ALICE) as imap:
        imap.ok("SELECT INBOX")
        untagged, _ = imap.ok("UID FETCH 1 (FLAGS)")
        assert b"\\Flagged" in untagged[0], untagged


def test_mailboxes_made_renamed_and_deleted_on_one_node_are_seen_on_the_other(nodes):
    a, b = nodes
    with RawIMAP(a.imaps_port, ALICE) as on_a, RawIMAP(b.imaps_port, ALICE) as on_b:
        on_a.ok("CREATE Projects")
        untagged, _ = on_b.ok('LIST "" "*"')
        assert any(u.endswith(b' "Projects"') for u in untagged), untagged
        _, tagged = on_b.cmd("CREATE Projects")
        assert tagged.startswith(b"NO [ALREADYEXISTS]"), tagged
        on_b.ok("RENAME Projects Done")
        untagged, _ = on_a.ok('LIST "" "*"')
        names = [u.rsplit(b" ", 1)[1] for u in untagged]
        assert b'"Done"' in names and b'"Projects"' not in names, names
        on_a.ok("SELECT Done")
        on_b.ok("DELETE Done")
        untagged, tagged = on_a.cmd("NOOP")
        assert b"BYE The selected mailbox was deleted" in untagged, (untagged, tagged)


def test_a_sqlite_index_in_the_maildir_is_taken_over_with_its_uids(make_server, storage,
                                                                   tmp_path):
    """`pillarbox import-maildir` (a Dovecot Maildir) on a node with the shared index:
    the first login takes over the index it wrote, Dovecot's UIDVALIDITY and UIDs."""
    node = sharing_mail(make_server, storage, tmp_path)(start=False)
    src = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (src / sub).mkdir(parents=True)
    names = ["1700000001.M1P1.old", "1700000002.M1P1.old"]
    for i, name in enumerate(names):
        (src / "cur" / f"{name}:2,S").write_bytes(make_message(SENDER, ALICE, f"old {i}"))
    (src / "dovecot-uidlist").write_text(
        f"3 V424242 N12\n7 :{names[0]}:2,S\n11 :{names[1]}:2,S\n")
    node.cli_ok("import-maildir", src, ALICE)
    node.start()
    with RawIMAP(node.imaps_port, ALICE) as imap:
        untagged, _ = imap.ok("SELECT INBOX")
        assert code_number(untagged, "UIDVALIDITY") == 424242
        assert code_number(untagged, "UIDNEXT") == 12
        assert _uids(imap) == [7, 11]
        untagged, _ = imap.ok("UID FETCH 11 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"\\Seen" in untagged[0] and b"old 1" in untagged[0], untagged


def test_migrate_makes_the_index_tables_once(make_server, storage, tmp_path):
    node = sharing_mail(make_server, storage, tmp_path)(start=False)
    out = node.cli_ok("migrate").stdout
    assert "PostgreSQL: IMAP index schema version 0 -> 1" in out, out
    assert "PostgreSQL: queue lease schema version 0 -> 1" in out, out  # not left to serve
    out = node.cli_ok("migrate").stdout
    assert "PostgreSQL: IMAP index schema version 1, up to date" in out, out
    assert "PostgreSQL: queue lease schema version 1, up to date" in out, out


def test_a_client_resyncing_on_the_other_node_learns_what_was_expunged(nodes):
    """QRESYNC's expunge records are shared: a client that last saw the mailbox on
    node A and reconnects to node B is told exactly which UIDs went (VANISHED)."""
    a, b = nodes
    with RawIMAP(a.imaps_port, ALICE) as on_a:
        on_a.ok("ENABLE QRESYNC")
        on_a.ok("SELECT INBOX")
        _deliver(b, 4, on_a)
        untagged, _ = on_a.ok("SELECT INBOX")
        v, m = code_number(untagged, "UIDVALIDITY"), code_number(untagged, "HIGHESTMODSEQ")
        on_a.ok("UID STORE 2,4 +FLAGS.SILENT (\\Deleted)")
        on_a.ok("UID EXPUNGE 2,4")
        on_a.ok("UID STORE 3 +FLAGS.SILENT (\\Answered)")
    with RawIMAP(b.imaps_port, ALICE) as on_b:
        on_b.ok("ENABLE QRESYNC")
        untagged, _ = on_b.ok(f"SELECT INBOX (QRESYNC ({v} {m}))")
        assert b"VANISHED (EARLIER) 2,4" in untagged, untagged
        fetched = [u for u in untagged if b"FETCH" in u]
        assert len(fetched) == 1 and b"UID 3" in fetched[0], fetched
        assert b"\\Answered" in fetched[0], fetched
