"""The index's record of expunged UIDs (QRESYNC): kept with the MODSEQ of
their expunge, by every way a message can go, across a reopen, bounded."""

import os
import sqlite3
from pathlib import Path

from pillarbox.endpoint.imap import qresync
from pillarbox.endpoint.imap.parser import SeqSet
from pillarbox.store.mailbox_index import INDEX_NAME, MIGRATIONS, MailStore


def filled(root: Path, n: int) -> MailStore:
    s = MailStore(root)
    for i in range(n):
        (root / "new" / f"{100 + i}.m{i}.host").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    s.sync("INBOX")
    return s


def delete(s: MailStore, uids: list[int]) -> list[int]:
    s.store_flags("INBOX", uids, "add", ["\\Deleted"])
    return s.expunge("INBOX", set(uids))


def test_every_way_out_is_recorded_with_its_modseq(tmp_path):
    root = tmp_path / "u"
    s = filled(root, 6)
    start = s.box("INBOX").highestmodseq
    assert s.expunged_since("INBOX", start) == []
    delete(s, [2])
    after_expunge = s.box("INBOX").highestmodseq
    s.copy("INBOX", [3], "Archive", move=True)  # MOVE
    os.unlink(root / "cur" / s.box("INBOX").msgs[4].fname)  # another program
    s.sync("INBOX")
    assert s.expunged_since("INBOX", start) == [2, 3, 4]
    assert s.expunged_since("INBOX", after_expunge) == [3, 4]
    assert s.expunged_since("INBOX", s.box("INBOX").highestmodseq) == []
    s.close()
    s = MailStore(root)  # kept across a reopen
    assert s.expunged_since("INBOX", start) == [2, 3, 4]
    s.rename("Archive", "Old")  # the record follows a renamed mailbox
    assert s.expunged_since("Old", 0) == []
    s.delete("Old")
    assert s.db.execute("SELECT COUNT(*) FROM expunged WHERE mailbox = 'Old'").fetchone() == (0,)


def test_the_record_is_bounded_and_says_from_where_it_is_incomplete(tmp_path):
    root = tmp_path / "u"
    s = filled(root, 30)
    s.expunged_kept = 8
    marks = []
    for uid in range(1, 13):  # 12 expunges, one UID each
        marks.append(s.box("INBOX").highestmodseq)
        delete(s, [uid])
    count = s.db.execute("SELECT COUNT(*) FROM expunged").fetchone()[0]
    assert count <= 8
    floor = s.box("INBOX").expunged_floor
    assert floor > 0
    # From before the pruning: no exact answer (the caller reports every missing UID).
    assert s.expunged_since("INBOX", marks[0]) is None
    # From after it: exact.
    assert s.expunged_since("INBOX", marks[-1]) == [12]
    assert s.expunged_since("INBOX", floor) == list(range(13 - count, 13))
    s.close()
    assert MailStore(root).box("INBOX").expunged_floor == floor  # kept in the index


def test_an_index_from_before_the_record_is_migrated(tmp_path):
    root = tmp_path / "u"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    db = sqlite3.connect(root / INDEX_NAME)
    for sql in MIGRATIONS[:4]:
        db.executescript(sql)
    db.execute("INSERT INTO mailboxes (name, uidvalidity, uidnext, highestmodseq) "
               "VALUES ('INBOX', 7, 5, 9)")
    db.execute("PRAGMA user_version=4")
    db.commit()
    db.close()
    s = MailStore(root)
    # Expunges before the migration were not recorded: only from MODSEQ 9 on is it exact.
    assert s.box("INBOX").expunged_floor == 9
    assert s.expunged_since("INBOX", 8) is None
    assert s.expunged_since("INBOX", 9) == []


def test_fallback_and_seq_match_arithmetic():
    view = [2, 4, 5, 6, 8, 9, 10]
    assert qresync.vanished(None, [(1, 10)], view) == "1,3,7"
    assert qresync.vanished(None, [(1, 10)], view, matched=6) == "7"
    assert qresync.vanished(None, [(1, 4294967295)], []) == "1:4294967295"
    assert qresync.vanished([3, 7, 11], [(1, 5)], view) == "3"
    assert qresync.vanished([3, 4], [(1, 10)], view) == "3"  # 4 still shown: later
    # seq-match-data pairs by position, across ranges of different shapes.
    pairs = SeqSet(((1, 3), (5, 5))), SeqSet(((2, 2), (3, 4), (8, 8)))
    assert qresync.matched_uid(*pairs, view) == 8  # seq 5 is still UID 8
    assert qresync.matched_uid(SeqSet(((1, 2),)), SeqSet(((2, 3),)), view) == 2
    assert qresync.matched_uid(SeqSet(((1, 1),)), SeqSet(((5, 5),)), view) == 0
    big = SeqSet(((1, 4294967295),))
    assert qresync.matched_uid(big, big, [1, 2, 3, 7]) == 3
