"""A server started as root: it binds, then runs as `user`; no |command runs as root.

The test process is root (the suite runs so); the servers listen on high
ports, so what is shown is the drop itself, not the binding of low ports.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .support import ALICE, SERVICE_USER, make_message, service_account, token, wait_until

SENDER = "sender@remote.test"


def _status_ids(pid: int) -> dict[str, list[int]]:
    """The Uid:, Gid: and Groups: lines of /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in rest.split()]
    return out


def _id_script(root: Path, uid: int | None) -> tuple[Path, Path]:
    """A |command that writes the uid it runs as into out/uid.N."""
    out = root / "pipe-out"
    out.mkdir()
    if uid is not None:
        os.chown(out, uid, -1)
    script = root / "whoami.sh"
    script.write_text(f"#!/bin/sh\ncat >/dev/null\nid -u > '{out}/.part.'$$ && "
                      f"mv '{out}/.part.'$$ '{out}/uid.'$$\n")
    script.chmod(0o755)
    return script, out


def _start(srv) -> None:
    """Start, and wait for the end of the start-up: the ports listen (bound as
    root) before the server drops to its user."""
    srv.start()
    wait_until(lambda: "pillarbox started" in srv.log_text(), 10, "the start-up to end")


def _send(server, rcpt: str) -> None:
    with server.smtp() as s:
        assert s.sendmail(SENDER, [rcpt], make_message(SENDER, rcpt, token())) == {}


def test_root_started_server_runs_as_the_service_user(make_service_server):
    account = service_account()
    srv = make_service_server(start=False)
    script, out = _id_script(srv.root, account.pw_uid)
    srv.add_alias("hook@example.test", f"|{script}")  # as root, before the start
    _start(srv)

    ids = _status_ids(srv.pid)
    assert ids["Uid"] == [account.pw_uid] * 4, ids  # real, effective, saved, fs
    assert ids["Gid"] == [account.pw_gid] * 4, ids
    assert 0 not in ids["Groups"], ids

    _send(srv, "hook@example.test")
    (uid_file,) = wait_until(lambda: list(out.glob("uid.*")), 10, "the pipe command's output")
    assert int(uid_file.read_text()) == account.pw_uid

    _send(srv, ALICE)
    srv.wait_for_messages(ALICE, 1)
    # Everything in data_dir is the service user's: the root-made database,
    # the seed copied in as root, and what the server made since.
    not_theirs = [p for p in srv.data_dir.rglob("*")
                  if p.lstat().st_uid != account.pw_uid]
    assert not_theirs == [], not_theirs
    assert srv.data_dir.stat().st_uid == account.pw_uid
    maildrop = srv.root / "maildrop"
    st = maildrop.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, 0o1733)
    assert f"running as user={SERVICE_USER}" in srv.log_text()


def test_root_server_without_user_refuses_pipe_aliases(make_service_server):
    srv = make_service_server(start=False, user="")
    script, out = _id_script(srv.root, None)
    srv.add_alias("hook@example.test", f"|{script}")
    _start(srv)
    assert _status_ids(srv.pid)["Uid"][1] == 0
    assert "running as root: set `user`" in srv.log_text()

    _send(srv, "hook@example.test")

    def deferred():
        for e in srv.queue_list():
            for r in e["rcpts"]:
                if r["state"] == "deferred":
                    return r
        return None

    r = wait_until(deferred, 10, "the pipe delivery to be deferred")
    assert r["last_error"] == "4.3.0 not run: the server runs as root; set `user` in the config"
    assert list(out.iterdir()) == [], "the command ran as root"
    assert "pipe refused rcpt=hook@example.test" in srv.log_text()


def test_unknown_service_user_stops_the_start(make_service_server):
    srv = make_service_server({"user": "pbx-no-such-user"}, start=False)
    p = srv.cli("serve")
    assert p.returncode == 1
    assert "error: user: no such user 'pbx-no-such-user'" in p.stderr
