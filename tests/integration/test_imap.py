"""IMAP with real clients (imaplib, imapclient) against a real server: login,
reading mail delivered by SMTP, flags, search, APPEND, folders, concurrency,
IDLE, restarts."""

from __future__ import annotations

import email
import imaplib
import re
import threading
import time

import imapclient
import pytest

from .support import ALICE, BOB, PASSWORD, client_ssl_context, make_message, token


def deliver(server, to: str, subject: str, body: str = "Hello.\r\n", n: int = 1) -> None:
    with server.smtp() as s:
        for i in range(n):
            s.sendmail(BOB, [to], make_message(BOB, to, f"{subject} {i}" if n > 1 else subject,
                                               body))


def wait_exists(c: imaplib.IMAP4, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        typ, data = c.select("INBOX")
        assert typ == "OK", data
        if int(data[0]) >= n:
            return
        assert time.monotonic() < deadline, f"INBOX has {data[0]} messages, expected {n}"
        time.sleep(0.05)


# -- login --------------------------------------------------------------------


def test_logindisabled_before_starttls_then_login(server):
    c = server.imap(starttls=False)
    assert "LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities
    typ, data = c._simple_command("LOGIN", ALICE, PASSWORD)
    assert typ == "NO" and b"STARTTLS" in data[0]
    c.starttls(ssl_context=client_ssl_context())
    typ, caps = c.capability()
    assert b"LOGINDISABLED" not in caps[0] and b"AUTH=PLAIN" in caps[0]
    assert c.login(ALICE, PASSWORD)[0] == "OK"
    c.logout()


def test_bad_password_and_authenticate_plain(server):
    c = server.imaps()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login(ALICE, "wrong")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("nobody@example.test", PASSWORD)
    typ, _ = c.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{PASSWORD}".encode())
    assert typ == "OK"
    assert c.select("INBOX")[0] == "OK"
    c.logout()


# -- reading mail delivered by SMTP ---------------------------------------------


def test_fetch_message_delivered_by_smtp(server):
    mark = token()
    deliver(server, ALICE, f"Greetings {mark}", "Line one.\r\nLine two.\r\n")
    server.wait_for_messages(ALICE, 1)
    c = server.imaps(ALICE)
    typ, data = c.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    raw = server.messages(ALICE)  # taken into cur/ by the SELECT
    assert raw == []
    typ, data = c.fetch("1", "(UID FLAGS RFC822.SIZE ENVELOPE BODY.PEEK[])")
    head, body = data[0]
    assert b"UID 1 " in head and b"\\Recent" in head
    assert f"Greetings {mark}".encode() in head  # the ENVELOPE subject
    size = int(re.search(rb"RFC822.SIZE (\d+)", head).group(1))
    assert size == len(body)
    msg = email.message_from_bytes(body)
    assert msg["Subject"] == f"Greetings {mark}" and msg["Delivered-To"] == ALICE
    assert b"\\Seen" not in c.fetch("1", "FLAGS")[1][0]  # PEEK left it unseen
    typ, data = c.fetch("1", "(BODY[TEXT])")
    assert data[0][1] == b"Line one.\r\nLine two.\r\n"
    assert b"\\Seen" in c.fetch("1", "FLAGS")[1][0]
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert data[0][1] == f"Subject: Greetings {mark}\r\n\r\n".encode()
    typ, data = c.fetch("1", "(BODY.PEEK[TEXT]<5.3>)")
    assert b"BODY[TEXT]<5>" in data[0][0] and data[0][1] == b"one"
    typ, data = c.fetch("1", "(BODYSTRUCTURE)")
    assert b'("TEXT" "PLAIN"' in data[0]
    c.logout()


def test_multipart_bodystructure_and_sections(server):
    msg = (b"From: <bob@example.test>\r\nTo: <alice@example.test>\r\nSubject: parts\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
           b"preamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n"
           b"--XX\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename=\"a.bin\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--XX--\r\n")
    c = server.imaps(ALICE)
    c.append("INBOX", None, None, msg)
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODYSTRUCTURE)")
    bs = data[0]
    assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1' in bs
    assert b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 4' in bs
    assert b'("ATTACHMENT" ("FILENAME" "a.bin"))' in bs
    assert b'"MIXED" ("BOUNDARY" "XX")' in bs
    typ, data = c.fetch("1", "(BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[2.MIME])")
    parts = [d[1] for d in data if isinstance(d, tuple)]
    assert parts[0] == b"first part" and parts[1] == b"AAEC"
    assert parts[2].startswith(b"Content-Type: application/octet-stream\r\n")
    c.logout()


