"""QRESYNC (RFC 7162 section 3.2) against a real server, with the byte-exact
client: ENABLE QRESYNC, SELECT/EXAMINE (QRESYNC (...)) with VANISHED
(EARLIER) and the FETCHes of changed messages, UID FETCH (CHANGEDSINCE n
VANISHED), VANISHED instead of EXPUNGE, [HIGHESTMODSEQ] after an expunge,
[CLOSED] on a mailbox switch, the fallback once the index pruned its record
of expunges, and malformed parameters (BAD, the session goes on)."""

from __future__ import annotations

import re
import sqlite3
import time

import psycopg
import pytest

from .imap_raw import RawIMAP, code_number
from .pg_server import BACKENDS, sharing_mail
from .support import ALICE, BOB, make_message

pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)


@pytest.fixture
def make_server(make_server, storage, tmp_path):
    """On PostgreSQL with a shared_dir: the IMAP index in PostgreSQL."""
    return sharing_mail(make_server, storage, tmp_path)

INDEX = "pillarbox-index.sqlite"


def raw(server, user: str = ALICE) -> RawIMAP:
    return RawIMAP(server.imaps_port, user)


def fill(c: RawIMAP, n: int, mailbox: str = "INBOX") -> None:
    for i in range(n):
        c.append(mailbox, make_message(BOB, ALICE, f"message {i + 1}"))


def qresync_session(server) -> RawIMAP:
    c = raw(server)
    assert c.ok("ENABLE QRESYNC")[0] == [b"ENABLED QRESYNC"]
    return c


def after_highestmodseq(untagged: list[bytes]) -> list[bytes]:
    """The replies a QRESYNC select adds: those after the OK codes of SELECT
    ([HIGHESTMODSEQ n], then [MAILBOXID (...)] of OBJECTID)."""
    i = max(i for i, line in enumerate(untagged)
            if line.startswith((b"OK [HIGHESTMODSEQ ", b"OK [MAILBOXID ")))
    return untagged[i + 1:]


