"""RFC 3516 BINARY: FETCH BINARY[part]<partial>, BINARY.PEEK, BINARY.SIZE,
with the Content-Transfer-Encoding undone; UNKNOWN-CTE for one we cannot."""

from __future__ import annotations

import base64
import os
import re

from .imap_raw import RawIMAP

BLOB = bytes(range(256)) * 4  # every octet value, NUL included
B = "frontier"


def _message(blob: bytes = BLOB) -> bytes:
    encoded = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    return (
        "Subject: binary parts\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{B}"\r\n\r\n'
        f"--{B}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        "caf=C3=A9 soft=\r\nbreak\r\n"
        f"--{B}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + encoded + (
        f"--{B}\r\n"
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        "plain text\r\n"
        f"--{B}\r\n"
        "Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
        "begin 644 x\r\nend\r\n"
        f"--{B}--\r\n"
    ).encode()


def _setup(server, blob: bytes = BLOB) -> RawIMAP:
    c = RawIMAP(server.imaps_port, "alice@example.test", timeout=30)
    msg = _message(blob)
    c.ok(b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
    c.ok("SELECT INBOX")
    return c


def test_binary_decodes_base64_and_quoted_printable(server):
    with _setup(server) as c:
        untagged, _ = c.ok("FETCH 1 (BINARY.PEEK[2])")
        # content with NUL octets comes as a literal8
        assert untagged[0] == b"1 FETCH (BINARY[2] ~{%d}\r\n" % len(BLOB) + BLOB + b")"
        untagged, _ = c.ok("FETCH 1 (BINARY.PEEK[1] BINARY.PEEK[3])")
        assert b"BINARY[1] {15}\r\ncaf\xc3\xa9 softbreak " in untagged[0]  # CRLF: the delimiter's
        assert b"BINARY[3] {10}\r\nplain text)" in untagged[0]


def test_binary_size_is_the_decoded_size(server):
    """RFC 3516 4.3: FETCH 1 (BINARY.SIZE[1])."""
    with _setup(server) as c:
        untagged, _ = c.ok("FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2])")
        assert untagged[0] == b"1 FETCH (BINARY.SIZE[1] 15 BINARY.SIZE[2] %d)" % len(BLOB)
        untagged, _ = c.ok("FETCH 1 (FLAGS)")
        assert b"\\Seen" not in untagged[0]  # a size does not read the message


def test_binary_partial(server):
    with _setup(server) as c:
        untagged, _ = c.ok("UID FETCH 1 (BINARY.PEEK[2]<65.3>)")
        assert b"BINARY[2]<65> {3}\r\nABC" in untagged[0]
        untagged, _ = c.ok("FETCH 1 (BINARY.PEEK[2]<0.2>)")
        assert b"BINARY[2]<0> ~{2}\r\n\x00\x01" in untagged[0]
        untagged, _ = c.ok("FETCH 1 (BINARY.PEEK[2]<5000.10>)")
        assert b"BINARY[2]<5000> {0}\r\n" in untagged[0]


def test_binary_sets_seen_and_peek_does_not(server):
    with _setup(server) as c:
        c.ok("FETCH 1 (BINARY.PEEK[3])")
        untagged, _ = c.ok("FETCH 1 (FLAGS)")
        assert b"\\Seen" not in untagged[0]
        untagged, _ = c.ok("FETCH 1 (BINARY[3])")
        assert b"\\Seen" in b" ".join(untagged)


def test_binary_whole_message_and_missing_part(server):
    with _setup(server) as c:
        msg = _message()
        untagged, _ = c.ok("FETCH 1 (BINARY.PEEK[])")
        assert untagged[0] == b"1 FETCH (BINARY[] {%d}\r\n" % len(msg) + msg + b")"
        untagged, _ = c.ok("FETCH 1 (BINARY.PEEK[9] BINARY.SIZE[9])")
        assert b"BINARY[9] {0}\r\n" in untagged[0] and b"BINARY.SIZE[9] 0" in untagged[0]


def test_unknown_transfer_encoding_says_unknown_cte(server):
    with _setup(server) as c:
        _, tagged = c.cmd("FETCH 1 (BINARY.PEEK[4])")
        assert tagged.startswith(b"NO [UNKNOWN-CTE]"), tagged
        c.ok("FETCH 1 (BODY.PEEK[4])")  # the encoded form is still there


def test_large_part_is_decoded(server):
    """A part over the in-thread threshold (256 KB) decodes the same."""
    blob = os.urandom(400_000)
    with _setup(server, blob) as c:
        untagged, _ = c.ok("FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2])")
        assert b"BINARY.SIZE[2] 400000" in untagged[0]
        data = untagged[0].split(b"}\r\n", 1)[1][:-1]
        assert data == blob


def test_binary_hostile_arguments_get_bad(server):
    with _setup(server) as c:
        for text in ["FETCH 1 (BINARY[1.HEADER])", "FETCH 1 (BINARY[0])",
                     "FETCH 1 (BINARY.SIZE[1]<0.1>)", "FETCH 1 (BINARY[1)",
                     "FETCH 1 (BINARY.PEEK[1]<1>)", "FETCH 1 BINARY", "FETCH 1 (BINARY[1.x])",
                     "FETCH 1 (BINARY.SIZE)"]:
            _, tagged = c.cmd(text)
            assert re.match(rb"BAD ", tagged), (text, tagged)
        c.ok("NOOP")
