"""The PGP/MIME wrapping of modify/pgp_encrypt.py, in process: byte-for-byte
inner entity, pass-through of encrypted mail, hostile headers and Autocrypt."""

from __future__ import annotations

import io

import pysequoia

from pillarbox.modify import autocrypt
from pillarbox.modify.pgp_encrypt import EncryptingReader

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
