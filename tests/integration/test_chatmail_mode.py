"""chatmail mode beyond the E2EE rules: accounts made on first login (IMAP and
SMTP AUTH), strict DKIM on the MX, the send rate, VRFY, the last login by
day, no addresses in the log at the default level."""

from __future__ import annotations

import imaplib
import json
import smtplib
import sqlite3

import pytest

from . import chatmail_messages as m
from .dns_server import DNSServer
from .support import ALICE, BOB, Server, client_ssl_context, free_ports
from .test_http import get as http_get

NEWPASS = "correct-horse-9"


@pytest.fixture(scope="module")
def dns():
    server = DNSServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay(tmp_path_factory, seed_data_dir, dns):
    (http,) = free_ports(1)
    srv = Server(tmp_path_factory.mktemp("chatmail"), {
        "mode": "chatmail", "log_level": "warning", "dns.nameservers": [dns.address],
        "listen.http": [f"127.0.0.1:{http}"],
        "chatmail.max_user_send_burst": 3, "chatmail.max_user_send_per_minute": 1,
        "limits.auth_max_failures": 1000, "limits.auth_account_max_failures": 1000,
        "limits.auth_failure_delay": "0s"},
        seed=seed_data_dir)
    srv.start()
    srv.http_port = http
    yield srv
    problems = srv.shutdown_and_check()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def imap_login(srv: Server, user: str, password: str) -> bool:
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps_port, ssl_context=client_ssl_context(),
                          timeout=10)
    try:
        c.login(user, password)
        return True
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e)  # the wrong-password answer
        return False
    finally:
        try:
            c.logout()
        except Exception:
            pass


def smtp_login(srv: Server, user: str, password: str) -> bool:
    s = srv.submission()
    try:
        s.login(user, password)
        return True
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535  # the wrong-password answer
        return False
    finally:
        s.close()


def users(srv: Server) -> str:
    return srv.cli_ok("user", "list").stdout


def exists(srv: Server, addr: str) -> bool:
    db = sqlite3.connect(srv.data_dir / "pillarbox.db")
    try:
        return db.execute("SELECT 1 FROM users WHERE address = ?", (addr,)).fetchone() is not None
    finally:
        db.close()


def test_first_imap_login_makes_the_account(relay):
    addr = "abcdefg12@example.test"
    assert addr not in users(relay)
    assert imap_login(relay, addr, NEWPASS)
    listed = users(relay)
    assert addr in listed and "500.0M" in listed.split(addr)[1].splitlines()[0]
    assert not imap_login(relay, addr, NEWPASS + "x")  # later logins need the same password
    assert imap_login(relay, addr, NEWPASS)
    assert smtp_login(relay, addr, NEWPASS)


def test_first_smtp_login_makes_the_account(relay):
    addr = "x.y-z_123@example.test"
    assert not exists(relay, addr)
    assert smtp_login(relay, addr, NEWPASS)
    assert exists(relay, addr)
    assert not smtp_login(relay, addr, "another-password")
    assert imap_login(relay, addr, NEWPASS)


@pytest.mark.parametrize("addr,password", [
    ("short1@example.test", NEWPASS),  # 6 characters, not 9
    ("toolong123@example.test", NEWPASS),  # 10
    ("abc+efg12@example.test", NEWPASS),  # '+' is not allowed
    ("abcdefg34@example.test", "short"),  # password under 9
    ("abcdefg56@example.net", NEWPASS),  # not a served domain
])
def test_no_account_fails_like_a_wrong_password(relay, addr, password):
    assert not imap_login(relay, addr, password)
    assert not smtp_login(relay, addr, password)
    assert not exists(relay, addr.lower())


