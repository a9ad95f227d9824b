"""Every reply code of issue 2 §6, each followed by proof the session carries on."""

from __future__ import annotations

import base64
import re
import smtplib

import pytest

from .support import (
    ALICE,
    BOB,
    CLIENT_NAME,
    PASSWORD,
    assert_reply,
    enhanced,
    make_message,
    parse,
    token,
    wait_until,
)

CAROL = "carol@example.test"
DORA = "dora@example.test"
OUTSIDER = "sender@remote.test"


def _still_delivers(server, s, rcpt=ALICE):
    """After a refusal, the same session can still deliver a message."""
    s.rset()
    tok = token()
    s.sendmail(OUTSIDER, [rcpt], make_message(OUTSIDER, rcpt, tok))
    return tok


def test_unknown_local_recipient_550_511(server):
    with server.smtp() as s:
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt("nobody@example.test"), 550, "5.1.1", "unknown local rcpt")
        assert_reply(s.rcpt(ALICE), 250, what="known rcpt after a refused one")
        assert_reply(s.data(make_message(OUTSIDER, ALICE, "after 5.1.1")), 250)
    server.wait_for_messages(ALICE, 1)


def test_unknown_recipient_in_uppercase_domain_550_511(server):
    """Domains are case-insensitive: nobody@EXAMPLE.TEST is local, and unknown."""
    with server.smtp() as s:
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt("nobody@EXAMPLE.TEST"), 550, "5.1.1", "unknown rcpt, upper domain")


def test_disabled_user_550_521_and_enable_again(server):
    server.cli_ok("user", "disable", ALICE)
    listing = server.cli_ok("user", "list").stdout
    assert ALICE in listing and "disabled" in listing, listing
    with server.smtp() as s:
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt(ALICE), 550, "5.2.1", "disabled user")
    server.cli_ok("user", "enable", ALICE)
    with server.smtp() as s:
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt(ALICE), 250, what="re-enabled user")


def test_over_quota_452_422(server):
    server.add_user(CAROL, quota="10K")
    body = ("x" * 70 + "\r\n") * 56  # ~4 KB per message
    delivered = 0
    refusal = None
    for i in range(6):
        with server.smtp() as s:
            assert_reply(s.mail(OUTSIDER), 250)
            r = s.rcpt(CAROL)
            if r[0] != 250:
                refusal = ("RCPT", i, r)
                break
            try:
                r = s.data(make_message(OUTSIDER, CAROL, f"fill {i}", body))
            except smtplib.SMTPDataError as e:
                r = (e.smtp_code, e.smtp_error)
            if r[0] != 250:
                refusal = ("DATA", i, r)
                break
            delivered += 1
        server.wait_for_messages(CAROL, delivered)
    assert refusal is not None, "a 10K quota took 6 messages of 4K each"
    phase, i, r = refusal
    assert_reply(r, 452, "4.2.2", f"over quota at {phase} of message {i}")
    assert 2 <= delivered <= 3, f"quota 10K: {delivered} messages of 4K accepted before 452"
    # a full mailbox is a temporary problem of that user only
    with server.smtp() as s:
        s.sendmail(OUTSIDER, [BOB], make_message(OUTSIDER, BOB, "bob is fine"))
    server.wait_for_messages(BOB, 1)
    assert len(server.messages(CAROL)) == delivered, "a message was delivered over quota"
    # quota usage is shown by `user list` (the server may write it a moment later)
    def usage_shown():
        out = server.cli_ok("user", "list").stdout
        line = next(ln for ln in out.splitlines() if CAROL in ln)
        m = re.search(r"(\S+)/(\S+)\s*$", line)
        assert m, f"user list should show used/quota: {line!r}"
        return line if re.match(r"0(\.0+)?[A-Za-z]*$", m.group(1)) is None else None

    wait_until(usage_shown, 10, f"`user list` to show the usage of {delivered} messages")


