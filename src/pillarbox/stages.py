"""Running a configured pipeline's stages over one message: the checks' body
hook, and the modifiers' envelope, header and body rewriting.

The SMTP session calls these pieces as its dialogue goes (checks at each
command, the body and modifiers after DATA); `run` calls them over a message
already in hand, for `pillarbox sendmail` mail at pickup. The default
pipelines never come here: their few fields are written directly.

Streaming: a message in the spool's buffer is never held whole here: the
header is read up to the blank line, the body goes from the buffer (memory or
its spill file) through the modifiers' body streams into a new buffer, in
blocks, with file reads off the event loop.

Depends on module.py and the spool's buffer: endpoints and the queue's
pickup import this.
"""

from __future__ import annotations

import asyncio
import email.message
import email.parser
import email.policy
import io
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from email.header import Header
from typing import Any

from pillarbox import module
from pillarbox.authserv import claims_host
from pillarbox.check import Reply
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


def field_value(value: str) -> str:
    """A module's header field value on one line: no CR/LF can end the field
    early or start a body."""
    return " ".join(value.split())


def check_fields(hostname: str, auth_results: list[str], added: list[str]) -> bytes:
    """The header fields checks asked for: Authentication-Results, then theirs."""
    out = b""
    if auth_results:
        results = ";\r\n\t".join(auth_results)
        out += (f"Authentication-Results: {hostname};\r\n\t{results}\r\n"
                .encode("utf-8", "replace"))
    return out + b"".join(f"{f}\r\n".encode("utf-8", "replace") for f in added)


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

async def rcpt_verdicts(states: Sequence[Any], rcpt: str) -> list[module.Verdict]:
    """The checks' verdicts on one recipient, in order, up to the first refusal:
    a check after it never hears of a recipient that is refused (rspamd would
    count it for the message)."""
    out = []
    for state in states:
        out.append(await state.rcpt(rcpt))
        if out[-1].reject is not None:
            break
    return out


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

async def rewrite_rcpts(states: Sequence[Any], rcpts: list[str]) -> list[str]:
    """Every modifier's recipient rewriting in order (one may become several)."""
    for st in states:
        out: list[str] = []
        for r in rcpts:
            out += [x for x in await st.rcpt(r) if x not in out]
        rcpts = out
    return rcpts


async def rewrite_envelope(states: Sequence[Any], env: module.Envelope) -> None:
    """Every modifier's sender rewriting in order, then every one's recipients."""
    for st in states:
        env.mail_from = await st.sender(env.mail_from)
    env.rcpts = await rewrite_rcpts(states, env.rcpts)


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


# -- a whole message in hand (sendmail at pickup) ------------------------------------

@dataclass
class Outcome:
    """What the pipeline made of one message."""

    mail_from: str
    rcpts: list[str]  # accepted, after the modifiers' rewriting
    message: bytes
    refused: dict[str, Reply] = field(default_factory=dict)  # recipient as given -> why
    quarantine: bool = False


@dataclass
class _Findings:
    quarantine: bool = False
    added: list[str] = field(default_factory=list)
    auth_results: list[str] = field(default_factory=list)

    def take(self, verdicts: list[module.Verdict]) -> Reply | None:
        """Fold one phase's verdicts in; the first refusal."""
        for v in verdicts:
            if v.reject is not None:
                return v.reject
        for v in verdicts:
            self.quarantine = self.quarantine or v.quarantine
            self.added += [f"{n}: {field_value(val)}" for n, val in v.add_headers]
            self.auth_results += [field_value(r) for r in v.auth_results]
        return None


async def run(checks: list[Any], modifiers: list[Any], source: module.Source, msg_id: str,
              mail_from: str, rcpts: list[str], message: bytes, hostname: str,
              applies: Callable[[Any, str], bool] | None = None) -> Outcome:
    """Checks (connection, MAIL, each recipient as the modifiers rewrite it,
    body), then modifiers (sender, recipients, header fields, body). A refusal
    at MAIL or of the body refuses every recipient; at RCPT, that one.
    `applies(check, rcpt)` False skips a check's RCPT hook for that recipient.
    `message` starts with its Received field; check fields go after it."""
    found = _Findings()
    pairs = [(c, c.state(source)) for c in checks]
    states = [s for _, s in pairs]
    refused: dict[str, Reply] = {}
    why = found.take([await s.connection(source) for s in states])
    why = why or found.take([await s.mail(mail_from) for s in states])
    if why is not None:
        return Outcome(mail_from, [], message, dict.fromkeys(rcpts, why))
    envelope = module.Envelope(msg_id=msg_id, mail_from=mail_from, rcpts=list(rcpts),
                               source=source, size=len(message))
    accepted = []
    for rcpt in rcpts:
        # What the checks judge is where the address will go (as in SMTP).
        targets = await rewrite_rcpts([m.state(envelope) for m in modifiers], [rcpt])
        for target in targets or [rcpt]:
            why = found.take(await rcpt_verdicts(
                [s for c, s in pairs if applies is None or applies(c, rcpt)], target))
            if why is not None:
                refused[rcpt] = why
                break
        else:
            accepted.append(rcpt)
    if not accepted:
        return Outcome(mail_from, [], message, refused)
    if states:
        header = parse_header(_header_of(message))
        why = found.take([await s.body(header, io.BytesIO(message)) for s in states])
        if why is not None:
            return Outcome(mail_from, [], message, {**refused, **dict.fromkeys(accepted, why)})
    extra = check_fields(hostname, found.auth_results, found.added)
    if extra:  # after our Received field, as the SMTP session puts them
        first = message.find(b"\r\n") + 2
        first = first if message.startswith(b"Received:") and first > 1 else 0
        message = message[:first] + extra + message[first:]
    envelope.rcpts = list(accepted)
    mstates = [m.state(envelope) for m in modifiers]
    await rewrite_envelope(mstates, envelope)
    if mstates:
        out = io.BytesIO()
        await rewrite_message(_InMemory(message), out, mstates)  # type: ignore[arg-type]
        message = out.getvalue()
    return Outcome(envelope.mail_from, envelope.rcpts, message, refused, found.quarantine)


class _InMemory:
    """A message already in memory, read the way a spool buffer is."""

    spilled = False

    def __init__(self, data: bytes) -> None:
        self.first, self.size = data, len(data)

    def reader(self) -> io.BytesIO:
        return io.BytesIO(self.first)
