"""Mail over the MX and submission ports lands in the user's Maildir."""

from __future__ import annotations

import asyncio
import base64
import mailbox
import re
import smtplib
import subprocess

import aiosmtplib

from .support import (
    ALICE,
    BOB,
    CLIENT_NAME,
    HOSTNAME,
    PASSWORD,
    assert_reply,
    client_ssl_context,
    make_message,
    parse,
    token,
)

DORA = "dora@example.test"


def test_delivery_via_mx_lands_in_maildir_with_received(server):
    tok = token()
    with server.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE], make_message("sender@remote.test", ALICE, tok))
    (raw,) = server.wait_for_messages(ALICE, 1)
    msg = parse(raw)
    assert msg["Subject"] == tok
    assert b"Hello from the pillarbox integration tests." in raw
    received = msg.get_all("Received") or []
    assert received, f"no Received header in {raw[:500]!r}"
    assert HOSTNAME in received[0], f"top Received does not name {HOSTNAME}: {received[0]!r}"
    assert raw.index(b"Received:") < raw.index(b"From:"), "Received must be prepended"
    # Maildir layout usable by Dovecot/mutt
    md = server.maildir(ALICE)
    for sub in ("new", "cur", "tmp"):
        assert (md / sub).is_dir(), f"{md / sub} missing"
    assert list((md / "tmp").iterdir()) == [], "tmp/ must be empty after delivery"
    box = mailbox.Maildir(md, create=False)  # what mutt/Dovecot-style readers see
    assert [m["Subject"] for m in box] == [tok]


def test_banner_and_ehlo_name_the_hostname_not_the_library(server):
    with server.raw() as c:
        banner = c.reply()
        assert banner.code == 220
        assert HOSTNAME in banner.text, f"banner does not name {HOSTNAME}: {banner}"
        for lib in ("aiosmtpd", "python", "asyncio", "postfix"):
            assert lib not in banner.text.lower(), f"banner names a library: {banner}"
        r = c.cmd(f"EHLO {CLIENT_NAME}")
        assert r.code == 250
        assert HOSTNAME in r.lines[0], f"EHLO greeting does not name {HOSTNAME}: {r}"
        assert "aiosmtpd" not in r.text.lower() and "python" not in r.text.lower()
        c.expect("QUIT", 221)


def test_swaks_delivers_to_maildir(server):
    tok = token()
    p = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.smtp_port}", "--helo", CLIENT_NAME,
         "--from", "someone@remote.test", "--to", BOB,
         "--header", f"Subject: swaks {tok}", "--body", f"swaks body {tok}",
         "--timeout", "10"],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, f"swaks failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    assert re.search(r"<-\s+250", p.stdout), p.stdout
    (raw,) = server.wait_for_messages(BOB, 1)
    assert f"swaks {tok}".encode() in raw
    assert f"swaks body {tok}".encode() in raw


def test_ehlo_advertises_extensions_on_mx(server):
    with server.smtp() as s:
        for ext in ("size", "8bitmime", "pipelining", "smtputf8", "enhancedstatuscodes",
                    "starttls"):
            assert s.has_extn(ext), f"MX EHLO lacks {ext.upper()}: {s.esmtp_features}"
        size = s.esmtp_features["size"].strip()
        assert size.isdigit() and int(size) in (25 * 1024 * 1024, 25_000_000), (
            f"SIZE should announce max_message_size=25M, got {size!r}"
        )


