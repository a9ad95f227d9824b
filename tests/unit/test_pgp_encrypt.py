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
