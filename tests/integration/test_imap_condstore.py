"""CONDSTORE (RFC 7162) and the cached ENVELOPE/BODYSTRUCTURE, against a real
server with a byte-exact client (to see response codes and unsolicited
FETCH items) and imapclient (to see that a real client library copes)."""

from __future__ import annotations

import re
import sqlite3

from pillarbox.store.mailbox_index import MIGRATIONS

from .imap_raw import RawIMAP, code_number, modseqs
from .support import ALICE, BOB, make_message

INDEX = "pillarbox-index.sqlite"


def raw(server, user: str = ALICE) -> RawIMAP:
    return RawIMAP(server.imaps_port, user)


def fill(c: RawIMAP, n: int, mailbox: str = "INBOX") -> None:
    for i in range(n):
        c.append(mailbox, make_message(BOB, ALICE, f"message {i + 1}"))


def status_modseq(c: RawIMAP, mailbox: str = "INBOX") -> int:
    untagged, _ = c.ok(f"STATUS {mailbox} (HIGHESTMODSEQ)")
    m = re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(untagged))
    assert m, untagged
    return int(m.group(1))


def test_capability_and_highestmodseq_on_select_and_examine(server):
    with raw(server) as c:
        caps = c.ok("CAPABILITY")[0][0].split()
        assert b"CONDSTORE" in caps
        fill(c, 2)
        untagged, tagged = c.ok("SELECT INBOX (CONDSTORE)")
        selected = code_number(untagged, "HIGHESTMODSEQ")
        assert selected >= 2  # each APPEND moved it on
        assert b"READ-WRITE" in tagged
        untagged, _ = c.ok("EXAMINE INBOX")  # sent on every SELECT/EXAMINE
        assert code_number(untagged, "HIGHESTMODSEQ") == selected
    c = server.imapclient(ALICE)
    assert c.has_capability("CONDSTORE")
    info = c.select_folder("INBOX")
    assert info[b"HIGHESTMODSEQ"] == selected
    c.logout()


def test_every_change_moves_highestmodseq(server):
    with raw(server) as c:
        seen = [status_modseq(c)]
        fill(c, 2)  # append
        seen.append(status_modseq(c))
        c.ok("SELECT INBOX")
        c.ok("STORE 1 +FLAGS (\\Deleted)")  # flag change
        seen.append(status_modseq(c))
        c.ok("EXPUNGE")  # expunge
        seen.append(status_modseq(c))
        with server.smtp() as s:  # delivery, taken in when the session looks
            s.sendmail(BOB, [ALICE], make_message(BOB, ALICE, "delivered"))
        server.wait_for_messages(ALICE, 1)
        seen.append(status_modseq(c))
        assert seen == sorted(seen) and len(set(seen)) == len(seen), seen
        archive = status_modseq(c, "Archive")  # each mailbox counts on its own
        c.ok("COPY 1:* Archive")
        assert status_modseq(c, "Archive") > archive


def test_status_highestmodseq_sees_a_delivery_nobody_looked_at(server):
    with raw(server) as c:  # no mailbox selected, by this session or another
        before = status_modseq(c)
        with server.smtp() as s:
            s.sendmail(BOB, [ALICE], make_message(BOB, ALICE, "unseen delivery"))
        server.wait_for_messages(ALICE, 1)
        untagged, _ = c.ok("STATUS INBOX (HIGHESTMODSEQ MESSAGES UIDNEXT)")
        m = re.search(rb"HIGHESTMODSEQ (\d+) MESSAGES 1 UIDNEXT 2\)", untagged[0])
        assert m and int(m.group(1)) > before, untagged
        assert status_modseq(c) == int(m.group(1))  # and stays there


