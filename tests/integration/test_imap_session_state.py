"""What one session's view holds besides the messages: \\Recent (RFC 3501
2.3.2, exactly one session sees a message as recent) and the keywords a
session was told of (FLAGS / PERMANENTFLAGS before any FETCH shows a new one),
with several sessions of one user over real sockets."""

from __future__ import annotations

import re

from .imap_raw import RawIMAP
from .support import ALICE, BOB, make_message


def raw(server) -> RawIMAP:
    return RawIMAP(server.imaps_port, ALICE)


def count(untagged: list[bytes], word: bytes) -> int | None:
    """n of `* n RECENT` / `* n EXISTS` among untagged lines (the last one)."""
    found = [int(line.split()[0]) for line in untagged if re.fullmatch(rb"\d+ " + word, line)]
    return found[-1] if found else None


def searched(c: RawIMAP, keys: str) -> list[int]:
    untagged, _ = c.ok(f"SEARCH {keys}")
    (line,) = [u for u in untagged if u.startswith(b"SEARCH")]
    return [int(x) for x in line.split()[1:]]


def status_recent(c: RawIMAP, mailbox: str) -> int:
    untagged, _ = c.ok(f"STATUS {mailbox} (RECENT)")
    m = re.search(rb"RECENT (\d+)", b"".join(untagged))
    assert m, untagged
    return int(m.group(1))


def flags_of(c: RawIMAP, seq: int) -> list[bytes]:
    untagged, _ = c.ok(f"FETCH {seq} (FLAGS)")
    m = re.search(rb"FLAGS \(([^)]*)\)", b"".join(u for u in untagged
                                                if u.startswith(b"%d FETCH" % seq)))
    assert m, untagged
    return m.group(1).split()


def test_recent_belongs_to_the_first_session_that_selects(server):
    with raw(server) as writer, raw(server) as examiner, raw(server) as first, \
            raw(server) as second:
        for i in range(2):  # appended while no session has INBOX selected: recent
            writer.append("INBOX", make_message(BOB, ALICE, f"appended {i}"))
        assert status_recent(writer, "INBOX") == 2
        # EXAMINE shows \Recent but must not take it away (RFC 3501 6.3.2).
        untagged, _ = examiner.ok("EXAMINE INBOX")
        assert count(untagged, b"RECENT") == 2
        assert searched(examiner, "RECENT") == [1, 2]
        assert b"\\Recent" in flags_of(examiner, 1)
        assert status_recent(writer, "INBOX") == 2
        # The first SELECT takes it: \Recent there, and nowhere else after.
        untagged, _ = first.ok("SELECT INBOX")
        assert count(untagged, b"RECENT") == 2
        assert searched(first, "NEW") == [1, 2] and searched(first, "OLD") == []
        assert b"\\Recent" in flags_of(first, 2)
        untagged, _ = second.ok("SELECT INBOX")
        assert count(untagged, b"RECENT") == 0
        assert searched(second, "RECENT") == [] and searched(second, "OLD") == [1, 2]
        assert b"\\Recent" not in flags_of(second, 1)
        assert status_recent(writer, "INBOX") == 0
        assert b"\\Recent" in flags_of(first, 1)  # still, for the session that has it

        # A delivery: recent for the one session told of it first.
        with server.smtp() as s:
            s.sendmail(BOB, [ALICE], make_message(BOB, ALICE, "delivered"))
        server.wait_for_messages(ALICE, 1)
        untagged, _ = second.ok("NOOP")
        assert count(untagged, b"EXISTS") == 3 and count(untagged, b"RECENT") == 1
        untagged, _ = first.ok("NOOP")
        assert count(untagged, b"EXISTS") == 3 and count(untagged, b"RECENT") == 2
        assert searched(second, "RECENT") == [3] and searched(first, "RECENT") == [1, 2]
        assert searched(second, "NEW") == [3]
        second.ok("STORE 3 +FLAGS.SILENT (\\Seen)")
        assert searched(second, "NEW") == [] and searched(second, "RECENT") == [3]

        # A copy is recent in its new mailbox; a move into a selected mailbox is
        # recent for the session that has it selected.
        second.ok("COPY 1 Archive")
        assert status_recent(writer, "Archive") == 1
        untagged, _ = writer.ok("SELECT Archive")
        assert count(untagged, b"RECENT") == 1
        second.ok("MOVE 2 Archive")
        untagged, _ = writer.ok("NOOP")
        assert count(untagged, b"EXISTS") == 2 and count(untagged, b"RECENT") == 2
        assert searched(writer, "RECENT") == [1, 2]
        # An APPEND into the mailbox the session has selected: recent there.
        writer.append("Archive", make_message(BOB, ALICE, "own append"))
        assert searched(writer, "RECENT") == [1, 2, 3]
        untagged, _ = examiner.ok("EXAMINE Archive")
        assert count(untagged, b"RECENT") == 0


