"""OpenPGP encryption of small messages in child processes, off the GIL.

pysequoia holds the GIL while it encrypts (about 0.1 ms for 4 KB), so an
encryption in the Maildir writer's thread stops the event loop for as long:
with encryption at rest on, that alone cost a fifth of end-to-end
throughput. A few long-lived children (one per thread encrypting at once, at
most MAX_WORKERS) do the work instead; the calling thread waits in a pipe
read, which releases the GIL. Each child keeps the certificates it parsed
(parsing one costs about as much as an encryption), keyed by their bytes, so
a changed key is parsed afresh.

Protocol (the cleartext only ever crosses a pipe, never a file): request =
4-byte big-endian certificate length, 4-byte plaintext length, the binary
certificate, the plaintext; reply = 1 status byte (0 ok, 1 error), 4-byte
length, then the ASCII-armored message (LF line ends) or the error text. A
child exits at end of input, so it dies with the server.

If a child cannot be started or breaks, the message is encrypted in the
calling thread (as before) and the child is replaced next time.
"""

from __future__ import annotations

import atexit
import struct
import subprocess
import sys
import threading
from typing import BinaryIO

import pysequoia

MAX_WORKERS = 4  # children at most: more threads than that encrypt in-process
_REQ = struct.Struct(">II")
_REP = struct.Struct(">BI")
_CERTS_MAX = 1024  # parsed certificates kept per process


class EncryptError(Exception):
    """The certificate or the message was refused by the OpenPGP library."""


class _Broken(Exception):
    """The child died or answered nonsense."""


_parsed: dict[bytes, pysequoia.Cert] = {}


def parsed(cert: bytes) -> pysequoia.Cert:
    """The certificate parsed, from a small cache keyed by its bytes."""
    got = _parsed.get(cert)
    if got is None:
        if len(_parsed) >= _CERTS_MAX:
            _parsed.clear()
        got = _parsed[cert] = pysequoia.Cert.from_bytes(cert)
    return got


def encrypt_here(plain: bytes, cert: bytes) -> bytes:
    """In this process (holds the GIL while it runs)."""
    try:
        return pysequoia.encrypt(plain, [parsed(cert)])
    except Exception as e:
        raise EncryptError(str(e)) from None


class _Child:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pillarbox.modify.pgp_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: BinaryIO = self.proc.stdin  # type: ignore[assignment]
        self.stdout: BinaryIO = self.proc.stdout  # type: ignore[assignment]

    def encrypt(self, plain: bytes, cert: bytes) -> bytes:
        try:
            self.stdin.write(_REQ.pack(len(cert), len(plain)))
            self.stdin.write(cert)
            self.stdin.write(plain)
            self.stdin.flush()
            head = self.stdout.read(_REP.size)
            if len(head) != _REP.size:
                raise _Broken("no reply")
            status, n = _REP.unpack(head)
            body = self.stdout.read(n)
        except (OSError, ValueError) as e:
            raise _Broken(str(e)) from None
        if len(body) != n or status not in (0, 1):
            raise _Broken("short or bad reply")
        if status == 1:
            raise EncryptError(body.decode("utf-8", "replace"))
        return body

    def close(self) -> None:
        for f in (self.stdin, self.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Pool:
    """Idle children, taken by one thread at a time."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._idle: list[_Child] = []
        self._count = 0
        self._lock = threading.Lock()

    def encrypt(self, plain: bytes, cert: bytes) -> bytes:
        """ASCII-armored OpenPGP message (LF line ends); EncryptError if refused."""
        child = self._take()
        if child is None:
            return encrypt_here(plain, cert)
        try:
            out = child.encrypt(plain, cert)
        except _Broken:
            self._discard(child)
            return encrypt_here(plain, cert)
        except EncryptError:
            self._give_back(child)
            raise
        self._give_back(child)
        return out

    def _take(self) -> _Child | None:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._count >= self.max_workers:
                return None
            self._count += 1
        try:
            return _Child()
        except OSError:
            with self._lock:
                self._count -= 1
            return None

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            self._idle.append(child)

    def _discard(self, child: _Child) -> None:
        with self._lock:
            self._count -= 1
        child.proc.kill()
        child.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for child in idle:
            child.close()


POOL = Pool()
atexit.register(POOL.close)


# -- the child ------------------------------------------------------------------


def main() -> int:
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = inp.read(_REQ.size)
        if not head:
            return 0  # the server closed the pipe
        if len(head) != _REQ.size:
            return 1
        clen, plen = _REQ.unpack(head)
        cert, plain = inp.read(clen), inp.read(plen)
        if len(cert) != clen or len(plain) != plen:
            return 1
        try:
            reply, status = encrypt_here(plain, cert), 0
        except EncryptError as e:
            reply, status = str(e).encode("utf-8", "replace"), 1
        del plain
        out.write(_REP.pack(status, len(reply)))
        out.write(reply)
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