def test_fetch_modseq_and_changedsince(server):
    with raw(server) as c:
        fill(c, 3)
        c.ok("SELECT INBOX")
        before = modseqs(c.ok("FETCH 1:* (MODSEQ)")[0])
        assert sorted(before) == [1, 2, 3]
        high = status_modseq(c)
        assert max(before.values()) == high
        untagged, _ = c.ok("STORE 2 +FLAGS (\\Flagged)")
        after = modseqs(untagged)  # CONDSTORE is on (FETCH MODSEQ): STORE tells the MODSEQ
        assert after[2] > high
        untagged, _ = c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {high})")
        assert len(untagged) == 1 and untagged[0].startswith(b"2 FETCH ")
        assert b"\\Flagged" in untagged[0] and b"MODSEQ (%d)" % after[2] in untagged[0]
        untagged, _ = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {after[2]})")
        assert untagged == []  # nothing changed since
        untagged, _ = c.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)")
        assert len(untagged) == 3 and all(b"UID " in u and b"MODSEQ (" in u for u in untagged)
        _, tagged = c.cmd("FETCH 1:* (FLAGS) (CHANGEDSINCE x)")
        assert tagged.startswith(b"BAD")
    c = server.imapclient(ALICE)
    c.select_folder("INBOX")
    got = c.fetch([1, 2, 3], ["FLAGS"], modifiers=[f"CHANGEDSINCE {high}"])
    assert list(got) == [2] and got[2][b"MODSEQ"] == (after[2],)
    c.logout()


def test_store_unchangedsince_reports_modified(server):
    with raw(server) as a, raw(server) as b:
        fill(a, 3)
        a.ok("SELECT INBOX")
        b.ok("SELECT INBOX")
        mods = modseqs(a.ok("FETCH 1:3 (MODSEQ)")[0])
        known = max(mods.values())
        b.ok("STORE 2 +FLAGS ($Label1)")  # someone else changed message 2 meanwhile
        untagged, tagged = a.ok(f"STORE 1:3 (UNCHANGEDSINCE {known}) +FLAGS (\\Seen)")
        assert tagged.startswith(b"OK [MODIFIED 2]"), tagged
        fetched = [u for u in untagged if b"FETCH" in u]
        stored = {int(u.split()[0]): u for u in fetched if b"\\Seen" in u}
        assert sorted(stored) == [1, 3]
        assert all(b"MODSEQ (" in u and b"UID " in u for u in stored.values())
        flags = a.ok("FETCH 2 (FLAGS)")[0]
        assert b"$Label1" in b"".join(flags) and b"\\Seen" not in b"".join(flags)
        # UID STORE names UIDs; 0 always fails; .SILENT still tells the new MODSEQ.
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.ok("EXPUNGE")  # now sequence numbers and UIDs differ
        untagged, tagged = a.ok("UID STORE 2:3 (UNCHANGEDSINCE 0) +FLAGS (\\Answered)")
        assert tagged.startswith(b"OK [MODIFIED 2:3]"), tagged
        untagged, tagged = a.ok("STORE 2 (UNCHANGEDSINCE 0) +FLAGS (\\Answered)")
        assert tagged.startswith(b"OK [MODIFIED 2]"), tagged
        high = status_modseq(a)
        untagged, tagged = a.ok(f"UID STORE 3 (UNCHANGEDSINCE {high}) +FLAGS.SILENT "
                                "(\\Answered)")
        assert b"MODIFIED" not in tagged
        assert len(untagged) == 1 and re.fullmatch(rb"2 FETCH \(UID 3 MODSEQ \(\d+\)\)",
                                                   untagged[0]), untagged
        assert modseqs(untagged)[2] > high


