"""Maildir files other programs wrote with bare LF line ends are served with CRLF.

mutt, procmail, fdm, getmail and Dovecot's own LDA write Maildir files with
"\\n" line ends; IMAP allows CRLF only. The store converts such a file in place
when it first takes it in (keeping its mtime, so INTERNALDATE, and its flags),
so every size it reports (RFC822.SIZE, BODYSTRUCTURE octets and lines,
partial fetches) counts the bytes it serves.
"""

from __future__ import annotations

import imaplib
import mailbox
import os
import re

from .imap_raw import RawIMAP
from .support import ALICE, client_ssl_context

MTIME = 1_700_000_000  # 2023-11-14 22:13:20 UTC

LF_MULTIPART = (
    b"From: Bob <bob@example.test>\n"
    b"To: alice@example.test\n"
    b"Subject: written by mutt\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=\"xyz\"\n"
    b"\n"
    b"preamble\n"
    b"--xyz\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"line one\n"
    b"line two\n"
    b"line three\n"
    b"--xyz\n"
    b"Content-Type: text/plain; name=\"b.txt\"\n"
    b"\n"
    b"second part\n"
    b"--xyz--\n"
)
MIXED = (
    b"From: bob@example.test\r\n"
    b"Subject: mixed line ends\n"
    b"\r\n"
    b"crlf line\r\n"
    b"lf line\n"
    b"\n"
    b"last line without an end"
)
CRLF = (
    b"From: bob@example.test\r\n"
    b"Subject: already crlf\r\n"
    b"\r\n"
    b"body\r\n"
)


class RecordingIMAP(imaplib.IMAP4):
    """imaplib over STARTTLS that keeps every byte the server sent."""

    def __init__(self, port: int) -> None:
        self.received = bytearray()
        self.recording = True  # off for partial fetches: a piece may split a CRLF
        super().__init__("127.0.0.1", port, timeout=10)

    def read(self, size):
        data = super().read(size)
        if self.recording:
            self.received += data
        return data

    def readline(self):
        data = super().readline()
        if self.recording:
            self.received += data
        return data


