"""The module kinds a config file wires together: checks, modifiers, targets.

Shapes after maddy's framework/module (check state per connection, modifier
state per message, target -> delivery with add_rcpt/body/commit/abort),
written for asyncio and for our queue. A module is made once per instance
from its options (`Kind.make(name, options, env)`); a check's state is made
for each SMTP connection (it serves the connection's messages in turn), a
modifier's for each message, and each is dropped after it.

Depends on nothing above it: endpoints, the queue and the server import
this, never the other way round.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, BinaryIO, Protocol, runtime_checkable

from pillarbox.check import Reply

# -- what a module sees ---------------------------------------------------------

@dataclass
class Source:
    """Where a message comes from: known at the connection, filled in as the
    dialogue goes on."""

    endpoint: str  # smtp | submission | submissions | sendmail | lmtp | queue
    client_ip: str = ""
    helo: str | None = None
    auth: str | None = None  # the authenticated user, if any
    tls: str | None = None  # "TLSv1.3 TLS_AES_256_GCM_SHA384", if any


@dataclass
class Envelope:
    """The envelope of one message as a pipeline stage sees it."""

    msg_id: str
    mail_from: str  # "" for the null sender
    rcpts: list[str]
    source: Source
    size: int = 0


@dataclass
class Verdict:
    """What a check says at one phase. The default accepts."""

    reject: Reply | None = None  # refuse (this recipient at RCPT, else the message)
    quarantine: bool = False  # deliver to the recipients' Junk folder
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    auth_results: list[str] = field(default_factory=list)  # "spf=pass smtp.mailfrom=..."
    # Replace the Subject with this (rspamd's "rewrite subject"); the session
    # makes the change, so checks still never touch the message themselves.
    subject: str | None = None

    @property
    def accepts(self) -> bool:
        return self.reject is None


ACCEPT = Verdict()


class DeliveryError(Exception):
    """A target could not deliver: `reply` says how (4xx: the queue retries
    with its backoff and DSNs; 5xx: failed for good, a DSN to the sender)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.text}")
        self.reply = reply

    @property
    def temporary(self) -> bool:
        return 400 <= self.reply.code < 500


# -- checks ---------------------------------------------------------------------

class CheckState(Protocol):
    """One connection's state of one check, made when the connection starts
    (its Source is filled in as the dialogue goes: helo, auth, tls). Hooks are
    called in dialogue order: `connection` before the greeting, `helo` at each
    EHLO/HELO, then `mail`, `rcpt`..., `body` for each message of the
    connection in turn; `mail` starts a message, so a check that keeps
    per-message data resets it there. Verdicts of `connection` and `helo`
    apply to every message of the connection, later ones to that message.
    Any hook may be left at the default (accept). Checks never change the
    message."""

    async def connection(self, source: Source) -> Verdict: ...
    async def helo(self, name: str) -> Verdict: ...
    async def mail(self, sender: str) -> Verdict: ...
    async def rcpt(self, rcpt: str) -> Verdict: ...
    async def body(self, header: Message, body: BinaryIO) -> Verdict:
        """`header` parsed; `body` the whole message (header included) as a
        reader positioned at 0: read it in blocks, it may be large."""
        ...


class Check(Protocol):
    name: str

    def state(self, source: Source) -> CheckState: ...


class BaseCheckState:
    """Accepts at every phase: subclasses override the hooks they need."""

    async def connection(self, source: Source) -> Verdict:
        return ACCEPT

    async def helo(self, name: str) -> Verdict:
        return ACCEPT

    async def mail(self, sender: str) -> Verdict:
        return ACCEPT

    async def rcpt(self, rcpt: str) -> Verdict:
        return ACCEPT

    async def body(self, header: Message, body: BinaryIO) -> Verdict:
        return ACCEPT


# -- modifiers ------------------------------------------------------------------

class ModifierState(Protocol):
    """One message's state of one modifier; runs after the checks accepted."""

    async def sender(self, sender: str) -> str: ...
    async def rcpt(self, rcpt: str) -> list[str]:
        """One recipient becomes zero or more."""
        ...
    async def header(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The header fields in order, as (name, raw value without CRLF)."""
        ...
    def body(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes] | None:
        """A transformed body stream, or None to leave the body alone (the
        common case; it keeps the message unread and the path fast)."""
        ...


class Modifier(Protocol):
    name: str

    def state(self, envelope: Envelope) -> ModifierState: ...


class BaseModifierState:
    """Changes nothing: subclasses override what they rewrite."""

    async def sender(self, sender: str) -> str:
        return sender

    async def rcpt(self, rcpt: str) -> list[str]:
        return [rcpt]

    async def header(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return fields

    def body(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes] | None:
        return None


# -- targets --------------------------------------------------------------------

class Delivery(Protocol):
    """One message on its way into one target. Nothing is visible before
    `commit` (a Maildir file stays in tmp/, an HTTP request is not sent)."""

    async def add_rcpt(self, rcpt: str) -> None:
        """Raises DeliveryError to refuse this one recipient."""
        ...
    async def body(self, message: BinaryIO) -> None:
        """The whole message, header included, as a reader positioned at 0."""
        ...
    async def commit(self) -> Mapping[str, DeliveryError | None]:
        """Make it visible; per recipient None (delivered) or why not. A
        target whose protocol has one answer gives every recipient that answer
        (or raises DeliveryError for all)."""
        ...
    async def abort(self) -> None: ...


class BaseDelivery:
    """Collects the recipients and the message reader until `commit`, which
    subclasses write; `abort` forgets them (nothing was made visible)."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.rcpts: list[str] = []
        self.message: BinaryIO | None = None

    async def add_rcpt(self, rcpt: str) -> None:
        self.rcpts.append(rcpt)

    async def body(self, message: BinaryIO) -> None:
        self.message = message  # read at commit

    async def commit(self) -> Mapping[str, DeliveryError | None]:
        raise NotImplementedError

    async def abort(self) -> None:
        self.rcpts, self.message = [], None


class Target(Protocol):
    name: str

    async def start(self, envelope: Envelope) -> Delivery: ...


# -- making modules from the config -----------------------------------------------

@dataclass(frozen=True)
class Option:
    """One option of a module kind: its type, default and meaning (the
    operator's reference and `check` are built from these)."""

    name: str
    type: type | tuple[type, ...]
    default: Any = None
    required: bool = False
    help: str = ""


@dataclass(frozen=True)
class Kind:
    """A module kind: `role` is "check", "modifier" or "target"; `make`
    builds an instance from its name, its validated options and the server's
    shared services (directory, queue, config) in `env`."""

    name: str
    role: str
    options: tuple[Option, ...]
    make: Callable[[str, dict[str, Any], Any], Check | Modifier | Target]
    help: str = ""
    # Checks option values beyond their types, for `check` (an address, a
    # pattern): raises ValueError("OPTION: why"). None: types are enough.
    validate: Callable[[dict[str, Any]], None] | None = None


@runtime_checkable
class Closable(Protocol):
    """A module holding resources (an HTTP session, a process pool) closes
    them when the server stops or a reload drops the instance."""

    async def close(self) -> None: ...
