"""`pillarbox sendmail`: the sendmail-compatible way in, through the maildrop."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .support import ALICE, BOB, parse, to_toml, token, wait_until


def _msg(to: str, subject: str, body: str = "sent with pillarbox sendmail\n",
         cc: str | None = None) -> str:
    head = f"From: root@example.test\nTo: {to}\n"
    if cc:
        head += f"Cc: {cc}\n"
    return head + f"Subject: {subject}\n\n{body}"


def test_sendmail_t_i_delivers_to_header_recipients(server):
    tok = token()
    p = server.cli("sendmail", "-t", "-i", input=_msg(ALICE, tok, cc=f"Bob <{BOB}>"))
    assert p.returncode == 0, p.stderr
    for rcpt in (ALICE, BOB):
        (raw,) = server.wait_for_messages(rcpt, 1)
        msg = parse(raw)
        assert msg["Subject"] == tok
        assert b"sent with pillarbox sendmail" in raw


def test_sendmail_i_keeps_a_lone_dot_line(server):
    tok = token()
    body = f"before\n.\nafter the dot {tok}\n"
    p = server.cli("sendmail", "-t", "-i", input=_msg(ALICE, tok, body))
    assert p.returncode == 0, p.stderr
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert f"after the dot {tok}".encode() in raw, raw


def test_sendmail_explicit_recipient_and_f_sender(server):
    tok = token()
    # To: names alice, but without -t only the argument (bob) is a recipient
    p = server.cli("sendmail", "-i", "-f", ALICE, BOB, input=_msg(ALICE, tok))
    assert p.returncode == 0, p.stderr
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok
    assert server.messages(ALICE) == []


def test_sendmail_while_server_down_is_delivered_when_it_starts(make_server):
    server = make_server(start=False)
    tok = token()
    p = server.cli("sendmail", "-t", "-i", input=_msg(ALICE, tok))
    assert p.returncode == 0, p.stderr
    server.start()
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


def test_sendmail_bad_address_exits_1(server):
    for args in (["-i", "bad@@address"], ["-i", "-f", "not an address", ALICE]):
        p = server.cli("sendmail", *args, input=_msg(ALICE, "never"))
        assert p.returncode == 1, (args, p)
        assert p.stderr.startswith("error:"), (args, p.stderr)
        assert "Traceback" not in p.stderr
    p = server.cli("sendmail", "-t", "-i", input="Subject: nobody to send to\n\nbody\n")
    assert p.returncode == 1 and p.stderr.startswith("error:"), p


# -- bare local names (root, postmaster, cron's MAILTO) ---------------------------

CRON_MESSAGE = (
    "From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> run-parts /etc/cron.daily\n"
    "MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n"
    "Content-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\n\n{body}\n"
)


def _return_path(raw: bytes) -> str:
    return parse(raw)["Return-Path"]


def test_debian_cron_call_reaches_roots_alias(server):
    server.add_alias("root", ALICE)
    tok = token()
    p = server.cli("sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root",
                   input=CRON_MESSAGE.format(body=tok))
    assert p.returncode == 0, p.stderr
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert tok.encode() in raw
    assert _return_path(raw) == f"<{ALICE}>"  # root's own address goes through the alias too


def test_bare_names_as_argument_t_header_and_f(server):
    server.add_alias("root", BOB)
    tok = token()
    # no alias for "alice": alice@ the first domain; -f root: root's alias
    p = server.cli("sendmail", "-t", "-i", "-f", "root", "alice",
                   input=f"To: root\nSubject: {tok}\n\nbody\n")
    assert p.returncode == 0, p.stderr
    for rcpt in (ALICE, BOB):
        (raw,) = server.wait_for_messages(rcpt, 1)
        assert parse(raw)["Subject"] == tok
        assert _return_path(raw) == f"<{BOB}>"


def test_sendmail_flags_with_separate_values_are_ignored(server):
    tok = token()
    p = server.cli("sendmail", "-B", "8BITMIME", "-N", "never", "-oi", "-odi", "-v", "-U",
                   "-F", "Backup Job", "bob", input=f"Subject: {tok}\n\nbody\n")
    assert p.returncode == 0, p.stderr
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok


def test_unknown_bare_name_is_an_error(server):
    p = server.cli("sendmail", "-i", "nosuchuser", input="Subject: x\n\nbody\n")
    assert p.returncode == 1 and p.stderr.startswith("error:"), p
    assert "nosuchuser@example.test" in p.stderr
    # the operator is told how to route such a name (cron's mail to root)
    assert "pillarbox alias add nosuchuser YOU@example.test" in p.stderr


def test_alias_import_etc_aliases(server, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text(
        "# /etc/aliases\nmailer-daemon: postmaster\npostmaster: root\n"
        "nobody: root\nroot: alice@example.test,\n    bob\n"
        "logs: |/usr/bin/logger\n"
        "\n")
    p = server.cli_ok("alias", "import", str(aliases))
    assert "logs" in p.stdout + p.stderr  # the pipe is reported as not imported
    listed = server.cli_ok("alias", "list").stdout
    assert "root\talice@example.test, bob" in listed, listed
    tok = token()
    p = server.cli("sendmail", "-i", "MAILER-DAEMON", input=f"Subject: {tok}\n\nbody\n")
    assert p.returncode == 0, p.stderr
    for rcpt in (ALICE, BOB):
        (raw,) = server.wait_for_messages(rcpt, 1)
        assert parse(raw)["Subject"] == tok


# -- any local user, through the public maildrop -------------------------------------

LOCAL_USER = "pbx-sendmail-test"


def _local_user() -> pwd.struct_passwd:
    """An unprivileged Unix user, made once (and kept) on this machine."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test creates a Unix user and runs sendmail as that user")
    try:
        return pwd.getpwnam(LOCAL_USER)
    except KeyError:
        # two test workers may race here: whichever loses finds the user made
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", LOCAL_USER], capture_output=True)
        return pwd.getpwnam(LOCAL_USER)


