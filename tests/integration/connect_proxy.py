"""A small HTTP CONNECT proxy on 127.0.0.1 that plays the internet for a client.

A client that cannot be pointed at a DNS server (Delta Chat resolves names with
the system resolver and fetches autoconfig from port 443) is given this proxy
instead: it asks for `CONNECT host:port`, and the proxy opens a plain TCP
tunnel to the 127.0.0.1 port the test mapped that (host, port) to. TLS runs
end to end through the tunnel, as through any HTTP proxy. A target not in the
map gets `403` and no connection. Every request is recorded in `requests`
("host:port", lower-case), so a test sees what the client reached for.

Only the standard library; one thread per tunnel direction.
"""

from __future__ import annotations

import socket
import socketserver
import threading

MAX_HEAD = 8192


class ConnectProxy:
    """CONNECT tunnels to 127.0.0.1 for the mapped (host, port); start() binds a free port."""

    def __init__(self, routes: dict[tuple[str, int], int]) -> None:
        self.routes = {(h.lower(), p): local for (h, p), local in routes.items()}
        self.port = 0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._open: set[socket.socket] = set()  # tunnels' sockets, closed by stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    proxy._serve(self.request)
                except OSError:  # the client went away mid-request
                    pass

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(1024)
            if not chunk or len(head) > MAX_HEAD:
                return
            head += chunk
        head, _, early = head.partition(b"\r\n\r\n")  # early: bytes sent before our answer
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        target = parts[1].lower() if len(parts) == 3 and parts[0] == "CONNECT" else ""
        host, _, port = target.rpartition(":")
        with self._lock:
            self.requests.append(target or request_line)
        local = self.routes.get((host, int(port))) if port.isdigit() else None
        if local is None:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", local), timeout=10)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with self._lock:
            self._open.update((client, upstream))
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if early:
                upstream.sendall(early)
            client.settimeout(None)
            upstream.settimeout(None)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join(30)
        with self._lock:
            self._open.difference_update((client, upstream))


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until src closes, then pass the half-close on."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
