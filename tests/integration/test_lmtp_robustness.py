"""LMTP shares the SMTP session, and so its deadlines and budgets: a client
that stops in the middle of DATA, or trickles a command, is cut off after
limits.command_timeout (1 s here), and no half message is delivered."""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from .support import ALICE, BOB, free_ports, make_message, port_open, wait_until


@pytest.fixture
def lmtp_server(make_server):
    (port,) = free_ports(1)
    srv = make_server({"listen.lmtp": [f"127.0.0.1:{port}"], "limits.command_timeout": "1s"})
    wait_until(lambda: port_open(port), 10, "the LMTP port")
    srv.lmtp_port = port
    return srv


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    start = time.monotonic()
    got = b""
    sock.settimeout(limit)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"still open after {limit} s; said {got!r}") from None
        except ConnectionError:
            break
        if not chunk:
            break
        got += chunk
    return time.monotonic() - start, got


def _lhlo(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220 ")
    s.sendall(b"LHLO client.test\r\n")
    while not (line := f.readline()).startswith(b"250 "):
        assert line.startswith(b"250-"), line
    return s


def test_lmtp_client_stopping_mid_data_is_cut_off_and_nothing_is_delivered(lmtp_server):
    srv = lmtp_server
    s = _lhlo(srv.lmtp_port)
    s.sendall(f"MAIL FROM:<{BOB}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode())
    f = s.makefile("rb")
    assert [f.readline()[:4] for _ in range(3)] == [b"250 ", b"250 ", b"354 "]
    message = make_message(BOB, ALICE, "half", body="line\r\n" * 200)
    s.sendall(message[: len(message) // 2])  # and then nothing
    took, said = _read_until_closed(s, 6)
    s.close()
    assert said.startswith(b"421 4.4.2 "), said
    assert took < 4, f"a stalled DATA held its connection {took:.1f} s"
    # a whole message afterwards is delivered, and it is the only one
    with smtplib.LMTP("127.0.0.1", srv.lmtp_port) as lmtp:
        lmtp.sendmail(BOB, [ALICE], make_message(BOB, ALICE, "whole"))
    (only,) = srv.wait_for_messages(ALICE, 1)
    assert b"Subject: whole" in only
    assert len(srv.messages(ALICE)) == 1
    assert srv.queue_list() == []


def test_lmtp_command_trickled_a_byte_at_a_time_is_cut_off(lmtp_server):
    s = _lhlo(lmtp_server.lmtp_port)
    s.settimeout(0.1)
    start = time.monotonic()
    said = b""
    for c in b"MAIL FROM:<someone-very-slow@remote.test>\r\n":
        try:
            s.sendall(bytes([c]))
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        said += chunk
    else:
        raise AssertionError("a command sent a byte every 0.1 s was never cut off")
    s.close()
    assert said.startswith(b"421 4.4.2 "), said
    assert time.monotonic() - start < 4


def test_lmtp_overlong_lines_get_their_errors(lmtp_server):
    s = _lhlo(lmtp_server.lmtp_port)
    f = s.makefile("rb")
    s.sendall(b"NOOP " + b"x" * 5000 + b"\r\n")
    assert f.readline().startswith(b"500 5.5.2 ")
    s.sendall(f"MAIL FROM:<{BOB}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode())
    assert [f.readline()[:4] for _ in range(3)] == [b"250 ", b"250 ", b"354 "]
    s.sendall(b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n.\r\n")
    assert f.readline().startswith(b"554 5.6.0 Message has a line longer than 998"), \
        "one reply for the one recipient"
    s.sendall(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (BOB.encode(), ALICE.encode()))
    assert [f.readline()[:4] for _ in range(3)] == [b"250 ", b"250 ", b"354 "]
    s.sendall(b"Subject: NUL\r\n\r\nbinary \x00 garbage \xff\r\n.\r\n")
    assert f.readline().startswith(b"554 5.6.0 Message contains NUL")
    s.close()
    assert lmtp_server.messages(ALICE) == []
