"""Connection resources under abuse: no client can keep a session slot it does
not use, nor take every slot from one address.

Each test runs hostile clients (TLS resets, idle floods, slow senders) against
one server and checks, throughout, that a well-behaved smtplib/imaplib client
is still served promptly, and at the end that the server's session table (as
`pillarbox status` reports it over the control socket) is back where it was.
"""

from __future__ import annotations

import imaplib
import os
import re
import select
import smtplib
import socket
import ssl
import struct
import time
from contextlib import contextmanager

from .support import (
    ALICE,
    BOB,
    CLIENT_NAME,
    PASSWORD,
    make_message,
    token,
    wait_until,
)
from .support import client_ssl_context as new_client_context

_CLIENT_TLS = new_client_context()  # made once: loading the CA store takes ~40 ms


def client_ssl_context() -> ssl.SSLContext:
    return _CLIENT_TLS


PROMPT = 2.0  # seconds a well-behaved client's whole transaction may take
SHORT = {"limits.command_timeout": "1s"}  # the deadlines the slow-sender tests meet
# Long enough that no sweep can clean up a leak during a test: what is freed
# at once was freed by the connection itself.
LONG = {"limits.command_timeout": "60s"}


# -- observing the server ------------------------------------------------------


def live_sessions(srv) -> dict[str, int]:
    """The server's count of live connections per protocol, from the control socket."""
    fd = os.open(srv.data_dir, os.O_RDONLY | os.O_DIRECTORY)  # AF_UNIX paths are short
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(f"/proc/self/fd/{fd}/control.sock")
            s.sendall(b"status\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                assert chunk, f"control socket closed after {data!r}"
                data += chunk
    finally:
        os.close(fd)
    reply = data.decode().strip()
    assert reply.startswith("ok "), f"status over the control socket: {reply!r}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", reply)}


def wait_sessions(srv, expected: dict[str, int], timeout: float = 3.0) -> None:
    last: list[dict[str, int]] = []

    def back() -> bool:
        try:
            last[:] = [live_sessions(srv)]
        except (FileNotFoundError, ConnectionRefusedError):
            return False  # the control socket comes up just after the ports
        return all(last[0].get(k) == v for k, v in expected.items())

    try:
        wait_until(back, timeout, f"sessions {expected}")
    except AssertionError as e:
        raise AssertionError(f"{e}; the server reports {last[0] if last else '?'}") from None


class LocalIMAP(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS from another loopback address (not the flooded one)."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, ssl_context=client_ssl_context(), timeout=PROMPT)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def assert_served(srv, source: str = "127.0.0.1") -> None:
    """A mail sent with smtplib and a mailbox opened with imaplib, each promptly."""
    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname=CLIENT_NAME,
                      timeout=PROMPT, source_address=(source, 0)) as s:
        s.sendmail(BOB, [ALICE], make_message(BOB, ALICE, f"served {token()}"))
    took = time.monotonic() - start
    assert took < PROMPT, f"an SMTP transaction took {took:.1f}s"
    start = time.monotonic()
    c = LocalIMAP(srv.imaps_port, source)
    c.login(ALICE, PASSWORD)
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    took = time.monotonic() - start
    assert took < PROMPT, f"an IMAP login/select/logout took {took:.1f}s"


