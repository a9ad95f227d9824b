"""Header fixes for mail from our own users: From, Message-ID and Date when missing
(RFC 6409 8)."""

from __future__ import annotations

from email.utils import formatdate, make_msgid


def header_block(first_chunk: bytes) -> bytes:
    end = first_chunk.find(b"\r\n\r\n")
    return first_chunk[: end + 2] if end >= 0 else first_chunk


def missing_headers(first_chunk: bytes, hostname: str, sender: str = "") -> bytes:
    block = b"\r\n" + header_block(first_chunk).lower()
    add = []
    if sender and b"\r\nfrom:" not in block:  # the sender was checked to be the user's
        add.append(f"From: <{sender}>\r\n")
    if b"\r\nmessage-id:" not in block:
        add.append(f"Message-ID: {make_msgid(domain=hostname)}\r\n")
    if b"\r\ndate:" not in block:
        add.append(f"Date: {formatdate(localtime=False, usegmt=True)}\r\n")
    return "".join(add).encode()


# -- as a module (kind "submission_headers") ----------------------------------------

from pillarbox import module  # noqa: E402


class _State(module.BaseModifierState):
    def __init__(self, hostname: str, envelope: module.Envelope) -> None:
        self.hostname, self.envelope = hostname, envelope

    async def header(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        block = "".join(f"{n}:{v}\r\n" for n, v in fields).encode("utf-8", "replace") + b"\r\n"
        sender = self.envelope.mail_from or self.envelope.source.auth or ""
        added = missing_headers(block, self.hostname, sender).decode()
        extra = [(n, v) for n, _, v in (line.partition(":") for line in added.splitlines())]
        return fields + extra


class SubmissionHeaders:
    def __init__(self, name: str, hostname: str) -> None:
        self.name, self.hostname = name, hostname

    def state(self, envelope: module.Envelope) -> _State:
        return _State(self.hostname, envelope)


KIND = module.Kind(
    name="submission_headers", role="modifier", options=(),
    make=lambda name, options, env: SubmissionHeaders(name, env.config.hostname),
    help="Adds From (the envelope sender), Message-ID and Date when a submitted message "
         "lacks them (RFC 6409 8).")