def test_recent_survives_a_restart(server):
    with raw(server) as c:
        c.append("INBOX", make_message(BOB, ALICE, "seen before the restart"))
        c.ok("SELECT INBOX")
        c.append("Drafts", make_message(BOB, ALICE, "never selected"))
    server.restart()
    with raw(server) as c, raw(server) as other:
        untagged, _ = c.ok("SELECT INBOX")
        assert count(untagged, b"EXISTS") == 1 and count(untagged, b"RECENT") == 0
        assert status_recent(c, "Drafts") == 1
        untagged, _ = c.ok("SELECT Drafts")
        assert count(untagged, b"RECENT") == 1
        untagged, _ = other.ok("SELECT Drafts")
        assert count(untagged, b"RECENT") == 0


def _announced_before_fetch(untagged: list[bytes], keyword: bytes, readonly: bool = False
                            ) -> None:
    """FLAGS and PERMANENTFLAGS naming `keyword` come before any FETCH showing it."""
    flags = [i for i, u in enumerate(untagged)
             if u.startswith(b"FLAGS (") and keyword in u[len(b"FLAGS ("):-1].split()]
    perm = [i for i, u in enumerate(untagged) if u.startswith(b"OK [PERMANENTFLAGS (")]
    fetches = [i for i, u in enumerate(untagged) if b" FETCH " in u and keyword in u]
    assert flags, f"no FLAGS naming {keyword!r}: {untagged!r}"
    assert perm, f"no PERMANENTFLAGS: {untagged!r}"
    if readonly:
        assert untagged[perm[0]].startswith(b"OK [PERMANENTFLAGS ()]")
    else:
        listed = untagged[perm[0]][len(b"OK [PERMANENTFLAGS ("):].split(b")]")[0].split()
        assert keyword in listed and listed[-1] == b"\\*", untagged
    if fetches:
        assert flags[0] < fetches[0] and perm[0] < fetches[0], untagged


def test_new_keywords_are_announced_before_they_are_used(server):
    with raw(server) as setter, raw(server) as watcher, raw(server) as reader, \
            raw(server) as examiner:
        setter.append("INBOX", make_message(BOB, ALICE, "one"))
        setter.append("INBOX", make_message(BOB, ALICE, "two"))
        for c in (setter, watcher, reader):
            untagged, _ = c.ok("SELECT INBOX")
            assert not any(b"$Label1" in u for u in untagged)
        examiner.ok("EXAMINE INBOX")
        # The session that stores a new keyword hears of it before its FETCH.
        untagged, _ = setter.ok("STORE 1 +FLAGS ($Label1)")
        _announced_before_fetch(untagged, b"$Label1")
        untagged, _ = setter.ok("STORE 2 +FLAGS ($Label1)")  # known now: not again
        assert not any(u.startswith((b"FLAGS", b"OK [PERMANENTFLAGS")) for u in untagged)
        # Every other session with the mailbox selected, at its next command.
        untagged, _ = watcher.ok("NOOP")
        _announced_before_fetch(untagged, b"$Label1")
        untagged, _ = examiner.ok("NOOP")
        _announced_before_fetch(untagged, b"$Label1", readonly=True)
        # Even a FETCH (which holds other flag changes back) announces it first.
        untagged, _ = reader.ok("FETCH 1:2 (FLAGS)")
        _announced_before_fetch(untagged, b"$Label1")
        # An APPEND with a new keyword, and a COPY bringing one.
        setter.append("INBOX", make_message(BOB, ALICE, "three"), flags="$Appended")
        untagged, _ = watcher.ok("NOOP")
        _announced_before_fetch(untagged, b"$Appended")
        untagged, _ = watcher.ok("FETCH 3 (FLAGS)")
        assert untagged == [b"3 FETCH (FLAGS ($Appended \\Recent))"] or \
            untagged == [b"3 FETCH (FLAGS ($Appended))"], untagged
        setter.append("Archive", make_message(BOB, ALICE, "four"), flags="$Copied")
        untagged, _ = setter.ok("SELECT Archive")
        _announced_before_fetch(untagged, b"$Copied")
        setter.ok("COPY 1 INBOX")
        untagged, _ = watcher.ok("NOOP")
        _announced_before_fetch(untagged, b"$Copied")
        # IDLE is an update point too.
        setter.ok("SELECT INBOX")
        watcher.sock.sendall(b"i1 IDLE\r\n")
        assert watcher.line().startswith(b"+ ")
        setter.ok("STORE 1 +FLAGS ($Idle)")
        seen = []
        while not any(b" FETCH " in u for u in seen):
            seen.append(watcher.line()[2:])
        _announced_before_fetch(seen, b"$Idle")
        watcher.sock.sendall(b"DONE\r\n")
        while not (line := watcher.line()).startswith(b"i1 "):
            pass
        assert line.startswith(b"i1 OK")
