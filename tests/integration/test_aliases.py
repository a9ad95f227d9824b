"""Aliases: fan-out, cascade, loops, catch-all and |command targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from .pg_server import BACKENDS
from .support import ALICE, BOB, assert_reply, make_message, parse, token, wait_until

# The directory (users, aliases) on SQLite and on PostgreSQL (issue 19).
pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)

SENDER = "sender@remote.test"


def _send(server, rcpts, subject, body=None):
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    kw = {} if body is None else {"body": body}
    with server.smtp() as s:
        refused = s.sendmail(SENDER, rcpts, make_message(SENDER, rcpts, subject, **kw))
    assert refused == {}, refused


def test_alias_fans_out_to_several_users(server):
    users = [ALICE, BOB, "cat@example.test"]
    server.add_user(users[2])
    server.add_alias("team@example.test", *users)
    assert "team@example.test" in server.cli_ok("alias", "list").stdout
    tok = token()
    _send(server, "team@example.test", tok)
    for u in users:
        msgs = server.wait_for_messages(u, 1)
        assert [parse(m)["Subject"] for m in msgs] == [tok], u


def test_alias_cascade_alias_to_alias_to_user(server):
    server.add_alias("first@example.test", "second@example.test")
    server.add_alias("second@example.test", "third@example.test")
    server.add_alias("third@example.test", ALICE)
    tok = token()
    _send(server, "first@example.test", tok)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


def test_alias_fan_out_and_cascade_reach_each_user_once(server):
    server.add_alias("all@example.test", "devs@example.test", ALICE)
    server.add_alias("devs@example.test", ALICE, BOB)
    tok = token()
    _send(server, "all@example.test", tok)
    server.wait_for_messages(BOB, 1)
    server.wait_for_messages(ALICE, 1)
    wait_until(lambda: server.queue_list() == [], 10, "the queue to drain")
    assert len(server.messages(ALICE)) == 1, "alice reached twice via two paths"


def test_alias_loop_is_detected_not_a_hang(server):
    server.add_alias("loop-a@example.test", "loop-b@example.test")
    p = server.cli("alias", "add", "loop-b@example.test", "loop-a@example.test", timeout=20)
    if p.returncode != 0:
        # refused when created: a clear error naming the loop
        assert p.returncode == 1 and p.stderr.startswith("error:"), p
        assert "loop" in p.stderr.lower(), p.stderr
    else:
        with server.smtp(timeout=10) as s:
            assert_reply(s.mail(SENDER), 250)
            r = s.rcpt("loop-a@example.test")
            assert 550 <= r[0] <= 559, f"RCPT to an alias loop: {r}"
    # the server still works, and other mail is unaffected
    tok = token()
    _send(server, ALICE, tok)
    server.wait_for_messages(ALICE, 1)


def test_catch_all_takes_unknown_local_parts(server):
    server.add_alias("@example.test", BOB)
    tok1, tok2 = token(), token()
    _send(server, "whoever-xyz@example.test", tok1)
    _send(server, ALICE, tok2)
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok1
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok2, "an existing user's mail went to the catch-all"
    wait_until(lambda: server.queue_list() == [], 10, "the queue to drain")
    assert len(server.messages(BOB)) == 1


def _pipe_dir(server) -> Path:
    """Where a |command may write: the server runs it as the service user (a
    root server runs none), so these tests use service_server, whose root
    that user can reach."""
    d = server.root / "pipe"
    d.mkdir()
    d.chmod(0o777)
    return d


def _pipe_script(tmp: Path) -> tuple[Path, Path]:
    out = tmp / "pipe-out"
    out.mkdir()
    out.chmod(0o777)
    script = tmp / "pipe.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"d='{out}'\n"
        'if [ -e "$d/broken" ]; then cat >/dev/null; echo "broken on purpose" >&2; exit 1; fi\n'
        'cat > "$d/.part.$$" && mv "$d/.part.$$" "$d/msg.$$"\n'
    )
    script.chmod(0o755)  # the service user reads and runs it
    return script, out


def _outputs(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(out.glob("msg.*"))]


def test_pipe_target_gets_the_message_on_stdin(service_server):
    server, tmp_path = service_server, _pipe_dir(service_server)
    script, out = _pipe_script(tmp_path)
    server.add_alias("hook@example.test", f"|{script}")
    tok = token()
    _send(server, "hook@example.test", tok, body=f"pipe body {tok}\r\n")
    (data,) = wait_until(lambda: _outputs(out), 10, "the pipe command's output")
    msg = parse(data)
    assert msg["Subject"] == tok
    assert f"pipe body {tok}".encode() in data
    assert msg.get_all("Received"), "piped message lacks the Received header"


def test_failing_pipe_stays_deferred_then_delivered_after_retry(service_server):
    server, tmp_path = service_server, _pipe_dir(service_server)
    script, out = _pipe_script(tmp_path)
    (out / "broken").touch()
    server.add_alias("hook@example.test", f"|{script}")
    tok = token()
    sender = f"pipe-{tok}@remote.test"
    with server.smtp() as s:
        s.sendmail(sender, ["hook@example.test"],
                   make_message(sender, "hook@example.test", tok))

    def deferred_entry():
        for e in server.queue_list():
            if e.get("mail_from") == sender and any(
                r.get("state") == "deferred" and r.get("attempts", 0) >= 1 for r in e["rcpts"]
            ):
                return e
        return None

    entry = wait_until(deferred_entry, 15, "the message to show as deferred in `queue list`")
    assert _outputs(out) == []
    rcpt = next(r for r in entry["rcpts"] if r["state"] == "deferred")
    assert rcpt["last_error"], f"deferred without last_error: {entry}"
    assert entry["id"] in server.cli_ok("queue", "list").stdout

    (out / "broken").unlink()
    server.cli_ok("queue", "retry")
    (data,) = wait_until(lambda: _outputs(out), 15, "delivery after `queue retry`")
    assert parse(data)["Subject"] == tok
    wait_until(lambda: not any(e.get("mail_from") == sender for e in server.queue_list()),
               10, "the delivered message to leave the queue")


def test_pipe_alias_and_user_in_one_fan_out(service_server):
    server, tmp_path = service_server, _pipe_dir(service_server)
    script, out = _pipe_script(tmp_path)
    server.add_alias("both@example.test", ALICE, f"|{script}")
    tok = token()
    _send(server, "both@example.test", tok)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok
    (data,) = wait_until(lambda: _outputs(out), 10, "the pipe command's output")
    assert parse(data)["Subject"] == tok


def _counting_script(tmp: Path, status: int) -> tuple[Path, Path]:
    """A command that never reads its stdin: it appends one line per run and exits."""
    runs = tmp / "runs"
    script = tmp / f"count-{status}.sh"
    script.write_text(f"#!/bin/sh\necho \"$RECIPIENT\" >> '{runs}'\nexit {status}\n")
    script.chmod(0o755)  # the service user runs it
    return script, runs


def _runs(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_pipe_command_that_does_not_read_stdin_runs_once_per_message(service_server):
    server, tmp_path = service_server, _pipe_dir(service_server)
    # Exit 0 means delivered, read or not; the write into a closed pipe must
    # not turn that into a deferral and a second run.
    script, runs = _counting_script(tmp_path, 0)
    server.add_alias("noread@example.test", f"|{script}")
    n = 32
    with server.smtp() as s:
        for i in range(n):
            # mostly 2 MB bodies: the command exits while we still write, and the
            # write fails (as RuntimeError under uvloop in about half the runs)
            body = ("x" * 998 + "\r\n") * (2000 if i % 4 else 1)
            msg = make_message(SENDER, "noread@example.test", f"noread {i}", body=body)
            assert s.sendmail(SENDER, ["noread@example.test"], msg) == {}
    wait_until(lambda: _runs(runs) >= n, 15, f"{n} runs of the command")
    wait_until(lambda: server.queue_list() == [], 15, "the queue to drain")
    assert _runs(runs) == n, f"{_runs(runs)} runs for {n} messages"
    assert "delivery deferred" not in server.log_text()


def test_pipe_command_that_does_not_read_and_exits_75_is_deferred_once(service_server):
    server, tmp_path = service_server, _pipe_dir(service_server)
    script, runs = _counting_script(tmp_path, 75)
    server.add_alias("tempfail@example.test", f"|{script}")
    body = ("y" * 998 + "\r\n") * 1000
    with server.smtp() as s:
        s.sendmail(SENDER, ["tempfail@example.test"],
                   make_message(SENDER, "tempfail@example.test", "tempfail", body=body))

    def deferred():
        return [r for e in server.queue_list() for r in e["rcpts"] if r["state"] == "deferred"]

    (rcpt,) = wait_until(deferred, 15, "the delivery to be deferred")
    assert rcpt["attempts"] == 1 and "status 75" in rcpt["last_error"], rcpt
    assert _runs(runs) == 1
