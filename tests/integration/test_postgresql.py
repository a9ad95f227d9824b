"""PostgreSQL as the shared store (issue 19): migrations, schema guard, the directory
shared by several nodes, and an outage of the database.

Each test runs against a real PostgreSQL of Debian's packages (pg_server.py);
the schema guard also against SQLite.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
import time

import psycopg
import pytest

from pillarbox.store.sqlite import MIGRATIONS

from .pg_server import BACKENDS
from .support import ALICE, BOB, PASSWORD, assert_reply, make_message, parse, token

CAROL = "carol@example.test"
SENDER = "sender@remote.test"
SEEN_WITHIN = 1.0  # seconds for a change on one node to reach another


def _rcpt(server, rcpt: str) -> tuple[int, bytes]:
    with server.smtp() as s:
        s.mail(SENDER)
        return s.rcpt(rcpt)


def _await_rcpt(server, rcpt: str, code: int, within: float = SEEN_WITHIN) -> float:
    """Ask RCPT until it gets `code`; how long that took. Fails after `within` seconds."""
    start = time.monotonic()
    while True:
        got = _rcpt(server, rcpt)
        if got[0] == code:
            return time.monotonic() - start
        assert time.monotonic() - start < within, (
            f"RCPT {rcpt} still {got} after {within}s (wanted {code})")
        time.sleep(0.02)


def _send(server, rcpt: str, subject: str) -> None:
    with server.smtp() as s:
        assert s.sendmail(SENDER, [rcpt], make_message(SENDER, rcpt, subject)) == {}


# -- migrations ------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_migrate_applies_every_migration_once(make_server, storage_url):
    srv = make_server(start=False, seed=False)
    out = srv.cli_ok("migrate").stdout
    assert f"schema version 0 -> {len(MIGRATIONS)}" in out, out
    out = srv.cli_ok("migrate").stdout
    assert f"schema version {len(MIGRATIONS)}, up to date" in out, out
    with psycopg.connect(storage_url) as c:
        tables = {r[0] for r in c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"users", "aliases", "sender_rights", "pillarbox_schema"} <= tables


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)
def test_serve_refuses_a_schema_newer_than_it_knows(make_server, storage, storage_url):
    srv = make_server(start=False)
    srv.cli_ok("migrate")
    newer = len(MIGRATIONS) + 5
    if storage == "postgresql":
        with psycopg.connect(storage_url, autocommit=True) as c:
            c.execute("UPDATE pillarbox_schema SET version = %s", (newer,))
    else:
        db = sqlite3.connect(srv.data_dir / "pillarbox.db")
        db.execute(f"PRAGMA user_version={newer}")
        db.close()
    for args in (("serve",), ("user", "list"), ("migrate",)):
        p = srv.cli(*args)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert f"schema version {newer}" in p.stderr, p.stderr
        assert "newer pillarbox" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr, p.stderr


def test_a_mailbox_index_newer_than_known_is_refused_not_used(server):
    """A user's IMAP index (SQLite in the Maildir) migrated by a newer pillarbox:
    the login is refused with NO [UNAVAILABLE], the index is left as it was."""
    assert _imap_login(server, ALICE, PASSWORD)[0] == "OK"  # makes the index
    server.stop()
    index = server.maildir(ALICE) / "pillarbox-index.sqlite"
    db = sqlite3.connect(index)
    newer = db.execute("PRAGMA user_version").fetchone()[0] + 5
    db.execute(f"PRAGMA user_version={newer}")
    db.close()
    server.start()
    typ, text = _imap_login(server, ALICE, PASSWORD)
    assert typ == "NO" and "[UNAVAILABLE]" in text, (typ, text)
    db = sqlite3.connect(index)
    assert db.execute("PRAGMA user_version").fetchone()[0] == newer
    db.close()
    assert "newer pillarbox" in server.log_text()


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_two_nodes_start_on_one_fresh_database(make_server):
    """Both migrate at once (advisory lock): neither fails on the other's tables."""
    a = make_server(start=False, seed=False)
    b = make_server(start=False, seed=False)
    errors = []

    def start(srv):
        try:
            srv.start()
        except AssertionError as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    a.add_user(CAROL)
    _await_rcpt(b, CAROL, 250)


