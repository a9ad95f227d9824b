"""chatmail mode, end-to-end encryption only (check/e2ee.py): each filter rule
with messages the tests build (pysequoia, gpg, fakes, exceptions), asserting
the SMTP reply on the submission side (alice logged in) and on the MX side
(mail from another domain)."""

from __future__ import annotations

import smtplib

import pytest

from . import chatmail_messages as m
from .support import ALICE, BOB, Server, token, wait_until

OUTSIDE = "carol@example.net"
TRACES = ("Received: from laptop.home (192.168.1.7)\r\nX-Originating-IP: 192.168.1.7\r\n"
          "User-Agent: SecretClient/1.0\r\nX-Mailer: SecretMailer\r\n")
NEEDED = (523, "5.7.1 Encryption Needed: Invalid Unencrypted Mail")


@pytest.fixture(scope="module")
def relay(tmp_path_factory, seed_data_dir):
    srv = Server(tmp_path_factory.mktemp("chatmail"), {"mode": "chatmail",
                                                        "chatmail.strict_dkim": False,
                                                        "chatmail.max_user_send_burst": 1000},
                 seed=seed_data_dir)
    srv.start()
    yield srv
    problems = srv.shutdown_and_check()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def send(client: smtplib.SMTP, mail_from: str, rcpts: list[str], raw: bytes
         ) -> tuple[int, str]:
    try:
        client.sendmail(mail_from, rcpts, raw)
        return 250, ""
    except smtplib.SMTPSenderRefused as e:
        code, text = e.smtp_code, e.smtp_error
    except smtplib.SMTPDataError as e:
        code, text = e.smtp_code, e.smtp_error
    except smtplib.SMTPRecipientsRefused as e:
        code, text = next(iter(e.recipients.values()))
    client.rset()
    return code, text.decode()


@pytest.fixture(scope="module")
def out(relay):
    with relay.submission(ALICE) as s:
        yield lambda raw, rcpts=(BOB,), mail_from=ALICE: send(s, mail_from, list(rcpts), raw)


@pytest.fixture(scope="module")
def mx(relay):
    with relay.smtp() as s:
        yield lambda raw, rcpts=(ALICE,), mail_from=OUTSIDE: send(s, mail_from, list(rcpts),
                                                                  raw)


def test_real_pgp_mime_passes_both_ways(out, mx):
    for armored in (m.sequoia_armored(), m.gpg_armored(), m.gpg_symmetric_armored()):
        assert out(m.pgp_mime(ALICE, BOB, armored)) == (250, "")
        assert mx(m.pgp_mime(OUTSIDE, ALICE, armored)) == (250, "")


@pytest.mark.parametrize("make", [
    pytest.param(lambda f, t: m.fake_encrypted(f, t), id="fake-encrypted"),
    pytest.param(lambda f, t: m.pgp_mime(f, t, m.literal_armored()), id="literal-packet"),
    pytest.param(lambda f, t: m.empty_armor(f, t), id="armor-without-payload"),
    pytest.param(lambda f, t: m.securejoin(f, t, text="Buy cheap pills!"), id="securejoin-fake"),
    pytest.param(lambda f, t: m.mdn(f, t), id="mdn"),
    pytest.param(lambda f, t: m.plain(f, t), id="plain"),
    pytest.param(lambda f, t: m.setup_message(f, t), id="setup-message-to-another"),
])
def test_refused_both_ways(out, mx, make):
    assert out(make(ALICE, BOB)) == NEEDED
    assert mx(make(OUTSIDE, ALICE)) == NEEDED


def test_securejoin_passes_both_ways(out, mx):
    for kind in ("vc-request", "vg-request"):
        assert out(m.securejoin(ALICE, BOB, kind)) == (250, "")
        assert mx(m.securejoin(OUTSIDE, ALICE, kind)) == (250, "")


def test_setup_message_to_self_only_outgoing(out, mx):
    assert out(m.setup_message(ALICE, ALICE), rcpts=[ALICE]) == (250, "")
    # From the outside "to self" is nobody's own setup message.
    assert mx(m.setup_message(ALICE, ALICE), mail_from=ALICE) == NEEDED


def test_mailer_daemon_report_only_incoming(out, mx):
    assert mx(m.mailer_daemon_report("MAILER-DAEMON@example.net", ALICE), mail_from="") \
        == (250, "")
    # Without Auto-Submitted it is just cleartext.
    report = m.mailer_daemon_report("MAILER-DAEMON@example.net", ALICE)
    assert mx(report.replace(b"Auto-Submitted: auto-replied\r\n", b""), mail_from="") == NEEDED
    # A user cannot send one (its From is not the login).
    code, _ = out(m.mailer_daemon_report(ALICE, BOB))
    assert code == 523


def test_outgoing_sender_rules(out, mx):
    # MAIL FROM must be the login.
    code, text = out(m.pgp_mime(BOB, ALICE, m.sequoia_armored()), rcpts=[ALICE], mail_from=BOB)
    assert (code, text.split()[0]) == (553, "5.7.1")
    # The From header must be MAIL FROM: a forged From is refused however well
    # encrypted (by the sender check before e2ee's own rule, which says the same).
    code, text = out(m.pgp_mime(BOB, ALICE, m.sequoia_armored()), rcpts=[ALICE])
    assert code in (550, 553) and text.split()[0] == "5.7.1" and "From" in text
    # On the MX the From is for DKIM to vouch for (see test_chatmail_mode.py), not e2ee.
    assert mx(m.pgp_mime(BOB, ALICE, m.sequoia_armored())) == (250, "")


def test_cleartext_opt_in_per_recipient(relay, mx):
    relay.cli_ok("user", "set", BOB, "allow-cleartext", "on")
    assert mx(m.plain(OUTSIDE, BOB), rcpts=[BOB]) == (250, "")
    assert mx(m.plain(OUTSIDE, ALICE), rcpts=[ALICE, BOB]) == NEEDED
    relay.cli_ok("user", "set", BOB, "allow-cleartext", "off")
    assert mx(m.plain(OUTSIDE, BOB), rcpts=[BOB]) == NEEDED
    bad = relay.cli("user", "set", BOB, "allow-cleartext", "maybe")
    assert bad.returncode == 1 and "allow-cleartext on|off" in bad.stderr


def test_submitted_mail_loses_the_client_traces(relay, out):
    # No Received field of the client's or ours, no client names or addresses,
    # and the Subject of an encrypted message hidden.
    tag = token()
    raw = m.pgp_mime(ALICE, BOB, m.sequoia_armored(), subject="Top secret plans",
                     extra=TRACES + f"X-Test-Id: {tag}\r\n")
    assert out(raw) == (250, "")
    wait_until(lambda: any(tag.encode() in r for r in relay.messages(BOB)), 10,
               "the message delivered")
    (stored,) = [r for r in relay.messages(BOB) if tag.encode() in r]
    assert b"multipart/encrypted" in stored and b"Subject: [...]\r\n" in stored
    for trace in (b"Top secret", b"laptop", b"192.168.1.7", b"SecretClient", b"SecretMailer",
                  b"\nReceived:"):
        assert trace not in stored
