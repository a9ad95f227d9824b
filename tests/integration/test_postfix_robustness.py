"""The Postfix-side listeners (tcp_table maps, policy service) against idle,
slow, greedy and garbage-sending clients: each gets its protocol's error or
is cut off after postfix.idle_timeout, and other connections go on."""

from __future__ import annotations

import socket
import time

import pytest

from .support import ALICE, DOMAIN, free_ports, port_open, wait_until

IDLE = 0.5


@pytest.fixture
def listeners(make_server):
    access, policy = free_ports(2)
    srv = make_server({"postfix.recipient_access": [f"127.0.0.1:{access}"],
                       "postfix.policy": [f"127.0.0.1:{policy}"],
                       "postfix.idle_timeout": IDLE})
    for port in (access, policy):
        wait_until(lambda port=port: port_open(port), 10, f"port {port}")
    srv.access_port, srv.policy_port = access, policy
    return srv


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_within(sock: socket.socket, limit: float, dribble: bytes = b"") -> float:
    """Seconds until the server closes `sock` (sending `dribble` every 0.1 s
    meanwhile); fails if it is still open after `limit`."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < limit:
        try:
            if dribble:
                sock.sendall(dribble)
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # reset: closed too
            return time.monotonic() - start
    raise AssertionError(f"connection still open after {limit} s")


def _lines(sock: socket.socket, n: int) -> list[bytes]:
    f = sock.makefile("rb")
    return [f.readline() for _ in range(n)]


# -- tcp_table ---------------------------------------------------------------------


def test_tcp_table_idle_client_is_cut_off(listeners):
    with _connect(listeners.access_port) as idle:
        assert _closed_within(idle, 5) >= IDLE * 0.9
    with _connect(listeners.access_port) as busy:  # a request at a time keeps it open
        for _ in range(2 * round(IDLE / 0.1)):
            busy.sendall(f"get {ALICE}\n".encode())
            assert _lines(busy, 1) == [b"200 OK\n"]
            time.sleep(0.1)


def test_tcp_table_slow_request_is_cut_off(listeners):
    """A byte every 0.1 s never completes a line: that does not keep the connection."""
    with _connect(listeners.access_port) as slow:
        slow.sendall(b"get ")
        assert _closed_within(slow, 5, dribble=b"a") < 3


def test_tcp_table_garbage_gets_400_and_the_connection_goes_on(listeners):
    with _connect(listeners.access_port) as t:
        t.sendall(b"\x00\xff\x16\x03\x01 garbage\n" + b"x" * 10000 + b"\n"
                  + f"get {ALICE}\nget nobody@{DOMAIN}\n".encode())
        got = _lines(t, 4)
        assert got[0].startswith(b"400 ") and got[1] == b"400 request too long\n", got
        assert got[2] == b"200 OK\n" and got[3].startswith(b"500 "), got


def test_tcp_table_a_thousand_pipelined_requests_are_answered_in_order(listeners):
    keys = [ALICE if i % 3 else f"nobody{i}@{DOMAIN}" for i in range(1000)]
    with _connect(listeners.access_port) as t:
        t.sendall(b"".join(f"get {k}\n".encode() for k in keys))
        got = _lines(t, 1000)
    assert [g == b"200 OK\n" for g in got] == [bool(i % 3) for i in range(1000)]


def test_tcp_table_a_client_that_never_reads_does_not_hold_others_up(listeners):
    """One connection floods requests without reading a reply: the server stops
    reading it (its replies have nowhere to go) and others are answered."""
    flood = _connect(listeners.access_port)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = f"get {ALICE}\n".encode() * 10000
    flood.settimeout(0.5)
    sent = 0
    try:
        while sent < 200 * len(chunk):  # stops when the server stops reading
            sent += flood.send(chunk)
    except (TimeoutError, ConnectionError):  # blocked, or cut off (postfix.idle_timeout)
        pass
    assert sent < 200 * len(chunk), "the server read 38 MB of requests nobody reads replies to"
    with _connect(listeners.access_port) as other:
        start = time.monotonic()
        other.sendall(f"get {ALICE}\n".encode())
        assert _lines(other, 1) == [b"200 OK\n"]
        assert time.monotonic() - start < 1
    flood.close()


# -- policy --------------------------------------------------------------------------


def _policy_request(**attrs: str) -> bytes:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
            "client_address": "192.0.2.1", "sender": "a@remote.test", "recipient": ALICE}
    base.update(attrs)
    return "".join(f"{k}={v}\n" for k, v in base.items()).encode() + b"\n"


def test_policy_idle_and_slow_clients_are_cut_off(listeners):
    with _connect(listeners.policy_port) as idle:
        assert _closed_within(idle, 5) >= IDLE * 0.9
    with _connect(listeners.policy_port) as slow:  # one attribute line every 0.1 s
        assert _closed_within(slow, 5, dribble=b"x=y\n") < 3


def test_policy_garbage_gets_defer_if_permit_and_others_go_on(listeners):
    with _connect(listeners.policy_port) as other, _connect(listeners.policy_port) as bad:
        bad.sendall(b"\x00\xff\x16\x03\x01 garbage\n\n")
        f = bad.makefile("rb")
        assert f.readline().startswith(b"action=DEFER_IF_PERMIT 4.3.0 ")
        assert f.readline() == b"\n"
        other.sendall(_policy_request())
        assert _lines(other, 2) == [b"action=DUNNO\n", b"\n"]


def test_policy_a_thousand_pipelined_requests_are_all_answered(listeners):
    with _connect(listeners.policy_port) as p:
        p.sendall(b"".join(_policy_request(instance=f"m{i}") for i in range(1000)))
        got = _lines(p, 2000)
    assert got == [b"action=DUNNO\n", b"\n"] * 1000