def test_post_new_makes_a_random_account(relay):
    status, headers, body = http_get(f"http://127.0.0.1:{relay.http_port}/new", "POST")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    account = json.loads(body)
    assert set(account) == {"email", "password"}
    local, _, domain = account["email"].partition("@")
    assert domain == "example.test" and len(local) == 9 and local.isalnum(), account
    assert len(account["password"]) >= 20
    assert imap_login(relay, account["email"], account["password"])
    assert not imap_login(relay, account["email"], NEWPASS)  # its own password only
    again = json.loads(http_get(f"http://127.0.0.1:{relay.http_port}/new", "POST")[2])
    assert again["email"] != account["email"]
    assert http_get(f"http://127.0.0.1:{relay.http_port}/new")[0] == 405  # GET makes none


def test_no_room_no_account(tmp_path, seed_data_dir):
    (http,) = free_ports(1)
    srv = Server(tmp_path / "full", {"mode": "chatmail", "chatmail.strict_dkim": False,
                                     "chatmail.min_free_disk": "1000000G",
                                     "listen.http": [f"127.0.0.1:{http}"]},
                 seed=seed_data_dir)
    srv.start()
    try:
        status, headers, _ = http_get(f"http://127.0.0.1:{http}/new", "POST")
        assert status == 503 and headers["Retry-After"] == "600"
        assert not imap_login(srv, "abcdefg78@example.test", NEWPASS)
        assert imap_login(srv, ALICE, "secret-for-tests-only")  # existing users go on
    finally:
        assert not srv.shutdown_and_check()


def test_last_login_is_a_day(relay):
    assert imap_login(relay, "lastlog12@example.test", NEWPASS)
    db = sqlite3.connect(relay.data_dir / "pillarbox.db")
    (day,) = db.execute("SELECT last_login FROM chatmail_users WHERE address = ?",
                        ("lastlog12@example.test",)).fetchone()
    db.close()
    assert day % 86400 == 0 and day > 0


def test_strict_dkim_on_the_mx(relay):
    with relay.smtp() as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("carol@example.net", [ALICE],
                       m.pgp_mime("carol@example.net", ALICE, m.sequoia_armored()))
        assert (e.value.smtp_code, e.value.smtp_error) == (
            554, b"5.7.1 No valid DKIM signature found")


def test_vrfy_says_252(relay):
    with relay.smtp() as s:
        code, _ = s.verify(ALICE)
        assert code == 252


def test_send_rate(relay):
    with relay.submission(BOB) as s:
        codes = []
        for _ in range(5):
            code, _ = s.mail(BOB)
            codes.append(code)
            s.rset()
        assert codes[:3] == [250, 250, 250] and codes[3] == 450


def test_capabilities(relay):
    c = imaplib.IMAP4_SSL("127.0.0.1", relay.imaps_port, ssl_context=client_ssl_context())
    try:
        assert "XDELTAPUSH" in c.capabilities and "XCHATMAIL" in c.capabilities
    finally:
        c.logout()


def test_no_addresses_in_the_log(relay):
    # At the default level the log names no address, whatever happened: failed and
    # made logins, refusals, a delivery (and whatever else ran on this server).
    assert not imap_login(relay, ALICE, "wrong-password-1")
    assert imap_login(relay, "logcheck1@example.test", NEWPASS)
    with relay.smtp() as s:
        with pytest.raises(smtplib.SMTPDataError):
            s.sendmail("carol@example.net", [ALICE], m.plain("carol@example.net", ALICE))
    with relay.submission(ALICE) as s:
        s.sendmail(ALICE, [BOB], m.pgp_mime(ALICE, BOB, m.sequoia_armored()))
    relay.wait_for_messages(BOB, 1)
    text = relay.log_text()
    for addr in (ALICE, BOB, "logcheck1@example.test", "carol@example.net"):
        assert addr not in text


def test_simultaneous_first_logins_all_succeed(relay):
    # A client logs in over IMAP and SMTP at once (Delta Chat does): whichever
    # makes the account, the other's login with the same password succeeds.
    import concurrent.futures

    addr = "together1@example.test"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda f: f(relay, addr, NEWPASS),
                                [imap_login, smtp_login, imap_login, smtp_login]))
    assert results == [True, True, True, True]
