"""Encryption at rest off the server's GIL: small messages are encrypted in a
long-lived child process, a Maildir writer batch per round trip.

pysequoia holds the GIL while it encrypts (about 0.1 ms a message, most of it
the key agreement), and the server's one Python thread was the narrow stage
of intake and delivery. The child runs on another core; the writer thread
waits for it without the GIL, so the event loop keeps taking mail meanwhile.
One round trip carries a whole batch, so the pipe's wake-ups are paid once
per batch, not once per message (per message they cost as much as they saved).
The child also does the PGP/MIME wrapping (modify/pgp_encrypt.py, the same
code as in process): the server only reads each message and pipes it.

Protocol, both ways big-endian u32 lengths. Request: number of certificates,
each (length, binary or armored certificate); number of items, each
(certificate index, protect_subject 0/1, length, the whole message). Reply:
per item (1 ok / 0 failed, length, the message in its stored form or the
error text). The child ends at EOF.
"""

from __future__ import annotations

import contextlib
import fcntl
import struct
import subprocess
import sys
import threading
from typing import BinaryIO

_U32 = struct.Struct(">I")
_ITEM = struct.Struct(">IBI")
_REPLY = struct.Struct(">BI")
PIPE_SIZE = 1 << 20  # bytes; Linux's default fs.pipe-max-size
# A round trip takes milliseconds; a child that hangs is killed after this long,
# and its batch is encrypted in process instead (the Maildir writer waits meanwhile).
ROUND_TRIP_TIMEOUT = 30.0  # seconds


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError("the encryption child's pipe ended")
    return data


class Child:
    """The parent's side: one child, started on first use and again after it died."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one round trip at a time

    def encrypt_many(self, certs: list[bytes], items: list[tuple[int, bool, bytes]]
                     ) -> list[bytes | None]:
        """Blocking. The stored forms of `items` ((index into `certs`,
        protect_subject, the message)), in order; None where one failed.
        OSError when the child is unusable (it is then stopped, and started
        afresh next time)."""
        parts = [_U32.pack(len(certs))]
        for cert in certs:
            parts += [_U32.pack(len(cert)), cert]
        parts.append(_U32.pack(len(items)))
        for i, protect, message in items:
            parts += [_ITEM.pack(i, protect, len(message)), message]
        with self._lock:
            watchdog: threading.Timer | None = None
            try:
                proc = self._start()
                assert proc.stdin is not None and proc.stdout is not None
                watchdog = threading.Timer(ROUND_TRIP_TIMEOUT, proc.kill)  # ends the reads
                watchdog.daemon = True
                watchdog.start()
                proc.stdin.write(b"".join(parts))
                proc.stdin.flush()
                out: list[bytes | None] = []
                for _ in items:
                    ok, n = _REPLY.unpack(_read_exact(proc.stdout, _REPLY.size))
                    data = _read_exact(proc.stdout, n)
                    out.append(data if ok else None)
                return out
            except (OSError, EOFError, ValueError, struct.error) as e:
                self._stop()
                raise OSError(f"encryption child failed: {e!r}") from None
            finally:
                if watchdog is not None:
                    watchdog.cancel()

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pillarbox.modify.pgp_child"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                close_fds=True, bufsize=1 << 20)
            for f in (self._proc.stdin, self._proc.stdout):
                # A batch in one pipe buffer, not 64 KiB a wake-up (Linux; else as is).
                with contextlib.suppress(OSError, AttributeError):
                    fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[union-attr]
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        proc.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()


def main() -> int:
    import io

    from pillarbox.modify.pgp_encrypt import EncryptingReader

    rin = open(0, "rb", buffering=1 << 20, closefd=False)
    out = open(1, "wb", buffering=1 << 20, closefd=False)
    while True:
        head = rin.read(4)
        if len(head) < 4:
            return 0  # the server closed the pipe
        certs = [_read_exact(rin, _U32.unpack(_read_exact(rin, 4))[0])
                 for _ in range(_U32.unpack(head)[0])]
        replies = []
        for _ in range(_U32.unpack(_read_exact(rin, 4))[0]):
            i, protect, n = _ITEM.unpack(_read_exact(rin, _ITEM.size))
            message = _read_exact(rin, n)
            try:
                data = EncryptingReader(io.BytesIO(message), certs[i], n, bool(protect)).read()
                ok = 1
            except Exception as e:  # reported per message; the server encrypts it itself
                data, ok = repr(e).encode(), 0
            replies += [_REPLY.pack(ok, len(data)), data]
        out.write(b"".join(replies))
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
