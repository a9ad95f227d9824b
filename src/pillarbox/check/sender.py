"""Who may an authenticated user send as: its own address, an alias that
delivers to it, or an address its sender rights name (`pillarbox user from`).

The rule holds for the envelope (MAIL FROM) and for the From header, which is
what the recipient sees and what our DKIM signature vouches for.
"""

from __future__ import annotations

import email.parser
import email.policy
from email.utils import getaddresses

from pillarbox import address as addr
from pillarbox.check import Reply
from pillarbox.directory.aliases import Aliases
from pillarbox.directory.users import sender_allowed
from pillarbox.printable import escape


def may_send_as(aliases: Aliases, user: str, address: str) -> bool:
    a = address.lower()
    if a == user:
        return True
    if a and user in aliases.owners(a) and aliases.targets(a):
        return True
    return bool(a) and sender_allowed(aliases.users.sender_rights(user), a)


def check(aliases: Aliases, user: str, mail_from: str) -> Reply | None:
    if may_send_as(aliases, user, mail_from):
        return None
    return Reply(553, f"5.7.1 <{mail_from}>: sender address not owned by {user}")


class _Unparsable(Exception):
    pass


def from_addresses(header_block: bytes) -> list[str] | None:
    """The addresses of the From field (None if there is none); _Unparsable if
    the field is not one list of mailboxes both of Python's parsers agree on."""
    try:
        modern = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            header_block)
        fields = modern.get_all("From") or []
        if not fields:
            return None
        if len(fields) > 1:
            raise _Unparsable("more than one From field")
        found = [a.addr_spec for a in fields[0].addresses]
        # The compat32 parser is the one the DKIM signer (and many receivers)
        # use: where the two read different addresses, neither is trusted.
        legacy = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            header_block)
        old = [a for _, a in getaddresses(legacy.get_all("From", []))]
    except _Unparsable:
        raise
    except Exception as e:  # the stdlib parsers on hostile input: refuse, never crash
        raise _Unparsable(f"cannot parse the From field ({type(e).__name__})") from None
    if not found:
        raise _Unparsable("the From field has no address")
    try:
        norm = [addr.normalize(a) for a in found]
        if sorted(norm) != sorted(addr.normalize(a) for a in old if a):
            raise _Unparsable("the From field is ambiguous")
    except addr.AddressError:
        raise _Unparsable("the From field has an invalid address") from None
    return norm


def check_from(aliases: Aliases, user: str, header_block: bytes) -> Reply | None:
    """Every From address must be one the user may send as. A missing From is
    fine: submission adds one (modify/submission.py)."""
    try:
        found = from_addresses(header_block)
    except _Unparsable as e:
        return Reply(550, f"5.7.1 {e}; use From: <{user}>")
    for a in found or []:
        if not may_send_as(aliases, user, a):
            return Reply(550, f"5.7.1 From: <{escape(a)}> is not an address of {user}")
    return None


# -- as a module (kind "sender") ----------------------------------------------------

from typing import BinaryIO  # noqa: E402

from pillarbox import module  # noqa: E402

_HEADER_LIMIT = 1 << 20  # a From field is in the header; never read more than this


class _State(module.BaseCheckState):
    def __init__(self, aliases: Aliases, source: module.Source) -> None:
        self.aliases, self.source = aliases, source

    async def mail(self, sender: str) -> module.Verdict:
        if not self.source.auth:
            return module.ACCEPT
        refused = check(self.aliases, self.source.auth, sender)
        return module.ACCEPT if refused is None else module.Verdict(reject=refused)

    async def body(self, header, body: BinaryIO) -> module.Verdict:
        if not self.source.auth:
            return module.ACCEPT
        block = b""
        while b"\r\n\r\n" not in block and len(block) < _HEADER_LIMIT:
            chunk = body.read(65536)
            if not chunk:
                break
            block += chunk
        end = block.find(b"\r\n\r\n")
        refused = check_from(self.aliases, self.source.auth,
                             block[: end + 2] if end >= 0 else block)
        return module.ACCEPT if refused is None else module.Verdict(reject=refused)


class SenderCheck:
    def __init__(self, name: str, env) -> None:
        self.name, self.env = name, env

    def state(self, source: module.Source) -> _State:
        return _State(self.env.aliases, source)


KIND = module.Kind(
    name="sender", role="check", options=(),
    make=lambda name, options, env: SenderCheck(name, env),
    help="An authenticated user's MAIL FROM and From header must be addresses it may "
         "send as (553 5.7.1, 550 5.7.1); unauthenticated mail passes.")
