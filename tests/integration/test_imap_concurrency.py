"""Several sessions of one user at once: an APPEND must not fail because
another session looked at (and changed) the mailbox while the message was
being written, whatever that session does meanwhile."""

from __future__ import annotations

import threading

from .imap_raw import RawIMAP
from .support import ALICE, BOB, make_message

APPENDERS = 4
APPENDS_EACH = 120
BATCH = 10  # APPENDs pipelined per round trip (LITERAL+)


def _pipeline(c: RawIMAP, commands: list[bytes]) -> list[bytes]:
    """Send commands in one write; return their tagged replies (untagged dropped)."""
    tags = []
    out = b""
    for text in commands:
        c.n += 1
        tags.append(b"t%d" % c.n)
        out += tags[-1] + b" " + text + b"\r\n"
    c.sock.sendall(out)
    replies = []
    while len(replies) < len(tags):
        line = c.line()
        if line.startswith(tags[len(replies)] + b" "):
            replies.append(line[len(tags[len(replies)]) + 1:])
    return replies


def test_concurrent_appends_never_fail_while_others_sync_flag_and_expunge(server):
    """The race of issue 13 (one APPEND in 900 said NO [SERVERBUG]): the new
    file was visible in cur/ before its APPEND indexed it, so another session's
    NOOP took it in and its STORE / EXPUNGE renamed or removed it first.
    Here other sessions take in, flag and expunge as fast as they can while
    four sessions APPEND, pipelined."""
    msg = make_message(BOB, ALICE, "race", body="x" * 2000 + "\r\n")
    append = b"APPEND INBOX {%d+}\r\n" % len(msg) + msg
    failures: list[bytes] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def appender() -> None:
        try:
            with RawIMAP(server.imaps_port, ALICE, timeout=60) as c:
                for _ in range(APPENDS_EACH // BATCH):
                    failures.extend(r for r in _pipeline(c, [append] * BATCH)
                                    if not r.startswith(b"OK"))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def hammer(commands: list[bytes]) -> None:
        try:
            with RawIMAP(server.imaps_port, ALICE, timeout=60) as c:
                c.ok("SELECT INBOX")
                while not done.is_set():
                    _pipeline(c, commands)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    hammers = [
        [b"NOOP", b"UID STORE 1:* +FLAGS.SILENT (\\Deleted)", b"EXPUNGE"] * 3,
        [b"NOOP", b"UID STORE 1:* +FLAGS.SILENT (\\Seen)", b"NOOP",
         b"UID STORE 1:* -FLAGS.SILENT (\\Seen)"] * 3,
        [b"SELECT INBOX", b"NOOP", b"UID MOVE 1:* Trash"] * 3,
    ]
    helpers = [threading.Thread(target=hammer, args=(h,)) for h in hammers]
    writers = [threading.Thread(target=appender) for _ in range(APPENDERS)]
    for t in helpers + writers:
        t.start()
    for t in writers:
        t.join(120)
    done.set()
    for t in helpers:
        t.join(30)
    assert not errors, errors
    assert failures == [], f"{len(failures)} APPENDs failed: {failures[:3]}"
