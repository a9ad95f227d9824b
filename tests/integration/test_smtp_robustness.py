"""Hostile and clumsy clients: a clear reply, the session and the server carry on.

The fixture's teardown also fails any of these if the server logged a
Traceback or an ERROR line for the client's mistake.
"""

from __future__ import annotations

import base64
import hashlib
import smtplib
import socket
import ssl
import time

import pytest

from .support import (
    ALICE,
    BOB,
    CLIENT_NAME,
    PASSWORD,
    RawSMTP,
    assert_reply,
    make_message,
    parse,
    token,
    wait_until,
)
from .support import (
    client_ssl_context as ssl_context,
)

OUTSIDER = "sender@remote.test"


def _greeted(server, kind="smtp") -> RawSMTP:
    c = server.raw(kind)
    assert c.reply().code == 220
    c.expect(f"EHLO {CLIENT_NAME}", 250)
    return c


def _deliver_on(c: RawSMTP, rcpt: str, subject: str) -> None:
    c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
    c.expect(f"RCPT TO:<{rcpt}>", 250)
    c.expect("DATA", 354)
    c.send(make_message(OUTSIDER, rcpt, subject) + b".\r\n")
    r = c.reply()
    assert r.code == 250, f"message after bad input: {r}"


def test_unknown_and_out_of_sequence_commands(server):
    tok = token()
    with _greeted(server) as c:
        r = c.cmd("FROBNICATE now")
        assert r.code in (500, 502), f"unknown command: {r}"
        r = c.cmd(f"RCPT TO:<{ALICE}>")
        assert r.code == 503, f"RCPT before MAIL: {r}"
        r = c.cmd("DATA")
        assert r.code in (503, 554), f"DATA before MAIL: {r}"
        c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
        r = c.cmd(f"MAIL FROM:<{OUTSIDER}>")
        assert r.code == 503, f"nested MAIL: {r}"
        r = c.cmd("DATA")
        assert r.code in (503, 554), f"DATA without any RCPT: {r}"
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("RSET", 250)
        r = c.cmd("DATA")
        assert r.code in (503, 554), f"DATA after RSET: {r}"
        r = c.cmd("")
        assert 500 <= r.code < 600, f"empty command line: {r}"
        r = c.cmd("BDAT 10 LAST")  # CHUNKING is not advertised
        assert 500 <= r.code < 600, f"BDAT without CHUNKING: {r}"
        _deliver_on(c, ALICE, tok)
        c.expect("QUIT", 221)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


@pytest.mark.parametrize(
    "line",
    [
        "MAIL FROM:alice@remote.test",  # no angle brackets
        "MAIL FROM:<a@@remote.test>",
        "MAIL FROM:<sender@remote.test> FROB=1",  # unknown parameter
        "MAIL FROM:<sender@remote.test> SIZE=lots",
        "MAIL FROM:<sender@remote.test",
        "MAIL TO:<sender@remote.test>",
    ],
)
def test_malformed_mail_from_is_5xx(server, line):
    with _greeted(server) as c:
        r = c.cmd(line)
        assert 500 <= r.code < 600, f"{line!r}: {r}"
        _deliver_on(c, ALICE, "after bad MAIL")


@pytest.mark.parametrize(
    "line",
    ["RCPT TO:<a@@example.test>", "RCPT TO:alice", "RCPT TO:<>", "RCPT TO:<alice@>",
     "RCPT TO:<alice@example.test> FROB=1"],
)
def test_malformed_rcpt_to_is_5xx(server, line):
    with _greeted(server) as c:
        c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
        r = c.cmd(line)
        assert 500 <= r.code < 600, f"{line!r}: {r}"
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(make_message(OUTSIDER, ALICE, "after bad RCPT") + b".\r\n")
        assert c.reply().code == 250


def test_binary_garbage_and_nul_in_commands(server):
    with _greeted(server) as c:
        for junk in (b"MAIL FROM:<\xff\xfe@remote.test>", b"NO\x00OP", b"\xc3\x28\xa0\xa1",
                     b"RCPT TO:<\x00@example.test>"):
            c.send(junk + b"\r\n")
            r = c.reply()
            assert 500 <= r.code < 600, f"{junk!r}: {r}"
        c.expect("NOOP", 250)
        _deliver_on(c, ALICE, "after garbage")


