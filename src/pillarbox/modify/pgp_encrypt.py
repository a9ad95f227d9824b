"""Encryption at rest: a message becomes an RFC 3156 multipart/encrypted one.

The original Content-* header fields and the body form the inner MIME
entity, encrypted byte for byte (decrypting gives it back unchanged); every
other header field stays outside (Received, From, To, Date, Message-ID,
Subject...). With `protect_subject` the outer Subject is "..." and the
inner entity starts with the real Subject field (protected headers). A
message already encrypted (PGP/MIME, inline PGP armor, S/MIME) passes
unchanged.

`EncryptingReader` is a blocking file-like reader of the encrypted message:
the Maildir writer reads it in its worker thread, so the work is off the
event loop. Up to STREAM_AT bytes are read whole and encrypted in memory
(fast); larger messages stream through a child process
(modify/pgp_stream.py), so memory stays bounded whatever the size.
"""

from __future__ import annotations

import io
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

import pysequoia

from pillarbox.modify import pgp_child

STREAM_AT = 1 << 20  # bytes; larger messages are encrypted by a streaming child
BLOCK = 1 << 16
_HEADER_MAX = 1 << 20  # a header longer than this is no header we rewrite
_SCAN = 64 * 1024  # bytes of body searched for inline PGP armor
_ARMOR_LINE = b"-----BEGIN PGP MESSAGE-----"
_ARMOR = re.compile(rb"(?m)^" + _ARMOR_LINE)
_ENCRYPTED_TYPES = (b"multipart/encrypted", b"application/pkcs7-mime",
                    b"application/x-pkcs7-mime")