# -- hostile clients ------------------------------------------------------------


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a scanner or a crashed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until(sock: socket.socket, pattern: bytes, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while not re.search(pattern, data):
        chunk = sock.recv(65536)
        assert chunk, f"closed before {pattern!r}; got {data!r}"
        data += chunk
    return data


def starttls(kind: str, port: int) -> socket.socket:
    """A plain connection that has just been told to begin TLS."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind == "smtp":
        read_until(s, rb"^220 .*\r\n")
        s.sendall(b"STARTTLS\r\n")
        read_until(s, rb"220 [^\r\n]*\r\n")
    else:
        read_until(s, rb"^\* OK .*\r\n")
        s.sendall(b"s STARTTLS\r\n")
        read_until(s, rb"s OK [^\r\n]*\r\n")
    return s


def half_handshake(sock: socket.socket) -> None:
    """Send a ClientHello and wait for the server's first flight, then stop:
    the server is now in the middle of its handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ssl_context().wrap_bio(incoming, outgoing)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(outgoing.read())
    sock.settimeout(5)
    assert sock.recv(65536), "no ServerHello"


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"",
                  every: float = 0.2) -> float:
    """Send `trickle` a piece at a time, `every` seconds, until the server closes;
    return when it did. Fails if it has not closed after `seconds`."""
    start = time.monotonic()
    pieces = [trickle[i:i + 1] for i in range(len(trickle))] if len(trickle) < 100 else [
        trickle[i:i + 50] for i in range(0, len(trickle), 50)]
    while time.monotonic() - start < seconds:
        if pieces:
            try:
                sock.sendall(pieces.pop(0))
            except OSError:
                return time.monotonic() - start
        ready = select.select([sock], [], [], every)[0]
        if ready or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            try:
                while sock.recv(65536):  # a goodbye line, then the end
                    pass
            except (OSError, ssl.SSLError):
                pass
            return time.monotonic() - start
        if not pieces and trickle:
            raise AssertionError("the trickle ran out before the server closed")
    raise AssertionError(f"the connection was still open after {seconds:.0f}s")


# -- the tests --------------------------------------------------------------------


def test_starttls_then_reset_frees_the_slot_at_once(make_server):
    """sslscan-style STARTTLS probes cut by RST (before, during and after the
    handshake), and implicit-TLS handshakes cut alike: every slot comes back at
    once, and other clients are served throughout."""
    srv = make_server(LONG)
    base = {"smtp": 0, "imap": 0}  # no client yet (the start-up probes are gone)
    wait_sessions(srv, base)
    targets = [("smtp", srv.submission_port), ("imap", srv.imap_port)]
    for i in range(1000):
        for kind, port in targets:
            s = starttls(kind, port)
            if i % 3 == 1:
                half_handshake(s)
            elif i % 3 == 2:
                s = client_ssl_context().wrap_socket(s)
            reset(s)
        if i % 10 == 0:  # the implicit-TLS ports, cut mid-handshake
            for port in (srv.submissions_port, srv.imaps_port):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                half_handshake(s)
                reset(s)
        if i % 200 == 199:
            assert_served(srv)
    wait_sessions(srv, base)
    assert_served(srv)
    log = srv.log_text()
    assert re.search(r"TLS handshake failed (client=unknown\[|.*peer=)127\.0\.0\.1", log), \
        "a failed handshake is logged with the peer's address"


def test_idle_flood_from_one_address_takes_only_its_share(make_server):
    """1,000 idle connections from one address: up to the per-address limit are
    served, the rest refused with 421 4.7.0 (on any SMTP port), other addresses
    are served throughout, and the slots come back when the flood ends."""
    srv = make_server(LONG)
    base = {"smtp": 0, "imap": 0}  # no client yet (the start-up probes are gone)
    wait_sessions(srv, base)
    flood, greetings = [], []
    try:
        for _ in range(1000):
            s = socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=5)
            flood.append(s)
            greetings.append(read_until(s, rb"\r\n"))
        admitted = [g for g in greetings if g.startswith(b"220 ")]
        refused = [g for g in greetings if g.startswith(b"421 4.7.0 ")]
        assert len(admitted) == 50, f"{len(admitted)} admitted from one address (limit 50)"
        assert len(refused) == 950, f"refused: {len(refused)}; e.g. {greetings[-1]!r}"
        with socket.create_connection(("127.0.0.1", srv.submission_port), timeout=5) as s:
            assert read_until(s, rb"\r\n").startswith(b"421 4.7.0 "), \
                "the submission port shares the per-address limit"
        assert_served(srv, source="127.0.0.2")
        assert live_sessions(srv)["smtp"] == base["smtp"] + 50
    finally:
        for s in flood:
            s.close()
    wait_sessions(srv, base)
    assert_served(srv)


