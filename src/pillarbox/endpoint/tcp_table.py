"""Postfix tcp_table(5) maps: Postfix asks pillarbox about recipients and aliases.

The protocol: one request line `get KEY\\n`, one reply line: `200 VALUE\\n`
(found), `500 TEXT\\n` (not found: Postfix goes on to its next rule),
`400 TEXT\\n` (a temporary error). In keys and values `%`, whitespace and
every non-printing character travel as `%XX`.

Two maps, each on listeners of its own (a request names no map):

- recipient access (`check_recipient_access`, `virtual_mailbox_maps`):
  `200 OK` for a user or alias that takes mail, `500` for an unknown
  address, `200 REJECT ...` for a disabled one, `200 DEFER_IF_PERMIT ...`
  for a full mailbox or a recipient who must have an OpenPGP key and has none;
- virtual aliases (`virtual_alias_maps`): an alias's addresses,
  comma-separated, as pillarbox expands it; `500` for an address that is no
  alias (a user, an unknown address, or an alias with a `|command` target,
  which pillarbox expands itself when Postfix hands it the mail over LMTP).

Answers come from the server's in-memory copy of users and aliases
(directory/cache.py), which a `pillarbox user`/`alias` change refreshes
within a second. The lookups are synchronous dict work, so a thin Protocol
answers each line as it arrives, with no task per request.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from pillarbox import address as addr
from pillarbox.check import encryption_key, recipient

if TYPE_CHECKING:
    from pillarbox.endpoint.smtp import SMTPContext

log = logging.getLogger("pillarbox.tcp_table")

MAX_REQUEST = 4096  # octets per request line, as tcp_table(5) bounds replies
MAX_REPLY = 4096  # including the newline (tcp_table(5))
BATCH = 200  # request lines answered per turn of the event loop
MAX_PENDING = 64 * 1024  # unread input held while batches wait their turn
_PERCENT_RE = re.compile(rb"%([0-9A-Fa-f]{2})")
_CODE_AND_RCPT_RE = re.compile(r"^\d\.\d{1,3}\.\d{1,3} (?:<[^>]*>: )?")


def decode(key: bytes) -> bytes:
    """A request parameter with its %XX escapes undone."""
    return _PERCENT_RE.sub(lambda m: bytes((int(m.group(1), 16),)), key)


def encode(value: str) -> str:
    """`%`, whitespace and non-printing characters as %XX (UTF-8 octets)."""
    out = []
    for c in value:
        if c == "%" or not c.isprintable() or c.isspace():
            out.extend(f"%{b:02X}" for b in c.encode("utf-8"))
        else:
            out.append(c)
    return "".join(out)


def lacks_required_key(ctx: SMTPContext, address: str) -> bool:
    """Whether `address` must have an OpenPGP key (encryption at rest with
    `no_key = "defer"`) and it, or a user it reaches, has none: the same rule
    as pillarbox's own RCPT (check/encryption_key.py)."""
    return encryption_key.check(ctx.queue.encryption, ctx.aliases, address) is not None


def _reason(text: str) -> str:
    """A refusal's words without its enhanced code and `<address>:` (Postfix
    names the recipient itself), e.g. "mailbox full, try again later"."""
    return _CODE_AND_RCPT_RE.sub("", text, count=1)


def _address(key: str, ctx: SMTPContext) -> str | None:
    """The key as an address of one of our domains, else None (Postfix also
    asks for partial keys such as `example.org` or `user@`: never ours)."""
    if "@" not in key or key.startswith("@") or key.endswith("@"):
        return None
    try:
        address = addr.normalize(key)
    except addr.AddressError:
        return None
    return address if ctx.config.is_local_domain(addr.domain_of(address)) else None


def recipient_access(ctx: SMTPContext, key: str) -> str:
    """The reply line (without newline) for a check_recipient_access lookup."""
    address = _address(key, ctx)
    if address is None:
        return "500 not a recipient of this server"
    refused = recipient.check(ctx.aliases, address, ctx.queue.srs)
    if refused is None:
        if lacks_required_key(ctx, address):
            return "200 " + encode("DEFER_IF_PERMIT 4.7.0 recipient has not set up an "
                                   "encryption key yet")
        return "200 OK"
    enhanced = refused.text.split(" ", 1)[0]
    if enhanced == "5.1.1":  # unknown: Postfix's own unknown-recipient rejection
        return "500 no such user"
    action = "DEFER_IF_PERMIT" if refused.code < 500 else "REJECT"
    return "200 " + encode(f"{action} {enhanced} {_reason(refused.text)}")


