"""RFC 4978 COMPRESS=DEFLATE: raw DEFLATE both ways after the tagged OK, under
the same limits as plain input (a decompression bomb costs no memory)."""

from __future__ import annotations

import re
import socket
import zlib
from pathlib import Path

from .imap_raw import RawIMAP
from .support import ALICE, BOB, PASSWORD, make_message


class Deflated:
    """The compressed side of a RawIMAP connection after COMPRESS DEFLATE."""

    def __init__(self, c: RawIMAP) -> None:
        self.c = c
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.pending = b""
        self.n = 0

    def send_raw(self, data: bytes) -> None:
        self.c.sock.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def line(self) -> bytes:
        while b"\r\n" not in self.pending:
            chunk = self.c.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.pending += self.inflate.decompress(chunk)
        line, _, self.pending = self.pending.partition(b"\r\n")
        m = re.search(rb"\{(\d+)\}$", line)
        if m:  # a literal follows, then the rest of the line
            n = int(m.group(1))
            while len(self.pending) < n:
                self.pending += self.inflate.decompress(self.c.sock.recv(65536))
            line += b"\r\n" + self.pending[:n]
            self.pending = self.pending[n:]
            line += self.line()
        return line

    def cmd(self, text: bytes | str) -> tuple[list[bytes], bytes]:
        self.n += 1
        tag = b"z%d" % self.n
        self.send_raw(tag + b" " + (text.encode() if isinstance(text, str) else text) + b"\r\n")
        untagged = []
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                return untagged, line[len(tag) + 1:]
            untagged.append(line)


def _compressed(c: RawIMAP) -> Deflated:
    _, tagged = c.ok("COMPRESS DEFLATE")
    assert tagged.startswith(b"OK")
    return Deflated(c)


def test_compressed_session_works_both_ways(server):
    msg = make_message(BOB, ALICE, "squeezed", body="compress me\r\n" * 5000)
    with RawIMAP(server.imaps_port, ALICE) as c:
        untagged, _ = c.ok("CAPABILITY")
        assert b"COMPRESS=DEFLATE" in untagged[0].split()
        z = _compressed(c)
        _, tagged = z.cmd(b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
        assert tagged.startswith(b"OK [APPENDUID"), tagged
        # a synchronizing literal: the continuation request comes compressed too
        small = make_message(BOB, ALICE, "sync")
        z.send_raw(b"s1 APPEND INBOX {%d}\r\n" % len(small))
        assert z.line().startswith(b"+ ")
        z.send_raw(small + b"\r\n")
        assert z.line().startswith(b"s1 OK [APPENDUID")
        untagged, tagged = z.cmd("SELECT INBOX")
        assert tagged.startswith(b"OK") and b"* 2 EXISTS" in untagged
        untagged, tagged = z.cmd("FETCH 1 (BODY.PEEK[])")
        assert tagged.startswith(b"OK")
        assert untagged[0].endswith(msg + b")")
        # a second COMPRESS is refused, the session goes on
        _, tagged = z.cmd("COMPRESS DEFLATE")
        assert tagged.startswith(b"NO [COMPRESSIONACTIVE]"), tagged
        # IDLE sees another session's APPEND, compressed
        z.send_raw(b"i1 IDLE\r\n")
        assert z.line().startswith(b"+ ")
        with RawIMAP(server.imaps_port, ALICE) as other:
            other.append("INBOX", small)
        assert z.line() == b"* 3 EXISTS"
        z.send_raw(b"DONE\r\n")
        while not (line := z.line()).startswith(b"i1 "):
            pass
        assert line.startswith(b"i1 OK")
        _, tagged = z.cmd("LOGOUT")
        assert tagged.startswith(b"OK")


def test_compress_needs_login_and_a_known_mechanism(server):
    with RawIMAP(server.imaps_port) as c:
        _, tagged = c.cmd("COMPRESS DEFLATE")
        assert tagged.startswith(b"BAD"), tagged
    with RawIMAP(server.imaps_port, ALICE) as c:
        for text in ("COMPRESS X-UNKNOWN", "COMPRESS", "COMPRESS DEFLATE extra"):
            _, tagged = c.cmd(text)
            assert tagged.startswith(b"BAD"), (text, tagged)
        c.ok("NOOP")  # still plain


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


class PlainIMAP(RawIMAP):
    """RawIMAP on the plain port, without STARTTLS: reads arrive in large chunks
    there (no 16 KB TLS records), which is what a bomb needs."""

    def __init__(self, port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()
        self.n = 0
        self.ok(f'LOGIN "{user}" "{PASSWORD}"')


def test_decompression_bomb_is_bounded_like_plain_input(make_server):
    """100 MB of one line, compressed to about 100 KB: inflated only as far as
    the connection's buffer goes, so it is refused as a too-long line, as plain,
    and the server's memory does not follow."""
    srv = make_server(imap__cleartext_login_networks=["127.0.0.1"])
    with PlainIMAP(srv.imap_port, ALICE) as c:
        z = _compressed(c)
        before = _peak_rss(srv.pid)  # argon2 at login set it to 64 MB and more
        chunk = b"a" * (4 << 20)
        z.c.sock.sendall(z.out.compress(b"b1 NOOP ") + b"".join(
            z.out.compress(chunk) for _ in range(25)) + z.out.flush(zlib.Z_SYNC_FLUSH))
        z.send_raw(b"\r\n")
        assert b"too long" in z.line()
        _, tagged = z.cmd("NOOP")
        assert tagged.startswith(b"OK")
        grown = _peak_rss(srv.pid) - before
        assert grown < 32 * 1024 * 1024, f"peak memory grew by {grown // 1024 // 1024} MB"


def test_corrupt_compressed_input_closes_only_that_connection(server):
    with RawIMAP(server.imaps_port, ALICE) as c:
        _compressed(c)
        c.sock.sendall(b"\xff" * 64)  # not a valid DEFLATE block
        assert c.sock.recv(100) == b""  # closed
    with RawIMAP(server.imaps_port, ALICE) as c:
        c.ok("NOOP")