def test_submission_auth_only_after_starttls(server):

    with smtplib.SMTP("127.0.0.1", server.submission_port, local_hostname=CLIENT_NAME,
                      timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls"), s.esmtp_features
        assert not s.has_extn("auth"), f"AUTH advertised before TLS: {s.esmtp_features}"
        for ext in ("size", "8bitmime", "pipelining", "smtputf8", "enhancedstatuscodes"):
            assert s.has_extn(ext), f"submission EHLO lacks {ext.upper()}: {s.esmtp_features}"
        s.starttls(context=client_ssl_context())
        s.ehlo()
        assert s.has_extn("auth"), f"AUTH not advertised after STARTTLS: {s.esmtp_features}"
        mechs = s.esmtp_features["auth"].upper().split()
        assert "PLAIN" in mechs and "LOGIN" in mechs, mechs
        assert not s.has_extn("starttls"), "STARTTLS advertised again inside TLS"
        code, _ = s.login(ALICE, PASSWORD)
        assert code == 235


def test_auth_plain_and_login_both_work(server):
    server.add_user(DORA, password="pass-word-123")
    for mech, fn in (("PLAIN", "auth_plain"), ("LOGIN", "auth_login")):
        with server.submission() as s:
            s.user, s.password = DORA, "pass-word-123"
            code, text = s.auth(mech, getattr(s, fn))
            assert code == 235, f"AUTH {mech}: {code} {text!r}"


def test_auth_plain_with_utf8_password(server):
    server.add_user(DORA, password="pässwörd-✓-pässwörd")
    with server.raw("submission") as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        c.starttls()
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        cred = base64.b64encode(f"\0{DORA}\0pässwörd-✓-pässwörd".encode()).decode()
        r = c.cmd(f"AUTH PLAIN {cred}")
        assert r.code == 235, f"AUTH PLAIN with a UTF-8 password: {r}"
        c.expect(f"MAIL FROM:<{DORA}>", 250)
        c.expect("QUIT", 221)


def test_implicit_tls_submissions_delivers(server):
    tok = token()
    with server.submissions(user=ALICE) as s:
        assert s.has_extn("auth")
        s.sendmail(ALICE, [BOB], make_message(ALICE, BOB, tok))
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok


def test_starttls_submission_with_aiosmtplib_delivers(server):
    tok = token()

    async def send():
        return await aiosmtplib.send(
            make_message(ALICE, BOB, tok), sender=ALICE, recipients=[BOB],
            hostname="127.0.0.1", port=server.submission_port, start_tls=True,
            validate_certs=False, username=ALICE, password=PASSWORD,
            local_hostname=CLIENT_NAME, timeout=10,
        )

    errors, _reply = asyncio.run(send())
    assert errors == {}, errors
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok


def test_concurrent_aiosmtplib_sessions_all_delivered(server):
    toks = [token() for _ in range(20)]

    async def one(tok):
        errors, _ = await aiosmtplib.send(
            make_message("x@remote.test", ALICE, tok), sender="x@remote.test",
            recipients=[ALICE], hostname="127.0.0.1", port=server.smtp_port,
            start_tls=False, local_hostname=CLIENT_NAME, timeout=20,
        )
        assert errors == {}

    async def main():
        await asyncio.gather(*(one(t) for t in toks))

    asyncio.run(main())
    msgs = server.wait_for_messages(ALICE, len(toks), timeout=20)
    got = {parse(m)["Subject"] for m in msgs}
    assert got == set(toks)


def test_8bitmime_and_smtputf8_are_honoured(server):
    tok = token()
    sender = "jörg@remote.test"
    text = f"Grüße aus Köln — {tok}"
    body = text + "\r\n"
    msg = (
        f"From: Jörg <{sender}>\r\nTo: <{ALICE}>\r\nSubject: ünïcode {tok}\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{tok}@client.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}"
    ).encode()
    with server.smtp() as s:
        assert_reply(s.mail(sender, ["SMTPUTF8", "BODY=8BITMIME"]), 250, what="MAIL SMTPUTF8")
        assert_reply(s.rcpt(ALICE), 250, what="RCPT")
        assert_reply(s.data(msg), 250, what="DATA")
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert text.encode() in raw, "8-bit body was altered"
    assert f"Subject: ünïcode {tok}".encode() in raw, "UTF-8 header was altered"


def test_pipelining_is_honoured(server):
    tok = token()
    with server.raw() as c:
        assert c.reply().code == 220
        assert c.cmd(f"EHLO {CLIENT_NAME}").code == 250
        # whole transaction in one write, as a PIPELINING client may do
        c.send(
            f"MAIL FROM:<p@remote.test>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<nobody@example.test>\r\n"
            "DATA\r\n"
        )
        codes = [c.reply().code for _ in range(4)]
        assert codes == [250, 250, 550, 354], codes
        c.send(make_message("p@remote.test", ALICE, tok) + b".\r\nQUIT\r\n")
        rest = c.replies_until_close()
        assert [r.code for r in rest] == [250, 221], [str(r) for r in rest]
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


def test_dot_stuffing_is_undone(server):
    tok = token()
    body = f"line one\r\n.leading dot {tok}\r\n..two dots\r\n.\r\nafter lone dot\r\n"
    with server.smtp() as s:
        s.sendmail("x@remote.test", [ALICE], make_message("x@remote.test", ALICE, tok, body))
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert f"\r\n.leading dot {tok}\r\n..two dots\r\n.\r\nafter lone dot\r\n".encode() in raw \
        or f"\n.leading dot {tok}\n..two dots\n.\nafter lone dot\n".encode() in raw, raw
