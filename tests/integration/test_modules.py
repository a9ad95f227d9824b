"""Modules, pipelines and delivery rules from the config, on a running server."""

from __future__ import annotations

import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from .support import ALICE, BOB, assert_reply, make_message, parse, token, wait_until


def _send(server, rcpts: list[str], tok: str) -> None:
    with server.smtp() as s:
        s.sendmail("sender@remote.test", rcpts, make_message("sender@remote.test", rcpts[0], tok))


def test_a_rule_refuses_one_address_with_its_reply_at_rcpt(make_server):
    srv = make_server(extra_toml='[[rule]]\nrcpt = "alice@example.test"\n'
                                 'reply = "550 5.7.1 alice takes no mail from outside"\n')
    with srv.raw() as c:
        c.reply()
        c.expect("EHLO client.test", 250)
        c.expect("MAIL FROM:<sender@remote.test>", 250)
        r = c.cmd(f"RCPT TO:<{ALICE}>")
        assert (r.code, r.text) == (550, "5.7.1 alice takes no mail from outside")
        c.expect(f"RCPT TO:<{BOB}>", 250)
        c.expect("RCPT TO:<nobody@example.test>", 550)  # the default checks still run
    tok = token()
    _send(srv, [BOB], tok)
    assert parse(srv.wait_for_messages(BOB, 1)[0])["Subject"] == tok


