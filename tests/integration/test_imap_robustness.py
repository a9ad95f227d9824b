"""Malformed and hostile IMAP input: clear BAD replies, limits, and a server
that keeps serving."""

from __future__ import annotations

import socket
import time

from .support import ALICE, PASSWORD, client_ssl_context


class RawIMAP:
    def __init__(self, port: int, tls: bool = True, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            self.sock = client_ssl_context().wrap_socket(self.sock)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until_tag(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            ln = self.line()
            out.append(ln)
            if ln.startswith(tag + b" "):
                return out

    def cmd(self, data: bytes, tag: bytes = b"") -> list[bytes]:
        tag = tag or data.split(b" ", 1)[0]
        self.send(data + b"\r\n")
        return self.until_tag(tag)

    def close(self) -> None:
        self.sock.close()


def login(raw: RawIMAP) -> None:
    assert raw.cmd(f"l LOGIN {ALICE} {PASSWORD}".encode())[-1].startswith(b"l OK")


def test_malformed_commands_get_bad_and_the_session_goes_on(make_server):
    server = make_server(imap__max_bad_commands=50)
    raw = RawIMAP(server.imaps_port)
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
    cases = [
        b"a1 FROBNICATE",
        b"a2 LOGIN onlyuser",
        b'a3 LOGIN "unterminated',
        b"a4 NOOP extra",
        b"a5 SELECT INBOX",  # not logged in
    ]
    for line in cases:
        reply = raw.cmd(line)[-1]
        assert reply.startswith(line.split(b" ")[0] + b" BAD "), (line, reply)
    assert raw.cmd(b"", tag=b"*")[-1].startswith(b"* BAD")
    login(raw)
    for line in [b"b1 FETCH 1 FLAGS",  # nothing selected
                 b"b2 SELECT", b"b3 UID FROB 1"]:
        assert raw.cmd(line)[-1].startswith(line.split(b" ")[0] + b" BAD "), line
    assert raw.cmd(b"b4 SELECT INBOX")[-1].startswith(b"b4 OK [READ-WRITE]")
    for line in [b"b5 FETCH 1:* (FLAGS", b"b6 FETCH 0 FLAGS", b"b7 STORE 1 FLAGS (\\Bogus)",
                 b"b8 SEARCH SINCE yesterday", b"b9 FETCH 5 FLAGS"]:
        assert b" BAD " in raw.cmd(line)[-1], line
    assert raw.cmd(b"c1 NOOP")[-1].startswith(b"c1 OK")
    raw.close()


def test_repeated_bad_commands_disconnect(make_server):
    srv = make_server(imap__max_bad_commands=3)
    raw = RawIMAP(srv.imaps_port)
    raw.cmd(b"x1 BOGUS")
    raw.cmd(b"x2 BOGUS")
    raw.send(b"x3 BOGUS\r\n")
    lines = [raw.line(), raw.line()]
    assert lines[0].startswith(b"x3 BAD") and lines[1].startswith(b"* BYE")
    try:
        raw.line()
        raise AssertionError("connection still open")
    except (EOFError, ConnectionError, OSError):
        pass
    # Others are still served.
    c = srv.imaps(ALICE)
    assert c.noop()[0] == "OK"
    c.logout()


def test_long_line_and_big_literal(make_server):
    srv = make_server(imap__max_line_length="2K", imap__max_literal_size="4K")
    raw = RawIMAP(srv.imaps_port)
    login(raw)
    reply = raw.cmd(b"t1 LIST \"\" " + b"x" * 5000, tag=b"t1")
    assert reply[-1].startswith(b"t1 BAD") and b"too long" in reply[-1]
    raw.send(b"t2 APPEND INBOX {5000}\r\n")
    reply = raw.line()
    assert reply.startswith(b"t2 NO [TOOBIG]"), reply
    # A literal within the limit, sent with LITERAL+ (no wait for "+").
    msg = b"Subject: small\r\n\r\nhi\r\n"
    raw.send(b"t3 APPEND INBOX (\\Seen) {%d+}\r\n%s\r\n" % (len(msg), msg))
    assert raw.until_tag(b"t3")[-1].startswith(b"t3 OK [APPENDUID")
    # A synchronizing literal: the server asks for it with "+".
    raw.send(b"t4 LOGIN {5}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"alice x\r\n")
    assert raw.until_tag(b"t4")[-1].startswith(b"t4 BAD")  # already logged in
    # LITERAL+ over the limit cannot be refused politely: BYE.
    raw.send(b"t5 APPEND INBOX {9000+}\r\n")
    assert raw.line().startswith(b"* BYE [TOOBIG]")
    raw.close()


def test_starttls_drops_pipelined_plaintext(server):
    raw = RawIMAP(server.imap_port, tls=False)
    assert b"LOGINDISABLED" in raw.greeting
    raw.send(b"s1 STARTTLS\r\ns2 LOGIN alice@example.test " + PASSWORD.encode() + b"\r\n")
    assert raw.line().startswith(b"s1 OK")
    raw.sock = client_ssl_context().wrap_socket(raw.sock)
    raw.buf = b""
    assert raw.cmd(b"s3 NOOP")[-1].startswith(b"s3 OK")
    reply = raw.cmd(b"s4 CAPABILITY")
    assert b"LOGINDISABLED" not in reply[0] and b"AUTH=PLAIN" in reply[0]
    raw.close()


def test_idle_timeout_closes_the_connection(make_server):
    srv = make_server(imap__idle_timeout="1s")
    raw = RawIMAP(srv.imaps_port)
    login(raw)
    raw.cmd(b"i1 SELECT INBOX")
    raw.send(b"i2 IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    start = time.monotonic()
    assert raw.line().startswith(b"* BYE")
    assert time.monotonic() - start < 10
    raw.close()


def test_connections_per_ip_limit(make_server):
    srv = make_server(imap__max_connections_per_ip=2)
    a, b = RawIMAP(srv.imaps_port), RawIMAP(srv.imaps_port)
    c = RawIMAP(srv.imaps_port)
    assert c.greeting.startswith(b"* BYE")
    a.close()
    b.close()


def test_shutdown_says_bye(make_server):
    """A graceful stop announces itself (RFC 3501 7.1.5) to sessions in IDLE
    and between commands, over implicit TLS and STARTTLS alike, then closes."""
    srv = make_server()
    idling = RawIMAP(srv.imaps_port)
    login(idling)
    idling.cmd(b"i1 SELECT INBOX")
    idling.send(b"i2 IDLE\r\n")
    assert idling.line().startswith(b"+ ")
    waiting = RawIMAP(srv.imap_port, tls=False)
    assert waiting.cmd(b"s1 STARTTLS")[-1].startswith(b"s1 OK")
    waiting.sock = client_ssl_context().wrap_socket(waiting.sock)
    login(waiting)
    srv.stop()
    for raw in (idling, waiting):
        assert raw.line() == b"* BYE [UNAVAILABLE] Server shutting down"
        try:
            extra = raw.line()
            raise AssertionError(f"connection still open after BYE: {extra!r}")
        except (EOFError, ConnectionError, OSError):
            pass
        raw.close()


def test_literals_in_memory_wait_for_their_share(make_server):
    """imap.max_literal_memory bounds what all sessions hold in literals at once:
    a second APPEND is asked for its data only when the first is done. (Literals
    under 256K are held in memory; larger APPENDs stream to disk, see below.)"""
    srv = make_server(imap__max_literal_size="200K", imap__max_literal_memory="300K")
    first, second = RawIMAP(srv.imaps_port), RawIMAP(srv.imaps_port)
    login(first)
    login(second)
    body = b"Subject: mid\r\n\r\n" + b"y" * 190_000 + b"\r\n"  # two do not fit in 300K
    first.send(b"a1 APPEND INBOX {%d}\r\n" % len(body))
    assert first.line().startswith(b"+ ")
    first.send(body[:1000])  # holds its share while it sends
    second.send(b"b1 APPEND INBOX {%d}\r\n" % len(body))
    second.sock.settimeout(1.0)  # proving an absence needs a bound
    try:
        early = second.line()
    except TimeoutError:
        early = None
    assert early is None, f"the second literal was asked for too soon: {early!r}"
    # A command without a literal from a third session is not held up.
    third = RawIMAP(srv.imaps_port)
    login(third)
    assert third.cmd(b"c1 NOOP")[-1].startswith(b"c1 OK")
    first.send(body[1000:] + b"\r\n")
    assert first.until_tag(b"a1")[-1].startswith(b"a1 OK [APPENDUID")
    second.sock.settimeout(10)
    assert second.line().startswith(b"+ "), "the share freed by the first APPEND"
    second.send(body + b"\r\n")
    assert second.until_tag(b"b1")[-1].startswith(b"b1 OK [APPENDUID")
    for raw in (first, second, third):
        raw.close()


def test_large_appends_stream_to_disk(make_server):
    """An APPEND literal of 256K or more goes to a file in tmp/ as it arrives:
    it takes no memory budget, and a refused one leaves nothing behind."""
    srv = make_server(imap__max_literal_size="5M", imap__max_literal_memory="5M")
    first, second = RawIMAP(srv.imaps_port), RawIMAP(srv.imaps_port)
    login(first)
    login(second)
    bodies = [b"Subject: big %d\r\n\r\n" % i + bytes([0x61 + i]) * 3_000_000 + b"\r\n"
              for i in range(2)]
    first.send(b"a1 APPEND INBOX {%d}\r\n" % len(bodies[0]))
    assert first.line().startswith(b"+ ")
    first.send(bodies[0][:1_000_000])
    # Two 3 MB literals would not fit a 5M budget in memory; streamed, both go ahead.
    second.send(b"b1 APPEND INBOX {%d}\r\n" % len(bodies[1]))
    assert second.line().startswith(b"+ ")
    tmp = srv.maildir(ALICE) / "tmp"
    deadline = time.monotonic() + 10
    while not any(f.stat().st_size >= 1_000_000 for f in tmp.iterdir()):
        assert time.monotonic() < deadline, "the first literal is not being written to tmp/"
        time.sleep(0.02)
    second.send(bodies[1] + b"\r\n")
    assert second.until_tag(b"b1")[-1].startswith(b"b1 OK [APPENDUID")
    first.send(bodies[0][1_000_000:] + b"\r\n")
    assert first.until_tag(b"a1")[-1].startswith(b"a1 OK [APPENDUID")
    stored = sorted(f.read_bytes() for f in (srv.maildir(ALICE) / "cur").iterdir())
    assert stored == sorted(bodies)
    # Refused after the data came (no such mailbox): the tmp/ file goes away.
    first.send(b"a2 APPEND Nowhere {%d+}\r\n%s\r\n" % (len(bodies[0]), bodies[0]))
    assert b"TRYCREATE" in first.until_tag(b"a2")[-1]
    assert list(tmp.iterdir()) == []
    # Only the message may be that large, not the mailbox name before it.
    first.send(b"a3 APPEND {300000+}\r\n" + b"x" * 300_000 + b" {5+}\r\nhello\r\n")
    reply = first.until_tag(b"a3")[-1]
    assert reply.startswith(b"a3 BAD") and b"only taken as an APPEND message" in reply, reply
    assert list(tmp.iterdir()) == []
    assert first.cmd(b"a4 NOOP")[-1].startswith(b"a4 OK")
    first.close()
    second.close()
