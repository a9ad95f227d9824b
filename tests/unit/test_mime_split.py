"""mime.split: where the header ends, CRLF or bare LF, whichever blank line comes first."""

from __future__ import annotations

import pytest

from pillarbox.endpoint.imap.mime import split


@pytest.mark.parametrize(("raw", "header"), [
    (b"A: b\r\n\r\nbody\n\nmore", b"A: b\r\n\r\n"),
    (b"A: b\n\nbody\r\n\r\nmore", b"A: b\n\n"),
    (b"A: b\r\nC: d\n\nbody\r\n\r\n", b"A: b\r\nC: d\n\n"),
    (b"A: b\n\r\n\r\nz", b"A: b\n\r\n\r\n"),
    (b"\r\nbody", b"\r\n"),
    (b"\nbody", b"\n"),
    (b"A: b\r\n", b"A: b\r\n"),
    (b"A: b\n\n", b"A: b\n\n"),
])
def test_split(raw: bytes, header: bytes) -> None:
    assert split(raw) == (header, raw[len(header):])


def test_split_large_crlf_body_is_not_scanned_for_lf() -> None:
    body = b"x" * 76 + b"\r\n"
    raw = b"Subject: big\r\n\r\n" + body * 20000 + b"tail\n\nend"
    assert split(raw) == (b"Subject: big\r\n\r\n", raw[16:])
