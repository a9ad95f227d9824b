"""contrib/fail2ban/filter.d/pillarbox.conf against real log output.

A server is made to log failed SMTP AUTH and IMAP logins, a source lockout,
a login refused during it, successful logins and ordinary mail; then Debian's
`fail2ban-regex` (scripts/ensure-system-packages installs it) reads the log
with the filter, and must find exactly the failures, with the right address.
"""

from __future__ import annotations

import imaplib
import json
import socket
import subprocess
from pathlib import Path

from .support import ALICE, BOB, PASSWORD, client_ssl_context, make_message
from .test_login_throttle import _smtp_auth

FILTER = Path(__file__).resolve().parents[2] / "contrib" / "fail2ban" / "filter.d" \
    / "pillarbox.conf"
ATTACKER = "127.0.0.3"
# A user name that tries to put another address where the filter looks.
FORGED = 'x" client=unknown[10.9.9.9] endpoint=imap locked=source'


class _IMAPFrom(imaplib.IMAP4):
    """imaplib on the STARTTLS port, connecting from a chosen loopback address."""

    def __init__(self, port: int, source: str) -> None:
        self._source = source
        super().__init__("127.0.0.1", port, timeout=10)
        self.starttls(ssl_context=client_ssl_context())

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))


def _imap_login(server, user: str, password: str, source: str) -> bool:
    c = _IMAPFrom(server.imap_port, source)
    try:
        c.login(user, password)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def _fail2ban_regex(log: Path) -> list[str]:
    """The address fail2ban-regex finds in each matched line, in order."""
    p = subprocess.run(["fail2ban-regex", "-o", "ip", str(log), str(FILTER)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.split()


def test_the_filter_finds_failed_logins_and_lockouts_with_the_client_address(make_server,
                                                                           tmp_path):
    server = make_server({"limits.auth_max_failures": 3, "limits.auth_account_max_failures": 100,
                          "limits.auth_failure_window": "1m", "limits.auth_lockout": "1m",
                          "limits.auth_failure_delay": 0})
    # what must not match: good logins, mail, a refused recipient
    assert _smtp_auth(server, ALICE, PASSWORD)[0] == 235
    assert _imap_login(server, ALICE, PASSWORD, "127.0.0.1")
    with server.smtp() as s:
        s.sendmail(BOB, [ALICE], make_message(BOB, [ALICE], "fine"))
        s.mail(BOB)
        assert s.rcpt("nobody@example.test")[0] == 550
    server.wait_for_messages(ALICE, 1)
    # one failure from 127.0.0.1
    assert not _imap_login(server, ALICE, "wrong", "127.0.0.1")
    # three from the attacker (SMTP, IMAP, a forged user name): a lockout, then a refusal
    assert _smtp_auth(server, BOB, "guess-1", source=ATTACKER)[0] == 535
    assert not _imap_login(server, BOB, "guess-2", ATTACKER)
    assert _smtp_auth(server, FORGED, "guess-3", source=ATTACKER)[0] == 535
    assert _smtp_auth(server, BOB, "guess-4", source=ATTACKER)[0] == 454

    log = tmp_path / "pillarbox.log"
    log.write_text(server.log_text())
    text = server.log_text()
    assert "login lockout client=unknown[127.0.0.3]" in text, text[-3000:]
    assert text.count("auth ok ") == 2
    assert "client=unknown[10.9.9.9]" in text, "the forged user name is not in the log"
    found = _fail2ban_regex(log)
    # 127.0.0.1: one IMAP failure; the attacker: 3 failures, the lockout, the refusal
    assert sorted(found) == ["127.0.0.1"] + [ATTACKER] * 5, found
    assert "10.9.9.9" not in found


def test_the_filter_reads_json_lines_too(make_server, tmp_path):
    server = make_server({"log_format": "json", "limits.auth_failure_delay": 0})
    assert _smtp_auth(server, BOB, "wrong", source=ATTACKER)[0] == 535
    assert _imap_login(server, ALICE, PASSWORD, "127.0.0.1")
    lines = server.log_text().splitlines()
    assert [json.loads(line)["client"] for line in lines
            if json.loads(line)["msg"] == "auth failed"] == [f"unknown[{ATTACKER}]"]
    log = tmp_path / "pillarbox.log"
    log.write_text(server.log_text())
    assert _fail2ban_regex(log) == [ATTACKER]
