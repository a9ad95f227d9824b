"""Issue 9 (hardening) for the SMTP dialogue: address syntax, NUL in DATA,
AUTH PLAIN authorization identities, backscatter from aliases, and the From
header of submitted mail."""

from __future__ import annotations

import base64

import pytest

from .support import (
    ALICE,
    BOB,
    CLIENT_NAME,
    PASSWORD,
    assert_reply,
    make_message,
    parse,
    token,
    wait_until,
)

OUTSIDER = "sender@remote.test"


def _submission_raw(server):
    """A raw session on submissions (implicit TLS), logged in as alice."""
    c = server.raw("submissions")
    assert c.reply().code == 220
    c.expect(f"EHLO {CLIENT_NAME}", 250)
    cred = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    c.expect(f"AUTH PLAIN {cred}", 235)
    return c


# ---------------------------------------------------------------- address syntax (15, 12)


def test_ipv6_address_literal_is_parsed_not_cut_at_the_last_colon(server):
    with _submission_raw(server) as c:
        c.expect(f"MAIL FROM:<{ALICE}>", 250)
        r = c.cmd("RCPT TO:<user@[IPv6:::1]>")
        assert r.code == 250, f"RCPT to an IPv6 literal: {r}"
        r = c.cmd("RCPT TO:<user@[IPv6:::1:]>")
        assert r.code == 501 and r.status == "5.1.3", f"bad IPv6 literal: {r}"
        assert "1]>" not in r.text or "[IPv6:" in r.text, r
        c.expect("RSET", 250)
        c.expect("NOOP", 250)


@pytest.mark.parametrize("rcpt", [
    "alice@example.test..",
    "alice@example.test.",
    "alice@.example.test",
    "user@[127.0.0.256]",
    "user@[127%\x0e0.0.1]",
    "user@[tag:general]",
    '"a\x00b"@remote.test',
    '"a\x1b[31m"@remote.test',
    "a\x0eb@remote.test",
])
def test_bad_rcpt_syntax_is_501_513(server, rcpt):
    with _submission_raw(server) as c:
        c.expect(f"MAIL FROM:<{ALICE}>", 250)
        c.send(f"RCPT TO:<{rcpt}>\r\n".encode())
        r = c.reply()
        assert r.code == 501 and r.status == "5.1.3", f"RCPT TO:<{rcpt!r}>: {r}"
        assert not any(ch < " " for ch in r.text), f"control character echoed: {r.text!r}"
        c.expect("NOOP", 250)
    assert server.queue_list() == []


@pytest.mark.parametrize("sender", ['"a\x00b"@remote.test', "x@[127%\x0e0.0.1]",
                                    "bob@remote.test..", "a@[IPv6:::1]x"])
def test_bad_mail_from_syntax_is_501(server, sender):
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        c.send(f"MAIL FROM:<{sender}>\r\n".encode())
        r = c.reply()
        assert r.code == 501 and r.status == "5.1.7", f"MAIL FROM:<{sender!r}>: {r}"
        assert not any(ch < " " for ch in r.text), f"control character echoed: {r.text!r}"
        c.expect("NOOP", 250)


def test_source_route_is_still_stripped(server):
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        c.expect("MAIL FROM:<@relay.test,@other.test:someone@remote.test>", 250)
        c.expect(f"RCPT TO:<@a.test,@b.test:{ALICE}>", 250)
        c.expect("RCPT TO:<@[IPv6:::1]:bob@example.test>", 250)
        r = c.cmd("RCPT TO:<@bad..test:bob@example.test>")
        assert r.code == 501, f"bad source route: {r}"


def test_address_literal_mail_from_is_accepted(server):
    tok = token()
    with server.smtp() as s:
        assert_reply(s.mail("someone@[192.0.2.1]"), 250)
        assert_reply(s.rcpt(ALICE), 250)
        assert_reply(s.data(make_message("someone@[192.0.2.1]", ALICE, tok)), 250)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert b"Return-Path: <someone@[192.0.2.1]>" in raw


# ---------------------------------------------------------------- NUL in DATA (17)


def test_nul_in_data_is_refused_554_560_and_session_stays_in_sync(server):
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: nul\r\n\r\nbefore\r\n.\x00\r\nafter\r\nNOOP\r\n.\r\n")
        r = c.reply()
        assert r.code == 554 and r.status == "5.6.0", f"NUL in DATA: {r}"
        c.expect("NOOP", 250)
        # a clean message still goes through on the same connection
        tok = token()
        c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(make_message(OUTSIDER, ALICE, tok) + b".\r\n")
        assert c.reply().code == 250
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


def test_nul_after_the_first_block_is_refused(server):
    with server.smtp() as s:
        body = ("x" * 70 + "\r\n") * 3000 + "late \x00 nul\r\n"
        msg = make_message(OUTSIDER, ALICE, "late nul", body)
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt(ALICE), 250)
        code, text = s.data(msg)
        assert (code, text[:5]) == (554, b"5.6.0"), (code, text)
        assert s.noop()[0] == 250


# ---------------------------------------------------------------- AUTH PLAIN authzid (13)