def test_a_rule_sends_one_address_to_a_pipe_and_another_to_a_named_mailbox(
        make_service_server, request):
    # A pipe runs as the service user, never as root: a service server.
    d = Path(tempfile.mkdtemp(prefix="pbx-pipe-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    d.chmod(0o777)
    out = d / "tickets.eml"
    srv = make_service_server(extra_toml=f'''
[module.tickets]
kind = "pipe"
command = "cat > {out}.part; echo \\"$RECIPIENT\\" >> {out}.part; mv {out}.part {out}"

[module.bobs_box]
kind = "mailbox"
deliver_to = "{BOB}"

[[rule]]
rcpt = "tickets@example.test"
targets = ["tickets"]

[[rule]]
rcpt = "help-*@example.test"
targets = ["bobs_box"]
''')
    tok = token()
    _send(srv, ["tickets@example.test"], tok)  # no such user: the rule routes it
    wait_until(out.exists, 10, "the pipe target's output")
    assert out.read_bytes().endswith(b"tickets@example.test\n")
    assert tok.encode() in out.read_bytes()
    assert b"Received: from client.test" in out.read_bytes()
    tok2 = token()
    _send(srv, ["help-desk@example.test"], tok2)
    (raw,) = srv.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok2
    assert b"Delivered-To: help-desk@example.test" in raw
    assert srv.messages(ALICE) == []


def test_a_quarantine_check_by_client_ip_files_mail_in_junk(make_server):
    srv = make_server(extra_toml='''
[module.local_junk]
kind = "quarantine"
client_ip = ["127.0.0.0/8"]

[pipeline.smtp]
checks = ["relay", "recipient", "local_junk"]
''')
    with srv.raw() as c:  # the configured pipeline still refuses what today's does
        c.reply()
        c.expect("EHLO client.test", 250)
        c.expect("MAIL FROM:<sender@remote.test>", 250)
        r = c.cmd("RCPT TO:<nobody@example.test>")
        assert (r.code, r.status) == (550, "5.1.1")
        r = c.cmd("RCPT TO:<someone@elsewhere.test>")
        assert (r.code, r.status) == (554, "5.7.1")
    tok = token()
    _send(srv, [ALICE], tok)
    junk = srv.maildir(ALICE) / ".Junk" / "new"
    wait_until(lambda: junk.is_dir() and any(junk.iterdir()), 10, "mail in Junk")
    (f,) = junk.iterdir()
    assert parse(f.read_bytes())["Subject"] == tok
    assert srv.messages(ALICE) == []  # nothing in INBOX


def test_submission_is_untouched_by_a_smtp_pipeline(make_server):
    srv = make_server(extra_toml='''
[module.local_junk]
kind = "quarantine"
client_ip = ["127.0.0.1"]

[pipeline.smtp]
checks = ["relay", "recipient", "local_junk"]
''')
    tok = token()
    with srv.submission(ALICE) as s:
        s.sendmail(ALICE, [BOB], make_message(ALICE, BOB, tok))
    assert parse(srv.wait_for_messages(BOB, 1)[0])["Subject"] == tok


CHECK_MISTAKES = [
    ('[module.x]\nkind = "frobnicator"\n', "module.x.kind: unknown module kind"),
    ('[pipeline.smtp]\nchecks = ["mailbox"]\n', "pipeline.smtp.checks: mailbox is a target"),
    ('[module.x]\nkind = "pipe"\nbogus = 1\n', "module.x.bogus: unknown option"),
    ('[module.x]\nkind = "pipe"\n', "module.x.command: required option missing"),
    ('[[rule]]\nrcpt = "a@example.test"\ntargets = ["helpdesk"]\n', "rule[0].targets: 'helpdesk'"),
    ('[module.a]\nkind = "b"\n[module.b]\nkind = "a"\n', "module.a.kind: reference cycle"),
]


@pytest.mark.parametrize(("toml", "message"), CHECK_MISTAKES, ids=[m for _, m in CHECK_MISTAKES])
def test_check_names_each_module_mistake(make_server, toml, message):
    srv = make_server(start=False, seed=False, extra_toml=toml)
    p = srv.cli("check")
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr.startswith(f"error: {message}"), p.stderr
    assert "Traceback" not in p.stderr


def test_check_warns_of_a_rule_after_a_catch_all(make_server):
    srv = make_server(start=False, seed=False, extra_toml=(
        '[[rule]]\ntargets = ["remote"]\n[[rule]]\nrcpt = "a@example.test"\n'
        'reply = "550 5.7.1 no"\n'))
    p = srv.cli("check")
    assert p.returncode == 0, p.stderr
    assert "warning: rule[1]: can never match" in p.stderr


def test_rule_reply_is_sent_to_an_smtplib_client(make_server):
    srv = make_server(extra_toml='[[rule]]\nrcpt_domain = "example.test"\nsource = "smtp"\n'
                                 'reply = "450 4.7.1 closed for maintenance"\n')
    with srv.smtp() as s:
        s.mail("sender@remote.test")
        assert_reply(s.rcpt(ALICE), 450, "4.7.1")
    with srv.submission(ALICE) as s:  # another source: the rule does not match
        try:
            s.sendmail(ALICE, [BOB], make_message(ALICE, BOB, token()))
        except smtplib.SMTPException as e:
            pytest.fail(f"submission refused: {e}")


def test_a_target_4xx_is_retried_and_a_5xx_bounces_to_the_sender(make_server):
    # A root server runs no command (pipe: 4.3.0, deferred); a mailbox
    # target for a user that does not exist refuses for good (5.1.1).
    srv = make_server(extra_toml='''
[module.hook]
kind = "pipe"
command = "cat > /dev/null"

[module.ghost_box]
kind = "mailbox"
deliver_to = "ghost@example.test"

[[rule]]
rcpt = "hook@example.test"
targets = ["hook"]

[[rule]]
rcpt = "lost@example.test"
targets = ["ghost_box"]
''')
    with srv.submission(ALICE) as s:
        s.sendmail(ALICE, ["hook@example.test"], make_message(ALICE, "hook@example.test",
                                                              token()))
        s.sendmail(ALICE, ["lost@example.test"], make_message(ALICE, "lost@example.test",
                                                              token()))
    (dsn,) = srv.wait_for_messages(ALICE, 1)
    assert b"5.1.1" in dsn and b"lost@example.test" in dsn
    (entry,) = wait_until(lambda: [e for e in srv.queue_list() if any(
        "4.3.0" in str(v) for v in e.values())] or None, 10, "the deferred pipe delivery")
    assert "hook@example.test" in str(entry)


def test_config_show_prints_toml_that_check_accepts(make_server):
    srv = make_server(start=False, seed=False, extra_toml=(
        '[module.junk]\nkind = "quarantine"\nclient_ip = ["192.0.2.1"]\n'
        '[pipeline.smtp]\nchecks = ["relay", "recipient", "junk"]\n'))
    p = srv.cli("config", "show")
    assert p.returncode == 0, p.stderr
    assert '[pipeline.submission]\nchecks = ["sender", "relay", "recipient"]' in p.stdout
    assert '[module.junk]\nkind = "quarantine"\nclient_ip = ["192.0.2.1"]' in p.stdout
    srv.cfg_path.write_text(p.stdout)
    p2 = srv.cli("check")
    assert p2.returncode == 0, p2.stderr
    assert srv.cli("config", "show").stdout.splitlines()[1:] == p.stdout.splitlines()[1:]


def test_reload_applies_new_rules_and_modules(make_server):
    srv = make_server()
    srv.extra_toml = ('[module.junk]\nkind = "quarantine"\nclient_ip = ["127.0.0.1"]\n'
                      '[pipeline.smtp]\nchecks = ["relay", "recipient", "junk"]\n'
                      '[[rule]]\nrcpt = "bob@example.test"\nreply = "550 5.7.1 bob is away"\n')
    srv.write_config()
    p = srv.cli("reload")
    assert p.returncode == 0, p.stderr
    with srv.smtp() as s:
        s.mail("sender@remote.test")
        assert_reply(s.rcpt(BOB), 550, "5.7.1")
    _send(srv, [ALICE], token())
    junk = srv.maildir(ALICE) / ".Junk" / "new"
    wait_until(lambda: junk.is_dir() and any(junk.iterdir()), 10, "mail in Junk after reload")
    # back to the default: no rule, no quarantine
    srv.extra_toml = ""
    srv.write_config()
    assert srv.cli("reload").returncode == 0
    tok = token()
    _send(srv, [BOB], tok)
    assert parse(srv.wait_for_messages(BOB, 1)[0])["Subject"] == tok


NO_HIT_CHECK = '''
[module.elsewhere_junk]
kind = "quarantine"
client_ip = ["192.0.2.0/24"]

[pipeline.smtp]
checks = ["relay", "recipient", "elsewhere_junk"]
'''


def test_authentication_results_claiming_our_host_are_removed_others_kept(make_server):
    srv = make_server(extra_toml=NO_HIT_CHECK)
    tok = token()
    msg = make_message("sender@remote.test", ALICE, tok, headers={
        "Authentication-Results": f"{srv.hostname.upper()}; dkim=pass header.d=bank.test",
        "X-Other": "kept"})
    msg = msg.replace(b"X-Other: kept\r\n",
                      b"X-Other: kept\r\nAuthentication-Results: relay.remote.test; spf=pass\r\n")
    with srv.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE], msg)
    (raw,) = srv.wait_for_messages(ALICE, 1)
    assert b"bank.test" not in raw
    assert b"Authentication-Results: relay.remote.test; spf=pass\r\n" in raw
    assert b"\r\nReceived: from client.test" in raw
    assert parse(raw)["Subject"] == tok and parse(raw)["X-Other"] == "kept"


def test_a_large_message_through_a_configured_pipeline_arrives_intact(make_server):
    srv = make_server(extra_toml=NO_HIT_CHECK + 'modifiers = ["received", "strip_agent"]\n'
                      '\n[module.strip_agent]\nkind = "headers"\nremove = ["User-Agent"]\n')
    tok = token()
    body = "".join(f"line {i:07d} " + "x" * 60 + "\r\n" for i in range(40_000))  # ~3 MB
    msg = make_message("sender@remote.test", ALICE, tok, body=body,
                       headers={"User-Agent": "Mutt/2.2"})
    with srv.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE], msg)
    (raw,) = srv.wait_for_messages(ALICE, 1)
    assert b"User-Agent" not in raw
    assert raw.endswith(body.encode()) and raw.count(b"\r\n\r\n") == 1