def test_ehlo_with_control_characters_is_not_echoed_or_stored(server):
    """A refused EHLO is fine; a 250 that echoes the bytes, or a Received that stores them,
    is header/reply injection."""
    tok = token()
    with server.raw() as c:
        assert c.reply().code == 220
        c.send(b"EHLO evil\x00\x01\x1b[31mname\r\n")
        r = c.reply()
        if r.code != 250:
            assert 500 <= r.code < 600, f"EHLO with control characters: {r}"
            c.expect(f"EHLO {CLIENT_NAME}", 250)
        else:
            assert not any(ord(ch) < 32 for ch in r.text if ch != "\n"), (
                f"control characters echoed in the EHLO reply: {r.lines[0]!r}"
            )
        _deliver_on(c, ALICE, tok)
    (raw,) = server.wait_for_messages(ALICE, 1)
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    bad = sorted({b for b in head if b < 32 and b not in (9, 10, 13)})
    assert not bad, f"control bytes {bad} stored in the header: {head[:300]!r}"


def test_null_sender_is_accepted_on_mx(server):
    """Bounces come from <>; the MX must take them."""
    tok = token()
    with server.smtp() as s:
        assert_reply(s.mail("<>"), 250, what="MAIL FROM:<>")
        assert_reply(s.rcpt(ALICE), 250)
        assert_reply(s.data(make_message("mailer-daemon@remote.test", ALICE, tok)), 250)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


def test_helo_instead_of_ehlo(server):
    tok = token()
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"HELO {CLIENT_NAME}", 250)
        _deliver_on(c, ALICE, tok)
        c.expect("QUIT", 221)
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


def test_disconnect_mid_data_delivers_nothing(server):
    tok = token()
    c = _greeted(server)
    c.expect(f"MAIL FROM:<{OUTSIDER}>", 250)
    c.expect(f"RCPT TO:<{ALICE}>", 250)
    c.expect("DATA", 354)
    c.send(make_message(OUTSIDER, ALICE, f"half {tok}", "part of a message\r\n" * 100))
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    # the server is fine, and the half message never shows up
    tok2 = token()
    with server.smtp() as s:
        s.sendmail(OUTSIDER, [ALICE], make_message(OUTSIDER, ALICE, tok2))
    server.wait_for_messages(ALICE, 1)
    wait_until(lambda: server.queue_list() == [], 10, "the queue to drain")
    subjects = [parse(m)["Subject"] for m in server.messages(ALICE)]
    assert subjects == [tok2], subjects


def test_garbage_instead_of_tls_handshake(server):
    with _greeted(server, "submission") as c:
        c.expect("STARTTLS", 220)
        try:
            c.send(b"this is not a TLS ClientHello\r\n" * 4)
            c.sock.settimeout(5)
            c.sock.recv(1024)  # an alert or EOF; either is fine
        except OSError:
            pass
    # plain text to the implicit-TLS port
    s = socket.create_connection(("127.0.0.1", server.submissions_port), timeout=5)
    try:
        s.sendall(b"EHLO plain.text\r\n")
        s.settimeout(5)
        try:
            s.recv(1024)
        except OSError:
            pass
    finally:
        s.close()
    with server.submission(user=ALICE) as sub:
        assert_reply(sub.mail(ALICE), 250)


def test_tls_client_that_leaves_mid_handshake(server):
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", server.submissions_port), timeout=5)
        s.close()
    ctx = ssl.create_default_context()  # verifies: the self-signed cert is refused client-side
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", server.submissions_port), timeout=5) as s:
            ctx.wrap_socket(s, server_hostname="mx.example.test")
    with server.submissions(user=ALICE) as sub:
        assert_reply(sub.mail(ALICE), 250)


def test_bad_auth_input(server):
    with server.raw("submission") as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        c.starttls()
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        r = c.cmd("AUTH PLAIN !!!not-base64!!!")
        assert r.code == 501, f"AUTH with bad base64: {r}"
        r = c.cmd("AUTH CRAM-SHA999")
        assert r.code == 504, f"AUTH with an unknown mechanism: {r}"
        r = c.cmd("AUTH LOGIN")
        assert r.code == 334, r
        r = c.cmd("*")  # client cancels the exchange (RFC 4954)
        assert r.code == 501, f"cancelled AUTH: {r}"
        cred = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        c.expect(f"AUTH PLAIN {cred}", 235)
        r = c.cmd(f"AUTH PLAIN {cred}")
        assert r.code == 503, f"AUTH twice: {r}"
        c.expect(f"MAIL FROM:<{ALICE}>", 250)
        c.expect("QUIT", 221)


def test_disabled_user_cannot_authenticate(server):
    server.cli_ok("user", "disable", ALICE)
    with server.submission() as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as ei:
            s.login(ALICE, PASSWORD)
        assert ei.value.smtp_code == 535, ei.value


