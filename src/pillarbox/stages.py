"""A configured pipeline's checks and modifiers over one whole message that
is already in hand (not a dialogue): what `pillarbox sendmail` mail goes
through at pickup when `[pipeline.sendmail]` is not the default.

The SMTP session runs the same hooks interleaved with its dialogue; the
header helpers here (split_header, encode_field, field_value, check_fields)
are the shared part of that and of this.

Depends on module.py only: the queue imports this, endpoints may.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pillarbox import module
from pillarbox.check import Reply

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
            name, _, value = line.decode("utf-8", "surrogateescape").partition(":")
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


async def _rewrite_rcpts(states: list[Any], rcpts: list[str]) -> list[str]:
    for st in states:
        out: list[str] = []
        for r in rcpts:
            out += [x for x in await st.rcpt(r) if x not in out]
        rcpts = out
    return rcpts


def _parse_header(message: bytes) -> email.message.Message:
    end = message.find(b"\r\n\r\n")
    block = message[: end + 2] if end >= 0 else message
    try:
        return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    except Exception:  # hostile input: a check sees an empty header, never a crash
        return email.message.Message()


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
        targets = await _rewrite_rcpts([m.state(envelope) for m in modifiers], [rcpt])
        for target in targets or [rcpt]:
            why = found.take([await s.rcpt(target) for c, s in pairs
                              if applies is None or applies(c, rcpt)])
            if why is not None:
                refused[rcpt] = why
                break
        else:
            accepted.append(rcpt)
    if not accepted:
        return Outcome(mail_from, [], message, refused)
    if states:
        header = _parse_header(message)
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
    for st in mstates:
        mail_from = await st.sender(mail_from)
    accepted = await _rewrite_rcpts(mstates, accepted)
    if mstates:
        fields, rest = split_header(message)
        for st in mstates:
            fields = await st.header(fields)
        message = b"".join(encode_field(f"{n}:{v}\r\n") for n, v in fields) + rest
        for st in mstates:
            async def chunks(data: bytes = message):
                yield data
            stream = st.body(chunks())
            if stream is not None:
                message = b"".join([c async for c in stream])
    return Outcome(mail_from, accepted, message, refused, found.quarantine)
