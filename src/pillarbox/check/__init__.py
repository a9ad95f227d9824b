"""Checks run in the SMTP dialogue; each returns None to accept or a Reply to refuse."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # starts with the enhanced status code, e.g. "5.1.1 ..."

    def line(self) -> bytes:
        return f"{self.code} {self.text}\r\n".encode()
