"""OBJECTID (RFC 8474) and SAVEDATE (RFC 8514) against a real server: MAILBOXID
in CREATE, SELECT and STATUS, kept by RENAME and restarts, new for a new
mailbox; EMAILID kept by COPY and MOVE; THREADID from References/In-Reply-To; the save date from the
index, searched with SAVEDBEFORE/SAVEDON/SAVEDSINCE; an index of the previous
schema gets ids and save dates without losing a row."""

from __future__ import annotations

import datetime
import re
import sqlite3

from pillarbox.store.mailbox_index import MIGRATIONS

from .imap_raw import RawIMAP
from .support import ALICE, BOB, make_message

INDEX = "pillarbox-index.sqlite"
OBJECTID = rb"[A-Za-z0-9_-]{1,255}"


def raw(server) -> RawIMAP:
    return RawIMAP(server.imaps_port, ALICE)


def mailboxid(c: RawIMAP, name: str) -> bytes:
    untagged, _ = c.ok(f"STATUS {name} (MAILBOXID)")
    m = re.fullmatch(rb'STATUS "[^"]*" \(MAILBOXID \((' + OBJECTID + rb")\)\)", untagged[0])
    assert m, untagged
    return m.group(1)


def emailids(c: RawIMAP) -> dict[int, bytes]:
    out = {}
    for line in c.ok("UID FETCH 1:* (EMAILID THREADID)")[0]:
        m = re.fullmatch(rb"\d+ FETCH \(UID (\d+) EMAILID \((" + OBJECTID
                         + rb")\) THREADID \(T[0-9a-f]{24}\)\)", line)
        assert m, line
        out[int(m.group(1))] = m.group(2)
    return out


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%d-%b-%Y")


def test_mailboxid_rfc8474_examples(make_server):
    srv = make_server()
    with raw(srv) as c:
        caps = c.ok("CAPABILITY")[0][0].split()
        assert b"OBJECTID" in caps and b"SAVEDATE" in caps
        # 4.1: CREATE answers the new mailbox's id; STATUS tells it too.
        _, tagged = c.ok("CREATE foo")
        m = re.match(rb"OK \[MAILBOXID \((" + OBJECTID + rb")\)\]", tagged)
        assert m, tagged
        foo = m.group(1)
        assert mailboxid(c, "foo") == foo
        untagged, _ = c.ok("SELECT foo")
        assert f"OK [MAILBOXID ({foo.decode()})] Ok".encode() in untagged
        c.ok("UNSELECT")
        # 4.2: RENAME keeps it (children too); ids differ between mailboxes.
        c.ok("CREATE foo.sub")
        sub = mailboxid(c, "foo.sub")
        assert sub != foo and mailboxid(c, "INBOX") not in (foo, sub)
        c.ok("RENAME foo bar")
        assert mailboxid(c, "bar") == foo and mailboxid(c, "bar.sub") == sub
        # A deleted and re-created name is another mailbox: another id.
        c.ok("DELETE bar.sub")
        c.ok("CREATE bar.sub")
        assert mailboxid(c, "bar.sub") != sub
        inbox = mailboxid(c, "INBOX")
    srv.stop()
    srv.start()
    with raw(srv) as c:  # kept in the index
        assert mailboxid(c, "bar") == foo and mailboxid(c, "INBOX") == inbox


def test_emailid_copy_move_and_threadid(server):
    with raw(server) as c:
        c.append("INBOX", make_message(BOB, ALICE, "one"))
        c.append("INBOX", make_message(BOB, ALICE, "two"))
        c.ok("SELECT INBOX")
        ids = emailids(c)
        assert len(set(ids.values())) == 2
        # 5.1: a copy is the same message: the same EMAILID; MOVE keeps it.
        c.ok("UID COPY 1 Archive")
        c.ok("UID MOVE 2 Trash")
        c.ok("SELECT Archive")
        assert list(emailids(c).values()) == [ids[1]]
        c.ok("SELECT Trash")
        assert list(emailids(c).values()) == [ids[2]]
        # The same content appended again is another message.
        c.append("Trash", make_message(BOB, ALICE, "two"))
        c.ok("NOOP")
        assert len(set(emailids(c).values())) == 2
        # EMAILID alone, and with other items in any order.
        untagged, _ = c.ok("FETCH 1 (THREADID FLAGS EMAILID)")
        assert re.fullmatch(rb"1 FETCH \(THREADID \(T[0-9a-f]{24}\) FLAGS \([^)]*\) EMAILID \("
                            + ids[2] + rb"\)\)", untagged[0]), untagged


def threadids(c: RawIMAP) -> list[bytes]:
    out = []
    for line in c.ok("FETCH 1:* (THREADID)")[0]:
        m = re.fullmatch(rb"\d+ FETCH \(THREADID \((T[0-9a-f]{24})\)\)", line)
        assert m, line
        out.append(m.group(1))
    return out