def test_flags_store_and_search(server):
    c = server.imaps(ALICE)
    for i, subject in enumerate(["apple pie", "banana split", "cherry tart"]):
        c.append("INBOX", "(\\Seen)" if i == 0 else None,
                 imaplib.Time2Internaldate(time.mktime((2024, 1, 10 + i, 12, 0, 0, 0, 0, -1))),
                 make_message(BOB, ALICE, subject, body=f"body {subject} {'x' * 100 * i}\r\n"))
    c.select("INBOX")
    assert c.search(None, "ALL") == ("OK", [b"1 2 3"])
    assert c.search(None, "SEEN") == ("OK", [b"1"])
    assert c.search(None, "UNSEEN") == ("OK", [b"2 3"])
    assert c.search(None, "SUBJECT", "BANANA") == ("OK", [b"2"])
    assert c.search(None, "BODY", "cherry") == ("OK", [b"3"])
    assert c.search(None, "TEXT", "apple") == ("OK", [b"1"])
    assert c.search(None, "FROM", "bob@example.test") == ("OK", [b"1 2 3"])
    assert c.search(None, "TO", "alice") == ("OK", [b"1 2 3"])
    assert c.search(None, "HEADER", "Subject", "tart") == ("OK", [b"3"])
    assert c.search(None, "SINCE", "11-Jan-2024") == ("OK", [b"2 3"])
    assert c.search(None, "BEFORE", "11-Jan-2024") == ("OK", [b"1"])
    assert c.search(None, "ON", "12-Jan-2024") == ("OK", [b"3"])
    assert c.search(None, "LARGER", "300") == ("OK", [b"3"])
    assert c.search(None, "OR", "SEEN", "SUBJECT", "cherry") == ("OK", [b"1 3"])
    assert c.search(None, "NOT", "SEEN", "2:*") == ("OK", [b"2 3"])
    assert c.search("UTF-8", "SUBJECT", "pie") == ("OK", [b"1"])
    assert c.uid("SEARCH", "UID", "2:3") == ("OK", [b"2 3"])
    typ, data = c.store("2:3", "+FLAGS", "(\\Flagged $Important)")
    assert typ == "OK" and b"$Important" in data[0]
    assert c.search(None, "FLAGGED") == ("OK", [b"2 3"])
    assert c.search(None, "KEYWORD", "$Important") == ("OK", [b"2 3"])
    c.store("3", "-FLAGS.SILENT", "(\\Flagged)")
    assert c.search(None, "FLAGGED") == ("OK", [b"2"])
    typ, data = c.uid("STORE", "1", "FLAGS", "(\\Answered)")
    assert b"UID 1" in data[0] and b"\\Answered" in data[0] and b"\\Seen" not in data[0]
    # The flags are in the Maildir file names too (R = answered, F = flagged).
    info = {}
    for f in (server.maildir(ALICE) / "cur").iterdir():
        subject = re.search(rb"^Subject: (.*?)\r$", f.read_bytes(), re.M).group(1)
        info[subject.decode()] = f.name.rsplit(":2,", 1)[1]
    assert info == {"apple pie": "R", "banana split": "F", "cherry tart": ""}
    typ, data = c.search("KOI8-R", "SUBJECT", "x")
    assert typ == "NO"
    c.logout()


def test_append_multi_megabyte_literal(server):
    lines = [f"line {i:07d} {'z' * 60}\r\n" for i in range(60_000)]  # ~4.4 MB
    msg = make_message(BOB, ALICE, "big one", body="".join(lines))
    assert len(msg) > 4_000_000
    c = server.imaps(ALICE, timeout=60)
    typ, data = c.append("Drafts", "(\\Draft)", None, msg)
    assert typ == "OK"
    m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    assert m and m.group(2) == b"1"
    c.select("Drafts", readonly=True)
    typ, data = c.fetch("1", "(RFC822.SIZE FLAGS BODY.PEEK[])")
    assert data[0][1] == msg
    assert f"RFC822.SIZE {len(msg)}".encode() in data[0][0]
    assert b"\\Draft" in data[0][0]
    typ, data = c.fetch("1", "(BODY.PEEK[]<4000000.100>)")
    assert data[0][1] == msg[4_000_000:4_000_100]
    c.logout()