def split_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """Header lines as (lowercased name, raw bytes of the field with its
    folds and CRLF): byte for byte what was there."""
    out: list[tuple[bytes, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + line)
        else:
            name = line.split(b":", 1)[0].strip().lower() if b":" in line else b""
            out.append((name, line))
    return out


def already_encrypted(fields: list[tuple[bytes, bytes]], body_start: bytes) -> bool:
    """PGP/MIME or S/MIME by Content-Type, or inline PGP armor in the body."""
    for name, raw in fields:
        if name == b"content-type":
            value = raw.split(b":", 1)[1].strip().lower()
            if value.startswith(_ENCRYPTED_TYPES):
                return True
    # A plain search first: the multiline regex over a 4 KB body cost 19 µs
    # a message, a tenth of what encrypting it costs.
    if body_start.find(_ARMOR_LINE, 0, _SCAN) < 0:
        return False
    return _ARMOR.search(body_start[:_SCAN]) is not None


def _read_head(source: BinaryIO) -> tuple[bytes, bytes]:
    """(header up to and including the CRLF of its last field, the rest read
    so far: the blank line and the start of the body)."""
    buf = b""
    while True:
        if buf.startswith(b"\r\n"):
            return b"", buf
        at = buf.find(b"\r\n\r\n")
        if at >= 0:
            return buf[: at + 2], buf[at + 2:]
        chunk = source.read(BLOCK)
        if not chunk:
            return buf, b""  # no body: the whole message is header
        if len(buf) > _HEADER_MAX:  # no header we rewrite: all of it goes inside
            return b"", buf + chunk
        buf += chunk


class EncryptingReader:
    """The encrypted form of `source` (the whole message, header first) for
    the certificate `cert` (binary or armored). Blocking; read in blocks."""

    def __init__(self, source: BinaryIO, cert: bytes, size: int,
                 protect_subject: bool = False) -> None:
        self.source = source
        self.cert = cert
        self.size = size
        self.protect_subject = protect_subject
        self.encrypted = False  # set once known: False when passed unchanged
        self._chunks: Iterator[bytes] = self._generate()
        self._buf = b""
        self._child: subprocess.Popen | None = None
        self._feeder: threading.Thread | None = None
        self._closing = b""  # the closing boundary line, once known

    # -- file-like --------------------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self._buf, *self._chunks]
            self._buf = b""
            return b"".join(parts)
        while len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()
        if child is not None:
            for f in (child.stdin, child.stdout):
                try:
                    if f is not None:
                        f.close()
                except OSError:
                    pass
            child.wait()
        if self._feeder is not None:
            self._feeder.join()
        self.source.close()

    def __enter__(self) -> EncryptingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the message ------------------------------------------------------------

    def _generate(self) -> Iterator[bytes]:
        if self.size <= STREAM_AT:
            # Small: one read, one encryption, one chunk out (the writer
            # thread's time per message is the pipeline's narrow stage).
            yield self._whole(self.source.read())
            return
        head, rest = _read_head(self.source)
        if len(rest) < _SCAN:
            rest += self.source.read(_SCAN - len(rest))
        fields = split_fields(head)
        if not rest or already_encrypted(fields, rest[2:]):
            yield head + rest
            while chunk := self.source.read(BLOCK):
                yield chunk
            return
        self.encrypted = True
        inner, wrapper = self._wrap(fields)
        yield wrapper
        yield from self._stream(b"".join(inner) + rest)
        yield self._closing

    def _whole(self, data: bytes) -> bytes:
        """The message `data` (read whole) in its stored form."""
        plan = self.plan(data)
        if plan is None:
            return data
        wrapper, plain = plan
        del data
        try:
            armored = pysequoia.encrypt(plain, [parsed(self.cert)])
        except Exception as e:
            raise OSError(f"OpenPGP encryption failed: {e}") from None
        del plain
        return self.seal(wrapper, armored)

    def seal(self, wrapper: bytes, armored: bytes) -> bytes:
        """The stored form, from plan()'s wrapper and the armored message."""
        return b"".join((wrapper, _crlf(armored), self._closing))

    def plan(self, data: bytes) -> tuple[bytes, bytes] | None:
        """The message `data` (read whole) split for encryption: (the outer
        header and PGP/MIME parts up to the armored message, the inner entity
        to encrypt); None when it is stored as it is."""
        if data.startswith(b"\r\n"):
            head, rest = b"", data
        else:
            at = data.find(b"\r\n\r\n")
            if at < 0:
                return None  # no body: the whole message is header, stored as is
            if at + 2 > _HEADER_MAX:  # no header we rewrite: all of it goes inside
                head, rest = b"", data
            else:
                head, rest = data[: at + 2], data[at + 2:]
        fields = split_fields(head)
        if already_encrypted(fields, rest[2:2 + _SCAN]):
            return None
        self.encrypted = True
        inner, wrapper = self._wrap(fields)
        inner.append(rest)
        return wrapper, b"".join(inner)

    def _wrap(self, fields: list[tuple[bytes, bytes]]) -> tuple[list[bytes], bytes]:
        """(the inner entity's header fields, the outer header and the
        PGP/MIME parts up to where the armored message goes)."""
        inner = [raw for name, raw in fields if name.startswith(b"content-")]
        outer = [raw for name, raw in fields if not name.startswith(b"content-")]
        if self.protect_subject:
            subject = [raw for name, raw in fields if name == b"subject"]
            inner = subject + inner
            outer = [b"Subject: ...\r\n" if name == b"subject" else raw
                     for name, raw in fields if not name.startswith(b"content-")]
        if not any(name == b"mime-version" for name, _ in fields):
            outer.append(b"MIME-Version: 1.0\r\n")
        boundary = "pgp-" + secrets.token_hex(12)
        self._closing = f"\r\n--{boundary}--\r\n".encode()
        return inner, b"".join(outer) + (
            f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
            f' boundary="{boundary}"\r\n'
            "\r\n"
            "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
            f"--{boundary}\r\n"
            "Content-Type: application/pgp-encrypted\r\n"
            "Content-Description: PGP/MIME version identification\r\n"
            "\r\n"
            "Version: 1\r\n"
            "\r\n"
            f"--{boundary}\r\n"
            'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
            "Content-Description: OpenPGP encrypted message\r\n"
            'Content-Disposition: inline; filename="encrypted.asc"\r\n'
            "\r\n").encode()

    def _stream(self, prefix: bytes) -> Iterator[bytes]:
        child = self._child = subprocess.Popen(
            [sys.executable, "-m", "pillarbox.modify.pgp_stream"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True)

        def feed() -> None:
            assert child.stdin is not None
            try:
                child.stdin.write(len(self.cert).to_bytes(4, "big") + self.cert + prefix)
                while chunk := self.source.read(BLOCK):
                    child.stdin.write(chunk)
                child.stdin.close()
            except (OSError, ValueError):
                pass  # the child died or was killed: its exit status tells

        self._feeder = threading.Thread(target=feed, name="pgp-feed", daemon=True)
        self._feeder.start()
        assert child.stdout is not None
        while chunk := child.stdout.read(BLOCK):
            yield _crlf(chunk)
        self._feeder.join()
        if child.wait() != 0:
            raise OSError(f"OpenPGP encryption failed (child exit {child.returncode})")


class Sealing:
    """How the Maildir writer reads a message stored encrypted
    (Encryption.opener): called, the encrypted message as a blocking reader.
    seal_batch() may have made it already, in the encryption child."""

    def __init__(self, plain: Callable[[], BinaryIO], cert: bytes, size: int,
                 protect_subject: bool) -> None:
        self.plain, self.cert, self.size = plain, cert, size
        self.protect_subject = protect_subject
        self.ready: bytes | None = None

    def __call__(self) -> BinaryIO:
        if self.ready is not None:
            data, self.ready = self.ready, None
            return io.BytesIO(data)
        return EncryptingReader(self.plain(), self.cert, self.size,  # type: ignore[return-value]
                                self.protect_subject)


BATCH_MAX = 256 * 1024  # bytes: larger messages are encrypted on their own, when read
ROUND_TRIP_MAX = 8 << 20  # bytes of plaintext sent to the child at once at most
_child = pgp_child.Child()


def seal_batch(openers: list[Callable[[], BinaryIO]]) -> None:
    """Blocking (the Maildir writer's thread, before it writes a batch):
    encrypt the batch's small messages in the encryption child, a round trip
    for all of them. Whatever this does not make (the child failed, a message
    too large) is encrypted in process when the writer reads it."""
    todo = [o for o in openers if isinstance(o, Sealing) and o.ready is None
            and o.size <= BATCH_MAX]
    while todo:
        take, size = 0, 0
        while take < len(todo) and (take == 0 or size + todo[take].size <= ROUND_TRIP_MAX):
            size += todo[take].size
            take += 1
        batch, todo = todo[:take], todo[take:]
        certs: dict[bytes, int] = {}
        items: list[tuple[int, bool, bytes]] = []
        for o in batch:
            with o.plain() as source:
                message = source.read()
            items.append((certs.setdefault(o.cert, len(certs)), o.protect_subject, message))
        stored = _child.encrypt_many(list(certs), items)
        for o, data in zip(batch, stored, strict=True):
            o.ready = data


def stop_child() -> None:
    """Blocking: end the encryption child (after the batch it may be doing)."""
    _child.close()


_parsed: dict[bytes, pysequoia.Cert] = {}
_PARSED_MAX = 1024


def parsed(cert: bytes) -> pysequoia.Cert:
    """The certificate parsed, from a small cache keyed by its bytes (a
    changed key is parsed afresh): parsing one costs about as much as
    encrypting a 4 KB message with it."""
    got = _parsed.get(cert)
    if got is None:
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        got = _parsed[cert] = pysequoia.Cert.from_bytes(cert)
    return got


def _crlf(armored: bytes) -> bytes:
    """Armor lines end in LF; a message's lines end in CRLF (armor has no CR)."""
    return armored.replace(b"\n", b"\r\n")