# -- the directory shared by nodes -----------------------------------------------------


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_directory_change_on_one_node_is_seen_by_another_within_a_second(make_server):
    a, b = make_server(), make_server()
    assert _rcpt(b, CAROL)[0] == 550
    a.add_user(CAROL)  # through node A's config; node B is not told but by PostgreSQL
    _await_rcpt(b, CAROL, 250)
    a.cli_ok("user", "disable", CAROL)
    _await_rcpt(b, CAROL, 550)
    a.cli_ok("user", "enable", CAROL)
    _await_rcpt(b, CAROL, 250)
    a.add_alias("team@example.test", ALICE, BOB)
    _await_rcpt(b, "team@example.test", 250)
    tok = token()
    _send(b, "team@example.test", tok)
    for user in (ALICE, BOB):
        (raw,) = b.wait_for_messages(user, 1)
        assert parse(raw)["Subject"] == tok


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_quota_change_on_one_node_is_seen_by_another(make_server):
    a, b = make_server(), make_server()
    _send(b, ALICE, token())
    b.wait_for_messages(ALICE, 1)
    assert _rcpt(b, ALICE)[0] == 250
    a.cli_ok("user", "quota", ALICE, "--quota", "1")  # below what alice already has
    code, text = 0, b""
    start = time.monotonic()
    while time.monotonic() - start < SEEN_WITHIN and code != 452:
        code, text = _rcpt(b, ALICE)
    assert_reply((code, text), 452, "4.2.2", "RCPT to a user over the quota set on node A")
    a.cli_ok("user", "quota", ALICE, "--quota", "1G")  # raised again on node A
    _await_rcpt(b, ALICE, 250)


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_user_added_on_one_node_receives_mail_on_another_within_a_second(make_server):
    """Two processes on their own ports, one database: a user made through node A's
    config gets mail sent to node B within a second, reads it over IMAP on node B;
    deleted on node A, node B refuses it again."""
    a, b = make_server(), make_server()
    assert {a.smtp_port, a.imap_port}.isdisjoint({b.smtp_port, b.imap_port})
    a.add_user(CAROL)
    added = time.monotonic()
    tok = token()
    while True:
        with b.smtp() as s:
            s.mail(SENDER)
            code = s.rcpt(CAROL)[0]
            if code == 250:
                assert s.data(make_message(SENDER, CAROL, tok))[0] == 250
                break
        assert time.monotonic() - added < SEEN_WITHIN, f"node B still says {code}"
        time.sleep(0.02)
    (raw,) = b.wait_for_messages(CAROL, 1)
    assert parse(raw)["Subject"] == tok
    imap = b.imap(CAROL)
    try:
        typ, data = imap.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"1"]), (typ, data)
    finally:
        imap.logout()
    a.cli_ok("user", "del", CAROL)
    _await_rcpt(b, CAROL, 550)


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_sender_right_given_on_one_node_applies_on_another(make_server):
    a, b = make_server(), make_server()
    boss = "boss@example.test"

    def mail_from_on_b() -> int:
        with b.submission(user=ALICE) as s:
            return s.mail(boss)[0]

    assert mail_from_on_b() == 553
    a.cli_ok("user", "from", ALICE, "--allow", boss)
    assert mail_from_on_b() == 250  # read from the database at each MAIL, no copy to wait for
    a.cli_ok("user", "from", ALICE, "--disallow", boss)
    assert mail_from_on_b() == 553


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_password_change_on_one_node_applies_to_logins_on_another(make_server):
    a, b = make_server(), make_server()
    new = PASSWORD + "-changed"
    a.cli_ok("user", "passwd", ALICE, "--password-stdin", input=new + "\n")
    imap = b.imap()
    try:
        typ, data = imap.login(ALICE, new)
        assert typ == "OK", data
    finally:
        imap.logout()