def test_append_literal_plus_too_big(make_server):
    srv = make_server(imap__max_literal_size="1K")
    c = srv.imaps(ALICE)
    typ, data = c.append("INBOX", None, None, b"Subject: x\r\n\r\n" + b"y" * 2000)
    assert typ == "NO" and b"TOOBIG" in data[0]
    assert c.noop()[0] == "OK"  # the session goes on
    c.logout()


# -- folders ----------------------------------------------------------------


def test_special_use_folders_and_management(server):
    c = server.imapclient(ALICE)
    folders = {name: flags for flags, _, name in c.list_folders()}
    for name, use in [("Sent", b"\\Sent"), ("Drafts", b"\\Drafts"), ("Trash", b"\\Trash"),
                      ("Junk", b"\\Junk"), ("Archive", b"\\Archive")]:
        assert use in folders[name]
    assert "INBOX" in folders
    assert c.find_special_folder(imapclient.imapclient.SENT) == "Sent"
    c.create_folder("Projects")
    c.create_folder("Projects.2024")
    assert c.folder_exists("Projects.2024")
    names = [n for _, _, n in c.list_folders("", "Projects.%")]
    assert names == ["Projects.2024"]
    flags = {n: f for f, _, n in c.list_folders("", "Projects")}
    assert b"\\HasChildren" in flags["Projects"]
    c.rename_folder("Projects", "Work")
    assert sorted(n for _, _, n in c.list_folders("", "Work*")) == ["Work", "Work.2024"]
    assert not c.folder_exists("Projects")
    c.subscribe_folder("Work")
    assert "Work" in [n for _, _, n in c.list_sub_folders()]
    c.unsubscribe_folder("Work")
    assert "Work" not in [n for _, _, n in c.list_sub_folders()]
    c.delete_folder("Work.2024")
    assert not c.folder_exists("Work.2024")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="ALREADYEXISTS"):
        c.create_folder("Sent")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="NONEXISTENT"):
        c.select_folder("Nope")
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        c.delete_folder("INBOX")
    st = c.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"])
    assert st[b"MESSAGES"] == 0 and st[b"UIDNEXT"] == 1
    assert (server.maildir(ALICE) / ".Work" / "cur").is_dir()
    assert c.namespace().personal == (("", "."),)
    assert "pillarbox" in repr(c.id_({"name": "test"}))
    c.logout()


def test_quota_root(make_server):
    srv = make_server()
    srv.add_user("carol@example.test", PASSWORD, quota="10M")
    c = srv.imaps("carol@example.test")
    typ, data = c.getquotaroot("INBOX")
    assert typ == "OK"
    assert any(b"STORAGE 0 10240" in d for d in data[1])
    c.logout()


# -- concurrency ----------------------------------------------------------------


def test_copy_move_expunge_seen_by_a_second_session(server):
    deliver(server, ALICE, "concurrent", n=4)
    server.wait_for_messages(ALICE, 4)
    a = server.imapclient(ALICE)
    b = server.imapclient(ALICE)
    a.select_folder("INBOX")
    b.select_folder("INBOX")
    assert sorted(a.search()) == [1, 2, 3, 4]
    a._imap.select("INBOX")
    typ, data = a._imap.copy("1", "Archive")
    assert typ == "OK" and re.match(rb"\[COPYUID \d+ 1 1\]", data[0]), data
    a.move([2], "Trash")
    a.add_flags([3], [imapclient.DELETED])
    a.expunge()
    assert sorted(a.search()) == [1, 4]
    resp = b.noop()
    expunges = sorted(r[0] for r in resp[1] if r[1] == b"EXPUNGE")
    assert len(expunges) == 2, resp
    assert sorted(b.search()) == [1, 4]
    a.select_folder("Trash")
    assert a.search() == [1]
    a.select_folder("Archive")
    assert a.search() == [1]
    # A flag set by one session reaches the other as an unsolicited FETCH.
    a.select_folder("INBOX")
    a.add_flags([4], [imapclient.FLAGGED])
    resp = b.noop()
    assert any(r[1] == b"FETCH" for r in resp[1]), resp
    a.logout()
    b.logout()


