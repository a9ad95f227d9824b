"""Postfix SMTP access policy delegation (`check_policy_service`): Postfix
asks, pillarbox answers with the verdicts of the checks in [pipeline.policy]
(rate_limit, greylist, dnsbl, ...: the same modules the MX uses).

A request is `name=value` lines ended by an empty line; the reply is
`action=...` and an empty line. Postfix keeps the connection open and sends
one request per recipient (or per other state it asks at), each naming the
message by its `instance` attribute. A new instance is a new message: each
check gets a fresh state, and its connection, HELO and MAIL hooks run once
for that message (a rate limit counts the message once, not once per
recipient); each RCPT request then runs the RCPT hooks for that recipient.

Verdicts become actions Postfix understands: accept -> `DUNNO` (Postfix goes
on with its own rules), a temporary refusal -> `DEFER_IF_PERMIT` with the
check's text (450 unless a later rule rejects anyway, so greylisting never
delays mail that would be refused), a permanent one -> its code and text
(`554 5.7.1 ...`); a check's header field -> `PREPEND`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pillarbox import module, stages
from pillarbox.check import Reply

if TYPE_CHECKING:
    from pillarbox.endpoint.smtp import SMTPContext

log = logging.getLogger("pillarbox.policy")

MAX_LINE = 2048  # one attribute line; Postfix's values are far shorter
MAX_ATTRIBUTES = 100  # per request
_PHASES = {"CONNECT": 0, "EHLO": 1, "HELO": 1, "MAIL": 2, "RCPT": 3, "VRFY": 3, "DATA": 2,
           "BDAT": 2, "END-OF-MESSAGE": 2, "ETRN": 1}


class BadRequest(Exception):
    pass


def action(reply: Reply | None, verdict: module.Verdict | None = None) -> str:
    """The Postfix action for a check's refusal (or its acceptance)."""
    if reply is not None:
        text = " ".join(reply.text.split())  # one line, whatever a check wrote
        if reply.code < 500:
            return f"DEFER_IF_PERMIT {text}"
        return f"{reply.code} {text}"
    if verdict is not None and verdict.add_headers:
        name, value = verdict.add_headers[0]
        return f"PREPEND {name}: {stages.field_value(value)}"
    return "DUNNO"


class _Message:
    """One message's check states and what its earlier phases said."""

    def __init__(self, checks: list[Any], source: module.Source) -> None:
        self.source = source
        self.states = [c.state(source) for c in checks]
        self.phase = -1  # the last phase run: 0 connection, 1 helo, 2 mail
        self.refused: Reply | None = None
        self.headers: list[tuple[str, str]] = []
        self.prepended = False

    def _take(self, verdicts: list[module.Verdict]) -> None:
        for v in verdicts:
            if v.reject is not None:
                self.refused = v.reject
                return
            self.headers += v.add_headers

    async def run_to(self, phase: int, attrs: dict[str, str]) -> None:
        """Run the hooks of every phase up to `phase` not run yet."""
        while self.phase < min(phase, 2) and self.refused is None:
            self.phase += 1
            if self.phase == 0:
                hooks = [st.connection(self.source) for st in self.states]
            elif self.phase == 1:
                if not self.source.helo:
                    continue
                hooks = [st.helo(self.source.helo) for st in self.states]
            else:
                hooks = [st.mail(attrs.get("sender", "")) for st in self.states]
            self._take([await h for h in hooks])


class PolicySession:
    def __init__(self, context: Callable[[], SMTPContext], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.context, self.reader, self.writer = context, reader, writer
        self.message: _Message | None = None
        self.instance = ""
        # A request must be complete within this of the previous answer (or the
        # connection): idle and trickling clients are closed ([postfix] idle_timeout).
        self.idle_timeout = context().config.postfix.idle_timeout

    async def run(self) -> None:
        try:
            while True:
                try:
                    attrs = await asyncio.wait_for(self._request(), self.idle_timeout)
                except BadRequest as e:
                    self.writer.write(f"action=DEFER_IF_PERMIT 4.3.0 policy request {e}\n\n"
                                      .encode())
                    await self.writer.drain()
                    return
                if attrs is None:
                    return
                try:
                    answer = await self.answer(attrs)
                except Exception:  # a broken check: let Postfix's other rules decide
                    log.exception("policy check failed")
                    answer = "DUNNO"
                self.writer.write(f"action={answer}\n\n".encode())
                await self.writer.drain()
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self.writer.close()

    async def _request(self) -> dict[str, str] | None:
        """One request's attributes; None at the end of the connection."""
        attrs: dict[str, str] = {}
        while True:
            try:
                line = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return None
            except asyncio.LimitOverrunError:
                raise BadRequest("line too long") from None
            line = line.rstrip(b"\r\n")
            if not line:
                if not attrs:
                    continue  # a stray empty line between requests
                return attrs
            name, eq, value = line.decode("utf-8", "replace").partition("=")
            if not eq:
                raise BadRequest("line without '='")
            if len(attrs) >= MAX_ATTRIBUTES:
                raise BadRequest("has too many attributes")
            attrs[name.strip()] = value

    async def answer(self, attrs: dict[str, str]) -> str:
        if attrs.get("request") != "smtpd_access_policy":
            return "DUNNO"
        ctx = self.context()
        checks = ctx.checks.get("policy")
        if not checks:
            return "DUNNO"
        instance = attrs.get("instance", "")
        if self.message is None or not instance or instance != self.instance:
            source = module.Source(endpoint="policy", client_ip=attrs.get("client_address", ""),
                                   helo=attrs.get("helo_name") or None,
                                   auth=attrs.get("sasl_username") or None)
            self.message, self.instance = _Message(checks, source), instance
        msg = self.message
        phase = _PHASES.get(attrs.get("protocol_state", "RCPT").upper(), 3)
        await msg.run_to(phase, attrs)
        if msg.refused is not None:
            return action(msg.refused)
        if phase == 3 and attrs.get("recipient"):
            verdicts = await stages.rcpt_verdicts(msg.states, attrs["recipient"].lower())
            refused = next((v.reject for v in verdicts if v.reject is not None), None)
            if refused is not None:
                return action(refused)
            headers = [h for v in verdicts for h in v.add_headers]
        else:
            headers = []
        if not msg.prepended:  # the message's own fields once, not once per recipient
            headers, msg.prepended = msg.headers + headers, bool(msg.headers)
        return action(None, module.Verdict(add_headers=headers))


def protocol_factory(context: Callable[[], SMTPContext]) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for loop.create_server: a PolicySession per connection."""
    running: set[asyncio.Task] = set()  # held, so no session is collected mid-way

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(PolicySession(context, reader, writer).run())
        running.add(task)
        task.add_done_callback(running.discard)

    def make() -> asyncio.Protocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=MAX_LINE), connected)
    return make
