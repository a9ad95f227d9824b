"""Failed logins are counted per source address and per account, across
connections and across SMTP AUTH and IMAP LOGIN: a source (or an account) that
failed too often is refused for a while, before its password is even checked."""

from __future__ import annotations

import base64
import imaplib
import re
import smtplib
import time

import pytest

from .pg_server import BACKENDS
from .support import ALICE, BOB, CLIENT_NAME, PASSWORD, client_ssl_context

# Password checks read the directory: on SQLite and on PostgreSQL (issue 19).
pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)

LOCKOUT = 2.0


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _smtp_auth(server, user: str, password: str, source: str = "127.0.0.1"):
    """One connection, one AUTH PLAIN; the (code, text) reply."""
    with smtplib.SMTP("127.0.0.1", server.submission_port, local_hostname=CLIENT_NAME,
                      timeout=10, source_address=(source, 0)) as s:
        s.ehlo()
        s.starttls(context=client_ssl_context())
        s.ehlo()
        code, text = s.docmd("AUTH", "PLAIN " + _plain(user, password))
        return code, text.decode()


def _imap_login(server, user: str, password: str) -> tuple[bool, str]:
    c = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=client_ssl_context(),
                          timeout=10)
    try:
        c.login(user, password)
        return True, ""
    except imaplib.IMAP4.error as e:
        return False, str(e)
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def test_failures_over_many_connections_lock_the_source_out_for_a_while(make_server):
    server = make_server({"limits.auth_max_failures": 6, "limits.auth_failure_window": "1m",
                          "limits.auth_lockout": LOCKOUT, "limits.auth_failure_delay": 0.05})
    # each failure on a connection of its own, over both protocols
    for i in range(3):
        code, text = _smtp_auth(server, ALICE, f"wrong-{i}")
        assert code == 535, (code, text)
        ok, text = _imap_login(server, ALICE, f"wrong-{i}")
        assert not ok and "AUTHENTICATIONFAILED" in text, text
    locked_at = time.monotonic()
    # the right password no longer works, nor does any other account from here
    code, text = _smtp_auth(server, ALICE, PASSWORD)
    assert (code, text[:5]) == (454, "4.7.0"), (code, text)
    code, text = _smtp_auth(server, BOB, "wrong")  # refused, not checked: no 535
    assert (code, text[:5]) == (454, "4.7.0"), (code, text)
    ok, text = _imap_login(server, BOB, PASSWORD)
    assert not ok and "UNAVAILABLE" in text, text
    log = server.log_text()
    assert "login lockout client=unknown[127.0.0.1] source=127.0.0.1 " in log, log[-2000:]
    assert "auth refused client=unknown[127.0.0.1]" in log

    # bounded: once the lockout is over the right password works again
    deadline = locked_at + LOCKOUT + 10
    while True:
        code, text = _smtp_auth(server, ALICE, PASSWORD)
        if code == 235:
            break
        assert (code, text[:5]) == (454, "4.7.0"), (code, text)
        assert time.monotonic() < deadline, "still refused long after the lockout"
        time.sleep(0.1)
    assert time.monotonic() - locked_at >= LOCKOUT - 0.5, "the lockout ended too early"
    ok, text = _imap_login(server, BOB, PASSWORD)
    assert ok, text


def test_an_account_guessed_at_from_many_sources_refuses_new_sources_only(make_server):
    server = make_server({"limits.auth_max_failures": 100,
                          "limits.auth_account_max_failures": 4,
                          "limits.auth_failure_window": "1m", "limits.auth_lockout": "1m",
                          "limits.auth_failure_delay": 0})
    # bob's own client logs in from 127.0.0.1 first
    assert _smtp_auth(server, BOB, PASSWORD)[0] == 235
    # then someone guesses bob's password from four other addresses
    for i in range(4):
        code, text = _smtp_auth(server, BOB, f"guess-{i}", source=f"127.0.0.{i + 2}")
        assert code == 535, (code, text)
    # a further new address is refused for bob, even with the right password ...
    code, text = _smtp_auth(server, BOB, PASSWORD, source="127.0.0.9")
    assert (code, text[:5]) == (454, "4.7.0"), (code, text)
    assert re.search(r"login lockout client=unknown\[127\.0\.0\.\d\] "
                     r"account=bob@example\.test ", server.log_text())
    # ... but not for alice, and bob's own address still gets in
    assert _smtp_auth(server, ALICE, PASSWORD, source="127.0.0.9")[0] == 235
    assert _smtp_auth(server, BOB, PASSWORD)[0] == 235