def test_condstore_session_sees_modseq_in_unsolicited_fetch(server):
    with raw(server) as writer, raw(server) as watcher, raw(server) as plain:
        fill(writer, 2)
        writer.ok("SELECT INBOX")
        untagged, _ = watcher.ok("ENABLE CONDSTORE")
        assert untagged == [b"ENABLED CONDSTORE"]
        assert watcher.ok("ENABLE CONDSTORE")[0] == [b"ENABLED"]  # already on
        watcher.ok("SELECT INBOX")
        plain.ok("SELECT INBOX")
        untagged, _ = writer.ok("STORE 2 +FLAGS (\\Flagged)")
        modseq = modseqs(untagged).get(2)
        if modseq is None:  # the writer has not enabled CONDSTORE: ask
            modseq = modseqs(writer.ok("FETCH 2 (MODSEQ)")[0])[2]
        untagged, _ = watcher.ok("NOOP")
        assert untagged == [b"2 FETCH (UID 2 MODSEQ (%d) FLAGS (\\Flagged \\Recent))" % modseq
                            ] or untagged == [
            b"2 FETCH (UID 2 MODSEQ (%d) FLAGS (\\Flagged))" % modseq], untagged
        untagged, _ = plain.ok("NOOP")  # never enabled CONDSTORE: no MODSEQ
        assert len(untagged) == 1 and b"\\Flagged" in untagged[0]
        assert b"MODSEQ" not in untagged[0]


def test_idle_hears_flag_changes_with_modseq(server):
    with raw(server) as writer:
        fill(writer, 1)
        writer.ok("SELECT INBOX")
        c = server.imapclient(ALICE)
        assert c.enable("CONDSTORE") == [b"CONDSTORE"]
        c.select_folder("INBOX")
        c.idle()
        untagged, _ = writer.ok("STORE 1 +FLAGS (\\Flagged)")
        responses = c.idle_check(timeout=10)
        c.idle_done()
        modseq = modseqs(writer.ok("FETCH 1 (MODSEQ)")[0])[1]
        assert responses == [(1, b"FETCH", (b"UID", 1, b"MODSEQ", (modseq,),
                                            b"FLAGS", (b"\\Flagged",)))], responses
        c.logout()


def test_select_condstore_param_and_enabling_while_selected(server):
    with raw(server) as writer, raw(server) as watcher:
        fill(writer, 1)
        writer.ok("SELECT INBOX")
        watcher.ok("SELECT INBOX (CONDSTORE)")
        writer.ok("STORE 1 +FLAGS (\\Answered)")
        untagged, _ = watcher.ok("NOOP")
        assert len(untagged) == 1 and b"MODSEQ (" in untagged[0], untagged
    with raw(server) as c:
        high = code_number(c.ok("SELECT INBOX")[0], "HIGHESTMODSEQ")
        # An enabling command on a selected mailbox tells its HIGHESTMODSEQ once.
        untagged, _ = c.ok("SEARCH MODSEQ 0")
        assert code_number(untagged, "HIGHESTMODSEQ") == high
        untagged, _ = c.ok("SEARCH MODSEQ 0")
        assert not any(b"HIGHESTMODSEQ" in u for u in untagged)


def test_search_modseq(server):
    with raw(server) as c:
        fill(c, 4)
        c.ok("SELECT INBOX")
        high = status_modseq(c)
        c.ok("STORE 2,4 +FLAGS (\\Seen)")
        untagged, _ = c.ok(f"SEARCH MODSEQ {high + 1}")
        new_high = status_modseq(c)
        assert untagged[-1] == b"SEARCH 2 4 (MODSEQ %d)" % new_high, untagged
        untagged, _ = c.ok(f'UID SEARCH MODSEQ "/flags/\\\\seen" all {high + 1} UNSEEN')
        assert untagged[-1] == b"SEARCH", untagged  # no hits: no MODSEQ either
        untagged, _ = c.ok(f"SEARCH RETURN (COUNT) MODSEQ {high + 1}")
        assert untagged[-1].endswith(b"COUNT 2 MODSEQ %d" % new_high), untagged
        _, tagged = c.cmd('SEARCH MODSEQ "/flags/\\\\seen" sometimes 1')
        assert tagged.startswith(b"BAD")
    c = server.imapclient(ALICE)
    c.select_folder("INBOX")
    hits = c.search(["MODSEQ", str(high + 1)])
    assert sorted(hits) == [2, 4] and hits.modseq == new_high
    c.logout()


