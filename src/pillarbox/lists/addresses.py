"""The addresses a list answers at, and VERP.

For the list team@example.org:

    team@                          posts
    team-request@ -subscribe@ -unsubscribe@   subscription by mail
    team+approve-TOKEN@ team+reject-TOKEN@    a moderator's answer
    team+confirm-TOKEN@            a (un)subscription confirmed
    team+bounces@                  DSNs (the queue's own, read for Final-Recipient)
    team+bounces-alice=example.net@   VERP: a DSN about alice@example.net

The "+" is fixed (not [delivery] recipient_delimiter): these addresses are
made and read by the list alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SUFFIXES = {"-request": "request", "-subscribe": "subscribe", "-unsubscribe": "unsubscribe"}
TOKEN_ROLES = ("approve", "reject", "confirm")
MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1: a longer VERP local part falls back to +bounces


@dataclass(frozen=True)
class Role:
    list: str  # the list's address
    kind: str  # post | request | subscribe | unsubscribe | approve | reject | confirm | bounces
    arg: str = ""  # the token, or the member a VERP bounce names ("" if none)


def parse(rcpt: str, exists: Callable[[str], bool]) -> Role | None:
    """What `rcpt` is to which list (None: no list's address). `exists(addr)`
    says whether a list has that address."""
    local, _, domain = rcpt.lower().rpartition("@")
    if not local or not domain:
        return None
    if exists(f"{local}@{domain}"):
        return Role(f"{local}@{domain}", "post")
    base, plus, detail = local.partition("+")
    if plus and exists(f"{base}@{domain}"):
        lst = f"{base}@{domain}"
        if detail == "bounces":
            return Role(lst, "bounces")
        if detail.startswith("bounces-"):
            return Role(lst, "bounces", _unverp(detail[len("bounces-"):]))
        kind, _, token = detail.partition("-")
        if kind in TOKEN_ROLES and token.isalnum():
            return Role(lst, kind, token)
        return None
    for suffix, kind in SUFFIXES.items():
        if local.endswith(suffix) and exists(f"{local[:-len(suffix)]}@{domain}"):
            return Role(f"{local[:-len(suffix)]}@{domain}", kind)
    return None


def verp(list_address: str, member: str) -> str:
    """The envelope sender of the list's copy to `member`:
    team+bounces-alice=example.net@example.org, or team+bounces@example.org
    when that would not fit in a local part."""
    local, _, domain = list_address.rpartition("@")
    m_local, _, m_domain = member.rpartition("@")
    out = f"{local}+bounces-{m_local}={m_domain}"
    if len(out) > MAX_LOCAL or not m_local or any(c in out for c in '"\\ @<>'):
        out = f"{local}+bounces"
    return f"{out}@{domain}"


def _unverp(text: str) -> str:
    local, eq, domain = text.rpartition("=")
    return f"{local}@{domain}" if eq and local and domain else ""


def bounce_sender(list_address: str) -> str:
    """The envelope sender the queue entry of a list post carries; the queue
    turns it into one VERP address per member (`verp`)."""
    local, _, domain = list_address.rpartition("@")
    return f"{local}+bounces@{domain}"


def is_bounce_sender(address: str) -> bool:
    return address.rpartition("@")[0].endswith("+bounces")
