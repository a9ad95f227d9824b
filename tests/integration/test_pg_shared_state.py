"""State that nodes sharing PostgreSQL and a `[storage] shared_dir` must agree on
(issue 19): the greylist tables, the DKIM keys and the SRS secret.

Two `serve` processes on their own ports share one database and one shared_dir:
a sender greylisted by one node and retrying to the other is let through once
the delay passed, and a key made with `pillarbox dns` through one node's config
signs what the other node sends.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    REMOTE,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    point_mx,
    submit,
    wait_queue_empty,
)
from .pg_server import sharing_mail
from .support import ALICE, BOB, DOMAIN, make_message, token
from .test_outbound_dkim import _publish, _signatures, _verify_all

pytestmark = pytest.mark.parametrize("storage", ["postgresql"], indirect=True)

GREY = (451, "4.7.1 Greylisted, please try again later")
OK = (250, "2.1.5 OK")
DELAY = 1.0  # seconds: the greylist delay of these tests
GREY_TOML = ('[module.grey]\nkind = "greylist"\ndelay = "1s"\n\n[pipeline.smtp]\n'
             'checks = ["grey", "relay", "recipient"]\n')


def _rcpt(srv, sender: str, rcpt: str) -> tuple[int, str]:
    with srv.raw() as c:
        c.reply()
        c.expect("EHLO client.test", 250)
        c.expect(f"MAIL FROM:<{sender}>", 250)
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        return r.code, r.text


def test_a_sender_greylisted_by_one_node_passes_at_the_other_after_the_delay(
        make_server, storage, tmp_path):
    make = sharing_mail(make_server, storage, tmp_path)
    a, b = make(extra_toml=GREY_TOML), make(extra_toml=GREY_TOML)
    first = time.monotonic()
    assert _rcpt(a, "a@remote.test", ALICE) == GREY
    assert _rcpt(a, "a@remote.test", BOB) == GREY
    # The retry of a triplet at the other node before the delay: still greylisted.
    assert _rcpt(b, "a@remote.test", BOB) == GREY
    assert time.monotonic() - first < DELAY, "too slow to try before the delay"
    # The delay is time itself: nothing to await but the clock.
    time.sleep(max(0.0, first + DELAY + 0.1 - time.monotonic()))
    # Node b never saw (a@remote.test, ALICE): it passes only because a's row is shared.
    assert _rcpt(b, "a@remote.test", ALICE) == OK
    # ... and the sender domain passed once, on b: known to a too.
    assert _rcpt(a, "c@remote.test", ALICE) == OK
    assert _rcpt(a, "x@other.test", ALICE) == GREY
    assert not (a.data_dir / "greylist.sqlite").exists()
    assert not (b.data_dir / "greylist.sqlite").exists()


def test_greylisting_lets_mail_through_while_postgresql_is_down_then_resumes(
        make_server, postgres):
    srv = make_server(extra_toml=GREY_TOML)
    assert _rcpt(srv, "a@remote.test", ALICE) == GREY  # the table works
    postgres.stop_server()
    try:
        # A known user is still accepted (the directory as last loaded), greylisting
        # lets the mail through rather than stop it.
        assert _rcpt(srv, "b@down.test", ALICE) == OK
        tok = token()
        with srv.smtp() as s:
            assert s.sendmail("c@down.test", [ALICE],
                              make_message("c@down.test", ALICE, tok)) == {}
        assert any(tok.encode() in m for m in srv.wait_for_messages(ALICE, 1))
    finally:
        postgres.start_server()
    assert "greylist table failed, letting mail through" in srv.log_text()
    # Back: a new triplet is greylisted again (each try while it is down is another one).
    start = time.monotonic()
    n = 0
    while True:
        n += 1
        got = _rcpt(srv, f"n{n}@back.test", ALICE)
        if got == GREY:
            break
        assert got == OK, got
        assert time.monotonic() - start < 10, "greylisting did not resume after PostgreSQL"
        time.sleep(0.1)
    assert "greylist table works again" in srv.log_text()


def _dkim_lines(zone: str) -> list[str]:
    lines = [line for line in zone.splitlines() if "._domainkey." in line]
    assert len(lines) == 2, zone
    return lines


def test_a_dkim_key_made_through_one_node_signs_mail_sent_by_the_other(
        make_server, storage, tmp_path, dns, double):
    make = sharing_mail(make_server, storage, tmp_path)
    outbound = {"dns.nameservers": [dns.address], "remote.port": double.port,
                "remote.connect_timeout": "3s", "remote.command_timeout": "15s",
                "remote.helo": "out.example.test"}
    a, b = make(outbound, start=False), make(outbound, start=False)
    names = _publish(a, dns)  # `pillarbox dns` through a's config makes the keys
    point_mx(dns)
    b.start()
    # b's `pillarbox dns` finds the same keys and makes none of its own.
    assert _dkim_lines(b.cli_ok("dns").stdout) == _dkim_lines(a.cli_ok("dns").stdout)
    assert not (a.data_dir / "dkim").exists() and not (b.data_dir / "dkim").exists()
    rcpt = f"carol@{REMOTE}"
    submit(b, rcpt, message=make_message(ALICE, rcpt, f"signed {token()}", "Body.\r\n"))
    (msg,) = double.wait_for_messages(1)
    wait_queue_empty(b)
    sigs = _signatures(msg.content)
    assert sorted(s.get("a") for s in sigs) == ["ed25519-sha256", "rsa-sha256"], sigs
    for s in sigs:
        assert s.get("d") == DOMAIN, s
        assert f"{s.get('s')}._domainkey.{DOMAIN}" in names, (s, names)
    assert _verify_all(msg.content, dns) == [True, True]


def test_a_bounce_to_a_forward_of_one_node_is_taken_by_the_other(
        make_server, storage, tmp_path, dns, double):
    """The SRS secret is shared_dir/srs.key: the remote MX may send the bounce to
    any node behind the MX records, and that node must know the hash."""
    make = sharing_mail(make_server, storage, tmp_path)
    outbound = {"dns.nameservers": [dns.address], "remote.port": double.port,
                "remote.connect_timeout": "3s", "remote.command_timeout": "15s",
                "remote.helo": "out.example.test"}
    a, b = make(outbound), make(outbound)
    point_mx(dns)
    point_mx(dns, "sender.test")
    a.add_alias("fwd@example.test", f"carol@{REMOTE}")
    with a.smtp() as s:
        assert s.sendmail("someone@sender.test", ["fwd@example.test"],
                          make_message("someone@sender.test", "fwd@example.test",
                                       f"forwarded {token()}")) == {}
    (msg,) = double.wait_for_messages(1)
    assert msg.mail_from.startswith("SRS0="), msg.mail_from
    assert (tmp_path / "shared" / "srs.key").is_file()
    assert not (a.data_dir / "srs.key").exists()
    with b.smtp() as s:  # the bounce reaches the other node
        s.mail("")
        code, text = s.rcpt(msg.mail_from)
        assert code == 250, (code, text)
        dsn = (f"From: MAILER-DAEMON@mx.remote.test\r\nTo: <{msg.mail_from}>\r\n"
               "Subject: Undelivered Mail Returned to Sender\r\n\r\nNo such user.\r\n")
        assert s.data(dsn.encode())[0] == 250
    (_, back) = double.wait_for_messages(2)
    assert back.rcpts == ["someone@sender.test"] and back.mail_from == ""


def test_migrate_makes_the_greylist_tables_when_a_pipeline_uses_the_check(make_server,
                                                                         storage_url):
    plain = make_server(start=False, seed=False)
    assert "greylist" not in plain.cli_ok("migrate").stdout
    srv = make_server(start=False, seed=False, extra_toml=GREY_TOML)
    out = srv.cli_ok("migrate").stdout
    assert "PostgreSQL: greylist schema version 0 -> 1" in out, out
    with psycopg.connect(storage_url) as c:
        tables = {r[0] for r in c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"greylist_triplet", "greylist_known"} <= tables
    out = srv.cli_ok("migrate").stdout
    assert "PostgreSQL: greylist schema version 1, up to date" in out, out