def virtual_alias(ctx: SMTPContext, key: str) -> str:
    """The reply line (without newline) for a virtual_alias_maps lookup."""
    address = _address(key, ctx)
    if address is None:
        return "500 not an alias"
    aliases = ctx.aliases
    if aliases.users.get(address) is not None and not aliases.targets(address):
        return "500 not an alias"  # a user
    x = aliases.expand(address)
    if x.empty or x.commands:
        return "500 not an alias"
    if not x.remote and list(x.via.values()) == [address]:
        return "500 not an alias"  # alice+tag@: delivered as is, pillarbox files it
    value = encode(",".join([*x.local, *x.remote]))
    if len(value) + 5 > MAX_REPLY:
        return "400 expansion too long for tcp_table"
    return "200 " + value


MAPS: dict[str, Callable[[SMTPContext, str], str]] = {
    "recipient_access": recipient_access,
    "virtual_alias": virtual_alias,
}


class TableProtocol(asyncio.Protocol):
    """One Postfix connection to one map: request lines in, reply lines out.

    Budgets: a request line of MAX_REQUEST octets; BATCH lines answered per
    turn of the event loop (a megabyte of pipelined requests waits its turns,
    other connections are served in between); no reading while replies wait
    for the client to read them (asyncio's pause_writing); a request must be
    complete within `idle_timeout` of the connection or the previous answer,
    else the connection is closed (a line trickled a byte at a time, or a
    client that does not read its answers, too)."""

    def __init__(self, lookup: Callable[[SMTPContext, str], str],
                 context: Callable[[], SMTPContext]) -> None:
        self.lookup, self.context = lookup, context
        self.buf = bytearray()
        self.skipping = False  # inside an over-long line: drop input up to its newline
        self.transport: asyncio.Transport | None = None
        self.idle_timeout = context().config.postfix.idle_timeout
        self.deadline = 0.0  # loop time by which the next request must be complete
        self._timer: asyncio.TimerHandle | None = None
        self._later: asyncio.Handle | None = None  # the next batch, when one is due
        self._write_paused = False
        self._read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.idle_timeout
        self._timer = loop.call_at(self.deadline, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._timer, self._later):
            if handle is not None:
                handle.cancel()
        self.transport = None
        self.buf.clear()

    def _check_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadline:
            self._timer = loop.call_at(max(self.deadline, loop.time() + self.idle_timeout / 4),
                                       self._check_deadline)
            return
        self._timer = None
        if self.transport is not None:
            log.debug("tcp_table connection idle or too slow: closed")
            self.transport.close()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._flow()
        if self.buf and self._later is None:
            self._work()

    def _flow(self) -> None:
        """Read while replies can go out and no batch waits its turn."""
        if self.transport is None:
            return
        want_paused = self._write_paused or self._later is not None or \
            len(self.buf) > MAX_PENDING
        if want_paused != self._read_paused:
            self._read_paused = want_paused
            if want_paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self._later is None and not self._write_paused:
            self._work()
        else:
            self._flow()

    def _work(self) -> None:
        """Answer up to BATCH complete lines; the rest on a later turn."""
        self._later = None
        if self.transport is None:
            return
        out = []
        while len(out) < BATCH:
            end = self.buf.find(b"\n")
            if end < 0:
                break
            line = bytes(self.buf[:end])
            del self.buf[: end + 1]
            if self.skipping:
                self.skipping = False
                continue
            out.append(b"400 request too long\n" if len(line) > MAX_REQUEST
                       else self.answer(line))
        else:
            if self.buf.find(b"\n") >= 0:  # more complete lines: after the others' turn
                self._later = asyncio.get_running_loop().call_soon(self._work)
        if self._later is None and len(self.buf) > MAX_REQUEST:
            self.buf.clear()
            if not self.skipping:
                self.skipping = True
                out.append(b"400 request too long\n")
        if out:
            self.deadline = asyncio.get_running_loop().time() + self.idle_timeout
            self.transport.write(b"".join(out))
        self._flow()

    def answer(self, line: bytes) -> bytes:
        verb, _, key = line.rstrip(b"\r").partition(b" ")
        if verb != b"get":
            return b"400 only get requests are supported\n"
        try:
            text = decode(key.strip()).decode("utf-8").lower()
            reply = self.lookup(self.context(), text)
        except UnicodeDecodeError:
            reply = "500 not an address"
        except Exception:  # a broken lookup is Postfix's "try again", never a crash
            log.exception("tcp_table lookup failed")
            reply = "400 lookup failed"
        return reply.encode() + b"\n"
