"""QUOTA (RFC 9208) against a real server: the STORAGE figures GETQUOTAROOT
reports are the ones SMTP checks, and APPEND, COPY, MOVE, EXPUNGE and DELETE
move them at once (no restart needed), in step with the recount at start."""

from __future__ import annotations

import re

import pytest

from .imap_raw import RawIMAP
from .support import ALICE, BOB, make_message, wait_until

CAROL = "carol@example.test"
KIB = 1024


def sized(size: int, subject: str = "sized") -> bytes:
    """A message of exactly `size` octets (lines short enough for SMTP)."""
    head = make_message(BOB, CAROL, subject, body="")
    room = size - len(head)
    assert room >= 2
    line = b"x" * 78 + b"\r\n"
    full, rest = divmod(room, len(line))
    if 0 < rest < 2:  # the last line needs room for its CRLF
        full, rest = full - 1, rest + len(line)
    return head + line * full + (b"y" * (rest - 2) + b"\r\n" if rest else b"")


def quota(c: RawIMAP, mailbox: str = "INBOX") -> tuple[int, int]:
    """(used, limit) in KiB, as GETQUOTAROOT tells them."""
    untagged, _ = c.ok(f"GETQUOTAROOT {mailbox}")
    assert untagged[0] == f'QUOTAROOT "{mailbox}" ""'.encode(), untagged
    m = re.fullmatch(rb'QUOTA "" \(STORAGE (\d+) (\d+)\)', untagged[1])
    assert m, untagged
    return int(m.group(1)), int(m.group(2))


@pytest.fixture
def carol_server(make_server):
    def make(limit: str):
        srv = make_server()
        srv.add_user(CAROL, quota=limit)
        return srv
    return make


def test_quota_commands(carol_server):
    srv = carol_server("10M")
    with RawIMAP(srv.imaps_port, CAROL) as c:
        caps = c.ok("CAPABILITY")[0][0].split()
        assert b"QUOTA" in caps and b"QUOTA=RES-STORAGE" in caps
        assert quota(c) == (0, 10 * KIB)
        assert quota(c, "Sent") == (0, 10 * KIB)  # one root for all mailboxes
        untagged, _ = c.ok('GETQUOTA ""')
        assert untagged == [b'QUOTA "" (STORAGE 0 10240)']
        _, tagged = c.cmd('GETQUOTA "elsewhere"')
        assert tagged.startswith(b"NO [NONEXISTENT]")
        _, tagged = c.cmd('SETQUOTA "" (STORAGE 100)')
        assert tagged.startswith(b"NO [NOPERM]") and b"pillarbox user quota" in tagged
        _, tagged = c.cmd('SETQUOTA ""')
        assert tagged.startswith(b"BAD")
        _, tagged = c.cmd("GETQUOTAROOT Nope")
        assert tagged.startswith(b"NO [NONEXISTENT]")
        c.append("INBOX", sized(300))  # a few bytes show: usage rounds up
        assert quota(c) == (1, 10 * KIB)
    with RawIMAP(srv.imaps_port, ALICE) as c:  # no quota, no quota root
        untagged, _ = c.ok("GETQUOTAROOT INBOX")
        assert untagged == [b'QUOTAROOT "INBOX"']
        _, tagged = c.cmd('GETQUOTA ""')
        assert tagged.startswith(b"NO [NONEXISTENT]")


def test_usage_follows_append_copy_move_expunge_delete(carol_server):
    srv = carol_server("1M")
    with RawIMAP(srv.imaps_port, CAROL) as c:
        c.append("INBOX", sized(10 * KIB, "one"))
        c.append("INBOX", sized(20 * KIB, "two"))
        assert quota(c) == (30, KIB)
        c.ok("SELECT INBOX")
        c.ok("COPY 1:2 Archive")  # a copy counts again, hard link or not
        assert quota(c) == (60, KIB)
        c.ok("SELECT Archive")
        c.ok("MOVE 2 Trash")  # a move does not change the total
        assert quota(c) == (60, KIB)
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        assert quota(c) == (50, KIB)
        c.ok("SELECT INBOX")
        c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        c.ok("CLOSE")  # CLOSE expunges too
        assert quota(c) == (30, KIB)
        c.ok("DELETE Trash")
        assert quota(c) == (10, KIB)
        c.ok("CREATE Trash")
        c.ok("SELECT INBOX")
        c.ok("COPY 1 Trash")
        assert quota(c) == (20, KIB)
    srv.restart()  # the recount from the files at start agrees
    with RawIMAP(srv.imaps_port, CAROL) as c:
        assert quota(c) == (20, KIB)


def test_over_quota_refusals_end_when_expunge_frees_room(carol_server):
    srv = carol_server("20K")
    big = sized(25 * KIB, "big one")
    with srv.smtp() as s:  # under quota when it arrives: accepted
        s.sendmail(BOB, [CAROL], big)
    with RawIMAP(srv.imaps_port, CAROL) as c:
        # The queue delivers in the background; the usage moves when it is done.
        used = wait_until(lambda: quota(c)[0] >= 25 and quota(c)[0], 10,
                          "the delivery to count")
        with srv.smtp() as s:
            s.mail(BOB)
            code, text = s.rcpt(CAROL)
            assert code == 452 and b"4.2.2" in text, (code, text)
        _, tagged = c.cmd(b"APPEND INBOX {10+}\r\nSubject: x")
        assert tagged.startswith(b"NO [OVERQUOTA]"), tagged
        c.ok("SELECT INBOX")
        _, tagged = c.cmd("COPY 1 Archive")
        assert tagged.startswith(b"NO [OVERQUOTA]"), tagged
        c.ok("MOVE 1 Trash")  # moving adds nothing, so it is allowed
        assert quota(c) == (used, 20)
        c.ok("SELECT Trash")
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        assert quota(c) == (0, 20)  # at once, not after a restart
    with srv.smtp() as s:  # the message refused before goes in now
        refused = s.sendmail(BOB, [CAROL], big)
        assert refused == {}
    srv.wait_for_messages(CAROL, 1)



def test_append_over_quota_is_refused_before_the_data(carol_server):
    """A synchronizing literal that would not fit gets NO [OVERQUOTA] instead of
    "+", so the client does not send megabytes for nothing; the session goes on,
    however often it happens."""
    srv = carol_server("100K")
    with RawIMAP(srv.imaps_port, CAROL) as c:
        for _ in range(12):  # more than imap.max_bad_commands: not counted as errors
            c.sock.sendall(b"a APPEND INBOX {500000}\r\n")
            reply = c.line()
            assert reply.startswith(b"a NO [OVERQUOTA]"), reply
        c.ok("NOOP")
        assert c.append("INBOX", sized(10 * KIB)).startswith(b"OK [APPENDUID")
        assert quota(c)[0] >= 10