def test_max_connections_refuses_the_extra_one(make_server):
    server = make_server(limits__max_connections=2)

    def two_admitted():
        # The harness's readiness probes may still count for a moment: retry until
        # the server has let them go and admits two of ours.
        a, b = server.raw(), server.raw()
        if a.reply().code == 220 and b.reply().code == 220:
            return a, b
        a.close()
        b.close()
        return None

    first, second = wait_until(two_admitted, 10, "two sessions admitted with max 2")
    try:
        with server.raw() as third:
            try:
                r = third.reply()
            except EOFError:
                r = None
            assert r is not None and r.code == 421, f"3rd connection with max 2: {r}"
        # the two admitted sessions still work
        first.expect(f"EHLO {CLIENT_NAME}", 250)
        second.expect(f"EHLO {CLIENT_NAME}", 250)
    finally:
        first.close()
        second.close()

    # once they are gone, a new session is admitted
    def admitted():
        with server.raw() as c:
            try:
                return c.reply().code == 220
            except EOFError:
                return False

    wait_until(admitted, 10, "a new session after the others closed")


def test_idle_client_is_dropped_after_command_timeout(make_server):
    server = make_server(limits__command_timeout="1s")
    with server.raw(timeout=15) as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        replies = c.replies_until_close(timeout=15)  # say nothing; wait for the server
        assert replies and replies[-1].code == 421, [str(r) for r in replies]
    with server.smtp() as s:
        assert s.noop()[0] == 250


def test_large_message_arrives_byte_exact(server):
    """3 MB (past the spool's in-memory threshold) with every byte value class."""
    lines = [hashlib.sha256(str(i).encode()).hexdigest() * 2 for i in range(24000)]
    body = "\r\n".join(lines) + "\r\n"
    msg = make_message(OUTSIDER, ALICE, "large", body)
    with server.smtp(timeout=60) as s:
        s.sendmail(OUTSIDER, [ALICE], msg)
    (raw,) = server.wait_for_messages(ALICE, 1, timeout=30)
    got = raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else raw.split(b"\n\n", 1)[1]
    want = body.encode()
    if b"\r\n" not in got:  # stored with LF line ends (Maildir convention)
        want = want.replace(b"\r\n", b"\n")
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest(), (
        f"body changed: {len(got)} bytes stored, {len(want)} sent"
    )


def test_rcpt_to_other_users_in_one_transaction(server):
    tok = token()
    with server.smtp() as s:
        s.sendmail(OUTSIDER, [ALICE, BOB, ALICE], make_message(OUTSIDER, [ALICE, BOB], tok))
    for u in (ALICE, BOB):
        server.wait_for_messages(u, 1)
    wait_until(lambda: server.queue_list() == [], 10, "the queue to drain")
    assert len(server.messages(ALICE)) == 1, "a duplicate RCPT delivered twice"


@pytest.mark.parametrize("kind", ["smtp", "submission"])
def test_starttls_command_injection_is_not_executed(server, kind):
    """Plaintext sent after STARTTLS in the same packet must not run inside TLS
    (the CVE-2011-0411 class)."""
    with _greeted(server, kind) as c:
        c.send(b"STARTTLS\r\nNOOP\r\n")
        r = c.reply()
        assert r.code == 220, f"STARTTLS: {r}"
        assert not c.buf, f"the injected command was answered in plaintext: {c.buf!r}"
        try:
            c.sock = ssl_context().wrap_socket(c.sock)
            c.send(f"EHLO {CLIENT_NAME}\r\n")
            first = c.reply()
        except (OSError, EOFError):
            return  # refusing the session outright is also safe
        assert len(first.lines) > 1 and "PIPELINING" in first.text, (
            f"first reply inside TLS is not the EHLO reply (injected NOOP ran?): {first}"
        )
        c.expect("QUIT", 221)


def test_sigterm_with_idle_clients_stops_promptly(server):
    idle = [server.raw() for _ in range(3)]
    for c in idle:
        assert c.reply().code == 220
    idle[0].expect(f"EHLO {CLIENT_NAME}", 250)
    idle[1].expect(f"HELO {CLIENT_NAME}", 250)
    idle[1].expect(f"MAIL FROM:<{OUTSIDER}>", 250)
    t0 = time.monotonic()
    server.stop()
    took = time.monotonic() - t0
    assert not server.problems, server.problems
    assert took < 10, f"SIGTERM took {took:.1f}s with idle clients connected"
    for c in idle:
        try:
            rest = c.replies_until_close(timeout=5)
        except TimeoutError:
            raise AssertionError("a client connection stayed open after the server stopped") \
                from None
        assert all(r.code == 421 for r in rest), [str(r) for r in rest]
        c.close()