def test_fetch_seen_implicitly_reports_modseq(server):
    with raw(server) as c:
        fill(c, 1)
        c.ok("ENABLE CONDSTORE")
        c.ok("SELECT INBOX")
        high = status_modseq(c)
        untagged, _ = c.ok("FETCH 1 (BODY[TEXT])")
        assert re.search(rb"UID 1 MODSEQ \((\d+)\) FLAGS \(\\Seen", untagged[0]), untagged
        assert modseqs(untagged)[1] > high


# -- the index on disk ---------------------------------------------------------


def test_envelope_and_bodystructure_come_from_the_index(make_server):
    srv = make_server()
    with raw(srv) as c:
        c.append("INBOX", make_message(BOB, ALICE, "original subject"))
        c.ok("SELECT INBOX")
        first = c.ok("FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")[0]
        assert b"original subject" in first[0]
        # Rewrite the file behind the server's back (same size): a fetch that
        # parsed the file again would show the new subject.
        path = next((srv.maildir(ALICE) / "cur").iterdir())
        data = path.read_bytes()
        path.write_bytes(data.replace(b"original subject", b"modified subject"))
        again = c.ok("FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")[0]
        assert again == first
        header = b"".join(c.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[0])
        assert b"modified subject" in header  # sections still read the file
        c.ok("COPY 1 Archive")  # a copy carries the cached structures along
        c.ok("SELECT Archive")
        assert b"original subject" in c.ok("FETCH 1 (ENVELOPE)")[0][0]
    srv.restart()  # kept in the index, not only in memory
    with raw(srv) as c:
        c.ok("SELECT INBOX")
        assert c.ok("FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")[0] == first


def test_index_of_the_previous_release_is_migrated(make_server):
    srv = make_server()
    with raw(srv) as c:
        fill(c, 2)
        c.ok("SELECT INBOX")
        c.ok("STORE 2 +FLAGS (\\Flagged)")
        before = c.ok("FETCH 1:* (UID FLAGS MODSEQ)")[0]
    # Mail the old release held is not \Recent after the migration.
    before = [re.sub(rb" ?\\Recent", b"", line) for line in before]
    srv.stop()
    # Turn the index back into the first schema: no cached structures, no recent mark.
    db = sqlite3.connect(srv.maildir(ALICE) / INDEX)
    for column in ("envelope", "bodystructure", "body"):
        db.execute(f"ALTER TABLE messages DROP COLUMN {column}")
    db.execute("ALTER TABLE mailboxes DROP COLUMN recentuid")
    db.execute("ALTER TABLE mailboxes DROP COLUMN expungedfloor")
    db.execute("DROP TABLE expunged")
    # ... no object ids, save dates or METADATA (migration 6)
    db.execute("ALTER TABLE mailboxes DROP COLUMN mailboxid")
    db.execute("ALTER TABLE messages DROP COLUMN emailid")
    db.execute("ALTER TABLE messages DROP COLUMN savedate")
    db.execute("DROP TABLE metadata")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    srv.start()
    with raw(srv) as c:
        assert b"0 RECENT" in c.ok("SELECT INBOX")[0]
        assert c.ok("FETCH 1:* (UID FLAGS MODSEQ)")[0] == before
        envelope = c.ok("FETCH 2 (ENVELOPE)")[0][0]
        assert b"message 2" in envelope
    db = sqlite3.connect(srv.maildir(ALICE) / INDEX)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    # An index with mailboxes counts as set up: no folders are made again.
    assert db.execute("SELECT value FROM meta WHERE key = 'provisioned'").fetchone() == (1,)
    cached = db.execute("SELECT envelope FROM messages WHERE mailbox = 'INBOX' AND uid = 2"
                        ).fetchone()[0]
    db.close()
    assert cached is not None and b"message 2" in cached
