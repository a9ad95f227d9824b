"""Running a configured pipeline's stages over one message, streaming: the
checks' body hook, and the modifiers' envelope, header and body rewriting.

The default pipelines never come here: the SMTP session writes their few
fields directly (the fast path). Here the message is never held whole: the
header is read up to the blank line, the body goes from the spool's buffer
(memory or its spill file) through the modifiers' body streams into a new
buffer, in blocks, with the file reads off the event loop.
"""

from __future__ import annotations

import asyncio
import email.message
import email.parser
import email.policy
import re
from collections.abc import AsyncIterator, Sequence
from email.header import Header
from typing import Any

from pillarbox import module
from pillarbox.authserv import claims_host
from pillarbox.queue.spool import BodyBuffer

BLOCK = 64 * 1024  # bytes read from a spilled body at a time


# -- the header -------------------------------------------------------------------

def _header_of(data: bytes) -> bytes:
    """The header fields of `data`: up to the blank line, its CRLF excluded."""
    end = data.find(b"\r\n\r\n")
    return data[: end + 2] if end >= 0 else data


async def header_block(body: BodyBuffer) -> bytes:
    """The message's header fields; past the first block only when the header
    goes on (rare), read off the event loop up to the blank line."""
    first = body.first
    if b"\r\n\r\n" in first or body.size == len(first) or first.startswith(b"\r\n"):
        return _header_of(first)

    def read() -> bytes:
        buf = bytearray()
        with body.reader() as r:
            while block := r.read(BLOCK):
                start = max(0, len(buf) - 3)
                buf += block
                end = buf.find(b"\r\n\r\n", start)
                if end >= 0:
                    return bytes(buf[: end + 2])
        return bytes(buf)

    return await asyncio.to_thread(read)


def parse_header(block: bytes) -> email.message.Message:
    """The header fields parsed for a check; hostile input gives an empty
    header, never an exception."""
    try:
        return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    except Exception:
        return email.message.Message()


_FIELD_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def split_header(message: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """The header fields (name, raw value after the colon, folds kept) and the
    rest: from the first line that is no field (the blank line) on."""
    fields: list[tuple[str, str]] = []
    pos = 0
    while pos < len(message):
        end = message.find(b"\r\n", pos)
        end = len(message) if end < 0 else end
        line = message[pos:end]
        if line[:1] in (b" ", b"\t") and fields:  # a fold of the field before
            name, value = fields[-1]
            fields[-1] = (name, value + "\r\n" + line.decode("utf-8", "surrogateescape"))
        else:
            m = _FIELD_RE.match(line)
            if m is None:
                break
            text = line.decode("utf-8", "surrogateescape")
            name, _, value = text.partition(":")
            fields.append((name, value))
        pos = end + 2
    return fields, message[pos:]


def encode_field(text: str) -> bytes:
    """A header line back to bytes: the bytes it was read from where it was
    not UTF-8 (surrogateescape), anything a modifier made that is no text: '?'."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def has_our_results(block: bytes, hostname: str) -> bool:
    """Whether the header carries an Authentication-Results field claiming to
    be ours (so it must go: only we write those)."""
    if b"authentication-results" not in block.lower():
        return False
    return any(n.strip().lower() == "authentication-results" and claims_host(v, hostname)
               for n, v in split_header(block)[0])


def _subject_value(subject: str) -> str:
    if subject.isascii():
        return " " + " ".join(subject.split())
    return " " + Header(subject, "utf-8").encode()


# -- checks -----------------------------------------------------------------------

async def body_verdicts(states: Sequence[Any], body: BodyBuffer) -> list[module.Verdict]:
    """Every check state's verdict on the message: the parsed header, and a
    reader of its own over the whole message."""
    header = parse_header(await header_block(body))
    out = []
    for state in states:
        reader = body.reader()
        try:
            out.append(await state.body(header, reader))
        finally:
            reader.close()
    return out


# -- modifiers --------------------------------------------------------------------

async def rewrite_envelope(states: Sequence[Any], env: module.Envelope) -> None:
    """Every modifier's sender rewriting in order, then every one's recipients."""
    for st in states:
        env.mail_from = await st.sender(env.mail_from)
    for st in states:
        rcpts: list[str] = []
        for r in env.rcpts:
            rcpts += [x for x in await st.rcpt(r) if x not in rcpts]
        env.rcpts = rcpts


async def rewrite_message(body: BodyBuffer, out: BodyBuffer, states: Sequence[Any], *,
                          prepend: Sequence[bytes] = (), subject: str | None = None,
                          hostname: str = "") -> None:
    """Write into `out` the message as the modifiers make it.

    Before the modifiers see the header: Authentication-Results fields that
    claim to be from `hostname` are dropped (only we write those), the
    Subject is replaced when a check asked, and `prepend` (the checks' fields)
    goes first. Then each modifier's header rewriting, then its body stream
    over the whole message (header included), in order.
    """
    block = await header_block(body)
    fields, rest = split_header(block)
    if hostname:
        fields = [(n, v) for n, v in fields if not (
            n.strip().lower() == "authentication-results" and claims_host(v, hostname))]
    if subject is not None:
        value = _subject_value(subject)
        at = next((i for i, (n, _) in enumerate(fields) if n.strip().lower() == "subject"), None)
        if at is None:
            fields.append(("Subject", value))
        else:
            fields[at] = ("Subject", value)
    fields = split_header(b"".join(prepend))[0] + fields
    for st in states:
        fields = await st.header(fields)
    head = b"".join(encode_field(f"{n}:{v}\r\n") for n, v in fields) + rest

    async def message() -> AsyncIterator[bytes]:
        yield head
        reader = body.reader()
        try:
            reader.seek(len(block))
            if not body.spilled:
                yield reader.read()
                return
            while chunk := await asyncio.to_thread(reader.read, BLOCK):
                yield chunk
        finally:
            reader.close()

    stream: AsyncIterator[bytes] = message()
    for st in states:
        changed = st.body(stream)
        if changed is not None:
            stream = changed
    async for chunk in stream:
        if chunk:
            out.write(chunk)