def test_threadid(server):
    def mail(subject: str, headers: str) -> bytes:
        return (f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n{headers}"
                "\r\nbody\r\n").encode()

    with raw(server) as c:
        c.append("INBOX", mail("root", "Message-ID: <root@x>\r\n"))
        c.append("INBOX", mail("Re: root", "Message-ID: <r1@x>\r\nIn-Reply-To: <root@x>\r\n"
                                           "References: <root@x>\r\n"))
        c.append("INBOX", mail("Re: Re: root", "Message-ID: <r2@x>\r\n"
                                               "References: <root@x>\r\n <r1@x>\r\n"))
        c.append("INBOX", mail("Re: root", "In-Reply-To: <root@x> (sent by bob)\r\n"))
        c.append("INBOX", mail("other", "Message-ID: <other@x>\r\n"))
        c.append("INBOX", mail("no ids", ""))
        c.append("INBOX", mail("no ids either", ""))
        c.ok("SELECT INBOX")
        t = threadids(c)
        assert t[0] == t[1] == t[2] == t[3]  # a thread: the root and its replies
        assert len({t[0], t[4], t[5], t[6]}) == 4  # each other message its own
        assert threadids(c) == t  # the same each time
        c.ok("COPY 2,6 Archive")
        c.ok("SELECT Archive")
        assert threadids(c) == [t[1], t[5]]  # a copy is in the same thread
        untagged, _ = c.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] THREADID)")
        assert untagged[0].endswith(b" THREADID (" + t[1] + b"))"), untagged
    with raw(server) as c:  # another session: the same ids
        c.ok("EXAMINE INBOX")
        assert threadids(c) == t


def test_savedate(server):
    with raw(server) as c:
        # An old internal date, saved now.
        msg = make_message(BOB, ALICE, "old")
        c.ok(f'APPEND INBOX "05-Mar-2001 10:00:00 +0000" {{{len(msg)}+}}\r\n'.encode() + msg)
        c.ok("SELECT INBOX")
        untagged, _ = c.ok("FETCH 1 (INTERNALDATE SAVEDATE)")
        m = re.fullmatch(rb'1 FETCH \(INTERNALDATE "05-Mar-2001 10:00:00 \+0000" '
                         rb'SAVEDATE "([^"]+)"\)', untagged[0])
        assert m, untagged
        saved = datetime.datetime.strptime(m.group(1).decode(), "%d-%b-%Y %H:%M:%S %z")
        assert abs((datetime.datetime.now(datetime.UTC) - saved).total_seconds()) < 60
        day = today()
        assert c.ok(f"SEARCH SAVEDON {day}")[0] == [b"SEARCH 1"]
        assert c.ok(f"SEARCH SAVEDSINCE {day}")[0] == [b"SEARCH 1"]
        assert c.ok(f"SEARCH SAVEDBEFORE {day}")[0] == [b"SEARCH"]
        assert c.ok("SEARCH SAVEDBEFORE 1-Jan-2002")[0] == [b"SEARCH"]
        assert c.ok("SEARCH BEFORE 1-Jan-2002")[0] == [b"SEARCH 1"]
        assert c.ok("SEARCH SAVEDATESUPPORTED")[0] == [b"SEARCH 1"]
        assert c.ok("UID SEARCH NOT SAVEDATESUPPORTED")[0] == [b"SEARCH"]


def test_previous_schema_gets_ids_and_save_dates(make_server):
    srv = make_server()
    with raw(srv) as c:
        msg = make_message(BOB, ALICE, "kept")
        c.ok(f'APPEND INBOX (\\Flagged) "05-Mar-2001 10:00:00 +0000" {{{len(msg)}+}}\r\n'
             .encode() + msg)
        c.ok("CREATE Work")
        c.ok('SETMETADATA Work (/private/comment "x")')
    srv.stop()
    db = sqlite3.connect(srv.maildir(ALICE) / INDEX)  # back to schema 5 (QRESYNC's)
    db.execute("ALTER TABLE mailboxes DROP COLUMN mailboxid")
    db.execute("ALTER TABLE messages DROP COLUMN emailid")
    db.execute("ALTER TABLE messages DROP COLUMN savedate")
    db.execute("DROP TABLE metadata")
    db.execute("PRAGMA user_version=5")
    db.commit()
    db.close()
    srv.start()
    with raw(srv) as c:
        work = mailboxid(c, "Work")
        assert work != mailboxid(c, "INBOX")
        c.ok("SELECT INBOX")
        untagged, _ = c.ok("FETCH 1 (FLAGS INTERNALDATE SAVEDATE EMAILID)")
        assert re.fullmatch(rb'1 FETCH \(FLAGS \(\\Flagged[^)]*\) INTERNALDATE '
                            rb'"05-Mar-2001 10:00:00 \+0000" SAVEDATE "05-Mar-2001 10:00:00 '
                            rb'\+0000" EMAILID \('
                            + OBJECTID + rb"\)\)", untagged[0]), untagged
        first = emailids(c)
        assert c.ok("GETMETADATA Work /private/comment")[0] == [
            b'METADATA "Work" (/private/comment NIL)']
    srv.stop()
    srv.start()
    with raw(srv) as c:  # assigned once, then stable
        assert mailboxid(c, "Work") == work
        c.ok("SELECT INBOX")
        assert emailids(c) == first
    db = sqlite3.connect(srv.maildir(ALICE) / INDEX)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.close()


def test_malformed(server):
    with raw(server) as c:
        c.append("INBOX", make_message(BOB, ALICE, "one"))
        c.ok("SELECT INBOX")
        for bad in ("FETCH 1 (EMAILID", "FETCH 1 (EMAILIDS)", "FETCH 1 SAVEDATE.X",
                    "SEARCH SAVEDON 2024-01-01", "SEARCH SAVEDSINCE",
                    "SEARCH SAVEDBEFORE 32-Jan-2024",
                    "STATUS INBOX (MAILBOXID BOGUS)", "STATUS INBOX MAILBOXID"):
            _, tagged = c.cmd(bad)
            assert tagged.startswith(b"BAD"), (bad, tagged)
        c.ok("NOOP")