def test_command_line_sent_byte_by_byte_is_cut_at_the_command_deadline(make_server):
    """One byte every 0.2 s no longer holds a session: a command must be
    complete within limits.command_timeout (1 s here) of its first byte,
    before login and after, on SMTP and IMAP, also while imap.idle_timeout
    (longer) would allow the silence between commands."""
    srv = make_server(SHORT, imap__idle_timeout="30m")
    base = {"smtp": 0, "imap": 0}  # no client yet (the start-up probes are gone)
    wait_sessions(srv, base)

    def smtp() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=5)
        read_until(s, rb"^220 .*\r\n")
        return s

    def imap() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", srv.imap_port), timeout=5)
        read_until(s, rb"^\* OK .*\r\n")
        return s

    def logged_in() -> socket.socket:
        s = client_ssl_context().wrap_socket(
            socket.create_connection(("127.0.0.1", srv.imaps_port), timeout=5))
        read_until(s, rb"^\* OK .*\r\n")
        s.sendall(f"l LOGIN {ALICE} {PASSWORD}\r\n".encode())
        read_until(s, rb"l OK [^\r\n]*\r\n")
        return s

    for connect, line in ((smtp, b"EHLO a-very-slow-client.example\r\n"),
                          (imap, b"a1 CAPABILITY\r\n" * 3),
                          (logged_in, b"a2 SELECT INBOX\r\n" * 3)):
        sock = connect()
        took = closed_within(sock, 5, trickle=line)
        assert took > 0.8, f"{connect.__name__}: closed after {took:.1f}s, before the deadline"
        sock.close()
        assert_served(srv)
    wait_sessions(srv, base)


def test_data_and_literals_below_the_minimum_rate_are_cut(make_server):
    """DATA and an IMAP literal trickled below limits.min_data_rate (500 B/s by
    default) are closed; DATA above that rate may take longer than
    limits.command_timeout (1 s here)."""
    srv = make_server(SHORT)
    base = {"smtp": 0, "imap": 0}  # no client yet (the start-up probes are gone)
    wait_sessions(srv, base)
    # Above the rate for 2.5 s, so longer than the command timeout: accepted.
    s = socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=5)
    read_until(s, rb"^220 .*\r\n")
    s.sendall(f"EHLO {CLIENT_NAME}\r\nMAIL FROM:<{BOB}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n"
              .encode())
    read_until(s, rb"354 [^\r\n]*\r\n")
    body = make_message(BOB, ALICE, "steady", body=("x" * 70 + "\r\n") * 70)
    start = time.monotonic()
    for i in range(0, len(body), 500):  # 2,000 B/s
        s.sendall(body[i:i + 500])
        time.sleep(0.25)
    assert time.monotonic() - start > 1.5
    s.sendall(b".\r\n")
    assert read_until(s, rb"\r\n").startswith(b"250 "), "DATA above the minimum rate"
    s.close()

    # Below the rate (50 B every 0.2 s, 250 B/s): closed.
    s = socket.create_connection(("127.0.0.1", srv.smtp_port), timeout=5)
    read_until(s, rb"^220 .*\r\n")
    s.sendall(f"EHLO {CLIENT_NAME}\r\nMAIL FROM:<{BOB}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n"
              .encode())
    read_until(s, rb"354 [^\r\n]*\r\n")
    took = closed_within(s, 6, trickle=body * 3)
    assert took > 0.8, f"DATA closed after {took:.1f}s"
    s.close()
    assert_served(srv)

    imap = client_ssl_context().wrap_socket(
        socket.create_connection(("127.0.0.1", srv.imaps_port), timeout=5))
    read_until(imap, rb"^\* OK .*\r\n")
    imap.sendall(f"l LOGIN {ALICE} {PASSWORD}\r\n".encode())
    read_until(imap, rb"l OK [^\r\n]*\r\n")
    imap.sendall(b"a APPEND INBOX {%d}\r\n" % (len(body) * 3))
    read_until(imap, rb"\+ [^\r\n]*\r\n")
    took = closed_within(imap, 6, trickle=body * 3)
    assert took > 0.8, f"literal closed after {took:.1f}s"
    imap.close()
    assert_served(srv)
    wait_sessions(srv, base)


