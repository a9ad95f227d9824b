"""The PGP/MIME wrapping of modify/pgp_encrypt.py, in process: byte-for-byte
inner entity, pass-through of encrypted mail, hostile headers and Autocrypt."""

from __future__ import annotations

import io
import time

import pysequoia
import pytest

from pillarbox.modify import autocrypt, pgp_child, pgp_encrypt
from pillarbox.modify.pgp_encrypt import EncryptingReader, Sealing, seal_batch

TSK = pysequoia.Tsk.generate("a@example.test")
CERT = bytes(TSK.extract_certificate())


def inner_of(stored: bytes) -> bytes:
    start = stored.index(b"-----BEGIN PGP MESSAGE-----")
    end = stored.index(b"-----END PGP MESSAGE-----") + 25
    out = pysequoia.decrypt(stored[start:end], TSK.decryptor()).bytes
    assert out is not None
    return out


def test_a_header_too_long_to_rewrite_is_encrypted_whole():
    msg = b"X-Long: " + b"a" * (2 << 20) + b"\r\nSubject: s\r\n\r\nsecret body\r\n"
    stored = EncryptingReader(io.BytesIO(msg), CERT, len(msg)).read()
    assert b"secret body" not in stored
    assert inner_of(stored) == msg


def test_a_message_without_content_fields_keeps_its_body_exactly():
    msg = b"From: x@y\r\nSubject: hi\r\n\r\n\r\nbody with leading blank line\r\n.\r\n"
    stored = EncryptingReader(io.BytesIO(msg), CERT, len(msg)).read()
    assert inner_of(stored) == msg[msg.index(b"\r\n\r\n") + 2:]
    assert stored.startswith(b"From: x@y\r\nSubject: hi\r\nMIME-Version: 1.0\r\n")


def test_hostile_autocrypt_headers_learn_nothing():
    assert autocrypt.parse_header("addr=a@example.test; keydata=!!!") is None
    assert autocrypt.parse_header("addr=a@example.test; unknown=1; keydata=AAAA") is None
    assert autocrypt.parse_header("addr=a@example.test; _opt=1; keydata=AAAA") == (
        "a@example.test", b"\0\0\0")
    assert autocrypt.parse_header("garbage") is None
    assert autocrypt.parse_header("addr=a; addr=b; keydata=AAAA") is None


def test_inline_armor_counts_only_at_a_line_start_within_the_scanned_part():
    armor = b"-----BEGIN PGP MESSAGE-----\r\n\r\nwcBMA...\r\n-----END PGP MESSAGE-----\r\n"
    head = b"From: x@y\r\nSubject: s\r\n\r\n"
    inline = head + b"see below\r\n" + armor
    assert EncryptingReader(io.BytesIO(inline), CERT, len(inline)).read() == inline
    quoted = head + b"> " + armor  # mid-line: not an encrypted message
    stored = EncryptingReader(io.BytesIO(quoted), CERT, len(quoted)).read()
    assert stored != quoted and inner_of(stored) == quoted[quoted.index(b"\r\n\r\n") + 2:]
    late = head + b"x" * (64 * 1024) + b"\r\n" + armor  # past the scanned 64 KB
    stored = EncryptingReader(io.BytesIO(late), CERT, len(late)).read()
    assert stored != late and inner_of(stored) == late[late.index(b"\r\n\r\n") + 2:]


def _sealings(msgs: list[bytes], cert: bytes = CERT) -> list[Sealing]:
    return [Sealing(lambda m=m: io.BytesIO(m), cert, len(m), False) for m in msgs]


def test_a_batch_is_encrypted_in_the_child_and_decrypts_to_each_entity():
    other = pysequoia.Tsk.generate("b@example.test")
    msgs = [b"From: x@y\r\nSubject: %d\r\nContent-Type: text/plain\r\n\r\nsecret %d\r\n" % (i, i)
            for i in range(3)]
    armored = b"From: x@y\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nwcBM\r\n"
    openers = _sealings(msgs) + _sealings([armored]) + _sealings(
        [msgs[0]], bytes(other.extract_certificate()))
    seal_batch(openers)  # type: ignore[arg-type]
    assert all(o.ready is not None for o in openers)
    stored = [o().read() for o in openers]
    for m, s in zip(msgs, stored, strict=False):
        assert b"secret" not in s
        assert inner_of(s) == b"Content-Type: text/plain\r\n" + m[m.index(b"\r\n\r\n") + 2:]
    assert stored[3] == armored  # already encrypted: as it is
    out = pysequoia.decrypt(stored[4][stored[4].index(b"-----BEGIN"):], other.decryptor()).bytes
    assert out is not None and b"secret 0" in out


def test_a_dead_or_missing_child_leaves_the_encryption_to_the_reader(monkeypatch):
    msg = b"From: x@y\r\nSubject: s\r\n\r\nsecret body\r\n"
    seal_batch(_sealings([msg]))  # type: ignore[arg-type]  # the child runs
    proc = pgp_encrypt._child._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    openers = _sealings([msg])
    seal_batch(openers)  # type: ignore[arg-type]  # started afresh
    assert openers[0].ready is not None and inner_of(openers[0]().read()) == b"\r\nsecret body\r\n"
    monkeypatch.setattr(pgp_child.sys, "executable", "/nonexistent/python")
    pgp_encrypt._child.close()
    openers = _sealings([msg])
    with pytest.raises(OSError):
        seal_batch(openers)  # type: ignore[arg-type]
    assert openers[0].ready is None
    assert inner_of(openers[0]().read()) == b"\r\nsecret body\r\n"  # in process instead


def test_a_hung_child_is_killed_and_the_batch_encrypted_in_process(monkeypatch):
    """Every phase a timeout: a child that never answers is killed after the round
    trip's deadline; the writer goes on with in-process encryption."""
    msg = b"From: x@y\r\nSubject: s\r\n\r\nsecret body\r\n"
    pgp_encrypt._child.close()
    monkeypatch.setattr(pgp_child, "ROUND_TRIP_TIMEOUT", 0.5)
    hung = [pgp_child.sys.executable, "-c", "import time; time.sleep(60)"]
    real_popen = pgp_child.subprocess.Popen
    monkeypatch.setattr(pgp_child.subprocess, "Popen",
                        lambda _args, **kw: real_popen(hung, **kw))
    openers = _sealings([msg])
    started = time.monotonic()
    with pytest.raises(OSError, match="encryption child failed"):
        seal_batch(openers)  # type: ignore[arg-type]
    assert time.monotonic() - started < 10, "the hung child was waited on"
    assert openers[0].ready is None
    assert inner_of(openers[0]().read()) == b"\r\nsecret body\r\n"  # in process instead
    pgp_encrypt._child.close()
