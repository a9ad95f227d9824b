"""When the SMTP session calls a configured pipeline's check hooks: each
check's state lives for the connection; `connection` before the greeting,
`helo` at each EHLO/HELO, then mail, rcpt and body for each message. A
refusal at the connection is the greeting (RFC 5321 3.1), one at HELO the
reply to EHLO. The probe check is a plugin from
tests/plugin_pkg, installed into the venv."""

from __future__ import annotations

from .support import ALICE, make_message, parse, token, wait_until


def _toml(**options) -> str:
    lines = [f"{k} = {v}" for k, v in options.items()]
    return ("[module.probe]\nkind = \"door_probe\"\n" + "\n".join(lines) +
            '\n\n[pipeline.smtp]\nchecks = ["relay", "recipient", "probe"]\n')


def test_a_permanent_refusal_at_the_connection_is_a_554_greeting_then_only_quit(make_server):
    srv = make_server(extra_toml=_toml(connection_reply='"550 5.7.1 not from here"'))
    with srv.raw() as c:
        r = c.reply()
        assert (r.code, r.text) == (554, "5.7.1 not from here")
        for cmd in ("EHLO client.test", "MAIL FROM:<a@remote.test>", "NOOP"):
            r = c.cmd(cmd)
            assert (r.code, r.text) == (503, "5.5.1 Refused at connection, only QUIT is accepted")
        r = c.cmd("QUIT")
        assert r.code == 221
        assert c.replies_until_close() == []


def test_a_temporary_refusal_at_the_connection_is_421_and_close(make_server):
    srv = make_server(extra_toml=_toml(connection_reply='"451 4.7.1 come back later"'))
    with srv.raw() as c:
        r = c.reply()
        assert (r.code, r.text) == (421, "4.7.1 come back later")
        assert c.replies_until_close() == []


def test_a_refusal_at_helo_is_the_reply_to_ehlo_and_mail_still_needs_ehlo(make_server):
    srv = make_server(extra_toml=_toml(refuse_helo='"bad.test"'))
    with srv.raw() as c:
        assert c.reply().code == 220
        r = c.cmd("EHLO bad.test")
        assert (r.code, r.text) == (550, "5.7.1 HELO bad.test refused by the probe")
        r = c.cmd("HELO bad.test")
        assert (r.code, r.text) == (550, "5.7.1 HELO bad.test refused by the probe")
        r = c.cmd("MAIL FROM:<a@remote.test>")
        assert (r.code, r.text) == (503, "5.5.1 Send EHLO first")
        c.expect("EHLO good.test", 250)
        c.expect("MAIL FROM:<a@remote.test>", 250)


def test_every_message_of_a_connection_gets_the_connection_verdict(make_server):
    srv = make_server(extra_toml=_toml(quarantine="true"))
    toks = [token(), token()]
    with srv.smtp() as s:
        for tok in toks:
            s.sendmail("a@remote.test", [ALICE], make_message("a@remote.test", ALICE, tok))
    junk = srv.maildir(ALICE) / ".Junk" / "new"
    wait_until(lambda: junk.is_dir() and len(list(junk.iterdir())) == 2, 10, "2 mails in Junk")
    got = {parse(f.read_bytes())["Subject"]: parse(f.read_bytes())["X-Door-Probe"]
           for f in junk.iterdir()}
    # One state for the connection: connection and HELO once, then each message.
    assert got == {toks[0]: f"connection helo=client.test mail rcpt={ALICE} body",
                   toks[1]: f"connection helo=client.test mail rcpt={ALICE} body mail "
                            f"rcpt={ALICE} body"}
    assert srv.messages(ALICE) == []


def test_a_recipient_an_earlier_check_refuses_never_reaches_a_later_one(make_server):
    srv = make_server(extra_toml=_toml())  # checks: relay, recipient, then the probe
    tok = token()
    with srv.raw() as c:
        c.reply()
        c.expect("EHLO client.test", 250)
        c.expect("MAIL FROM:<a@remote.test>", 250)
        assert c.cmd("RCPT TO:<nobody@example.test>").code == 550  # the recipient check
        assert c.cmd("RCPT TO:<someone@elsewhere.test>").code == 554  # the relay check
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.expect(make_message("a@remote.test", ALICE, tok).decode() + ".", 250)
    (raw,) = srv.wait_for_messages(ALICE, 1)
    assert parse(raw)["X-Door-Probe"] == f"connection helo=client.test mail rcpt={ALICE} body"
