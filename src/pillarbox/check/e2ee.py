"""End-to-end encryption only (kind "e2ee"): the chatmail relay's rule that
mail in and out is OpenPGP-encrypted, with a few named exceptions.

Hand-written on purpose: no library answers "is this message PGP/MIME whose
payload is only session-key packets and one encrypted-data packet?". An
OpenPGP library would decrypt or fully parse (we hold no keys, and a full
parse of a hostile 30 MB payload is work we need not do); a MIME library
gives the structure but not the rule. The rule itself is small: RFC 3156
structure, then a walk over OpenPGP packet headers (RFC 9580 4.2) that never
looks inside a packet body.

What passes (the facts are those of chatmail's filtermail):

- `multipart/encrypted` with exactly two non-multipart parts: the first
  `application/pgp-encrypted` whose body is `Version: 1`, the second
  `application/octet-stream` holding one ASCII-armored `PGP MESSAGE` whose
  packets are PKESK (tag 1) or SKESK (tag 3), ending in exactly one SEIPD
  (tag 18, v1 or v2);
- a Secure-Join handshake: `Secure-Join: vc-request` / `vg-request` and one
  `text/plain` part whose body is exactly that header line;
- outgoing only: an Autocrypt Setup Message sent to oneself;
- incoming only: a delivery report from `mailer-daemon@` (`multipart/report`
  with `Auto-Submitted`);
- incoming only: recipients who all opted in to cleartext
  (`pillarbox user set ADDRESS allow-cleartext on`).

Outgoing (an authenticated session), MAIL FROM must be the login and the
From address must be MAIL FROM. Everything else gets
`523 5.7.1 Encryption Needed: Invalid Unencrypted Mail`.

Bounded work: the packet walk counts every header it reads (partial body
chunks too) against PACKET_BUDGET, and a message is parsed in a worker
thread, at most `max_concurrent` at once.
"""

from __future__ import annotations

import asyncio
import binascii
import email.parser
import email.policy
import io
import re
from email.message import Message
from email.utils import getaddresses
from typing import Any, BinaryIO

from pillarbox import module
from pillarbox.check import Reply
from pillarbox.printable import escape

ENCRYPTION_NEEDED = Reply(523, "5.7.1 Encryption Needed: Invalid Unencrypted Mail")
# Packet headers (and partial-length chunks) one walk reads at most: far
# above a message to 1,000 recipients, far below a payload of 1-byte chunks.
PACKET_BUDGET = 5000
PKESK, SKESK, SEIPD = 1, 3, 18
SECURE_JOIN = ("vc-request", "vg-request")
_ARMOR_BEGIN = "-----BEGIN PGP MESSAGE-----"
_ARMOR_END = "-----END PGP MESSAGE-----"
_ARMOR_HEADER = re.compile(r"[A-Za-z][A-Za-z0-9-]*: .*")
_B64_LINE = re.compile(r"[A-Za-z0-9+/=]*")


class _Truncated(Exception):
    pass


def _byte(data: bytes, i: int) -> int:
    if i >= len(data):
        raise _Truncated
    return data[i]


def _new_length(data: bytes, i: int) -> tuple[int, int, bool]:
    """A new-format body length at i: (length, next index, partial?)."""
    b = _byte(data, i)
    if b < 192:
        return b, i + 1, False
    if b < 224:
        return ((b - 192) << 8) + _byte(data, i + 1) + 192, i + 2, False
    if b == 255:
        if i + 5 > len(data):
            raise _Truncated
        return int.from_bytes(data[i + 1:i + 5], "big"), i + 5, False
    return 1 << (b & 0x1F), i + 1, True