def test_idle_woken_by_smtp_delivery(server):
    c = server.imapclient(ALICE)
    c.select_folder("INBOX")
    c.idle()
    started = threading.Event()

    def send():
        started.wait(5)
        deliver(server, ALICE, "wake up")

    t = threading.Thread(target=send)
    t.start()
    started.set()
    sent_at = time.monotonic()
    responses = c.idle_check(timeout=10)
    woke = time.monotonic() - sent_at
    t.join()
    c.idle_done()
    assert (1, b"EXISTS") in responses, responses
    assert woke < 5, f"IDLE woke {woke:.2f}s after the delivery"
    assert c.search() == [1]
    c.logout()


def test_uids_and_flags_survive_a_restart(make_server):
    srv = make_server()
    deliver(srv, ALICE, "persist", n=3)
    srv.wait_for_messages(ALICE, 3)
    c = srv.imapclient(ALICE)
    info = c.select_folder("INBOX")
    validity = info[b"UIDVALIDITY"]
    c.add_flags([2], [imapclient.DELETED])
    c.expunge()
    c.add_flags([3], ["$Label1", imapclient.SEEN])
    before = c.fetch(c.search(), ["UID", "FLAGS"])
    c.logout()
    srv.restart()
    deliver(srv, ALICE, "after restart")
    srv.wait_for_messages(ALICE, 1)
    c = srv.imapclient(ALICE)
    info = c.select_folder("INBOX")
    assert info[b"UIDVALIDITY"] == validity
    after = c.fetch(c.search(), ["UID", "FLAGS"])
    def flags(resp, uid):
        return set(resp[uid][b"FLAGS"]) - {b"\\Recent"}

    assert [flags(after, u) for u in (1, 3)] == [flags(before, u) for u in (1, 3)]
    assert flags(after, 3) == {b"\\Seen", b"$Label1"}
    assert sorted(after) == [1, 3, 4]  # the new message got the next UID, 2 stays gone
    assert info[b"UIDNEXT"] == 5
    c.logout()


def test_connections_per_user_limit(make_server):
    srv = make_server(imap__max_connections_per_user=2)
    one, two = srv.imaps(ALICE), srv.imaps(ALICE)
    third = srv.imaps()
    with pytest.raises(imaplib.IMAP4.error, match="LIMIT"):
        third.login(ALICE, PASSWORD)
    one.logout()
    assert third.login(ALICE, PASSWORD)[0] == "OK"
    two.logout()
    third.logout()


def test_fetch_reply_holds_only_the_requested_messages(server):
    """A flag change made by another session is not reported inside the reply
    to FETCH or STORE (whose FETCH responses clients such as Delta Chat and
    imaplib take as the answer, so an unsolicited one for another message, e.g.
    without the RFC822.SIZE asked for, breaks them), but at the next command
    that is not a FETCH or STORE, or at once in IDLE."""
    deliver(server, ALICE, "flags elsewhere", n=3)
    server.wait_for_messages(ALICE, 3)
    a = server.imaps(ALICE)
    b = server.imaps(ALICE)
    a.select("INBOX")
    b.select("INBOX")
    a.uid("STORE", "1", "+FLAGS", "(\\Seen)")
    typ, data = b.uid("FETCH", "3", "(UID RFC822.SIZE)")
    assert typ == "OK" and len(data) == 1 and data[0].startswith(b"3 (UID 3 RFC822.SIZE "), data
    typ, data = b.uid("STORE", "2", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and data == [b"2 (UID 2 FLAGS (\\Flagged))"], data
    typ, data = b.fetch("3", "(FLAGS)")
    assert typ == "OK" and len(data) == 1 and data[0].startswith(b"3 (FLAGS"), data
    b.noop()
    assert any(b"1 (UID 1 FLAGS (\\Seen" in d for d in b.untagged_responses.pop("FETCH", [])), \
        "the other session's flag change never came"
    # imapclient too gets only what it asked for (its fetch() merges every FETCH).
    c = server.imapclient(ALICE)
    c.select_folder("INBOX")
    a.uid("STORE", "2", "+FLAGS", "(\\Answered)")
    assert set(c.fetch([3], ["RFC822.SIZE"])) == {3}
    # Held back by a FETCH, the change comes at once when the session goes IDLE.
    typ, data = b.uid("FETCH", "3", "(UID RFC822.SIZE)")
    assert len(data) == 1, data
    b.send(b"i1 IDLE\r\n")
    assert b.readline().startswith(b"+ ")
    assert b.readline().startswith(b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Flagged"), "no update"
    b.send(b"DONE\r\n")
    assert b.readline().startswith(b"i1 OK")
    for conn in (a, b):
        conn.logout()
    c.logout()
