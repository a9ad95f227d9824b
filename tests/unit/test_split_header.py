"""The header split the generic modifier path uses: exact bytes back, never a crash."""

from __future__ import annotations

import pytest

from pillarbox.stages import encode_field as _encode
from pillarbox.stages import split_header as _split_header


@pytest.mark.parametrize("message", [
    b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n",
    b"Subject: folded\r\n\tmore\r\n  and more\r\n\r\n",
    b"Subject: \xff\xfe not utf-8\r\n\r\n\xff body",
    b"no header at all\r\n\r\nbody",
    b"\r\nbody only",
    b" leading fold\r\nSubject: x\r\n\r\n",
    b"Subject: x\r\nbroken line\r\nTo: y\r\n\r\n",
    b"Subject: no end",
    b"",
    b"X: a\nY: bare LF\n\nbody",
])
def test_fields_and_rest_give_the_message_back(message: bytes) -> None:
    fields, rest = _split_header(message)
    assert b"".join(_encode(f"{n}:{v}\r\n") for n, v in fields) + rest == message or (
        # a message whose header does not end in CRLF gets one: it is a field line
        not message.endswith(b"\r\n") and rest == b"" and fields)


def test_a_line_that_is_no_field_starts_the_body() -> None:
    fields, rest = _split_header(b"Subject: x\r\nbroken line\r\nTo: y\r\n\r\n")
    assert fields == [("Subject", " x")]
    assert rest == b"broken line\r\nTo: y\r\n\r\n"


def test_folds_stay_with_their_field() -> None:
    fields, _ = _split_header(b"Subject: a\r\n b\r\nTo: c\r\n\r\n")
    assert fields == [("Subject", " a\r\n b"), ("To", " c")]