@pytest.fixture
def public(make_server):
    """A server whose data dir the local user cannot enter, a maildrop_dir and a
    readable copy of its config in a directory everybody can reach."""
    user = _local_user()
    top = Path(tempfile.mkdtemp(prefix="pbx-public-"))
    try:
        top.chmod(0o755)
        server = make_server({"maildrop_dir": str(top / "maildrop")})
        cfg = top / "pillarbox.toml"
        cfg.write_text(to_toml({**server.config, "data_dir": str(server.data_dir)}))
        cfg.chmod(0o644)
        yield server, user, cfg
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)


def _as(user: pwd.struct_passwd, argv: list[str], input: str = ""):
    env = {"PATH": os.environ["PATH"], "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
         *argv], input=input.encode(), capture_output=True, env=env, cwd="/", timeout=60)


def _sendmail_as(user: pwd.struct_passwd, cfg: Path, *args: str, input: str):
    return _as(user, [sys.executable, "-m", "pillarbox", "-c", str(cfg), "sendmail", *args],
               input)


def test_unprivileged_user_sends_as_itself(public):
    server, user, cfg = public
    assert _as(user, ["cat", str(server.data_dir / "pillarbox.db")]).returncode != 0
    tok = token()
    # -f is not the user's to choose: the sender is the Unix user
    p = _sendmail_as(user, cfg, "-i", "-f", ALICE, "bob", input=f"Subject: {tok}\n\nhi\n")
    assert p.returncode == 0, p.stderr
    (raw,) = server.wait_for_messages(BOB, 1)
    msg = parse(raw)
    assert msg["Subject"] == tok
    assert msg["Return-Path"] == f"<{LOCAL_USER}@example.test>"
    assert f"uid {user.pw_uid}" in msg["Received"], msg["Received"]


def test_unprivileged_cron_call_and_local_aliases(public):
    server, user, cfg = public
    server.add_alias("root", BOB)
    server.add_alias(LOCAL_USER, ALICE)  # the user's own mail (and sender) go to alice
    tok = token()
    p = _sendmail_as(user, cfg, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root",
                     input=CRON_MESSAGE.format(body=tok))
    assert p.returncode == 0, p.stderr
    (raw,) = server.wait_for_messages(BOB, 1)
    assert tok.encode() in raw
    assert parse(raw)["Return-Path"] == f"<{ALICE}>"


def test_hand_made_drops_cannot_forge_the_sender_or_read_files(public):
    """What a local user writes into maildrop_dir by hand: the envelope's sender is
    ignored, and a symlink or hard link to a file the server can read is refused."""
    server, user, cfg = public
    drop = Path(server.config["maildrop_dir"])
    tok = token()
    envelope = f'{{"v": 1, "rcpts": ["{BOB}"], "sender": "{ALICE}"}}\n'
    script = (
        "import os, sys\n"
        "d, env, secret = sys.argv[1:4]\n"
        "os.symlink(secret, os.path.join(d, '0-symlink'))\n"
        "open(os.path.join(d, '1-forged'), 'w').write(env + sys.stdin.read())\n"
    )
    p = _as(user, [sys.executable, "-c", script, str(drop),
                   envelope, str(server.data_dir / "pillarbox.db")],
            input=f"Subject: {tok}\r\n\r\nhand made\r\n")
    assert p.returncode == 0, p.stderr
    hardlink = drop / "2-hardlink"
    os.link(server.data_dir / "pillarbox.db", hardlink)  # as root: the user could not
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Return-Path"] == f"<{LOCAL_USER}@example.test>"
    assert f"uid {user.pw_uid}" in parse(raw)["Received"]
    wait_until(lambda: not hardlink.exists() and "2-hardlink" in server.log_text(), 10,
               "the hard link to be refused")
    assert not os.path.lexists(drop / "0-symlink")
    assert "0-symlink" in server.log_text()
    assert server.messages(ALICE) == [] and len(server.messages(BOB)) == 1
