"""A byte-exact IMAP client for the tests: one command, its untagged lines and
its tagged reply, with literals folded into the line they belong to. Real
clients (imaplib, imapclient) hide response codes such as [MODIFIED ...] and
the exact items of an unsolicited FETCH, which these tests must see."""

from __future__ import annotations

import re
import socket

from .support import PASSWORD, client_ssl_context

_LITERAL = re.compile(rb"\{(\d+)\}$")


class RawIMAP:
    def __init__(self, port: int, user: str | None = None, timeout: float = 10) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = client_ssl_context().wrap_socket(sock)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()
        self.n = 0
        if user is not None:
            self.ok(f'LOGIN "{user}" "{PASSWORD}"')

    def line(self) -> bytes:
        """One response line, literals included."""
        out = b""
        while True:
            raw = self.file.readline()
            assert raw, "the server closed the connection"
            raw = raw.rstrip(b"\r\n")
            out += raw
            m = _LITERAL.search(raw)
            if m is None:
                return out
            out += b"\r\n" + self.file.read(int(m.group(1)))

    def cmd(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        """Send `TAG text`; return (untagged lines without "* ", tagged reply after the tag)."""
        self.n += 1
        tag = b"t%d" % self.n
        if isinstance(text, str):
            text = text.encode()
        self.sock.sendall(tag + b" " + text + b"\r\n")
        untagged = []
        while True:
            line = self.line()
            if line.startswith(tag + b" "):
                return untagged, line[len(tag) + 1:]
            assert line.startswith(b"* "), f"unexpected line {line!r}"
            untagged.append(line[2:])

    def ok(self, text: str | bytes) -> tuple[list[bytes], bytes]:
        untagged, tagged = self.cmd(text)
        assert tagged.startswith(b"OK"), f"{text!r}: {tagged!r} after {untagged!r}"
        return untagged, tagged

    def append(self, mailbox: str, message: bytes, flags: str = "") -> bytes:
        """APPEND with a LITERAL+ literal; returns the tagged reply."""
        flag_part = f"({flags}) " if flags else ""
        return self.ok(f"APPEND {mailbox} {flag_part}{{{len(message)}+}}\r\n".encode()
                       + message)[1]

    def close(self) -> None:
        try:
            self.cmd("LOGOUT")
        except (AssertionError, OSError):
            pass
        self.sock.close()

    def __enter__(self) -> RawIMAP:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def code_number(lines: list[bytes] | bytes, code: str) -> int:
    """The number in a response code such as [HIGHESTMODSEQ 12] found among lines."""
    text = lines if isinstance(lines, bytes) else b"\n".join(lines)
    m = re.search(rb"\[" + code.encode() + rb" (\d+)\]", text)
    assert m, f"no [{code} n] in {text!r}"
    return int(m.group(1))


def modseqs(lines: list[bytes]) -> dict[int, int]:
    """{sequence number: MODSEQ} from FETCH lines."""
    out = {}
    for line in lines:
        m = re.match(rb"(\d+) FETCH \(.*MODSEQ \((\d+)\)", line, re.S)
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out