def _crlf(raw: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", raw)


def _drop(path, raw: bytes) -> None:
    path.write_bytes(raw)
    os.utime(path, (MTIME, MTIME))


def _fetch(c: imaplib.IMAP4, uid: int, item: str) -> bytes:
    typ, data = c.uid("FETCH", str(uid), f"({item})")
    assert typ == "OK", data
    lit = [d for d in data if isinstance(d, tuple)]
    assert len(lit) == 1, data
    return lit[0][1]


def _meta(c: imaplib.IMAP4, uid: int) -> bytes:
    typ, data = c.uid("FETCH", str(uid), "(RFC822.SIZE INTERNALDATE FLAGS BODYSTRUCTURE)")
    assert typ == "OK", data
    return b" ".join(d if isinstance(d, bytes) else d[0] for d in data)


def test_bare_lf_files_are_served_as_crlf_with_consistent_sizes(server):
    md = server.maildir(ALICE)
    for sub in ("new", "cur", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    # As mutt names them: no S= size; one in new/, one seen in cur/.
    _drop(md / "new" / "1700000000.12345_1.mutthost", LF_MULTIPART)
    _drop(md / "cur" / "1700000001.12345_2.mutthost:2,S", MIXED)
    _drop(md / "new" / "1700000002.12345_3.mutthost", CRLF)
    # As Dovecot's LDA names them: S= is the size of the LF file, which changes.
    _drop(md / "new" / f"1700000003.M1P1.dovecot,S={len(MIXED)},W={len(_crlf(MIXED))}", MIXED)

    c = RecordingIMAP(server.imap_port)
    c.starttls(ssl_context=client_ssl_context())
    c.login(ALICE, "secret-for-tests-only")
    typ, data = c.select("INBOX")
    assert typ == "OK" and data == [b"4"], data
    typ, data = c.uid("SEARCH", "ALL")
    uids = [int(u) for u in data[0].split()]
    assert len(uids) == 4
    by_subject = {}
    for uid in uids:
        whole = _fetch(c, uid, "BODY.PEEK[]")
        subject = re.search(rb"Subject: ([^\r\n]*)", whole).group(1)
        by_subject[subject] = (uid, whole)
        meta = _meta(c, uid)
        size = int(re.search(rb"RFC822.SIZE (\d+)", meta).group(1))
        assert size == len(whole), (subject, meta)
        assert b'INTERNALDATE "14-Nov-2023 22:13:20 +0000"' in meta, meta
        # Partial fetches count the served bytes: the pieces add up to the whole.
        c.recording = False
        pieces = [_fetch(c, uid, f"BODY.PEEK[]<{off}.10>") for off in range(0, size, 10)]
        c.recording = True
        assert b"".join(pieces) == whole
        head = _fetch(c, uid, "BODY.PEEK[HEADER]")
        text = _fetch(c, uid, "BODY.PEEK[TEXT]")
        assert head + text == whole

    uid, whole = by_subject[b"written by mutt"]
    assert whole == _crlf(LF_MULTIPART)
    meta = _meta(c, uid)
    # Part 1 body: three CRLF lines (30 + 6 octets); part 2: one line.
    assert b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 30 3' in meta, meta
    assert b'"NAME" "b.txt") NIL NIL "7BIT" 11 1 ' in meta, meta
    assert _fetch(c, uid, "BODY.PEEK[1]") == b"line one\r\nline two\r\nline three"
    assert _fetch(c, uid, "BODY.PEEK[2.MIME]") == b'Content-Type: text/plain; name="b.txt"\r\n\r\n'
    assert _fetch(c, uid, "BODY.PEEK[1]<5.8>") == b"one\r\nlin"

    uid, whole = by_subject[b"mixed line ends"]
    assert whole == _crlf(MIXED)
    assert b"\\Seen" in _meta(c, uid), "the flags of the file in cur/ are kept"
    uid, whole = by_subject[b"already crlf"]
    assert whole == CRLF
    c.logout()

    assert re.search(rb"(?<!\r)\n", bytes(c.received)) is None, "a bare LF went out"
    # On disk: converted in place, mtime kept, S= counts the new size; CRLF file untouched.
    files = sorted((md / "cur").iterdir())
    assert len(files) == 4, files
    for f in files:
        raw = f.read_bytes()
        assert re.search(rb"(?<!\r)\n", raw) is None, f
        assert int(f.stat().st_mtime) == MTIME, f
        m = re.search(r",S=(\d+)", f.name)
        if m:
            assert int(m.group(1)) == len(raw), f.name
    assert any(f.name.startswith("1700000002.12345_3.mutthost") and f.read_bytes() == CRLF
               for f in files)
    assert any(f.name.startswith("1700000001.12345_2.mutthost:2,S") for f in files)


def test_bare_lf_file_added_while_selected(server):
    """A file that arrives while the mailbox is open is converted when the session
    picks it up (NOOP), and served as CRLF."""
    c = server.imap(ALICE)
    c.select("INBOX")
    md = server.maildir(ALICE)
    _drop(md / "new" / "1700000010.999_1.procmail", LF_MULTIPART)
    c.noop()
    typ, data = c.uid("SEARCH", "ALL")
    (uid,) = [int(u) for u in data[0].split()]
    whole = _fetch(c, uid, "BODY.PEEK[]")
    assert whole == _crlf(LF_MULTIPART)
    size = int(re.search(rb"RFC822.SIZE (\d+)", _meta(c, uid)).group(1))
    assert size == len(whole)
    c.logout()


def test_append_with_bare_lf_is_stored_as_crlf(server):
    """imaplib would fix the line ends itself; a raw client sends them as they are."""
    with RawIMAP(server.imaps_port, ALICE) as c:
        tagged = c.append("INBOX", LF_MULTIPART, r"\Seen")
        assert b"APPENDUID" in tagged
        c.ok("SELECT INBOX")
        untagged, _ = c.ok("FETCH 1 (RFC822.SIZE BODY.PEEK[])")
    want = _crlf(LF_MULTIPART)
    line = untagged[0]
    assert b"RFC822.SIZE %d " % len(want) in line, line
    assert line.endswith(b"{%d}\r\n" % len(want) + want + b")"), line
    (f,) = (server.maildir(ALICE) / "cur").iterdir()
    assert f.read_bytes() == want
    assert f.name.split(":2,")[0].endswith(f",S={len(want)}") and f.name.endswith(":2,S")


def test_files_from_python_mailbox_module(server):
    """Python's mailbox.Maildir, a real writer other than us, writes "\\n" line ends."""
    server.maildir(ALICE).parent.mkdir(parents=True, exist_ok=True)
    md = mailbox.Maildir(server.maildir(ALICE), create=True)
    m = mailbox.MaildirMessage(LF_MULTIPART.replace(b"written by mutt", b"from python"))
    m.set_subdir("cur")
    m.add_flag("F")
    md.add(m)
    md.add(mailbox.MaildirMessage(CRLF))
    files = [p for sub in ("new", "cur") for p in (server.maildir(ALICE) / sub).iterdir()]
    assert any(re.search(rb"(?<!\r)\n", p.read_bytes()) for p in files), "nothing to convert"
    c = server.imap(ALICE)
    c.select("INBOX")
    typ, data = c.uid("SEARCH", "ALL")
    uids = [int(u) for u in data[0].split()]
    assert len(uids) == 2
    for uid in uids:
        whole = _fetch(c, uid, "BODY.PEEK[]")
        assert re.search(rb"(?<!\r)\n", whole) is None
        meta = _meta(c, uid)
        assert int(re.search(rb"RFC822.SIZE (\d+)", meta).group(1)) == len(whole)
        if b"from python" in whole:
            assert b"\\Flagged" in meta and b"7BIT\" 30 3 " in meta, meta
    c.logout()


def test_import_maildir_converts_bare_lf_files(make_server, tmp_path):
    """Dovecot stores messages with LF line ends (and S=/W= sizes in the names):
    `import-maildir` takes them over as CRLF files, sizes in the index and the
    names made to match, mtime kept."""
    src = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (src / sub).mkdir(parents=True)
    lf_name = f"1700000001.M1P1.dovecot,S={len(LF_MULTIPART)},W={len(_crlf(LF_MULTIPART))}:2,S"
    _drop(src / "cur" / lf_name, LF_MULTIPART)
    _drop(src / "cur" / "1700000002.M1P1.dovecot:2,", CRLF)
    srv = make_server(start=False)
    srv.cli_ok("import-maildir", src, ALICE)
    srv.start()
    c = srv.imap(ALICE)
    c.select("INBOX")
    for uid, want in ((1, _crlf(LF_MULTIPART)), (2, CRLF)):
        whole = _fetch(c, uid, "BODY.PEEK[]")
        assert whole == want
        meta = _meta(c, uid)
        assert b"RFC822.SIZE %d " % len(want) in meta, meta
        assert b'INTERNALDATE "14-Nov-2023 22:13:20 +0000"' in meta, meta
    c.logout()
    names = sorted(f.name for f in (srv.maildir(ALICE) / "cur").iterdir())
    assert names[0] == (f"1700000001.M1P1.dovecot,S={len(_crlf(LF_MULTIPART))},"
                        f"W={len(_crlf(LF_MULTIPART))}:2,S"), names


def test_own_deliveries_are_recognised_and_not_read_again(server):
    """Files our Maildir target wrote came through SMTP (CRLF only): the
    index knows them by name and size and does not scan them for bare LFs;
    a file of another program with such a name but another size is scanned."""
    from pillarbox.store.mailbox_index import _OWN_DELIVERY

    from .support import make_message, token

    with server.smtp() as s:
        s.sendmail("x@remote.test", [ALICE], make_message("x@remote.test", ALICE, token()))
    server.wait_for_messages(ALICE, 1)
    (f,) = (server.maildir(ALICE) / "new").iterdir()
    m = _OWN_DELIVERY.match(f.name)
    assert m is not None and int(m.group(1)) == f.stat().st_size, f.name
    look_alike = server.maildir(ALICE) / "new" / "1700000020.M1P2Q3.host,S=1"
    _drop(look_alike, b"Subject: look-alike\n\nbody\n")
    c = server.imap(ALICE)
    try:
        c.select("INBOX")
        typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        bodies = [d[1] for d in data if isinstance(d, tuple)]
        assert len(bodies) == 2 and all(b"\n" not in b.replace(b"\r\n", b"") for b in bodies)
    finally:
        c.logout()
