"""Issue 9 hardening of the IMAP endpoint: hostile message bytes, huge sequence
sets, and literals from clients that have not logged in."""

from __future__ import annotations

import time

from .support import ALICE, BOB, PASSWORD
from .test_imap_robustness import RawIMAP, login

# -- hostile header bytes (defect 2) ----------------------------------------

HOSTILE = (
    b"From: =?utf-8?q?Bj=C3=B6rn?= <bjorn@m\xc3\xbcller.example>, Broken <x@\xff\xfe.example>\r\n"
    b"To: <alice@example.test>, Nul <n\x00l@ex\x00ample.test>, =?bogus?x?zz?= <c@\xe9.test>\r\n"
    b"Cc: undisclosed-recipients:;, <@route:odd@\x80\x81>\r\n"
    b"Subject: \xff\xfe invalid utf-8 \x00 and =?utf-8?b?!!!?= =?iso-8859-1?q?caf=E9?=\r\n"
    b"Date: not a date at all\r\n"
    b"Message-ID: <\xe4\x00@example.test>\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b\xff\"; charset*=x''%ZZ\r\n"
    b"\r\n"
    b"--b\xff\r\n"
    b"Content-Type: text/plain; name*0*=utf-8''%E2; name*1=\"\xe9\"\r\n"
    b"Content-Disposition: attachment; filename=\"\xff.txt\r\n"
    b"\r\n"
    b"part one \x00\r\n"
    b"--b\xff\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner <in@\xfa.example>\r\n"
    b"Content-Type: multipart/alternative\r\n"
    b"\r\n"
    b"no boundary given\r\n"
)


def test_hostile_header_bytes_are_served_and_the_session_goes_on(make_server):
    """8-bit, NUL and invalid UTF-8 in From/To/Subject and a broken MIME tree: FETCH
    ENVELOPE/BODYSTRUCTURE/BODY answer in valid syntax (imapclient parses them), and
    the session keeps working. One arrives by SMTP (8BITMIME), one is put into the
    Maildir as another program might (with NULs, which SMTP would not carry)."""
    srv = make_server()
    smtp_msg = HOSTILE.replace(b"\x00", b"")
    with srv.smtp() as s:
        s.sendmail(BOB, [ALICE], smtp_msg, mail_options=["BODY=8BITMIME"])
    srv.wait_for_messages(ALICE, 1)
    new = srv.maildir(ALICE) / "new"
    (new / "1700000000.M1P1.test").write_bytes(HOSTILE)

    c = srv.imapclient(ALICE)
    c.select_folder("INBOX")
    got = c.fetch(c.search("ALL"),
                  ["ENVELOPE", "BODYSTRUCTURE", "BODY", "BODY[]", "BODY.PEEK[HEADER]"])
    assert len(got) == 2
    raw_bodies = sorted(d[b"BODY[]"] for d in got.values())
    assert any(b == HOSTILE for b in raw_bodies), "the Maildir message is served as stored"
    for data in got.values():
        env = data[b"ENVELOPE"]
        assert env.subject is not None and b"invalid utf-8" in env.subject
        assert b"\x00" not in env.subject, "NUL cannot be sent in an IMAP string"
        hosts = [a.host for a in env.from_]
        assert b"m\xc3\xbcller.example" in hosts, hosts
        assert data[b"BODY[HEADER]"] == data[b"BODY[]"].split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        assert data[b"BODYSTRUCTURE"].is_multipart
    assert c.noop()[0] == b"NOOP completed"
    c.logout()

    # imaplib as well, and the session still answers afterwards.
    m = srv.imaps(ALICE)
    m.select("INBOX")
    typ, data = m.fetch("1:2", "(ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER])")
    assert typ == "OK" and len([d for d in data if isinstance(d, tuple)]) >= 2
    assert m.noop()[0] == "OK"
    m.logout()


# -- long sequence sets (defect 3) ------------------------------------------


def _fill_inbox(srv, n: int) -> None:
    new = srv.maildir(ALICE) / "new"
    new.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (new / f"{1700000000 + i}.M{i}P1.test").write_bytes(
            b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))