def test_auth_plain_with_other_authorization_identity_is_refused(server):
    with server.raw("submissions") as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        cred = base64.b64encode(f"{BOB}\0{ALICE}\0{PASSWORD}".encode()).decode()
        r = c.cmd(f"AUTH PLAIN {cred}")
        assert r.code == 535 and r.status == "5.7.8", f"authzid bob, login alice: {r}"
        r = c.cmd(f"MAIL FROM:<{BOB}>")
        assert r.code == 530, f"not logged in after the refusal: {r}"
        # the same identity twice (as some clients send it) is fine
        cred = base64.b64encode(f"{ALICE.upper()}\0{ALICE}\0{PASSWORD}".encode()).decode()
        c.expect(f"AUTH PLAIN {cred}", 235)
        c.expect(f"MAIL FROM:<{ALICE}>", 250)


# ---------------------------------------------------------------- backscatter (11)


def test_alias_with_unknown_target_never_bounces_to_the_outside(server):
    server.add_alias("team@example.test", ALICE, "ghost@example.test")
    tok = token()
    with server.smtp() as s:
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt("team@example.test"), 250)
        assert_reply(s.data(make_message(OUTSIDER, "team@example.test", tok)), 250)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok
    wait_until(lambda: server.queue_list() == [], 10, "the queue to drain")
    assert "bounce" not in server.log_text(), server.log_tail(20)
    assert "ghost@example.test" in server.log_text(), "the dropped target is not logged"


def test_alias_whose_targets_are_all_unknown_is_refused_at_rcpt(server):
    server.add_alias("void@example.test", "ghost@example.test", "phantom@example.test")
    with server.smtp() as s:
        assert_reply(s.mail(OUTSIDER), 250)
        assert_reply(s.rcpt("void@example.test"), 550, "5.1.1")


# -------------------------------------------------------- From header of submitted mail (14)


def _submit_raw_message(server, message: bytes, mail_from: str = ALICE, rcpt: str = BOB):
    with server.submission(user=ALICE) as s:
        assert_reply(s.mail(mail_from), 250)
        assert_reply(s.rcpt(rcpt), 250)
        return s.data(message)


def _with_from(from_lines: list[str], tok: str) -> bytes:
    lines = [*from_lines, f"To: <{BOB}>", f"Subject: {tok}",
             "Date: Mon, 01 Jan 2024 00:00:00 +0000", f"Message-ID: <{tok}@client.test>"]
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


@pytest.mark.parametrize("from_lines", [
    ["From: <ceo@bigbank.test>"],
    [f"From: {BOB}"],
    [f'From: "{ALICE}" <{BOB}>'],
    [f"From: <{ALICE}>, <{BOB}>"],
    [f"From: <{ALICE}>", f"From: <{BOB}>"],
    ["From: undisclosed-recipients:;"],
    [f"From: team: <{ALICE}>, <{BOB}>;"],
    [f"From: =?utf-8?q?Alice?= <{BOB}>"],
    ["From: <alice@example.test\r\n  >, bob@example.test"],
    ["From: not an address"],
])
def test_from_header_not_owned_is_refused_550_571(server, from_lines):
    code, text = _submit_raw_message(server, _with_from(from_lines, token()))
    assert (code, text[:5]) == (550, b"5.7.1"), (from_lines, code, text)


@pytest.mark.parametrize("from_lines", [
    [f"From: <{ALICE}>"],
    [f"From: Alice <{ALICE.upper()}>"],
    [f"From: =?utf-8?b?QWxpY2Ugw4Q=?= <{ALICE}>"],
    [f"From: team: <{ALICE}>;"],
    ["From: <sales@example.test>"],  # an alias that delivers to alice
])
def test_from_header_owned_is_accepted(server, from_lines):
    server.add_alias("sales@example.test", ALICE)
    tok = token()
    code, text = _submit_raw_message(server, _with_from(from_lines, tok))
    assert code == 250, (from_lines, code, text)
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok


def test_missing_from_gets_the_sender(server):
    tok = token()
    message = f"To: <{BOB}>\r\nSubject: {tok}\r\n\r\nbody\r\n".encode()
    code, text = _submit_raw_message(server, message)
    assert code == 250, text
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw).get_all("From") == [f"<{ALICE}>"]


def test_from_header_exceptions_per_user(server):
    """`pillarbox user from` names what a user may send as besides its own
    addresses: an address, a whole domain, or anything."""
    msg = _with_from(["From: <boss@example.test>"], token())
    assert _submit_raw_message(server, msg)[0] == 550
    out = server.cli_ok("user", "from", ALICE, "--allow", "Boss@Example.test").stdout
    assert "boss@example.test" in out
    assert _submit_raw_message(server, msg)[0] == 250
    # the envelope follows the same rights
    assert _submit_raw_message(server, msg, mail_from="boss@example.test")[0] == 250
    other = _with_from(["From: <news@partner.test>"], token())
    assert _submit_raw_message(server, other)[0] == 550
    server.cli_ok("user", "from", ALICE, "--allow", "@partner.test",
                  "--disallow", "boss@example.test")
    assert _submit_raw_message(server, other)[0] == 250
    assert _submit_raw_message(server, msg)[0] == 550
    assert "@partner.test" in server.cli_ok("user", "from", ALICE).stdout
    p = server.cli("user", "from", ALICE, "--allow", "bad@@x")
    assert p.returncode == 1 and p.stderr.startswith("error:"), p
    # BOB has no such right
    with server.submission(user=BOB) as s:
        assert_reply(s.mail(BOB), 250)
        assert_reply(s.rcpt(ALICE), 250)
        assert s.data(other)[0] == 550
