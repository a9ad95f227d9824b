"""Each limit docs/SMTP.md documents, crossed over a real socket: the reply must
be the one the doc shows, word for word, and the number in the doc (512
octets, 998 octets, 10 errors, 5 failed logins) must be where the server draws
the line. Expected replies and numbers are read from SMTP.md itself, so the doc
cannot drift from the server without a test failing."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from .support import ALICE, BOB, CLIENT_NAME, HOSTNAME, RawSMTP, make_message, wait_until

SMTP_MD = (Path(__file__).resolve().parents[2] / "docs" / "SMTP.md").read_text()
OUTSIDER = "sender@remote.test"
CAROL = "carol@example.test"
DORA = "dora@example.test"


def documented(section: str, situation: str) -> str:
    """The reply in the table row under `### section` whose first cell contains
    `situation`, with HOSTNAME filled in."""
    body = SMTP_MD.split(f"\n### {section}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and situation in cells[0]:
            (reply,) = re.findall(r"`(\d{3} [^`]+)`", cells[1])
            return reply.replace("HOSTNAME", HOSTNAME)
    raise AssertionError(f"SMTP.md has no row {situation!r} under {section!r}")


def number(pattern: str) -> int:
    """A number SMTP.md states, e.g. number(r"(\\d+) unusable command lines")."""
    m = re.search(pattern, SMTP_MD)
    assert m, f"SMTP.md no longer says {pattern!r}"
    return int(m.group(1))


def line_of(r) -> str:
    assert len(r.lines) == 1, f"expected a one-line reply, got {r}"
    return f"{r.code} {r.lines[0]}"


def start_transaction(c: RawSMTP, rcpts=(ALICE,)) -> None:
    c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
    for rcpt in rcpts:
        c.expect(f"RCPT TO:<{rcpt}>", 250)
    c.expect("DATA", 354)


def test_recipient_size_and_line_limits_give_the_documented_replies(make_server):
    server = make_server(limits__max_recipients=3, limits__max_message_size="10K")
    for u in (CAROL, DORA):
        server.add_user(u)
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)

        # max_recipients: the 4th RCPT with max_recipients = 3
        c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
        for u in (ALICE, BOB, CAROL):
            c.expect(f"RCPT TO:<{u}>", 250)
        assert line_of(c.cmd(f"RCPT TO:<{DORA}>")) == documented(
            "RCPT TO", "already `max_recipients` accepted")
        c.expect("RSET", 250)

        # max_message_size, declared at MAIL and found after DATA
        assert line_of(c.cmd(f"MAIL FROM:<{OUTSIDER}> SIZE={10 * 1024 + 1}")) == documented(
            "MAIL FROM", "`SIZE=` above `max_message_size`")
        c.expect(f"MAIL FROM:<{OUTSIDER}> SIZE={10 * 1024}", 250)
        c.expect("RSET", 250)
        start_transaction(c)
        c.send(make_message(OUTSIDER, ALICE, "big", ("y" * 78 + "\r\n") * 200) + b".\r\n")
        assert line_of(c.reply()) == documented("DATA", "larger than `max_message_size`")

        # a command line: the documented number of octets (CRLF included) passes, one more not
        octets = number(r"longer than (\d+) octets, CRLF included")
        assert octets == 512
        c.expect("NOOP " + "x" * (octets - len("NOOP ") - 2), 250)
        assert line_of(c.cmd("NOOP " + "x" * (octets - len("NOOP ") - 1))) == documented(
            "Any command line", f"longer than {octets} octets")

        # a text line: 998 octets plus CRLF pass, 999 do not
        octets = number(r"a line longer than (\d+) octets")
        assert octets == 998
        start_transaction(c)
        c.send(make_message(OUTSIDER, ALICE, "998", "z" * octets + "\r\n") + b".\r\n")
        assert c.reply().code == 250
        start_transaction(c)
        c.send(make_message(OUTSIDER, ALICE, "999", "z" * (octets + 1) + "\r\n") + b".\r\n")
        assert line_of(c.reply()) == documented("DATA", f"a line longer than {octets} octets")
        c.expect("QUIT", 221)
    server.wait_for_messages(ALICE, 1)


def test_too_many_errors_closes_at_the_documented_count(server):
    limit = number(r"\| (\d+) unusable command lines")
    with server.raw() as c:
        assert c.reply().code == 220
        for i in range(limit - 1):
            assert c.cmd("XYZZY").code == 500, f"bad command {i + 1}"
        c.expect("NOOP", 250)  # still talking after limit - 1 errors
        c.send(b"XYZZY\r\n")
        replies = c.replies_until_close()
    assert [str(r) for r in replies][0].startswith("500 5.5.1"), replies
    assert [line_of(r) for r in replies[1:]] == [
        documented("Connection", f"{limit} unusable command lines")]


def test_failed_logins_close_at_the_documented_count(server):
    m = re.search(r"After (\d+) failures in one session the server adds\s+`([^`]+)`", SMTP_MD)
    assert m, "SMTP.md no longer says after how many failed logins the session ends"
    limit, expected = int(m.group(1)), m.group(2)
    wrong = base64.b64encode(f"\0{ALICE}\0not-the-password".encode()).decode()
    with server.raw("submissions") as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        for i in range(limit - 1):
            assert line_of(c.cmd(f"AUTH PLAIN {wrong}")) == (
                "535 5.7.8 Authentication credentials invalid"), f"failure {i + 1}"
        c.expect("NOOP", 250)
        c.send(f"AUTH PLAIN {wrong}\r\n")
        replies = c.replies_until_close()
    assert [line_of(r) for r in replies] == [
        "535 5.7.8 Authentication credentials invalid", expected]


def test_max_connections_gives_the_documented_reply(make_server):
    server = make_server(limits__max_connections=1)

    def one_admitted():  # the harness's readiness probe may count for a moment
        c = server.raw()
        if c.reply().code == 220:
            return c
        c.close()
        return None

    first = wait_until(one_admitted, 10, "a session admitted with max_connections 1")
    try:
        with server.raw() as second:
            replies = second.replies_until_close()
        assert [line_of(r) for r in replies] == [
            documented("Connection", "more than `limits.max_connections` at once")]
        first.expect("NOOP", 250)
    finally:
        first.close()


def test_command_timeout_gives_the_documented_reply(make_server):
    server = make_server(limits__command_timeout="1s")
    with server.raw(timeout=15) as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        replies = c.replies_until_close(timeout=15)  # say nothing; wait for the server
    assert [line_of(r) for r in replies] == [
        documented("Connection", "nothing received for `limits.command_timeout`")]


def test_min_free_space_gives_the_documented_reply_at_mail(make_server):
    server = make_server(queue__min_free_space="100000000M")  # 100 TB: never free
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        assert line_of(c.cmd(f"MAIL FROM:<{OUTSIDER}>")) == documented(
            "MAIL FROM", "free disk below `queue.min_free_space`")
        c.expect("NOOP", 250)
