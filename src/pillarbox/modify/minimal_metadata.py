"""The `minimal_metadata` modifier (chatmail submission): what a client's
message says about its sender's machine does not leave the server.

Removes Received, X-Originating-IP, User-Agent and X-Mailer fields; a
message whose Content-Type is multipart/encrypted gets `Subject: [...]`
(its real subject is inside the encrypted part; Delta Chat writes `[...]`
itself, other clients may not). The body is never touched.
"""

from __future__ import annotations

from pillarbox import module

REMOVED = frozenset({"received", "x-originating-ip", "user-agent", "x-mailer"})
HIDDEN_SUBJECT = " [...]"


def is_encrypted_type(value: str) -> bool:
    return value.strip().lower().startswith("multipart/encrypted")


def strip(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = [(n, v) for n, v in fields if n.lower() not in REMOVED]
    ctypes = [v for n, v in out if n.lower() == "content-type"]
    if not (ctypes and is_encrypted_type(" ".join(ctypes[0].split()))):
        return out
    kept = [(n, v) for n, v in out if n.lower() != "subject"]
    return [*kept, ("Subject", HIDDEN_SUBJECT)]


class _State(module.BaseModifierState):
    async def header(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return strip(fields)


class MinimalMetadata:
    def __init__(self, name: str) -> None:
        self.name = name

    def state(self, envelope: module.Envelope) -> module.ModifierState:
        return _State()


KIND = module.Kind(
    "minimal_metadata", "modifier", (),
    lambda name, options, env: MinimalMetadata(name),
    help="remove Received, X-Originating-IP, User-Agent, X-Mailer; Subject [...] for "
         "multipart/encrypted messages")
