"""Fuzz the SMTP dialogue of a real server over real sockets: random command
lines (verbs with hostile arguments: control characters, bad UTF-8, odd
paths and parameters, over-long lines), each answered by a well-formed reply,
and the session still answers NOOP afterwards. A crash in a session shows as
a Traceback in the server's log, which fails the module at teardown."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from integration.support import ALICE, PASSWORD, RawSMTP, Server

_REPLY = re.compile(rb"^([2-5])(\d\d)([ -])(.*)$")
_ENHANCED = re.compile(rb"^([245])\.\d{1,3}\.\d{1,3}\b")
MAX_LINES = 7  # below the server's MAX_ERRORS (10), so a session is never hung up on


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("smtp-fuzz"))
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    yield srv
    problems = srv.shutdown_and_check()
    assert not problems, "\n".join(problems) + "\n" + srv.log_tail(40)


_VERBS = st.sampled_from([
    b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY",
    b"HELP", b"AUTH", b"AUTH PLAIN", b"AUTH LOGIN", b"BDAT", b"ehlo", b"mail from:",
    b"rcpt to:", b"X", b"",
])
_ARG_PIECES = st.sampled_from([
    b"<", b">", b"<>", b"@", b":", b",", b"[", b"]", b"IPv6:", b"\"", b"\\", b" ", b"\t",
    b"\x00", b"\x0e", b"\x1b", b"\x7f", b"\xff", b"\xc3\x28", "é".encode(), b"=",
    b"SIZE=", b"BODY=8BITMIME", b"SMTPUTF8", b"AUTH=<>", b"99999999999999999999",
    ALICE.encode(), b"postmaster", b"example.test", b"remote.test", b"127.0.0.1", b"::1",
    b"@a,@b:", b"=?utf-8?q?x?=", b"AGFsaWNl", b"*", b"x" * 600,
])
_ARG = st.lists(st.one_of(_ARG_PIECES, st.binary(max_size=8)), max_size=8).map(b"".join)
# CR and LF would make one generated line several: the DATA smuggling tests
# cover them; here each line is exactly one command.
_LINE = st.tuples(_VERBS, st.sampled_from([b"", b" "]), _ARG).map(
    lambda t: b"".join(t).replace(b"\r", b"").replace(b"\n", b""))
_SKIP = (b"QUIT", b"STARTTLS")  # they end the session or change the transport


def _read_reply(c: RawSMTP) -> tuple[int, list[bytes]]:
    lines = []
    while True:
        raw = c.read_line()
        assert raw is not None, f"connection closed mid-reply after {lines!r}"
        m = _REPLY.match(raw)
        assert m, f"not an SMTP reply line: {raw!r}"
        text = m.group(4)
        assert all(32 <= b < 127 or b >= 0x80 for b in text), f"control byte in {raw!r}"
        text.decode("utf-8")  # a reply is valid UTF-8
        lines.append(raw)
        if m.group(3) == b" ":
            code = int(raw[:3])
            if code >= 400:
                e = _ENHANCED.match(text)
                assert e and e.group(1) == raw[:1], f"no matching enhanced code: {raw!r}"
            return code, lines


def _dialogue(srv: Server, kind: str, lines: list[bytes]) -> None:
    c = srv.raw(kind, timeout=10)
    try:
        code, _ = _read_reply(c)
        assert code == 220
        for line in lines:
            if line.upper().lstrip().startswith(_SKIP):
                continue
            c.send(line + b"\r\n")
            code, text = _read_reply(c)
            if code == 354:  # DATA accepted: end the (empty) message
                c.send(b".\r\n")
                code, text = _read_reply(c)
            elif code == 334:  # an AUTH challenge: cancel
                c.send(b"*\r\n")
                code, text = _read_reply(c)
            assert code != 421, f"session hung up after {line!r}: {text!r}"
        c.send(b"NOOP\r\n")
        code, text = _read_reply(c)
        assert code == 250, f"NOOP after the dialogue: {text!r}"
    finally:
        c.close()


_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(st.lists(_LINE, max_size=MAX_LINES))
@example([b"EHLO x", b"MAIL FROM:<a@[127%\x0e0.0.1]>", b"MAIL FROM:<>",
          b"RCPT TO:<user@[IPv6:::1]>", b"RCPT TO:<alice@example.test..>", b"DATA"])
@example([b"EHLO x", b"MAIL FROM:<\"\x00\"@x.test> SIZE=1", b"RCPT TO:<@a,@b:>"])
@example([b"EHLO x", b"MAIL FROM:<@[IPv6:::1]:a@b.test>", b"RCPT TO:<@:alice@example.test>"])
@example([b"EHLO x", b"MAIL FROM:<> X=\x1b[31m", b"RCPT TO:<postmaster> \x07"])
@_SETTINGS
def test_mx_dialogue(fuzz_server, lines):
    _dialogue(fuzz_server, "smtp", lines)


@given(st.lists(_LINE, max_size=MAX_LINES))
@example([b"EHLO x", b"AUTH PLAIN AGJvYkBleGFtcGxlLnRlc3QAYWxpY2VAZXhhbXBsZS50ZXN0AHNlY3JldA==",
          b"AUTH PLAIN ////", b"AUTH LOGIN \xff", b"MAIL FROM:<alice@example.test>"])
@example([b"EHLO x", b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=",
          b"MAIL FROM:<alice@example.test>", b"RCPT TO:<x@[IPv6:::1]>", b"DATA"])
@settings(_SETTINGS, max_examples=min(settings.default.max_examples, 60))
def test_submission_dialogue(fuzz_server, lines):
    _dialogue(fuzz_server, "submissions", lines)