def openpgp_payload_ok(data: bytes, budget: int = PACKET_BUDGET) -> bool:
    """Only PKESK/SKESK packets, then exactly one SEIPD (v1 or v2) that ends
    the data. Packet bodies are skipped, never read (but SEIPD's version)."""
    i, n = 0, len(data)
    try:
        while i < n:
            budget -= 1
            if budget < 0:
                return False
            head = data[i]
            if not head & 0x80:
                return False
            if head & 0x40:  # new format: the tag in the low six bits
                tag = head & 0x3F
                length, i, partial = _new_length(data, i + 1)
                first = i  # where the body starts (SEIPD's version octet)
                while partial:  # chunks, each with a length of its own; the last is not partial
                    budget -= 1
                    if budget < 0:
                        return False
                    length, i, partial = _new_length(data, i + length)
                body_start = i
            else:  # old format: tag in bits 5-2, length type in bits 1-0
                tag = (head >> 2) & 0x0F
                kind = head & 0x03
                if kind == 3:  # indeterminate: to the end of the data
                    length, body_start = n - (i + 1), i + 1
                else:
                    size = 1 << kind
                    if i + 1 + size > n:
                        return False
                    length = int.from_bytes(data[i + 1:i + 1 + size], "big")
                    body_start = i + 1 + size
                first = body_start
            end = body_start + length
            if end > n:
                return False
            if end == n:  # the last packet: one SEIPD, version 1 or 2
                return tag == SEIPD and first < n and data[first] in (1, 2)
            if tag not in (PKESK, SKESK):
                return False
            i = end
    except _Truncated:
        return False
    return False  # empty, or nothing after the last session key


def armored_payload_ok(text: str) -> bool:
    """One ASCII-armored PGP MESSAGE (RFC 9580 6.2) whose packets pass."""
    lines = [ln.rstrip(" \t\r") for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) < 2 or lines[0] != _ARMOR_BEGIN or lines[-1] != _ARMOR_END:
        return False
    body = lines[1:-1]
    while body and _ARMOR_HEADER.fullmatch(body[0]):  # Version:, Comment:, Charset:
        body.pop(0)
    while body and not body[0]:
        body.pop(0)
    if body and body[-1].startswith("="):  # the optional CRC24 line
        body.pop()
    if not body or not all(_B64_LINE.fullmatch(ln) for ln in body):
        return False
    try:
        data = binascii.a2b_base64("".join(body).encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return openpgp_payload_ok(data)


def _text(part: Message) -> str | None:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    return payload.decode("ascii", "replace")


def is_encrypted(msg: Message) -> bool:
    """RFC 3156 structure with a payload `armored_payload_ok` accepts."""
    if msg.get_content_type() != "multipart/encrypted" or not msg.is_multipart():
        return False
    parts = msg.get_payload()
    if not isinstance(parts, list) or len(parts) != 2 or any(p.is_multipart() for p in parts):
        return False
    version, data = parts
    if version.get_content_type() != "application/pgp-encrypted":
        return False
    if (_text(version) or "").strip() != "Version: 1":
        return False
    if data.get_content_type() != "application/octet-stream":
        return False
    armored = _text(data)
    return armored is not None and armored_payload_ok(armored)


def is_securejoin(msg: Message) -> bool:
    """A Secure-Join request: the header, one text/plain part saying it."""
    value = str(msg.get("Secure-Join", "")).strip().lower()
    if value not in SECURE_JOIN:
        return False
    parts = msg.get_payload() if msg.is_multipart() else [msg]
    if not isinstance(parts, list) or len(parts) != 1:
        return False
    part = parts[0]
    if part.is_multipart() or part.get_content_type() != "text/plain":
        return False
    return (_text(part) or "").strip().lower() in {f"secure-join: {v}" for v in SECURE_JOIN}


def from_address(msg: Message) -> str | None:
    """The one From address, lower-cased; None for none or several."""
    fields = msg.get_all("From") or []
    if len(fields) != 1:
        return None
    found = [a for _, a in getaddresses([str(fields[0])]) if a]
    return found[0].lower() if len(found) == 1 else None


def is_setup_message_to_self(msg: Message, rcpts: list[str]) -> bool:
    sender = from_address(msg)
    return (sender is not None and [r.lower() for r in rcpts] == [sender]
            and str(msg.get("Subject", "")).strip() == "Autocrypt Setup Message"
            and msg.get_content_type() == "multipart/mixed")


def is_mailer_daemon_report(msg: Message) -> bool:
    sender = from_address(msg) or ""
    return (bool(msg.get("Auto-Submitted")) and sender.startswith("mailer-daemon@")
            and msg.get_content_type() == "multipart/report")


def parse(raw: bytes) -> Message:
    return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)


