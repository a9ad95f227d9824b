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
