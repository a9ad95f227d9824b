"""Each example config of docs/MODULES.md ("## Examples"), taken from the doc,
on a running server with real clients. The webhook gateway's example runs in
test_modules_webhook.py, the old-domain rewriting's in test_modules_modifiers.py."""

from __future__ import annotations

import smtplib

from .doc_examples import example, replaced
from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    submit,
)
from .support import ALICE, BOB, CLIENT_NAME, PASSWORD, make_message, parse, token, wait_until
from .test_outbound_dkim import _publish, _signatures, _verify_all


def _rcpt(srv, rcpt: str, sender: str = "someone@remote.test") -> tuple[int, bytes]:
    with srv.smtp() as s:
        assert s.mail(sender)[0] == 250
        return s.rcpt(rcpt)


def test_mx_to_mailboxes(make_server):
    srv = make_server(extra_toml=example("MX to mailboxes (the default)"))
    tok = token()
    with srv.smtp() as s:
        s.sendmail("someone@remote.test", [ALICE], make_message("someone@remote.test", ALICE,
                                                                tok))
    (raw,) = srv.wait_for_messages(ALICE, 1)
    msg = parse(raw)
    assert msg["Subject"] == tok
    assert msg["Received"].startswith(f"from {CLIENT_NAME} ([127.0.0.1])")
    code, text = _rcpt(srv, "nobody@example.test")
    assert (code, text[:5]) == (550, b"5.1.1")
    code, text = _rcpt(srv, "someone@elsewhere.test")
    assert (code, text[:5]) == (554, b"5.7.1")


def test_submission_with_dkim_signing(outbound, dns):
    srv = outbound(start=False, extra_toml=example("submission with DKIM signing"))
    _publish(srv, dns)
    srv.start()
    tok = token()
    with srv.submission(ALICE, PASSWORD) as s:
        s.sendmail(ALICE, [BOB], f"From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: {tok}\r\n"
                                 "\r\nsigned\r\n".encode())
        # the sender check: not alice's address to send as
        assert s.mail(BOB)[0] == 553
    (got,) = srv.wait_for_messages(BOB, 1)
    msg = parse(got)
    assert msg["Subject"] == tok and msg["Message-ID"] and msg["Date"]
    assert [s["d"] for s in _signatures(got)] == ["example.test", "example.test"]
    delivered = got.split(b"\r\n", 2)[2]  # without Return-Path and Delivered-To
    assert _verify_all(delivered, dns) == [True, True]


def test_a_partner_domain_through_a_smarthost(outbound, double):
    """No MX for partner.example exists: only the route reaches the double."""
    toml = replaced(example("a partner domain through a smarthost"),
                    "smarthost.partner.example:2525", f"127.0.0.1:{double.port}")
    srv = outbound(extra_toml=toml)
    tok = token()
    submit(srv, "someone@partner.example", subject=tok)
    (got,) = double.wait_for_messages(1)
    assert got.rcpts == ["someone@partner.example"] and got.mail_from == ALICE
    assert parse(got.content)["Subject"] == tok
    code, text = _rcpt(srv, "someone@partner.example")  # from outside: relaying
    assert (code, text[:5]) == (554, b"5.7.1")


def test_mail_from_one_source_address_goes_to_junk(make_server):
    toml = replaced(example("mail from one source address quarantined to Junk"),
                    "192.0.2.10", "127.0.0.2")
    srv = make_server(extra_toml=toml)
    printer, other = token(), token()
    for source, tok in (("127.0.0.2", printer), ("127.0.0.1", other)):
        with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname=CLIENT_NAME,
                          source_address=(source, 0), timeout=10) as s:
            s.sendmail("printer@remote.test", [ALICE],
                       make_message("printer@remote.test", ALICE, tok))
    junk = srv.maildir(ALICE) / ".Junk" / "new"
    wait_until(lambda: junk.is_dir() and any(junk.iterdir()), 10, "mail in Junk")
    (f,) = junk.iterdir()
    assert parse(f.read_bytes())["Subject"] == printer
    (raw,) = srv.wait_for_messages(ALICE, 1)  # INBOX: the other client's
    assert parse(raw)["Subject"] == other


def test_one_address_refused_with_a_custom_reply(make_server):
    srv = make_server(extra_toml=example("one address refused with a custom reply"))
    with srv.smtp() as s:
        assert s.mail("someone@remote.test")[0] == 250
        assert s.rcpt("noreply@example.test") == (550, b"5.7.1 this address takes no mail")
        assert s.rcpt(BOB)[0] == 250
        tok = token()
        assert s.data(make_message("someone@remote.test", BOB, tok))[0] == 250
    (raw,) = srv.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok
