"""Targets that deliver nowhere: `reject` refuses every recipient with a
configured reply; `discard` accepts and drops the message (a sinkhole).

    [module.gone]
    kind = "reject"
    reply = "550 5.1.1 this address was retired; write to support@example.test"

    [module.blackhole]
    kind = "discard"
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, BinaryIO

from pillarbox import module
from pillarbox.check import Reply

log = logging.getLogger("pillarbox.target.sink")

# "550 5.7.1 text": the enhanced code's class must agree with the reply's.
_REPLY_RE = re.compile(r"([45])\d\d ([45])\.\d{1,3}\.\d{1,3}( [ -~]*)?")


def parse_reply(text: str, option: str = "reply") -> Reply:
    """A configured SMTP reply line; ValueError (one line, naming the option) if malformed."""
    m = _REPLY_RE.fullmatch(text)
    if not m or m.group(1) != m.group(2):
        raise ValueError(
            f"{option}: expected a 4xx or 5xx reply with a matching enhanced code and "
            f"printable ASCII text, like \"550 5.7.1 not accepted here\"; got {text!r}"
        )
    code, _, rest = text.partition(" ")
    return Reply(int(code), rest)


# -- reject -------------------------------------------------------------------------

class _Refusing:
    def __init__(self, reply: Reply) -> None:
        self._reply = reply

    async def add_rcpt(self, rcpt: str) -> None:
        raise module.DeliveryError(self._reply)

    async def body(self, message: BinaryIO) -> None:
        pass

    async def commit(self) -> Mapping[str, module.DeliveryError | None]:
        return {}  # no recipient was ever added

    async def abort(self) -> None:
        pass


class RejectTarget:
    def __init__(self, name: str, reply: Reply) -> None:
        self.name = name
        self.reply = reply

    async def start(self, envelope: module.Envelope) -> module.Delivery:
        return _Refusing(self.reply)


def _make_reject(name: str, options: dict[str, Any], env: Any) -> RejectTarget:
    reply = options.get("reply")
    if not isinstance(reply, str):
        raise ValueError("reply: required, a string like \"550 5.7.1 not accepted here\"")
    return RejectTarget(name, parse_reply(reply))


# -- discard ------------------------------------------------------------------------

class _Dropping(module.BaseDelivery):
    """The message is never read: dropping costs nothing."""

    def __init__(self, target: str, envelope: module.Envelope) -> None:
        super().__init__(envelope)
        self._target = target

    async def commit(self) -> Mapping[str, module.DeliveryError | None]:
        log.info("discarded id=%s target=%s from=<%s> rcpts=%d", self.envelope.msg_id,
                 self._target, self.envelope.mail_from, len(self.rcpts))
        return dict.fromkeys(self.rcpts)


class DiscardTarget:
    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self, envelope: module.Envelope) -> module.Delivery:
        return _Dropping(self.name, envelope)


def _make_discard(name: str, options: dict[str, Any], env: Any) -> DiscardTarget:
    return DiscardTarget(name)


KINDS = (
    module.Kind(
        "reject", "target",
        (module.Option("reply", str, required=True,
                       help="the SMTP reply every recipient gets, e.g. \"550 5.7.1 not here\""),),
        _make_reject,
        help="refuse every recipient with a configured reply",
    ),
    module.Kind(
        "discard", "target", (), _make_discard,
        help="accept the message and drop it (a sinkhole); logs one line per message",
    ),
)
