"""The IMAP4rev1 commands and search keys test_imap.py leaves out, each with a
real client (imaplib, imapclient) over a real socket: EXAMINE, CHECK, NOOP,
CLOSE, UID EXPUNGE, APPENDUID, the RFC822.* and BODY[HEADER...] items, FETCH
macros, STATUS, ENABLE, and every SEARCH key, including UTF-8 text."""

from __future__ import annotations

import imaplib
import re
import time

import pytest

from .support import ALICE, BOB, PASSWORD

CAROL = "carol@example.test"


def _msg(subject: str, *, frm: str = BOB, to: str = ALICE, cc: str = "", bcc: str = "",
         date: str = "Wed, 10 Jan 2024 12:00:00 +0000", body: str = "Hello.\r\n",
         ctype: str = "text/plain; charset=us-ascii", cte: str = "7bit") -> bytes:
    head = [f"From: <{frm}>", f"To: <{to}>", f"Subject: {subject}", f"Date: {date}",
            f"Message-ID: <{abs(hash(subject))}@example.test>", "MIME-Version: 1.0",
            f"Content-Type: {ctype}", f"Content-Transfer-Encoding: {cte}"]
    if cc:
        head.append(f"Cc: <{cc}>")
    if bcc:
        head.append(f"Bcc: <{bcc}>")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def _internal(y: int, m: int, d: int) -> str:
    return imaplib.Time2Internaldate(time.mktime((y, m, d, 12, 0, 0, 0, 0, -1)))


def _search(c: imaplib.IMAP4, *keys: str) -> list[int]:
    typ, data = c.search(None, *keys)
    assert typ == "OK", (keys, data)
    return [int(x) for x in data[0].split()]


def test_every_search_key(server):
    c = server.imaps(ALICE)
    msgs = [
        # 1: seen, answered, sent 2024-01-10, cc carol
        (r"(\Seen \Answered)", _internal(2024, 1, 10),
         _msg("alpha report", cc=CAROL, date="Wed, 10 Jan 2024 09:00:00 +0000")),
        # 2: flagged, draft, a keyword, sent 2024-02-01, bcc carol, bigger body
        (r"(\Flagged \Draft $Work)", _internal(2024, 2, 1),
         _msg("beta plan", bcc=CAROL, date="Thu, 01 Feb 2024 09:00:00 +0000",
              body="x" * 2000 + "\r\n")),
        # 3: deleted, UTF-8 subject and body (quoted-printable in the file)
        (r"(\Deleted)", _internal(2024, 3, 5),
         _msg("=?utf-8?q?gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
              date="Tue, 05 Mar 2024 09:00:00 +0000",
              body="Sch=C3=B6ne Gr=C3=BC=C3=9Fe\r\n", ctype="text/plain; charset=utf-8",
              cte="quoted-printable")),
    ]
    for flags, when, raw in msgs:
        typ, data = c.append("INBOX", flags, when, raw)
        assert typ == "OK", data
    c.select("INBOX")  # 1-3 are \Recent in this selection only
    c.unselect()
    # 4: delivered by SMTP into new/, so \Recent for the session that selects first
    with server.smtp() as s:
        s.sendmail(BOB, [ALICE], _msg("delta news"))
    server.wait_for_messages(ALICE, 1)
    c.select("INBOX")
    c.store("4", "+FLAGS.SILENT", r"(\Deleted)")
    assert _search(c, "ALL") == [1, 2, 3, 4]
    assert _search(c, "RECENT") == [4] and _search(c, "OLD") == [1, 2, 3]
    assert _search(c, "NEW") == [4]
    assert c.uid("EXPUNGE", "4")[0] == "OK"  # not 3, \\Deleted too
    assert _search(c, "ANSWERED") == [1] and _search(c, "UNANSWERED") == [2, 3]
    assert _search(c, "FLAGGED") == [2] and _search(c, "UNFLAGGED") == [1, 3]
    assert _search(c, "DRAFT") == [2] and _search(c, "UNDRAFT") == [1, 3]
    assert _search(c, "DELETED") == [3] and _search(c, "UNDELETED") == [1, 2]
    assert _search(c, "SEEN") == [1] and _search(c, "UNSEEN") == [2, 3]
    assert _search(c, "KEYWORD", "$Work") == [2] and _search(c, "UNKEYWORD", "$Work") == [1, 3]
    assert _search(c, "CC", "carol") == [1]
    assert _search(c, "BCC", "carol") == [2]
    assert _search(c, "SENTBEFORE", "1-Feb-2024") == [1]
    assert _search(c, "SENTON", "1-Feb-2024") == [2]
    assert _search(c, "SENTSINCE", "1-Feb-2024") == [2, 3]
    assert _search(c, "SINCE", "1-Feb-2024") == [2, 3]  # internal dates
    assert _search(c, "BEFORE", "1-Feb-2024") == [1]
    assert _search(c, "SMALLER", "1000") == [1, 3] and _search(c, "LARGER", "1000") == [2]
    assert _search(c, "UID", "2:*") == [2, 3]
    assert _search(c, "2,3") == [2, 3]
    assert _search(c, "NOT", "OR", "SEEN", "FLAGGED") == [3]
    assert _search(c, "(SEEN ANSWERED)") == [1]
    assert _search(c, "HEADER", "Message-ID", "example.test") == [1, 2, 3]
    assert _search(c, "HEADER", "Cc", '""') == [1]  # empty string: the field is present
    # UTF-8: the decoded subject and body match, case-insensitively.
    for key, text in (("SUBJECT", "GRÜßE"), ("BODY", "schöne"), ("TEXT", "köln")):
        c.literal = text.encode()
        typ, data = c.search("UTF-8", key)
        assert (typ, data) == ("OK", [b"3"]), (key, text, data)
    with pytest.raises(imaplib.IMAP4.error, match="unknown search key NOSUCHKEY"):
        c.search(None, "NOSUCHKEY")
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        c.search(None, "SINCE", "not-a-date")
    assert _search(c, "ALL") == [1, 2, 3]  # the session goes on
    c.logout()