def judge(raw: bytes, mail_from: str, rcpts: list[str], login: str | None,
          cleartext_ok: Any = None) -> Reply | None:
    """The verdict on one whole message: None passes. `login` is the
    authenticated user (outgoing) or None (incoming); `cleartext_ok(rcpt)`
    says whether a recipient opted in to cleartext."""
    try:
        msg = parse(raw)
        if login is not None:
            sender = from_address(msg)
            if sender is None or sender != mail_from.lower():
                return Reply(553, "5.7.1 The From address must be the envelope sender "
                                  f"<{escape(mail_from[:100])}>")
        if is_encrypted(msg) or is_securejoin(msg):
            return None
        if login is not None:
            return None if is_setup_message_to_self(msg, rcpts) else ENCRYPTION_NEEDED
        if is_mailer_daemon_report(msg):
            return None
    except Exception:  # the stdlib parser on hostile input: never a crash, a refusal
        return ENCRYPTION_NEEDED
    if cleartext_ok is not None and rcpts and all(cleartext_ok(r) for r in rcpts):
        return None
    return ENCRYPTION_NEEDED


class _State(module.BaseCheckState):
    def __init__(self, check: E2EECheck, source: module.Source) -> None:
        self.check, self.source = check, source
        self.mail_from = ""
        self.rcpts: list[str] = []

    async def mail(self, sender: str) -> module.Verdict:
        self.mail_from, self.rcpts = sender, []
        login = self.source.auth
        if login and sender.lower() != login.lower():
            return module.Verdict(reject=Reply(
                553, f"5.7.1 <{escape(sender[:100])}>: the envelope sender must be the login"))
        return module.ACCEPT

    async def rcpt(self, rcpt: str) -> module.Verdict:
        self.rcpts.append(rcpt)
        return module.ACCEPT

    async def body(self, header: Message, body: BinaryIO) -> module.Verdict:
        async with self.check.slots:
            raw = body.read() if isinstance(body, io.BytesIO) else \
                await asyncio.to_thread(body.read)
            refusal = await asyncio.to_thread(
                judge, raw, self.mail_from, list(self.rcpts), self.source.auth or None,
                self.check.cleartext_ok)
        return module.ACCEPT if refusal is None else module.Verdict(reject=refusal)


class E2EECheck:
    def __init__(self, name: str, options: dict[str, Any], env: Any) -> None:
        self.name = name
        self.slots = asyncio.Semaphore(options["max_concurrent"])
        users = getattr(env, "users", None)
        self.db = getattr(users, "db", None)

    def cleartext_ok(self, rcpt: str) -> bool:
        if self.db is None:
            return False
        from pillarbox.directory import chatmail_accounts  # checks depend downward only

        return chatmail_accounts.allows_cleartext(self.db, rcpt)

    def state(self, source: module.Source) -> _State:
        return _State(self, source)


def _validate(options: dict[str, Any]) -> None:
    if not 1 <= options["max_concurrent"] <= 64:
        raise ValueError("max_concurrent: must be from 1 to 64")


def _make(name: str, options: dict[str, Any], env: Any) -> E2EECheck:
    _validate(options)
    return E2EECheck(name, options, env)


KIND = module.Kind(
    name="e2ee", role="check",
    options=(
        module.Option("max_concurrent", int, 4,
                      help="messages judged at once by this instance (each is held in "
                           "memory while it is)"),
    ),
    make=_make, validate=_validate,
    help="end-to-end encryption only (chatmail): PGP/MIME or a named exception, else "
         "523 5.7.1 Encryption Needed: Invalid Unencrypted Mail")
