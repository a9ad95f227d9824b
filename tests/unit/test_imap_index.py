"""The mailbox index against real Maildir directories, and MIME sections."""

import os
from pathlib import Path

import pytest

from pillarbox.endpoint.imap import mime
from pillarbox.endpoint.imap.parser import Section
from pillarbox.store.mailbox_index import MailboxError, MailStore


def drop(root: Path, name: str, data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> None:
    (root / "new" / name).write_bytes(data)


class Listener:
    def __init__(self, selected):
        self.selected = selected
        self.calls = 0

    def notify(self):
        self.calls += 1


def test_first_open_makes_special_use_folders(tmp_path):
    s = MailStore(tmp_path / "u")
    assert s.names() == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    assert s.box("Sent").special == "\\Sent"
    assert (tmp_path / "u" / ".Sent" / "cur").is_dir()
    assert s.subscriptions() >= {"INBOX", "Sent"}


def test_new_files_get_uids_in_order_and_move_to_cur(tmp_path):
    root = tmp_path / "u"
    s = MailStore(root)
    drop(root, "100.a.host")
    drop(root, "101.b.host")
    assert s.sync("INBOX") == [1, 2]
    assert sorted(os.listdir(root / "cur")) == ["100.a.host:2,", "101.b.host:2,"]
    assert os.listdir(root / "new") == []
    assert s.sync("INBOX") == []
    drop(root, "102.c.host")
    assert s.sync("INBOX") == [3]
    validity = s.box("INBOX").uidvalidity
    s.close()
    s2 = MailStore(root)  # reopened: same UIDs, same UIDVALIDITY
    assert list(s2.box("INBOX").msgs) == [1, 2, 3]
    assert s2.box("INBOX").uidvalidity == validity
    assert s2.box("INBOX").uidnext == 4


def test_flags_in_file_names_and_external_changes(tmp_path):
    root = tmp_path / "u"
    s = MailStore(root)
    drop(root, "100.a.host")
    s.sync("INBOX")
    changed, _ = s.store_flags("INBOX", [1], "add", ["\\Seen", "\\Flagged", "$Work"])
    assert changed[0].flags == {"\\Seen", "\\Flagged", "$Work"}
    assert os.listdir(root / "cur") == ["100.a.host:2,FS"]
    # mutt marks it replied and deleted the file-name way
    os.rename(root / "cur" / "100.a.host:2,FS", root / "cur" / "100.a.host:2,FRST")
    s.sync("INBOX")
    assert s.box("INBOX").msgs[1].flags == {"\\Seen", "\\Flagged", "\\Answered",
                                             "\\Deleted", "$Work"}
    assert s.expunge("INBOX") == [1]
    assert os.listdir(root / "cur") == []


def test_vanished_files_are_expunged_and_listeners_told(tmp_path):
    root = tmp_path / "u"
    s = MailStore(root)
    drop(root, "100.a.host")
    drop(root, "101.b.host")
    s.sync("INBOX")
    who = Listener("INBOX")
    s.listeners.add(who)
    os.unlink(root / "cur" / "100.a.host:2,")
    s.sync("INBOX")
    assert list(s.box("INBOX").msgs) == [2]
    assert who.calls == 1


def test_copy_move_and_folders(tmp_path):
    root = tmp_path / "u"
    s = MailStore(root)
    drop(root, "100.a.host")
    drop(root, "101.b.host")
    s.sync("INBOX")
    assert s.copy("INBOX", [1, 2], "Archive") == [(1, 1), (2, 2)]
    assert s.copy("INBOX", [2], "Trash", move=True) == [(2, 1)]
    assert list(s.box("INBOX").msgs) == [1]
    assert len(os.listdir(root / ".Archive" / "cur")) == 2
    s.create("Lists")
    s.create("Lists.dev")
    s.rename("Lists", "Groups")
    assert {"Groups", "Groups.dev"} <= set(s.names())
    assert (root / ".Groups.dev" / "cur").is_dir()
    s.delete("Groups.dev")
    assert "Groups.dev" not in s.names() and not (root / ".Groups.dev").exists()
    for bad in ["../x", ".hidden", "a..b", "a/b", "", "x*"]:
        with pytest.raises(MailboxError):
            s.create(bad)
    with pytest.raises(MailboxError):
        s.delete("INBOX")
    with pytest.raises(MailboxError) as e:
        s.create("Sent")
    assert e.value.code == "ALREADYEXISTS"
    # A recreated name gets a new UIDVALIDITY.
    v = s.box("Groups").uidvalidity
    s.delete("Groups")
    s.create("Groups")
    assert s.box("Groups").uidvalidity > v


def test_append_write_file(tmp_path):
    root = tmp_path / "u"
    s = MailStore(root)
    written = MailStore.write_file(s.path("Sent"), b"Subject: s\r\n\r\nx\r\n", ["\\Seen"],
                                   1_700_000_000.0)
    m = s.add_file("Sent", written, ["\\Seen"])
    assert m.uid == 1 and m.size == 17 and m.internaldate == 1_700_000_000.0
    assert m.fname.endswith(":2,S") and (s.path("Sent") / "cur" / m.fname).exists()
    assert not written.tmp.exists()


MULTI = (b"Subject: m\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
         b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
         b"--b1\r\nContent-Type: message/rfc822\r\n\r\n"
         b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n"
         b"--b2\r\n\r\ninner text\r\n--b2\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
         b"--b2--\r\n"
         b"\r\n--b1--\r\n")


def test_mime_sections():
    p = mime.Part(MULTI)
    assert mime.section(p, Section()) == MULTI
    assert mime.section(p, Section((1,))) == b"hello"
    assert mime.section(p, Section((2,), "HEADER")) == (
        b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n")
    assert mime.section(p, Section((2, 1))) == b"inner text"
    assert mime.section(p, Section((2, 2))) == b"<p>hi</p>"
    assert mime.section(p, Section((2, 2), "MIME")) == b"Content-Type: text/html\r\n\r\n"
    assert mime.section(p, Section((3,))) == b""
    assert mime.section(p, Section((), "HEADER.FIELDS", ["SUBJECT"])) == b"Subject: m\r\n\r\n"
    single = mime.Part(b"Subject: s\r\n\r\nbody\r\n")
    assert mime.section(single, Section((1,))) == b"body\r\n"
    bs = mime.bodystructure(p)
    assert bs.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 1')
    assert b'"MESSAGE" "RFC822"' in bs and b'"ALTERNATIVE"' in bs and b'"MIXED"' in bs


def test_envelope_and_quoting():
    p = mime.Part(b'From: "Bob B." <bob@example.test>\r\nTo: a@x.test, c@y.test\r\n'
                  b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <1@x>\r\n\r\n")
    env = mime.envelope(p)
    assert b'(("Bob B." NIL "bob" "example.test"))' in env
    assert b'((NIL NIL "a" "x.test")(NIL NIL "c" "y.test"))' in env
    assert mime.decoded_header(p, "subject") == "café"
    assert mime.quote('a "b" \\c') == b'"a \\"b\\" \\\\c"'
    assert mime.quote("é") == b"{2}\r\n\xc3\xa9"
    assert mime.quote(None) == b"NIL"


def test_index_of_the_first_schema_is_migrated(tmp_path):
    import sqlite3

    from pillarbox.store.mailbox_index import INDEX_NAME, MIGRATIONS

    root = tmp_path / "u"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    (root / "cur" / "100.a.host:2,S").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    db = sqlite3.connect(root / INDEX_NAME)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO mailboxes (name, uidvalidity, uidnext, highestmodseq) "
               "VALUES ('INBOX', 7, 2, 5)")
    db.execute("INSERT INTO messages (mailbox, uid, base, fname, flags, internaldate, size, "
               "modseq) VALUES ('INBOX', 1, '100.a.host', '100.a.host:2,S', '\\Seen', 0, 20, 5)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    s = MailStore(root)
    box = s.box("INBOX")
    assert (box.uidvalidity, box.highestmodseq, box.msgs[1].modseq) == (7, 5, 5)
    assert s.structures("INBOX", [1]) == {}
    s.save_structures("INBOX", {1: (b"(env)", b"(bs)", b"(body)")})
    assert s.structures("INBOX", [1, 2]) == {1: (b"(env)", b"(bs)", b"(body)")}


def test_usage_changes_are_reported(tmp_path):
    root = tmp_path / "u"
    s = MailStore(root)
    deltas: list[int] = []
    s.usage_changed = deltas.append
    drop(root, "100.a.host", b"x" * 100)
    s.sync("INBOX")  # a delivery: the queue counted it already
    assert deltas == []
    s.add_file("INBOX", MailStore.write_file(root, b"y" * 50, [], None), [])
    s.copy("INBOX", [1, 2], "Archive")
    s.copy("Archive", [1], "Trash", move=True)
    assert deltas == [50, 150, 100, -100]
    s.store_flags("INBOX", [1], "add", ["\\Deleted"])
    s.expunge("INBOX")
    s.delete("Archive")
    assert deltas[4:] == [-100, -50]


def test_files_added_or_removed_by_other_programs_move_the_usage(tmp_path):
    """Deliveries (new/) were counted by the Maildir writer; files another program
    puts into cur/ or removes count when the store next looks."""
    root = tmp_path / "u"
    s = MailStore(root)
    deltas: list[int] = []
    s.usage_changed = deltas.append
    drop(root, "1.delivered")  # a delivery: counted elsewhere
    assert len(s.sync("INBOX")) == 1 and deltas == []
    outside = b"Subject: from mutt\r\n\r\n" + b"m" * 500 + b"\r\n"
    (root / "cur" / "2.by-mutt:2,S").write_bytes(outside)
    _touch(root / "cur")
    assert len(s.sync("INBOX")) == 1
    assert deltas == [len(outside)]
    delivered = next(m for m in s.box("INBOX").msgs.values() if m.base == "1.delivered")
    os.unlink(root / "cur" / delivered.fname)
    _touch(root / "cur")
    assert s.sync("INBOX") == []
    assert deltas == [len(outside), -delivered.size]


def _touch(d: Path) -> None:
    """Move a directory's mtime on, as the next change would within a clock tick."""
    st = os.stat(d)
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_an_append_is_not_taken_in_by_a_sync_before_it_is_indexed(tmp_path):
    """APPEND writes its file in a thread; another session's sync meanwhile must
    not see it (it could flag or expunge it before the APPEND is done): one UID,
    counted once."""
    root = tmp_path / "u"
    s = MailStore(root)
    deltas: list[int] = []
    s.usage_changed = deltas.append
    data = b"Subject: appended\r\n\r\nhello\r\n"
    written = MailStore.write_file(s.path("INBOX"), data, ["\\Seen"], None)
    _touch(root / "cur")
    assert s.sync("INBOX") == []  # the other session's look
    msg = s.add_file("INBOX", written, ["\\Seen"])
    assert [m.uid for m in s.box("INBOX").msgs.values()] == [msg.uid]
    assert deltas == [len(data)]
    assert s.sync("INBOX") == [] and len(s.box("INBOX").msgs) == 1


def test_an_append_with_bare_lfs_is_stored_with_crlf(tmp_path):
    s = MailStore(tmp_path / "u")
    msg = s.add_file("INBOX", MailStore.write_file(s.path("INBOX"), b"S: x\n\nhi\r\nyo\n",
                                                   [], None), [])
    assert s.file("INBOX", msg).read_bytes() == b"S: x\r\n\r\nhi\r\nyo\r\n"
    assert msg.size == 16 and ",S=16:" in msg.fname