def _long_set(n: int) -> bytes:
    """About 55 KB naming every message many times over, with `*` overlaps."""
    pairs = ",".join(f"{i}:{i + 1}" for i in range(1, n))
    singles = ",".join(str(i) for i in range(n, 0, -1))
    s = f"*:1,{pairs},1:*,{singles},{n}:*,*"
    s += ",1:*,*:1" * ((55_000 - len(s)) // 8)
    return s.encode()


def test_long_sequence_sets_do_not_block_other_sessions(make_server):
    n = 3000
    srv = make_server()
    _fill_inbox(srv, n)
    busy, other = RawIMAP(srv.imaps_port), RawIMAP(srv.imaps_port)
    login(busy)
    login(other)
    assert busy.cmd(b"s0 SELECT INBOX")[-1].startswith(b"s0 OK")
    big = _long_set(n)
    assert 50_000 <= len(big) <= 60_000
    commands = [
        b"s1 SEARCH " + big,
        b"s2 UID SEARCH UID " + big,
        b"s3 SEARCH OR NOT " + big + b" UID 1:*",
        b"s4 FETCH " + big + b" (FLAGS)",
        b"s5 UID FETCH " + big + b" (FLAGS)",
        b"s6 STORE " + big + b" +FLAGS.SILENT (\\Flagged)",
        b"s7 UID STORE " + big + b" -FLAGS.SILENT (\\Flagged)",
    ]
    start = time.monotonic()
    busy.send(b"".join(c + b"\r\n" for c in commands))
    # Meanwhile another IMAP session and an SMTP transaction are answered promptly.
    t0 = time.monotonic()
    assert other.cmd(b"n1 NOOP")[-1].startswith(b"n1 OK")
    noop_time = time.monotonic() - t0
    t0 = time.monotonic()
    with srv.smtp() as s:
        s.sendmail(BOB, [ALICE], b"From: <%s>\r\nSubject: meanwhile\r\n\r\nhi\r\n"
                   % BOB.encode())
    smtp_time = time.monotonic() - t0
    # The answers are right: each message once, however often the set names it.
    results = {}
    for c in commands:
        tag = c.split(b" ", 1)[0]
        results[tag] = busy.until_tag(tag)
    total = time.monotonic() - start
    every = list(range(1, n + 1))
    for tag in (b"s1", b"s2", b"s3"):
        lines = results[tag]
        assert lines[-1].startswith(tag + b" OK"), lines[-1]
        found = [ln for ln in lines if ln.startswith(b"* SEARCH")]
        assert [int(x) for x in found[0].split()[2:]] == every, tag
    for tag in (b"s4", b"s5"):
        fetches = [ln for ln in results[tag] if ln.startswith(b"* ") and b" FETCH " in ln]
        assert len(fetches) == n and results[tag][-1].startswith(tag + b" OK"), tag
    for tag in (b"s6", b"s7"):
        assert results[tag][-1].startswith(tag + b" OK"), results[tag][-1]
    assert noop_time < 1.5, f"NOOP on another connection took {noop_time:.1f}s"
    assert smtp_time < 3.0, f"an SMTP transaction meanwhile took {smtp_time:.1f}s"
    assert total < 10, f"seven commands on 3,000 messages took {total:.1f}s"
    assert busy.cmd(b"s8 NOOP")[-1].startswith(b"s8 OK")
    busy.close()
    other.close()


# -- literals before login (defect 4) ----------------------------------------


def test_large_literals_before_login_are_refused(make_server):
    """Four unauthenticated `LOGIN {50M}` no longer take the shared literal budget:
    each is refused before its continuation, and a user's APPEND goes ahead."""
    srv = make_server()
    strangers = [RawIMAP(srv.imaps_port) for _ in range(4)]
    for i, raw in enumerate(strangers):
        raw.send(b"x%d LOGIN {52428800}\r\n" % i)
        reply = raw.line()
        assert reply.startswith(b"x%d NO [TOOBIG]" % i), reply
    user = RawIMAP(srv.imaps_port)
    login(user)
    msg = b"Subject: after\r\n\r\nstill served\r\n"
    user.send(b"a1 APPEND INBOX {%d}\r\n" % len(msg))
    user.sock.settimeout(5)
    assert user.line().startswith(b"+ ")
    user.send(msg + b"\r\n")
    assert user.until_tag(b"a1")[-1].startswith(b"a1 OK [APPENDUID")
    # A refused session goes on; a small literal before login is still fine.
    raw = strangers[0]
    raw.send(b"y1 LOGIN {%d}\r\n" % len(ALICE))
    assert raw.line().startswith(b"+ ")
    raw.send(ALICE.encode() + b" " + PASSWORD.encode() + b"\r\n")
    assert raw.until_tag(b"y1")[-1].startswith(b"y1 OK")
    # A non-synchronizing one cannot be refused in time: the connection closes.
    late = strangers[1]
    late.send(b"z1 LOGIN {60000+}\r\n")
    assert late.line().startswith(b"* BYE [TOOBIG]")
    try:
        extra = late.line()
        raise AssertionError(f"connection still open: {extra!r}")
    except (EOFError, ConnectionError, OSError):
        pass
    for r in (*strangers, user):
        r.close()


def test_each_session_holds_at_most_its_share_of_literal_memory(make_server):
    """imap.max_literal_memory_per_session: a logged-in session's literals held in
    memory (all but large APPEND messages, which stream to disk) stay within it."""
    srv = make_server(imap__max_literal_memory_per_session="300K")
    raw = RawIMAP(srv.imaps_port)
    login(raw)
    raw.send(b"l1 LIST \"\" {400000}\r\n")
    reply = raw.line()
    assert reply.startswith(b"l1 NO [TOOBIG]"), reply
    # Several literals in one command count together.
    raw.send(b"l2 RENAME {200000}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"a" * 200_000 + b" {200000}\r\n")
    reply = raw.line()
    assert reply.startswith(b"l2 NO [TOOBIG]"), reply
    # A large APPEND is not held in memory, so the share does not limit it.
    msg = b"Subject: big\r\n\r\n" + b"z" * 400_000 + b"\r\n"
    raw.send(b"a1 APPEND INBOX {%d}\r\n" % len(msg))
    assert raw.line().startswith(b"+ ")
    raw.send(msg + b"\r\n")
    assert raw.until_tag(b"a1")[-1].startswith(b"a1 OK [APPENDUID")
    assert raw.cmd(b"n1 NOOP")[-1].startswith(b"n1 OK")
    raw.close()



def test_messages_of_many_parts_are_parsed_off_the_event_loop(make_server):
    """A message cut into tens of thousands of tiny parts costs its parse by the part:
    FETCH BODYSTRUCTURE of twenty such does not hold up another session."""
    srv = make_server()
    new = srv.maildir(ALICE) / "new"
    new.mkdir(parents=True, exist_ok=True)
    body = b"--b\r\n\r\nx\r\n" * 20_000 + b"--b--\r\n"
    for i in range(20):
        (new / f"{1700000000 + i}.M{i}P1.test").write_bytes(
            b"Subject: parts %d\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" % i + body)
    busy, other = RawIMAP(srv.imaps_port), RawIMAP(srv.imaps_port)
    login(busy)
    login(other)
    assert busy.cmd(b"s0 SELECT INBOX")[-1].startswith(b"s0 OK")
    busy.send(b"f1 FETCH 1:* (BODYSTRUCTURE)\r\n")
    assert busy.line().startswith(b"* 1 FETCH (BODYSTRUCTURE ((")  # the parsing has begun
    t0 = time.monotonic()
    assert other.cmd(b"n1 NOOP")[-1].startswith(b"n1 OK")
    noop_time = time.monotonic() - t0
    lines = busy.until_tag(b"f1")
    assert lines[-1].startswith(b"f1 OK"), lines[-1][:200]
    # At most 10,000 parts each: the rest of the body stays in the last one.
    assert all(ln.count(b'("TEXT" "PLAIN"') <= 10_000 for ln in lines)
    assert noop_time < 1.0, f"NOOP on another connection took {noop_time:.1f}s"
    busy.close()
    other.close()
