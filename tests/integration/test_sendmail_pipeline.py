"""`[pipeline.sendmail]`: the configured checks and modifiers run over mail
from `pillarbox sendmail` as the server picks it up, for root (queue/maildrop)
and for any local user (maildrop_dir); a refused recipient is reported to the
sender in a DSN."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from .support import ALICE, BOB, parse, to_toml, token
from .test_sendmail import LOCAL_USER, _local_user, _sendmail_as

STRIP_AND_REWRITE = '''
[module.strip_ua]
kind = "headers"
remove = ["User-Agent"]

[module.old_to_new]
kind = "replace_rcpt"
table = { "@old-domain.test" = "@example.test" }

[pipeline.sendmail]
modifiers = ["strip_ua", "old_to_new"]
'''

NO_CASINO = '''
[module.no_casino]
kind = "subject_block"
word = "casino"
reply = "5.7.1 no gambling here"

[pipeline.sendmail]
checks = ["recipient", "no_casino"]
'''


def _msg(subject: str, to: str = ALICE) -> str:
    return (f"From: {BOB}\nTo: {to}\nSubject: {subject}\nUser-Agent: Mutt/2.2\n"
            "\nsent with pillarbox sendmail\n")


def test_modifiers_strip_a_field_and_rewrite_a_recipient(make_server):
    srv = make_server(extra_toml=STRIP_AND_REWRITE)
    tok = token()
    p = srv.cli("sendmail", "-i", "alice@old-domain.test", input=_msg(tok))
    assert p.returncode == 0, p.stderr
    (raw,) = srv.wait_for_messages(ALICE, 1)
    msg = parse(raw)
    assert msg["Subject"] == tok
    assert msg["User-Agent"] is None, raw
    assert msg["Delivered-To"] == ALICE
    assert "pillarbox sendmail, uid" in msg["Received"]
    assert b"sent with pillarbox sendmail" in raw


def test_without_a_pipeline_the_same_mail_keeps_its_fields(make_server):
    """The contrast: the default pipeline changes nothing of the message."""
    srv = make_server()
    tok = token()
    p = srv.cli("sendmail", "-i", ALICE, input=_msg(tok))
    assert p.returncode == 0, p.stderr
    (raw,) = srv.wait_for_messages(ALICE, 1)
    assert parse(raw)["User-Agent"] == "Mutt/2.2"


def test_a_check_refusing_the_message_bounces_it_to_the_sender(make_server):
    srv = make_server(extra_toml=NO_CASINO)
    tok = token()
    p = srv.cli("sendmail", "-i", "-f", BOB, ALICE, input=_msg(f"casino {tok}"))
    assert p.returncode == 0, p.stderr  # sendmail took it: the answer comes as a DSN
    (dsn,) = srv.wait_for_messages(BOB, 1)
    text = dsn.decode()
    assert "Undelivered Mail Returned to Sender" in text
    assert f"<{ALICE}>: 5.7.1 no gambling here" in text
    assert "Status: 5.7.1" in text
    assert f"Subject: casino {tok}" in text  # the original header comes back
    ok = token()
    p = srv.cli("sendmail", "-i", "-f", BOB, ALICE, input=_msg(ok))
    assert p.returncode == 0, p.stderr
    (raw,) = srv.wait_for_messages(ALICE, 1)  # only the message that passed
    msg = parse(raw)
    assert msg["Subject"] == ok
    assert msg["X-Subject-Checked"] == "yes"
    assert msg["Authentication-Results"].split() == ["mx.example.test;", "x-subject=pass"]
    assert "sendmail refused" in srv.log_text()


def test_a_local_users_sendmail_goes_through_the_pipeline(make_server):
    """An unprivileged user's drop in maildrop_dir: checks (a refusal comes back
    to the user's address as a DSN) and modifiers, as for root's."""
    user = _local_user()
    top = Path(tempfile.mkdtemp(prefix="pbx-public-"))
    try:
        top.chmod(0o755)
        pipeline = ('[pipeline.sendmail]\nchecks = ["recipient", "no_casino"]\n'
                    'modifiers = ["strip_ua", "old_to_new"]\n')
        toml = (STRIP_AND_REWRITE.split("[pipeline.sendmail]")[0]
                + NO_CASINO.split("[pipeline.sendmail]")[0] + pipeline)
        server = make_server({"maildrop_dir": str(top / "maildrop")}, extra_toml=toml)
        server.add_alias(LOCAL_USER, ALICE)  # the user's own address: its bounces reach alice
        cfg = top / "pillarbox.toml"
        cfg.write_text(to_toml({**server.config, "data_dir": str(server.data_dir)}) + toml)
        cfg.chmod(0o644)
        refused, ok = token(), token()
        p = _sendmail_as(user, cfg, "-i", "bob@old-domain.test",
                         input=_msg(f"Casino {refused}"))
        assert p.returncode == 0, p.stderr
        p = _sendmail_as(user, cfg, "-i", "bob@old-domain.test", input=_msg(ok, BOB))
        assert p.returncode == 0, p.stderr
        (raw,) = server.wait_for_messages(BOB, 1)
        msg = parse(raw)
        assert msg["Subject"] == ok and msg["User-Agent"] is None
        assert f"uid {user.pw_uid}" in msg["Received"]
        (dsn,) = server.wait_for_messages(ALICE, 1)
        text = dsn.decode()
        assert "<bob@old-domain.test>: 5.7.1 no gambling here" in text, text
        assert f"To: <{ALICE}>" in text  # the user, through its alias
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)