def test_relay_without_auth_554_571(server):
    with server.smtp() as s:
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt("victim@elsewhere.test"), 554, "5.7.1", "relay without auth")
        assert_reply(s.rcpt(ALICE), 250, what="local rcpt after relay refusal")
        assert_reply(s.data(make_message(OUTSIDER, ALICE, "after 5.7.1")), 250)
    server.wait_for_messages(ALICE, 1)
    queued = [r["addr"] for e in server.queue_list() for r in e["rcpts"]]
    assert "victim@elsewhere.test" not in queued, "a refused relay recipient was queued"


def test_wrong_mail_from_for_authenticated_user_553_571_alias_allowed(server):
    server.add_alias("sales@example.test", ALICE)
    with server.submission(user=ALICE) as s:
        assert_reply(s.mail(BOB), 553, "5.7.1", "MAIL FROM another local user")
        s.rset()
        assert_reply(s.mail("ceo@bigbank.test"), 553, "5.7.1", "MAIL FROM a foreign address")
        s.rset()
        assert_reply(s.mail("sales@example.test"), 250, what="MAIL FROM an alias alice owns")
        assert_reply(s.rcpt(BOB), 250)
        assert_reply(s.data(make_message("sales@example.test", BOB, "from the alias")), 250)
        assert_reply(s.mail(ALICE), 250, what="MAIL FROM own address")
        s.rset()
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == "from the alias"


def test_message_too_big_552_534(make_server):
    server = make_server(limits__max_message_size="10K")
    big = make_message(OUTSIDER, ALICE, "big", ("y" * 78 + "\r\n") * 300)  # ~24 KB
    with server.smtp() as s:
        size = int(s.esmtp_features["size"])
        assert 10_000 <= size <= 10_240, f"SIZE should announce 10K, got {size}"
        # declared too big: refused at MAIL (RFC 1870)
        assert_reply(s.mail(OUTSIDER, [f"SIZE={len(big)}"]), 552, "5.3.4", "MAIL SIZE=24K")
        s.rset()
        # undeclared, then too big: refused after the data
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt(ALICE), 250)
        assert_reply(s.data(big), 552, "5.3.4", "24K of data with a 10K limit")
        tok = _still_delivers(server, s)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


def test_too_many_recipients_452_453(make_server):
    server = make_server(limits__max_recipients=3)
    users = [ALICE, BOB, CAROL, DORA]
    for u in users[2:]:
        server.add_user(u)
    tok = token()
    with server.smtp() as s:
        assert_reply(s.mail(OUTSIDER), 250)
        for u in users[:3]:
            assert_reply(s.rcpt(u), 250, what=u)
        assert_reply(s.rcpt(users[3]), 452, "4.5.3", "4th recipient with max_recipients=3")
        assert_reply(s.data(make_message(OUTSIDER, users[:3], tok)), 250)
    for u in users[:3]:
        (raw,) = server.wait_for_messages(u, 1)
        assert parse(raw)["Subject"] == tok
    assert server.messages(users[3]) == []


def test_command_line_over_512_gets_500_and_session_continues(server):
    with server.raw() as c:
        assert c.reply().code == 220
        assert c.cmd(f"EHLO {CLIENT_NAME}").code == 250
        r = c.cmd("NOOP " + "x" * 600)
        assert r.code == 500 and r.status == "5.5.2", f"600-octet command: {r}"
        r = c.cmd("MAIL FROM:<" + "a" * 600 + "@remote.test>")
        assert 500 <= r.code < 600, f"600-octet MAIL FROM: {r}"
        c.expect("NOOP", 250)
        c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(make_message(OUTSIDER, ALICE, "after long command") + b".\r\n")
        assert c.reply().code == 250
        c.expect("QUIT", 221)
    server.wait_for_messages(ALICE, 1)


def test_huge_command_line_without_end_does_not_crash(server):
    """100 KB of command line: a 5xx, and the server keeps serving."""
    with server.raw() as c:
        assert c.reply().code == 220
        try:
            c.send(b"EHLO " + b"z" * 100_000 + b"\r\n")
        except OSError:
            pass  # the server may answer and close before reading it all
        r = c.reply()
        assert 500 <= r.code < 600, f"100 KB command line: {r}"
    with server.smtp() as s:
        assert s.noop()[0] == 250
        s.sendmail(OUTSIDER, [ALICE], make_message(OUTSIDER, ALICE, "after huge line"))
    server.wait_for_messages(ALICE, 1)


