"""Child process that encrypts one large message as a stream (bounded memory).

pysequoia's file API streams, but holds the GIL while it blocks on a pipe,
so a feeder thread in the same process would deadlock; a child of its own
has no such neighbour. Protocol on stdin: 4-byte big-endian length, the
binary certificate, then the plaintext to its end. Stdout: the ASCII-armored
OpenPGP message. Exit status 0 only when all of it was written.
"""

from __future__ import annotations

import os
import sys


def _read_exact(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))  # unbuffered: nothing past the cert is taken
        if not chunk:
            raise EOFError("stdin ended inside the certificate")
        buf += chunk
    return bytes(buf)


def main() -> int:
    import pysequoia

    n = int.from_bytes(_read_exact(0, 4), "big")
    cert = pysequoia.Cert.from_bytes(_read_exact(0, n))
    pysequoia.encrypt_file("/dev/stdin", "/dev/stdout", [cert], armor=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
