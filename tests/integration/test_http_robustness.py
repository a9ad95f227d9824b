"""The HTTP endpoint against slow and greedy clients: a request's header and
body have http.request_timeout, one address has http.max_connections_per_ip
connections, and a normal client is served meanwhile."""

from __future__ import annotations

import socket
import time

from .test_http import get, http_server


def _dribble_until_closed(sock: socket.socket, chunk: bytes, limit: float) -> tuple[float, bytes]:
    """Send `chunk` every 0.2 s until the server closes (or answers and closes);
    (seconds it took, what the server said). A slowloris client."""
    start = time.monotonic()
    said = b""
    sock.settimeout(0.2)
    while time.monotonic() - start < limit:
        try:
            sock.sendall(chunk)
        except OSError:  # reset: cut off
            break
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not data:
            break
        said += data
    return time.monotonic() - start, said


def test_a_slow_header_is_cut_off_while_others_are_served(make_server):
    srv = http_server(make_server, **{"http.request_timeout": "1s"})
    url = f"http://127.0.0.1:{srv.http_port}/healthz"
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=5) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert get(url)[0] == 200  # served while the slow one is open
        took, said = _dribble_until_closed(slow, b"a", 8.0)
    assert took < 4.0, f"a header sent a byte at a time kept its connection {took:.1f} s"
    assert said == b"" or said.startswith(b"HTTP/1.1 408 "), said[:200]
    assert get(url)[0] == 200


def test_a_slow_body_is_cut_off_with_408(make_server):
    srv = http_server(make_server, **{"http.request_timeout": "1s"})
    url = f"http://127.0.0.1:{srv.http_port}/healthz"
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=5) as slow:
        slow.sendall(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: text/xml\r\nContent-Length: 4000\r\n\r\n<Autodiscover>")
        assert get(url)[0] == 200
        took, said = _dribble_until_closed(slow, b" ", 8.0)
    assert took < 4.0, f"a body sent a byte at a time kept its connection {took:.1f} s"
    assert said.startswith(b"HTTP/1.1 408 "), said[:200]
    assert b"Connection: close" in said, said[:400]
    assert get(url)[0] == 200


def test_connections_per_address_are_capped(make_server):
    srv = http_server(make_server, **{"http.max_connections_per_ip": 3})
    url = f"http://127.0.0.1:{srv.http_port}/healthz"
    held = [socket.create_connection(("127.0.0.1", srv.http_port), timeout=5) for _ in range(3)]
    try:
        for s in held:  # each really is a served connection
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", srv.http_port), timeout=5) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := extra.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
        assert b"too many connections" in reply
    finally:
        held.pop().close()
    # a slot is free again once a connection is gone
    deadline = time.monotonic() + 5
    while get(url)[0] != 200:
        assert time.monotonic() < deadline, "no slot came free"
        time.sleep(0.05)
    for s in held:
        s.close()
