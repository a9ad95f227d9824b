"""The durable queue: remote mail waits in it, visible and manageable by the CLI."""

from __future__ import annotations

import smtplib
import socket

import pytest

from .pg_server import BACKENDS, sharing_mail
from .support import ALICE, BOB, assert_reply, free_ports, make_message, token, wait_until

pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)


@pytest.fixture
def make_server(make_server, storage, tmp_path):
    """On PostgreSQL with a shared_dir: the spool under it, delivered under its lease."""
    return sharing_mail(make_server, storage, tmp_path)


CAROL = "carol@remote.test"


_held: list[socket.socket] = []


def _closed_tcp_port() -> int:
    """A port bound but never listening: connections are refused, and no other
    test's server can take it meanwhile (a released free port once was, and its
    530 reply bounced the message). Held until the test process ends."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    _held.append(s)
    return s.getsockname()[1]


def _no_dns(make_server):
    # remote.test is routed to a closed local port, and the resolver is a closed
    # local port too: delivery attempts fail fast and temporarily, so remote mail
    # is deferred (never bounced, never sent to the internet).
    closed_smtp, (closed_dns,) = _closed_tcp_port(), free_ports(1)
    return make_server(
        dns__nameservers=[f"127.0.0.1:{closed_dns}"],
        extra_toml=(
            f'[[route]]\ndomains = ["remote.test"]\nhost = "127.0.0.1:{closed_smtp}"\n'
            'tls = "none"\n'
        ),
    )


def _entry_for(server, rcpt):
    for e in server.queue_list():
        if any(r.get("addr") == rcpt for r in e.get("rcpts", [])):
            return e
    return None


def test_remote_recipient_from_authenticated_user_waits_in_queue(make_server):
    server = _no_dns(make_server)
    tok = token()
    with server.submission(user=ALICE) as s:
        refused = s.sendmail(ALICE, [CAROL], make_message(ALICE, CAROL, tok))
    assert refused == {}
    entry = wait_until(lambda: _entry_for(server, CAROL), 10, f"{CAROL} in `queue list --json`")
    for key in ("id", "mail_from", "rcpts", "size", "age"):
        assert key in entry, f"queue entry lacks {key!r}: {entry}"
    assert entry["mail_from"] == ALICE
    assert isinstance(entry["size"], int) and entry["size"] > 0, entry
    (rcpt,) = entry["rcpts"]
    for key in ("addr", "state", "attempts", "next_attempt", "last_error"):
        assert key in rcpt, f"queue rcpt lacks {key!r}: {rcpt}"
    assert rcpt["state"] not in ("done", "delivered", "failed", "bounced"), rcpt

    listing = server.cli_ok("queue", "list").stdout
    assert entry["id"] in listing and CAROL in listing, listing
    shown = server.cli_ok("queue", "show", entry["id"]).stdout
    assert tok in shown, f"`queue show` does not show the message: {shown[:1000]}"

    # still there after a restart (it is on disk, not in memory)
    server.restart()
    again = wait_until(lambda: _entry_for(server, CAROL), 10, "the entry after restart")
    assert again["id"] == entry["id"]

    server.cli_ok("queue", "delete", entry["id"])
    assert _entry_for(server, CAROL) is None, "`queue delete` left the entry"
    p = server.cli("queue", "show", entry["id"])
    assert p.returncode == 1 and p.stderr.startswith("error:"), p


def test_mixed_local_and_remote_recipients(make_server):
    server = _no_dns(make_server)
    tok = token()
    with server.submission(user=ALICE) as s:
        s.sendmail(ALICE, [BOB, CAROL],
                   make_message(ALICE, [BOB, CAROL], tok))
    server.wait_for_messages(BOB, 1)
    entry = wait_until(lambda: _entry_for(server, CAROL), 10, f"{CAROL} in the queue")
    assert [r["addr"] for r in entry["rcpts"]] == [CAROL], (
        f"local recipient done, only the remote one should remain: {entry}"
    )


def test_forward_alias_to_remote_address_is_queued(make_server):
    server = _no_dns(make_server)
    server.add_alias("fwd@example.test", CAROL)
    tok = token()
    with server.smtp() as s:
        refused = s.sendmail("x@remote.test", ["fwd@example.test"],
                             make_message("x@remote.test", "fwd@example.test", tok))
    assert refused == {}
    wait_until(lambda: _entry_for(server, CAROL), 10, f"{CAROL} (via alias) in the queue")


def test_queue_retry_with_unknown_id_is_an_error(make_server):
    server = make_server(start=False)
    for args in (("queue", "retry", "no-such-id"), ("queue", "delete", "no-such-id"),
                 ("queue", "show", "no-such-id")):
        p = server.cli(*args)
        assert p.returncode == 1, (args, p)
        assert p.stderr.startswith("error:"), (args, p.stderr)


def test_low_disk_refuses_new_mail_and_keeps_queued_mail(make_server):
    server = _no_dns(make_server)
    tok = token()
    with server.submission(user=ALICE) as s:
        s.sendmail(ALICE, [CAROL], make_message(ALICE, CAROL, tok))
    entry = wait_until(lambda: _entry_for(server, CAROL), 10, f"{CAROL} in the queue")
    server.stop()
    server.config["queue"]["min_free_space"] = "100000000M"  # 100 TB: the disk is "full"
    server.write_config()
    server.start()
    with server.smtp() as s:
        r = s.mail("x@remote.test")
        if r[0] == 250:
            assert s.rcpt(BOB)[0] == 250
            try:
                r = s.data(make_message("x@remote.test", BOB, "no room"))
            except smtplib.SMTPDataError as e:
                r = (e.smtp_code, e.smtp_error)
        assert_reply(r, 452, "4.3.1", "new mail with the disk below min_free_space")
    p = server.cli("sendmail", "-i", BOB, input="Subject: no room\n\nbody\n")
    assert p.returncode == 75 and p.stderr.startswith("error:"), (
        f"sendmail below min_free_space must exit EX_TEMPFAIL (75), not drop the message: {p}"
    )
    assert "queue.min_free_space" in p.stderr, p.stderr
    assert list((server.queue_dir / "maildrop").iterdir()) == []
    again = _entry_for(server, CAROL)
    assert again is not None and again["id"] == entry["id"], "queued mail lost on low disk"
    assert server.messages(BOB) == []
