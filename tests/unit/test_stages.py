"""A configured pipeline's stages stream the message: a spilled body is read
in blocks, never whole; header edits keep the rest byte for byte."""

from __future__ import annotations

import asyncio

import pytest

from pillarbox import module, stages
from pillarbox.queue.spool import SPILL_AT, BodyBuffer

HEADER = (b"From: a@remote.test\r\nSubject: hello\r\n"
          b"Authentication-Results: mx.example.test; dkim=pass header.d=forged.test\r\n"
          b"Authentication-Results: other.test; spf=pass\r\n\r\n")


def _buffer(tmp_path, body: bytes, name: str = "m1") -> BodyBuffer:
    buf = BodyBuffer(tmp_path, name, SPILL_AT)
    data = HEADER + body
    for i in range(0, len(data), 60_000):  # as the session writes it: block by block
        buf.write(data[i:i + 60_000])
    return buf


def _large() -> bytes:
    line = b"0123456789" * 7 + b"\r\n"
    return line * (3 * SPILL_AT // len(line))


@pytest.fixture
def no_read_all(monkeypatch):
    def refuse(self):
        raise AssertionError("the whole message was read into memory")
    monkeypatch.setattr(BodyBuffer, "read_all", refuse)


class _Headers(module.BaseModifierState):
    async def header(self, fields):
        return [f for f in fields if f[0].lower() != "from"] + [("X-Seen", " yes")]


class _Upper(module.BaseModifierState):
    """A body transform that sees the stream in blocks and counts them."""

    def __init__(self) -> None:
        self.largest = 0

    def body(self, chunks):
        async def run():
            async for c in chunks:
                self.largest = max(self.largest, len(c))
                yield c.replace(b"0", b"O")
        return run()


def test_a_spilled_message_is_rewritten_in_blocks_byte_for_byte(tmp_path, no_read_all):
    body = _large()
    src = _buffer(tmp_path, body)
    assert src.spilled
    out = BodyBuffer(tmp_path, "out", SPILL_AT)
    upper = _Upper()
    ours = b"Authentication-Results: mx.example.test; x=1\r\n"
    asyncio.run(stages.rewrite_message(src, out, [_Headers(), upper],
                                       hostname="mx.example.test", prepend=[ours]))
    assert upper.largest <= max(stages.BLOCK, len(src.first) + 512)
    with out.reader() as r:
        got = r.read()
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"Authentication-Results: mx.example.test; x=1",
        b"Subject: hello",
        b"Authentication-Results: other.test; spf=pass",
        b"X-Seen: yes"]
    assert rest == body.replace(b"0", b"O")


def test_subject_replaced_ascii_and_utf8_and_added_when_missing(tmp_path):
    for subject, want in (("[SPAM] hello", b"Subject: [SPAM] hello\r\n"),
                          ("[SPAM] h\u00e9llo", b"Subject: =?utf-8?b?W1NQQU1dIGjDqWxsbw==?=\r\n")):
        src = _buffer(tmp_path, b"body\r\n", name=f"s{len(want)}")
        out = BodyBuffer(tmp_path, f"o{len(want)}", SPILL_AT)
        asyncio.run(stages.rewrite_message(src, out, [], subject=subject))
        data = out.reader().read()
        assert want in data and b"Subject: hello" not in data
        assert data.endswith(b"\r\n\r\nbody\r\n")
    src = BodyBuffer(tmp_path, "nosubj", SPILL_AT)
    src.write(b"From: a@b.test\r\n\r\nx\r\n")
    out = BodyBuffer(tmp_path, "nosubj-out", SPILL_AT)
    asyncio.run(stages.rewrite_message(src, out, [], subject="new"))
    assert out.reader().read() == b"From: a@b.test\r\nSubject: new\r\n\r\nx\r\n"


class _Reads(module.BaseCheckState):
    def __init__(self) -> None:
        self.seen = b""

    async def body(self, header, body):
        def read():
            out = bytearray()
            while block := body.read(65536):
                out += block
            return bytes(out)
        self.seen = await asyncio.to_thread(read)
        return module.Verdict(add_headers=[("X-Subject-Was", header["Subject"])])


def test_body_checks_read_a_spilled_message_through_a_reader(tmp_path, no_read_all):
    body = _large()
    src = _buffer(tmp_path, body)
    a, b = _Reads(), _Reads()
    verdicts = asyncio.run(stages.body_verdicts([a, b], src))
    assert a.seen == b.seen == HEADER + body
    assert verdicts[0].add_headers == [("X-Subject-Was", "hello")]


def test_a_header_longer_than_the_first_block_is_read_to_its_end(tmp_path, no_read_all):
    long_header = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 70) for i in range(12_000))
    buf = BodyBuffer(tmp_path, "longhead", SPILL_AT)
    data = long_header + b"\r\nbody\r\n"
    for i in range(0, len(data), 60_000):
        buf.write(data[i:i + 60_000])
    assert asyncio.run(stages.header_block(buf)) == long_header