def test_stalled_tls_handshakes_are_cut_at_the_command_deadline(make_server):
    """A handshake that stops half-way (STARTTLS or implicit TLS) is closed by
    the command deadline, not after asyncio's own handshake timeouts."""
    srv = make_server(SHORT)
    base = {"smtp": 0, "imap": 0}  # no client yet (the start-up probes are gone)
    wait_sessions(srv, base)
    socks = []
    for kind, port in (("smtp", srv.submission_port), ("imap", srv.imap_port)):
        s = starttls(kind, port)
        half_handshake(s)
        socks.append(s)
    for port in (srv.submissions_port, srv.imaps_port):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))  # says nothing
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        half_handshake(s)
        socks.append(s)
    for s in socks:
        closed_within(s, 5)
        s.close()
    assert_served(srv)
    wait_sessions(srv, base)


@contextmanager
def tls_over(sock: socket.socket):
    """A TLS client on memory buffers, so the test sees TCP EOF and TLS close apart."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ssl_context().wrap_bio(incoming, outgoing)
    sock.settimeout(5)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    if outgoing.pending:
        sock.sendall(outgoing.read())
    yield obj, incoming, outgoing


def tls_send(sock, obj, outgoing, data: bytes) -> None:
    obj.write(data)
    sock.sendall(outgoing.read())


def assert_prompt_tls_close(sock: socket.socket, obj, incoming, final: bytes) -> None:
    """After the final reply: close_notify, then the TCP connection ends, at once."""
    start = time.monotonic()
    sock.settimeout(PROMPT)
    raw = b""
    while data := _recv(sock, final, raw):
        raw += data
    assert time.monotonic() - start < PROMPT
    incoming.write(raw)
    incoming.write_eof()
    plain = b""
    try:  # b"" (or SSLZeroReturnError): a close_notify came before the TCP end
        while chunk := obj.read(65536):
            plain += chunk
    except ssl.SSLZeroReturnError:
        pass
    except ssl.SSLError as e:
        raise AssertionError(f"no TLS close_notify before the TCP end: {e!r}; "
                             f"got {plain!r}") from None
    assert final in plain, f"final reply {final!r} not in {plain!r}"


def _recv(sock: socket.socket, final: bytes, before: bytes) -> bytes:
    try:
        return sock.recv(65536)
    except TimeoutError:
        raise AssertionError(f"TCP still open {PROMPT:.0f}s after {final!r} "
                             f"({len(before)} bytes of TLS records came)") from None


def test_quit_and_logout_over_tls_close_at_once(make_server):
    """QUIT / LOGOUT over TLS: close_notify and the end of the connection follow
    the final reply at once, without waiting for the client's close_notify."""
    srv = make_server(LONG)
    base = {"smtp": 0, "imap": 0}  # no client yet (the start-up probes are gone)
    wait_sessions(srv, base)
    for kind, port in (("smtp", srv.submission_port), ("imap", srv.imap_port),
                       ("smtps", srv.submissions_port), ("imaps", srv.imaps_port)):
        sock = starttls(kind, port) if kind in ("smtp", "imap") else \
            socket.create_connection(("127.0.0.1", port), timeout=5)
        with tls_over(sock) as (obj, incoming, outgoing):
            if kind.startswith("smtp"):
                tls_send(sock, obj, outgoing, f"EHLO {CLIENT_NAME}\r\nQUIT\r\n".encode())
                final = b"221 "
            else:
                tls_send(sock, obj, outgoing, b"q LOGOUT\r\n")
                final = b"q OK"
            assert_prompt_tls_close(sock, obj, incoming, final)
        sock.close()
    wait_sessions(srv, base)