def test_capability_and_enable(server):
    with raw(server) as c:
        assert b"QRESYNC" in c.ok("CAPABILITY")[0][0].split()
        fill(c, 1)
        c.ok("SELECT INBOX")
        v = code_number(c.ok("EXAMINE INBOX")[0], "UIDVALIDITY")
        # Not enabled yet: the QRESYNC parameter and the VANISHED modifier are BAD.
        _, tagged = c.cmd(f"SELECT INBOX (QRESYNC ({v} 1))")
        assert tagged.startswith(b"BAD")
        _, tagged = c.cmd("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        assert tagged.startswith(b"BAD")
        # ENABLE QRESYNC turns CONDSTORE on as well (the selected mailbox's
        # HIGHESTMODSEQ comes at once, as for any CONDSTORE-enabling command).
        untagged, _ = c.ok("ENABLE QRESYNC")
        assert untagged[-1] == b"ENABLED QRESYNC"
        assert any(line.startswith(b"OK [HIGHESTMODSEQ ") for line in untagged)
        assert c.ok("ENABLE QRESYNC CONDSTORE")[0] == [b"ENABLED"]  # both on already
        c.ok("SELECT INBOX")
        untagged, _ = c.ok("FETCH 1 (FLAGS)")
        assert re.fullmatch(rb"1 FETCH \(FLAGS \(.*\)\)", untagged[0])
        untagged, _ = c.ok("STORE 1 +FLAGS (\\Flagged)")
        assert re.fullmatch(rb"1 FETCH \(UID 1 MODSEQ \(\d+\) FLAGS \(\\Flagged\)\)",
                            untagged[0])


def test_resync_after_disconnect_gets_exactly_what_changed(server):
    """The issue's resync: a client goes away, another session expunges some
    messages and flags others, the first comes back with QRESYNC and is told
    exactly the expunged UIDs and the changed flags, nothing else."""
    with qresync_session(server) as first:
        fill(first, 6)
        untagged, _ = first.ok("SELECT INBOX")
        v, m = code_number(untagged, "UIDVALIDITY"), code_number(untagged, "HIGHESTMODSEQ")
        assert b"6 EXISTS" in untagged
    with raw(server) as other:
        other.ok("SELECT INBOX")
        other.ok("UID STORE 3,4 +FLAGS (\\Deleted)")
        other.ok("EXPUNGE")
        other.ok("UID STORE 2 +FLAGS (\\Flagged)")
        other.ok("UID STORE 5 +FLAGS ($Work)")
        untagged, _ = other.ok("UID FETCH 2,5 (MODSEQ)")
        after = {int(u): int(ms) for u, ms in
                 re.findall(rb"FETCH \(UID (\d+) MODSEQ \((\d+)\)", b"\n".join(untagged))}
        assert sorted(after) == [2, 5]
    with qresync_session(server) as first:
        untagged, tagged = first.ok(f"SELECT INBOX (QRESYNC ({v} {m}))")
        assert b"READ-WRITE" in tagged
        assert b"4 EXISTS" in untagged
        assert not any(b"EXPUNGE" in line for line in untagged)
        assert after_highestmodseq(untagged) == [
            b"VANISHED (EARLIER) 3:4",
            b"2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))" % after[2],
            b"3 FETCH (UID 5 FLAGS ($Work) MODSEQ (%d))" % after[5],
        ]
        # The same again from the new HIGHESTMODSEQ: nothing to tell.
        now = code_number(untagged, "HIGHESTMODSEQ")
        untagged, _ = first.ok(f"EXAMINE INBOX (QRESYNC ({v} {now}))")
        assert after_highestmodseq(untagged) == []


def test_known_uids_limit_the_answer_and_a_new_uidvalidity_voids_it(server):
    with qresync_session(server) as c:
        fill(c, 8)
        untagged, _ = c.ok("SELECT INBOX")
        v, m = code_number(untagged, "UIDVALIDITY"), code_number(untagged, "HIGHESTMODSEQ")
        c.ok("UID STORE 2,6 +FLAGS (\\Deleted)")
        c.ok("UID STORE 3,7 +FLAGS (\\Seen)")
        c.ok("EXPUNGE")
        fill(c, 1)  # UID 9, new: changed since m, but not among the known UIDs
        c.ok("UID STORE 9 +FLAGS (\\Deleted)")
        c.ok("EXPUNGE")  # a message the client never saw goes too
        # RFC 7162 3.2.5: only the known UIDs are reported (the rest, 5:8, left out).
        untagged, _ = c.ok(f"EXAMINE INBOX (QRESYNC ({v} {m} 1:4))")
        extra = after_highestmodseq(untagged)
        assert extra[0] == b"VANISHED (EARLIER) 2"
        assert [re.match(rb"\d+ FETCH \(UID (\d+) ", x).group(1) for x in extra[1:]] == [b"3"]
        # Without known UIDs: every UID expunged since m, the one never seen too
        # (RFC 7162 allows it), and the FETCHes of the messages changed.
        extra = after_highestmodseq(c.ok(f"EXAMINE INBOX (QRESYNC ({v} {m}))")[0])
        assert extra[0] == b"VANISHED (EARLIER) 2,6,9"
        assert [re.match(rb"(\d+) FETCH \(UID (\d+) FLAGS \((.*)\) MODSEQ", x).groups()
                for x in extra[1:]] == [(b"2", b"3", b"\\Seen"), (b"5", b"7", b"\\Seen")]
        # Another UIDVALIDITY: the client's cache is void, the parameter ignored.
        untagged, tagged = c.ok(f"SELECT INBOX (QRESYNC ({v + 1} {m}))")
        assert after_highestmodseq(untagged) == [] and b"6 EXISTS" in untagged


def test_vanished_instead_of_expunge_and_highestmodseq_after_expunge(server):
    with qresync_session(server) as c, qresync_session(server) as watcher, \
            raw(server) as plain:
        fill(c, 5)
        c.ok("SELECT INBOX")
        watcher.ok("SELECT INBOX")
        plain.ok("SELECT INBOX")
        c.ok("STORE 2,4 +FLAGS (\\Deleted)")
        untagged, tagged = c.ok("EXPUNGE")
        assert b"VANISHED 2,4" in untagged
        assert not any(b"EXPUNGE" in line for line in untagged)
        modseq = code_number(tagged, "HIGHESTMODSEQ")  # RFC 7162 3.2.7
        status = c.ok("STATUS INBOX (HIGHESTMODSEQ)")[0][0]
        assert status.endswith(b"(HIGHESTMODSEQ %d)" % modseq)
        # Another session with QRESYNC hears VANISHED; one without, EXPUNGE.
        assert b"VANISHED 2,4" in watcher.ok("NOOP")[0]
        assert plain.ok("NOOP")[0][:2] == [b"4 EXPUNGE", b"2 EXPUNGE"]
        # UID EXPUNGE the same way; nothing expunged: no HIGHESTMODSEQ in the OK.
        c.ok("UID STORE 1,5 +FLAGS (\\Deleted)")
        untagged, tagged = c.ok("UID EXPUNGE 5")
        assert b"VANISHED 5" in untagged and b"[HIGHESTMODSEQ " in tagged
        _, tagged = c.ok("UID EXPUNGE 5")
        assert b"HIGHESTMODSEQ" not in tagged
        # MOVE out reports VANISHED too (RFC 6851 with QRESYNC).
        untagged, _ = c.ok("UID MOVE 3 Archive")
        assert b"VANISHED 3" in untagged
        # CLOSE that expunges says the new HIGHESTMODSEQ, without VANISHED.
        untagged, tagged = c.ok("CLOSE")
        assert b"[HIGHESTMODSEQ " in tagged
        assert not any(line.startswith(b"VANISHED") for line in untagged)
        # The watcher is told of all three at its next command, in one line.
        assert [x for x in watcher.ok("NOOP")[0] if x.startswith(b"VANISHED")] == [
            b"VANISHED 1,3,5"]


def test_uid_fetch_changedsince_vanished(server):
    """RFC 7162 3.2.6's example, with this mailbox's numbers."""
    with qresync_session(server) as c:
        fill(c, 10)
        untagged, _ = c.ok("SELECT INBOX")
        m = code_number(untagged, "HIGHESTMODSEQ")
        c.ok("UID STORE 3,4,5,8 +FLAGS (\\Deleted)")
        c.ok("EXPUNGE")
        c.ok("UID STORE 6 +FLAGS (\\Answered)")
        untagged, _ = c.ok(f"UID FETCH 2:* (FLAGS) (CHANGEDSINCE {m} VANISHED)")
        assert untagged[0] == b"VANISHED (EARLIER) 3:5,8"  # before any FETCH
        assert len(untagged) == 2
        assert re.fullmatch(rb"3 FETCH \(UID 6 FLAGS \(\\Answered \\Recent\) MODSEQ \(\d+\)\)",
                            untagged[1])
        # Only the UIDs of the set; none of them gone: no VANISHED.
        untagged, _ = c.ok(f"UID FETCH 6:7 (FLAGS) (CHANGEDSINCE {m} VANISHED)")
        assert [line for line in untagged if line.startswith(b"VANISHED")] == []
        # VANISHED is for UID FETCH only, and only with CHANGEDSINCE.
        assert c.cmd(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {m} VANISHED)")[1].startswith(b"BAD")
        assert c.cmd("UID FETCH 1:* (FLAGS) (VANISHED)")[1].startswith(b"BAD")
        c.ok("NOOP")


def test_closed_when_a_mailbox_is_switched(server):
    with raw(server) as c:
        untagged, _ = c.ok("SELECT INBOX")
        assert not any(b"[CLOSED]" in line for line in untagged)  # nothing was selected
        untagged, _ = c.ok("EXAMINE Sent")
        assert untagged[0].startswith(b"OK [CLOSED]")  # first: what follows is Sent's
        untagged, tagged = c.cmd("SELECT NoSuchBox")
        assert tagged.startswith(b"NO") and untagged[0].startswith(b"OK [CLOSED]")
        c.ok("SELECT INBOX")
        c.ok("UNSELECT")
        untagged, _ = c.ok("SELECT INBOX")
        assert not any(b"[CLOSED]" in line for line in untagged)


def test_pruned_record_falls_back_to_every_missing_uid(make_server, storage, storage_url):
    """Once the index pruned the expunges a client asks about, it is told every
    UID it may know that is not there (RFC 7162 allows that), narrowed by its
    known UIDs or its seq-match-data."""
    srv = make_server()
    with qresync_session(srv) as c:
        fill(c, 10)
        c.ok("SELECT INBOX")
        c.ok("UID STORE 1 +FLAGS (\\Deleted)")
        c.ok("EXPUNGE")  # before the client's snapshot
        untagged, _ = c.ok("SELECT INBOX")  # the client now knows UIDs 2:10
        v, m = code_number(untagged, "UIDVALIDITY"), code_number(untagged, "HIGHESTMODSEQ")
        c.ok("UID STORE 3,7 +FLAGS (\\Deleted)")
        c.ok("EXPUNGE")
        exact = after_highestmodseq(c.ok(f"EXAMINE INBOX (QRESYNC ({v} {m}))")[0])
        assert exact == [b"VANISHED (EARLIER) 3,7"]
    srv.stop()
    if storage == "sqlite":
        db = sqlite3.connect(srv.maildir(ALICE) / INDEX)  # as if pruned
        db.execute("DELETE FROM expunged")
        db.execute("UPDATE mailboxes SET expungedfloor = highestmodseq")
        db.commit()
        db.close()
    else:  # store/pg_mailbox_index.py's tables, all users' rows
        with psycopg.connect(storage_url, autocommit=True) as db:
            db.execute("DELETE FROM mailbox_index_expunged WHERE owner = %s", (ALICE,))
            db.execute("UPDATE mailbox_index_mailboxes SET expungedfloor = highestmodseq "
                       "WHERE owner = %s", (ALICE,))
    srv.start()
    with qresync_session(srv) as c:
        extra = after_highestmodseq(c.ok(f"EXAMINE INBOX (QRESYNC ({v} {m}))")[0])
        assert extra == [b"VANISHED (EARLIER) 1,3,7"]  # 1 went earlier: told again
        extra = after_highestmodseq(c.ok(f"EXAMINE INBOX (QRESYNC ({v} {m} 2:40))")[0])
        assert extra == [b"VANISHED (EARLIER) 3,7"]
        # seq-match-data: message 1 is still UID 2, so nothing up to 2 went; 2 is not 3.
        extra = after_highestmodseq(
            c.ok(f"EXAMINE INBOX (QRESYNC ({v} {m} 1:10 (1:2 2:3)))")[0])
        assert extra == [b"VANISHED (EARLIER) 3,7"]
        # Message 4 is still UID 6 (after 2,4,5 before it): nothing up to 6 went.
        extra = after_highestmodseq(
            c.ok(f"EXAMINE INBOX (QRESYNC ({v} {m} (1,4 2,6)))")[0])
        assert extra == [b"VANISHED (EARLIER) 7"]


def test_malformed_parameters_are_bad_and_huge_sets_cheap(server):
    with qresync_session(server) as c:
        fill(c, 3)
        untagged, _ = c.ok("SELECT INBOX")
        v, m = code_number(untagged, "UIDVALIDITY"), code_number(untagged, "HIGHESTMODSEQ")
    malformed = ["(QRESYNC)", "(QRESYNC ())", f"(QRESYNC ({v}))", "(QRESYNC (0 1))",
                 f"(QRESYNC ({v} x))", f"(QRESYNC ({v} 99999999999999999999))",
                 f"(QRESYNC ({v} {m} 1:*))", f"(QRESYNC ({v} {m} 1:5 (1:3 1:2)))",
                 f"(QRESYNC ({v} {m} 1:5 (1:3)))", f"(QRESYNC ({v} {m} (1 *)))",
                 f"(QRESYNC ({v} {m})", f"(QRESYNC ({v} {m}) QRESYNC ({v} {m}))",
                 f"(QRESYNC ({v} {m} 1:3 (1 1) 5))", f"(QRESYNC ({v} -1))",
                 "(QRESYNC (" + "(" * 500]
    for i in range(0, len(malformed), 5):  # 10 BADs end a session
        with qresync_session(server) as c:
            c.ok("SELECT INBOX")
            for params in malformed[i:i + 5]:
                untagged, tagged = c.cmd(f"SELECT INBOX {params}")
                assert tagged.startswith(b"BAD"), (params, tagged)
            # Still selected (a BAD command is not run), still served.
            assert c.ok("FETCH 3 (UID)")[0] == [b"3 FETCH (UID 3)"]
    with qresync_session(server) as c:
        # Huge known-uids and seq-match-data: ranges, not lists, so quick.
        t = time.monotonic()
        top = 4294967295
        extra = after_highestmodseq(c.ok(
            f"EXAMINE INBOX (QRESYNC ({v} 1 1:{top} (1:{top} 1:{top})))")[0])
        assert [x.split(b" FETCH")[0] for x in extra] == [b"1", b"2", b"3"]
        many = ",".join(str(n) for n in range(1, 6000, 2))  # 3,000 ranges, 45 KB a line
        c.ok(f"EXAMINE INBOX (QRESYNC ({v} 1 {many} ({many} {many})))")
        c.ok(f"UID FETCH {many} (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        assert time.monotonic() - t < 5