# -- PostgreSQL down -------------------------------------------------------------------


def _imap_login(server, user: str, password: str) -> tuple[str, str]:
    import imaplib

    imap = server.imap()
    try:
        typ, data = imap.login(user, password)
        return typ, data[0].decode()
    except imaplib.IMAP4.error as e:
        return "NO", str(e)
    finally:
        try:
            imap.logout()
        except Exception:
            pass


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_database_down_logins_unavailable_mail_kept_then_recovers(make_server, postgres):
    srv = make_server()
    assert _imap_login(srv, ALICE, PASSWORD)[0] == "OK"
    postgres.stop_server()
    try:
        typ, text = _imap_login(srv, ALICE, PASSWORD)
        assert typ == "NO" and "[UNAVAILABLE]" in text, (typ, text)
        with srv.submission() as s:
            auth = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
            assert_reply(s.docmd("AUTH", f"PLAIN {auth}"), 454, "4.7.0",
                         "AUTH while PostgreSQL is down")
        # An address the copy does not know may be new on another node: try later.
        assert_reply(_rcpt(srv, CAROL), 451, "4.3.0", "RCPT to an unknown user, database down")
        # Mail for known users is still taken (the directory as last loaded) and delivered.
        tok = token()
        _send(srv, BOB, tok)
        (raw,) = srv.wait_for_messages(BOB, 1)
        assert parse(raw)["Subject"] == tok
    finally:
        postgres.start_server()
    start = time.monotonic()
    while _imap_login(srv, ALICE, PASSWORD)[0] != "OK":
        assert time.monotonic() - start < 10, "login still refused after PostgreSQL returned"
        time.sleep(0.1)
    srv.add_user(CAROL)
    _await_rcpt(srv, CAROL, 250)


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_backup_says_the_directory_is_not_in_it(make_server, tmp_path):
    srv = make_server(start=False)
    p = srv.cli_ok("backup", str(tmp_path / "copy"))
    assert "pg_dump" in p.stderr and "not in this backup" in p.stderr, p.stderr


_LISTS_TOML = ('[module.lists]\nkind = "mailing_list"\n\n'
               '[[rule]]\nrcpt = ["team@example.test", "team+*@example.test", '
               '"team-*@example.test"]\ntargets = ["lists"]\n')


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_lists_live_in_postgresql_and_a_lost_database_defers_list_mail(make_server, postgres):
    """A list made with the CLI is in PostgreSQL (a second node knows it); RCPT TO it while
    the database is down gets 451 4.3.0, and 250 again once it is back."""
    a = make_server(extra_toml=_LISTS_TOML)
    b = make_server(extra_toml=_LISTS_TOML)
    a.cli_ok("list", "create", "team@example.test", "--owner", ALICE)
    a.cli_ok("list", "add", "team@example.test", BOB)
    assert BOB in b.cli_ok("list", "members", "team@example.test").stdout
    with b.smtp() as s:
        s.mail(BOB)
        assert s.rcpt("team@example.test")[0] == 250
    postgres.stop_server()
    try:
        with b.smtp() as s:
            s.mail(BOB)
            reply = s.rcpt("team@example.test")
            assert_reply(reply, 451, "4.3.0", "RCPT to a list while PostgreSQL is down")
            assert b"Mailing list store unavailable" in reply[1], reply
    finally:
        postgres.start_server()
    start = time.monotonic()
    while True:
        with b.smtp() as s:
            s.mail(BOB)
            if s.rcpt("team@example.test")[0] == 250:
                break
        assert time.monotonic() - start < 10, "list RCPT still refused after PostgreSQL returned"
        time.sleep(0.1)