def test_text_line_over_998_gets_5xx_and_session_continues(server):
    long_body = "short line\r\n" + "L" * 2000 + "\r\nend\r\n"
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(make_message(OUTSIDER, ALICE, "long line", long_body) + b".\r\n")
        r = c.reply()
        assert r.code == 554 and r.status == "5.6.0", f"2000-octet text line: {r}"
        c.expect("RSET", 250)
        c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(make_message(OUTSIDER, ALICE, "normal lines") + b".\r\n")
        assert c.reply().code == 250
        c.expect("QUIT", 221)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == "normal lines", "the long-line message was delivered"


def test_submission_without_auth_530(server):
    with server.submission() as s:
        assert_reply(s.mail(ALICE), 530, "5.7.0", "MAIL on submission without AUTH")
    with server.submissions() as s:
        assert_reply(s.mail(ALICE), 530, "5.7.0", "MAIL on submissions without AUTH")


def test_wrong_password_535(server):
    server.add_user(DORA, password="right-horse-battery")
    with server.submission() as s:
        s.user, s.password = DORA, "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as ei:
            s.auth("PLAIN", s.auth_plain)
        assert ei.value.smtp_code == 535, ei.value
        assert enhanced(ei.value.smtp_error) == "5.7.8", ei.value
        # an unknown user gets the same answer (no user enumeration)
        s.user, s.password = "nobody@example.test", "right-horse-battery"
        with pytest.raises(smtplib.SMTPAuthenticationError) as ei:
            s.auth("PLAIN", s.auth_plain)
        assert ei.value.smtp_code == 535, ei.value
        # still not authenticated, still talking
        assert_reply(s.mail(DORA), 530, "5.7.0", "MAIL after failed AUTH")
        s.rset()
        s.user, s.password = DORA, "right-horse-battery"
        assert s.auth("PLAIN", s.auth_plain)[0] == 235
        assert_reply(s.mail(DORA), 250)


def test_auth_before_tls_refused_538(server):
    cred = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    with server.raw("submission") as c:
        assert c.reply().code == 220
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert not any(line.upper().startswith("AUTH") for line in r.lines), r
        r = c.cmd(f"AUTH PLAIN {cred}")
        assert r.code == 538 and r.status == "5.7.11", f"AUTH before TLS: {r}"
        r = c.cmd("AUTH LOGIN")
        assert 500 <= r.code < 600, f"AUTH LOGIN before TLS: {r}"
        r = c.cmd(f"MAIL FROM:<{ALICE}>")
        assert r.code == 530, f"MAIL after refused plaintext AUTH: {r}"
        c.expect("QUIT", 221)


def test_changed_password_takes_effect(server):
    server.cli_ok("user", "passwd", ALICE, "--password-stdin", input="new-pw-for-alice\n")
    with server.submission() as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(ALICE, PASSWORD)
    with server.submission() as s:
        assert s.login(ALICE, "new-pw-for-alice")[0] == 235


def test_low_disk_452_431_and_server_keeps_serving(make_server):
    server = make_server(queue__min_free_space="100000000M")  # 100 TB
    refusal = None
    with server.smtp() as s:
        r = s.mail(OUTSIDER)
        if r[0] != 250:
            refusal = ("MAIL", r)
        else:
            assert_reply(s.rcpt(ALICE), 250)
            try:
                r = s.data(make_message(OUTSIDER, ALICE, "disk full"))
            except smtplib.SMTPDataError as e:
                r = (e.smtp_code, e.smtp_error)
            refusal = ("DATA", r)
        assert_reply(refusal[1], 452, "4.3.1", f"low disk at {refusal[0]}")
        assert s.noop()[0] == 250
    # a new session is still served
    with server.smtp() as s:
        assert s.noop()[0] == 250
    assert server.running()
    assert server.messages(ALICE) == []
