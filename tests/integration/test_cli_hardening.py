"""The command line never takes or prints a control character (issue 9: 12)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from pillarbox.queue.spool import Envelope, Spool, new_id

from .support import ALICE, make_message
from .test_cli import assert_error


@pytest.mark.parametrize("args", [
    ["user", "add", "eve\nroot@example.test", "--password-stdin"],
    ["alias", "add", "team@example.test", "|/bin/true\nx"],
    ["alias", "add", "team@example.test", "|printf '\x1b[2J'"],
    ["alias", "del", "team@example.test\r"],
    ["sendmail", "-f", "a\x1b@example.test", ALICE],
])
def test_control_characters_in_arguments_are_refused(make_server, args):
    srv = make_server(start=False, seed=False)
    p = srv.cli(*args, input="pw\n")
    assert_error(p, "control character")
    assert "team@example.test" not in srv.cli_ok("alias", "list").stdout
    assert "eve" not in srv.cli_ok("user", "list").stdout


def _no_controls(text: str) -> None:
    bad = [c for c in text if c < " " and c not in "\n\t"]
    assert not bad, f"control characters in output: {bad!r} in {text!r}"


def test_listings_escape_control_characters(make_server):
    """Old data (written before these checks) still prints as one honest line each."""
    srv = make_server(start=False)
    db = sqlite3.connect(srv.data_dir / "pillarbox.db")
    db.execute("INSERT INTO aliases (alias, target) VALUES (?, ?)",
               ("evil\x1b[2J@example.test", "|echo\nforged line"))
    db.execute("INSERT INTO users (address, password_hash, created) VALUES (?, 'x', 0)",
               ("mallory\x1b]0;owned\x07@example.test",))
    db.commit()
    db.close()
    rcpts = ["x@[127%\x0e0.0.1]"]
    data = make_message(ALICE, rcpts, "old")
    env = Envelope(id=new_id(), mail_from="a\x1b[31m@example.test", rcpts=rcpts,
                   received=time.time(), size=len(data))
    Spool(srv.data_dir / "queue", 0).drop(env, data)

    out = srv.cli_ok("alias", "list").stdout
    _no_controls(out)
    assert "evil\\x1b[2J@example.test" in out and "forged line" in out
    assert len(out.strip().splitlines()) == 1, out
    out = srv.cli_ok("user", "list").stdout
    _no_controls(out)
    assert "mallory\\x1b]0;owned\\x07@example.test" in out, out
    out = srv.cli_ok("queue", "list").stdout
    _no_controls(out)
    assert "x@[127%\\x0e0.0.1]" in out and "a\\x1b[31m@example.test" in out, out