def test_fetch_items_examine_check_close_and_uid_expunge(server):
    c = server.imaps(ALICE)
    raw = _msg("items", body="first line\r\nsecond line\r\n")
    for _ in range(3):
        typ, data = c.append("INBOX", None, None, raw)
        assert typ == "OK"
    # UIDPLUS: APPENDUID <uidvalidity> <uid>
    assert re.search(rb"\[APPENDUID \d+ 3\]", data[0]), data

    # EXAMINE is read-only: FETCH BODY[] does not set \Seen, STORE is refused.
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK" and data == [b"3"]
    typ, data = c._simple_command("EXAMINE", "INBOX")  # the tagged reply's code
    assert typ == "OK" and b"[READ-ONLY]" in data[0], data
    typ, data = c.fetch("1", "(BODY[])")
    assert typ == "OK" and data[0][1] == raw
    assert b"\\Seen" not in c.fetch("1", "(FLAGS)")[1][0]
    typ, data = c.store("1", "+FLAGS", r"(\Seen)")
    assert typ == "NO", data

    typ, data = c.select("INBOX")
    assert typ == "OK"
    assert c.check()[0] == "OK" and c.noop()[0] == "OK"
    typ, data = c.fetch("1", "(RFC822.HEADER RFC822.TEXT)")
    got = {re.search(rb"(RFC822\.\w+)", part[0]).group(1): part[1]
           for part in data if isinstance(part, tuple)}
    head, body = raw.split(b"\r\n\r\n", 1)
    assert got[b"RFC822.HEADER"] == head + b"\r\n\r\n"
    assert got[b"RFC822.TEXT"] == body
    assert b"\\Seen" in c.fetch("1", "(FLAGS)")[1][0]  # RFC822.TEXT is not a peek
    typ, data = c.fetch("2", "(RFC822)")
    assert data[0][1] == raw
    typ, data = c.fetch("3", "(BODY.PEEK[HEADER] BODY.PEEK[HEADER.FIELDS.NOT (Subject Date)])")
    parts = [p[1] for p in data if isinstance(p, tuple)]
    assert parts[0] == head + b"\r\n\r\n"
    assert b"Subject:" not in parts[1] and b"Date:" not in parts[1] and b"From:" in parts[1]
    typ, data = c.fetch("3", "(BODY.PEEK[]<0.10>)")
    assert data[0][1] == raw[:10] and b"BODY[]<0>" in data[0][0]
    typ, data = c.fetch("3", "(BODY.PEEK[1])")
    assert data[0][1] == body
    for macro, must in (("FAST", (b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE")),
                        ("ALL", (b"ENVELOPE",)), ("FULL", (b"BODY (",))):
        typ, data = c.fetch("3", macro)
        assert typ == "OK" and all(m in data[0] for m in must), (macro, data)

    # UID EXPUNGE removes only the named UIDs among the \Deleted ones.
    c.store("1:3", "+FLAGS.SILENT", r"(\Deleted)")
    typ, data = c.uid("EXPUNGE", "2")
    assert typ == "OK"
    typ, data = c.uid("SEARCH", "ALL")
    assert data == [b"1 3"]
    # CLOSE expunges the rest silently; the mailbox is empty after.
    typ, data = c.close()
    assert typ == "OK"
    typ, data = c.status("INBOX", "(MESSAGES RECENT UIDNEXT UNSEEN)")
    assert typ == "OK" and b"MESSAGES 0" in data[0] and b"UIDNEXT 4" in data[0], data
    c.logout()


def test_capabilities_enable_and_logout_with_imapclient(server):
    c = server.imapclient()
    before = set(c.capabilities())
    assert b"IMAP4REV1" in before and b"AUTH=PLAIN" in before
    c.login(ALICE, PASSWORD)
    caps = set(c.capabilities())
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"ID", b"LITERAL+",
                b"SPECIAL-USE", b"ENABLE"):
        assert cap in caps, cap
    assert c.enable("UTF8=ACCEPT", "NOSUCHTHING") is not None  # answered, not an error
    c.select_folder("INBOX")
    assert c.noop()[0].startswith(b"NOOP")
    assert c.logout()


def test_folder_names_are_modified_utf7(server):
    """Non-ASCII folder names travel as modified UTF-7 (RFC 3501 5.1.3): imapclient
    encodes them, the server keeps them so, other clients decode them alike; a raw
    8-bit name is refused rather than stored garbled."""
    c = server.imapclient(ALICE)
    c.create_folder("Entwürfe alt")
    assert "Entwürfe alt" in [name for _, _, name in c.list_folders()]
    assert (server.maildir(ALICE) / ".Entw&APw-rfe alt" / "cur").is_dir()
    c.logout()
    raw = server.imaps(ALICE)
    typ, data = raw.list('""', "Entw*")
    assert typ == "OK" and b'"Entw&APw-rfe alt"' in data[0], data
    for bad in ("Entwürfe".encode(), b"a&b", b"&AGE-"):  # 8-bit, bad shift, shifted "a"
        typ, data = raw._simple_command("CREATE", b'"' + bad + b'"')
        assert typ == "NO" and b"modified UTF-7" in data[-1], (bad, typ, data)
    assert raw.create('"Tom &- Jerry"')[0] == "OK"  # "&-" is a plain "&"
    raw.logout()


def test_copy_and_move_of_many_messages_while_another_session_looks(server):
    """COPY/MOVE of more messages than one slice (200): every message once in the
    target, with the UIDs COPYUID names, while a second session keeps looking."""
    n = 450
    with server.smtp() as s:  # delivered in batches: much faster than n APPENDs
        for i in range(n):
            s.sendmail(BOB, [ALICE], _msg(f"many {i}"))
    server.wait_for_messages(ALICE, n, timeout=30)
    c = server.imaps(ALICE)
    watcher = server.imaps(ALICE)
    watcher.select("Archive")
    c.select("INBOX")
    typ, data = c.copy("1:*", "Archive")
    assert typ == "OK", data
    m = re.search(rb"\[COPYUID \d+ ([\d:,]+) ([\d:,]+)\]", data[0])
    assert m and m.group(2) == b"1:%d" % n, data
    assert watcher.noop()[0] == "OK"
    typ, data = watcher.select("Archive")
    assert data == [b"%d" % n]
    typ, data = c.uid("MOVE", "1:*", "Trash")
    assert typ == "OK", data
    assert c.select("INBOX")[1] == [b"0"] and c.select("Trash")[1] == [b"%d" % n]
    typ, data = c.search(None, "ALL")
    assert len(data[0].split()) == n
    for x in (c, watcher):
        x.logout()
