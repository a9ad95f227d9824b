"""SMTP endpoints: MX (port 25), submission (587, STARTTLS) and submissions (465).

Written on asyncio streams rather than aiosmtpd: aiosmtpd reads DATA line by
line (about 67 reads and handler calls per 4 KB message, its profile's top
cost) and writes one reply per syscall. Here input is read in large chunks,
DATA is scanned with `bytes.find` for the one terminator that counts
(CRLF . CRLF), and pipelined replies go out in one write. Strictness is the
point as much as speed: a bare CR or LF anywhere in DATA is refused and
never ends the data (SMTP smuggling).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import ssl
from dataclasses import dataclass, field, replace
from typing import Any

from pillarbox import address as addr
from pillarbox import logs, metrics, module, pipelines, stages
from pillarbox.check import Reply, encryption_key, recipient, relay, sender
from pillarbox.check.ratelimit import LoginThrottle
from pillarbox.config import Config
from pillarbox.directory.aliases import Aliases
from pillarbox.directory.users import Users
from pillarbox.endpoint import connection
from pillarbox.endpoint.connection import Connection, Disconnect, SessionTable
from pillarbox.modify import autocrypt, received, submission
from pillarbox.modify.signing import Signing
from pillarbox.printable import escape
from pillarbox.queue.scheduler import Queue
from pillarbox.queue.spool import BodyBuffer, SpoolFull, disk_full, new_id
from pillarbox.store import backend

log = logging.getLogger("pillarbox.smtp")

MAX_COMMAND_LINE = 512  # octets including CRLF (RFC 5321 4.5.3.1.4)
MAX_TEXT_LINE = 1000  # octets including CRLF (RFC 5321 4.5.3.1.6)
MAX_ERRORS = 10  # bad commands before we hang up
MAX_AUTH_FAILURES = 5  # smtplib alone spends two per login (PLAIN, then LOGIN)

_PATH_RE = re.compile(r"^\s*<([^<>]*)>\s*(.*)$")
_MESSAGE_ID_RE = re.compile(rb"(?:^|\r\n)message-id:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
                            re.IGNORECASE)
INFO = logging.INFO


@dataclass
class Transaction:
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)
    smtputf8: bool = False
    # A configured (not the default) pipeline: each check's state for this
    # message, and what their verdicts asked for.
    states: list[tuple[Any, Any]] | None = None
    # (No default_factory: a Transaction is made per MAIL on the fast path.)
    quarantine: bool = False
    added: list[str] | None = None  # header fields, "Name: value"
    auth_results: list[str] | None = None
    subject: str | None = None  # a check asked the Subject be replaced by this


@dataclass
class SMTPContext:
    """What every session needs; built once by the server."""

    config: Config
    users: Users
    aliases: Aliases
    queue: Queue
    tls: ssl.SSLContext | None
    throttle: LoginThrottle
    signing: Signing | None = None
    modules: dict[str, Any] = field(default_factory=dict)  # instances by name
    sessions: SessionTable = field(init=False)  # all SMTP ports together
    # Per endpoint: None for the default pipeline (today's checks, called
    # directly: the fast path), else the configured check instances.
    checks: dict[str, list[Any] | None] = field(init=False)
    modifiers: dict[str, list[Any] | None] = field(init=False)
    rules: list[pipelines.Rule] = field(init=False)

    def __post_init__(self) -> None:
        limits = self.config.limits
        self.sessions = SessionTable(limits.max_connections, limits.max_connections_per_ip)
        mods = self.config.modules
        self.checks = {
            e: None if tuple(p.checks) == pipelines.DEFAULT_PIPELINES[e][0]
            else [self.modules[n] for n in p.checks] for e, p in mods.pipelines.items()}
        self.modifiers = {
            e: None if tuple(p.modifiers) == pipelines.DEFAULT_PIPELINES[e][1]
            else [self.modules[n] for n in p.modifiers] for e, p in mods.pipelines.items()}
        self.rules = mods.rules

    def reconfigured(self, config: Config, tls: ssl.SSLContext,
                     modules: dict[str, Any] | None = None) -> SMTPContext:
        """The context for sessions that start after a reload; open sessions
        keep this one. The session table stays shared, with the new limits:
        the connection limits count every session, old and new."""
        new = replace(self, config=config, tls=tls,
                      modules=self.modules if modules is None else modules)
        new.sessions = self.sessions
        self.sessions.limit = config.limits.max_connections
        self.sessions.per_ip_limit = config.limits.max_connections_per_ip
        return new


class SMTPProtocol(Connection):
    """One SMTP connection: refused over the limits, else a Session."""

    def __init__(self, ctx: SMTPContext, kind: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.kind = kind
        self.table = ctx.sessions
        self.implicit_tls = kind == "submissions"
        self.timeout = ctx.config.limits.command_timeout
        self.min_rate = ctx.config.limits.min_data_rate
        self.session: Session | None = None

    def refusal(self, why: str) -> bytes:
        host = self.ctx.config.hostname
        if why == "address":
            return f"421 4.7.0 {host} too many connections from your address, try later\r\n" \
                .encode()
        return f"421 4.7.0 {host} too many connections, try later\r\n".encode()

    def start(self) -> None:
        self.session = Session(self.ctx, self.kind, self)
        self._task = asyncio.get_running_loop().create_task(self.session.run_guarded())


class Session:
    protocol_name = "ESMTP"  # in the greeting; LMTP's session says LMTP

    def __init__(self, ctx: SMTPContext, kind: str, conn: SMTPProtocol) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.kind = kind  # smtp | submission | submissions | lmtp (endpoint/lmtp.py)
        self.is_submission = kind in ("submission", "submissions")  # AUTH, and required
        self.conn = conn
        self.peer_ip = conn.peer_ip
        self.buf = conn.buf
        self.out: list[bytes] = []
        self.helo: str | None = None
        self.esmtp = False
        self.tls = kind == "submissions"
        self.user: str | None = None
        self.tx = Transaction()
        self.errors = 0
        self.auth_failures = 0
        # A configured pipeline: each check's state for the whole connection,
        # the Source they share (filled in as the dialogue goes), and the
        # verdicts of the connection and the last HELO, which every message
        # of the connection gets. None/unused on the default fast path.
        self.states: list[tuple[Any, Any]] | None = None
        self.source: module.Source | None = None
        self.at_connection = Transaction()
        self.at_helo = Transaction()
        self.refused = False  # a 554 greeting: only QUIT is accepted

    # -- I/O --------------------------------------------------------------

    def reply(self, code: int, text: str) -> None:
        self.out.append(f"{code} {text}\r\n".encode())

    def reply_lines(self, code: int, lines: list[str]) -> None:
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            self.out.append(f"{code}{sep}{line}\r\n".encode())

    def send(self, r: Reply) -> None:
        self.out.append(r.line())

    async def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            await self.conn.write(data)

    async def _fill(self) -> None:
        """Wait for more input; flush pending replies first (we are about to wait)."""
        before = len(self.buf)
        await self.flush()
        if len(self.buf) == before:  # nothing arrived while a slow client drained
            await self.conn.wait_data()

    async def read_line(self) -> bytes | None:
        """One command line without CRLF; None if it was refused (too long, bare LF)."""
        too_long = False
        while True:
            idx = self.buf.find(b"\n")
            if idx >= 0:
                line = bytes(self.buf[: idx + 1])
                del self.buf[: idx + 1]
                if too_long or len(line) > MAX_COMMAND_LINE:
                    self.reply(500, "5.5.2 Line too long (512 octets at most)")
                    return None
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    self.reply(500, "5.5.2 Syntax error: lines must end with CRLF")
                    return None
                return line[:-2]
            if len(self.buf) > MAX_COMMAND_LINE:
                too_long = True
                self.buf.clear()  # discard until the line's end
            await self._fill()

    # -- main loop ----------------------------------------------------------

    async def run(self) -> None:
        try:
            checks = self.ctx.checks[self.kind]
            refused = None if checks is None else await self._connection_checks(checks)
            if refused is None:
                self.reply(220, f"{self.cfg.hostname} {self.protocol_name} ready")
            elif refused.code < 500:  # RFC 5321 3.1: a temporary refusal closes at once
                self._refuse("connection refused", Reply(421, refused.text), None)
                return
            else:  # RFC 5321 3.1: a 554 greeting, then only QUIT
                self._refuse("connection refused", Reply(554, refused.text), None)
                self.refused = True
            while True:
                self.conn.await_command(self.cfg.limits.command_timeout)
                line = await self.read_line()
                self.conn.working()
                if line is None:
                    if self._count_error():
                        return
                    continue
                if not await self.dispatch(line):
                    return
        except Disconnect:
            pass
        except (ConnectionError, ssl.SSLError, OSError) as e:
            log.debug("connection lost peer=%s error=%r", self.peer_ip, e)
        finally:
            try:
                await self.flush()
            except (Disconnect, ConnectionError, ssl.SSLError, OSError, RuntimeError):
                pass
            self.conn.close()

    async def run_guarded(self) -> None:
        try:
            await self.run()
        except Exception:
            log.exception("SMTP session crashed peer=%s", self.peer_ip)
            self.conn.close()

    def _count_error(self) -> bool:
        self.errors += 1
        if self.errors >= MAX_ERRORS:
            self.reply(421, "4.7.0 Too many errors, closing connection")
            return True
        return False

    async def dispatch(self, line: bytes) -> bool:
        """Handle one command; False ends the session."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.reply(500, "5.5.2 Syntax error: command is not valid UTF-8")
            return not self._count_error()
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if self.refused and verb != "QUIT":
            self.reply(503, "5.5.1 Refused at connection, only QUIT is accepted")
            return not self._count_error()
        handler = getattr(self, f"cmd_{verb}", None) if verb.isalpha() else None
        if handler is None:
            self.reply(500, f"5.5.1 Command not recognized: {verb[:20]!r}")
            return not self._count_error()
        result = await handler(arg.strip())
        return result is not False

    # -- commands -----------------------------------------------------------

    def _extensions(self) -> list[str]:
        ext = [
            "PIPELINING",
            f"SIZE {self.cfg.limits.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if not self.tls and self.ctx.tls is not None:
            ext.append("STARTTLS")
        if self.is_submission and self.tls:
            ext.append("AUTH PLAIN LOGIN")
        return ext

    async def cmd_EHLO(self, arg: str) -> None:
        if not arg or not arg.isprintable():
            self.reply(501, "5.5.4 Syntax: EHLO hostname")
            return
        if self.states is not None and not await self._helo_checks(arg):
            return
        self.helo, self.esmtp, self.tx = arg, True, Transaction()
        self.reply_lines(250, [f"{self.cfg.hostname} Hello {arg[:64]}", *self._extensions()])

    async def cmd_HELO(self, arg: str) -> None:
        if not arg or not arg.isprintable():
            self.reply(501, "5.5.4 Syntax: HELO hostname")
            return
        if self.states is not None and not await self._helo_checks(arg):
            return
        self.helo, self.esmtp, self.tx = arg, False, Transaction()
        self.reply(250, f"{self.cfg.hostname}")

    async def cmd_NOOP(self, arg: str) -> None:
        self.reply(250, "2.0.0 OK")

    async def cmd_RSET(self, arg: str) -> None:
        self.tx = Transaction()
        self.reply(250, "2.0.0 OK")

    async def cmd_QUIT(self, arg: str) -> bool:
        self.reply(221, f"2.0.0 {self.cfg.hostname} closing connection")
        return False

    async def cmd_VRFY(self, arg: str) -> None:
        self.reply(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    async def cmd_HELP(self, arg: str) -> None:
        self.reply(214, "2.0.0 See RFC 5321")

    async def cmd_STARTTLS(self, arg: str) -> bool | None:
        if self.tls or self.ctx.tls is None:
            self.reply(503, "5.5.1 TLS already active" if self.tls else "5.5.1 TLS not available")
            return None
        if arg:
            self.reply(501, "5.5.4 Syntax: STARTTLS")
            return None
        self.reply(220, "2.0.0 Ready to start TLS")
        await self.flush()
        # Anything pipelined after STARTTLS was sent in clear is dropped (CVE-2011-0411).
        await self.conn.start_tls(self.ctx.tls)
        self.tls = True
        self.helo, self.esmtp, self.tx = None, False, Transaction()
        if self.source is not None:  # the dialogue starts again, now over TLS
            self.source.helo, self.source.tls = None, self._source().tls
            self.at_helo = Transaction()
        return None

    async def cmd_AUTH(self, arg: str) -> bool | None:
        if not self.is_submission:
            self.reply(503, "5.5.1 AUTH is offered on the submission port")
            return None
        if not self.tls:
            self.reply(538, "5.7.11 Encryption required: use STARTTLS first")
            return None
        if self.user:
            self.reply(503, "5.5.1 Already authenticated")
            return None
        if self.tx.mail_from is not None:
            self.reply(503, "5.5.1 AUTH not allowed during a mail transaction")
            return None
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if mech == "PLAIN":
            resp = initial.strip() or await self._challenge("")
            if resp is None:
                return None
            try:
                parts = base64.b64decode(resp, validate=True).split(b"\0")
                if len(parts) != 3:
                    raise ValueError
                authzid, username, password = (p.decode("utf-8") for p in parts)
            except (binascii.Error, ValueError):
                self.reply(501, "5.5.2 Cannot decode AUTH PLAIN response")
                return None
            if authzid and authzid.lower() != username.lower():
                # Acting as someone else is not offered (IMAP refuses it too).
                self.reply(535, "5.7.8 Authorization identity must be empty or the login")
                return None
        elif mech == "LOGIN":
            u = initial.strip() or await self._challenge("VXNlcm5hbWU6")
            if u is None:
                return None
            p = await self._challenge("UGFzc3dvcmQ6")
            if p is None:
                return None
            try:
                username = base64.b64decode(u, validate=True).decode("utf-8")
                password = base64.b64decode(p, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                self.reply(501, "5.5.2 Cannot decode AUTH LOGIN response")
                return None
        else:
            self.reply(504, "5.5.4 Unrecognized authentication mechanism; use PLAIN or LOGIN")
            return None
        throttle = self.ctx.throttle
        why = throttle.refusal(self.peer_ip, username)
        if why is not None:  # before the password check: no argon2, no way in
            logs.event(log, INFO, "auth refused", client=logs.client(self.peer_ip),
                       endpoint=self.kind, locked=why, mech=mech, user=username[:100])
            self.reply(454, "4.7.0 Too many failed logins, try again later")
            self.auth_failures += 1  # cheap for us, but no endless retries on one connection
            if self.auth_failures >= MAX_AUTH_FAILURES:
                self.reply(421, "4.7.0 Too many failed authentications, closing connection")
                return False
            return None
        try:
            user = await self.ctx.users.check_password(username, password)
        except backend.errors() as e:  # PostgreSQL down: nobody's fault, try later
            log.warning("auth: user directory unavailable error=%s", e)
            self.reply(454, "4.7.0 Temporary authentication failure, try again later")
            return None
        if user is None:
            self.auth_failures += 1
            logs.event(log, INFO, "auth failed", client=logs.client(self.peer_ip),
                       endpoint=self.kind, mech=mech, user=username[:100])
            await throttle.failed(self.peer_ip, username)
            metrics.login("smtp", False)
            self.reply(535, "5.7.8 Authentication credentials invalid")
            if self.auth_failures >= MAX_AUTH_FAILURES:
                self.reply(421, "4.7.0 Too many failed authentications, closing connection")
                return False
            return None
        throttle.succeeded(self.peer_ip, username)
        metrics.login("smtp", True)
        self.user = user
        if self.source is not None:
            self.source.auth = user
        logs.event(log, INFO, "auth ok", client=logs.client(self.peer_ip), endpoint=self.kind,
                   mech=mech, user=user)
        self.reply(235, "2.7.0 Authentication successful")
        return None

    async def _challenge(self, prompt: str) -> str | None:
        self.reply(334, prompt)
        line = await self.read_line()
        if line is None:
            return None
        if line == b"*":
            self.reply(501, "5.0.0 Authentication cancelled")
            return None
        return line.decode("ascii", "replace")

    def _parse_path(self, arg: str, prefix: str) -> tuple[str, list[str]] | None:
        if not arg[: len(prefix)].upper() == prefix:
            self.reply(501, f"5.5.4 Syntax: {prefix}<address>")
            return None
        m = _PATH_RE.match(arg[len(prefix):])
        if not m:
            self.reply(501, f"5.5.4 Syntax: {prefix}<address>")
            return None
        path = m.group(1)
        if path.startswith("@"):  # source route, RFC 5321 4.1.2: check it, then ignore it
            try:
                path = _strip_source_route(path)
            except addr.AddressError:
                self.reply(501, f"5.5.4 Syntax: {prefix}<address> (bad source route)")
                return None
        return path, m.group(2).split()

    async def cmd_MAIL(self, arg: str) -> None:
        if self.helo is None:
            self.reply(503, "5.5.1 Send EHLO first")
            return
        if self.tx.mail_from is not None:
            self.reply(503, "5.5.1 Nested MAIL command")
            return
        if self.is_submission and not self.user:
            self.reply(530, "5.7.0 Authentication required")
            return
        parsed = self._parse_path(arg, "FROM:")
        if parsed is None:
            return
        path, params = parsed
        smtputf8 = False
        for p in params:
            key, _, value = p.partition("=")
            key = key.upper()
            if key == "SIZE" and value.isdigit():
                if int(value) > self.cfg.limits.max_message_size:
                    self._refuse("mail refused", Reply(
                        552, "5.3.4 Message size exceeds fixed maximum message size"), path)
                    return
            elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                pass
            elif key == "SMTPUTF8" and not value:
                smtputf8 = True
            elif key == "AUTH":
                pass
            else:
                self.reply(555, f"5.5.4 Unsupported MAIL parameter {escape(p[:40])}")
                return
        if path:
            if not path.isascii() and not smtputf8:
                self.reply(553, "5.6.7 Non-ASCII address needs the SMTPUTF8 parameter")
                return
            try:
                local, domain = addr.split(path)
            except addr.AddressError:
                self.reply(501, f"5.1.7 Bad sender address syntax <{escape(path[:100])}>")
                return
            path = f"{local}@{domain}"
        tx = Transaction(mail_from=path, smtputf8=smtputf8)
        checks = self.ctx.checks[self.kind]
        if checks is None:
            if self.user:
                refused = sender.check(self.ctx.aliases, self.user, path)
                if refused:
                    self._refuse("mail refused", refused, path)
                    return
        else:
            refused = await self._start_checks(tx, checks, path)
            if refused:
                self._refuse("mail refused", refused, path)
                return
        if not self.ctx.queue.spool.has_room():
            self._refuse("mail refused",
                         Reply(452, "4.3.1 Insufficient system storage, try again later"), path)
            return
        self.tx = tx
        self.reply(250, "2.1.0 OK")

    async def cmd_RCPT(self, arg: str) -> None:
        if self.tx.mail_from is None:
            self.reply(503, "5.5.1 Need MAIL before RCPT")
            return
        parsed = self._parse_path(arg, "TO:")
        if parsed is None:
            return
        path, params = parsed
        if params:
            self.reply(555, f"5.5.4 Unsupported RCPT parameter {escape(params[0][:40])}")
            return
        if path.lower() == "postmaster":
            path = f"postmaster@{self.cfg.domains[0]}"
        if not path.isascii() and not self.tx.smtputf8:
            self.reply(553, "5.6.7 Non-ASCII address needs the SMTPUTF8 parameter")
            return
        try:
            rcpt = addr.normalize(path)
        except addr.AddressError:
            self.reply(501, f"5.1.3 Bad recipient address syntax <{escape(path[:100])}>")
            return
        if len(self.tx.rcpts) >= self.cfg.limits.max_recipients:
            self._refuse("rcpt refused", Reply(452, "4.5.3 Too many recipients"),
                         self.tx.mail_from, rcpt)
            return
        rule = None
        if self.ctx.rules:
            rule = pipelines.first_match(self.ctx.rules, rcpt, self.tx.mail_from, self.kind,
                                         self.user, self.peer_ip)
            if rule is not None and rule.reply:
                self._refuse("rcpt refused", rule.refusal, self.tx.mail_from, rcpt)
                return
        # A rule's targets decide where the address goes: no mailbox needed.
        routed = rule is not None
        refused = await _vetted(self.ctx.modules, rule, rcpt, self.tx.mail_from)
        if refused:  # a target that knows its addresses (a mailing list) refused it
            self._refuse("rcpt refused", refused, self.tx.mail_from, rcpt)
            return
        # What the checks judge is where the address will go: after the
        # pipeline's recipient rewriting (old-domain.test -> example.test).
        for target in await self._rewritten(rcpt):
            if self.tx.states is None:
                local = self.cfg.is_local_domain(addr.domain_of(target))
                refused = relay.check(local, self.user)
                if refused is None and local and not routed:
                    refused = recipient.check(self.ctx.aliases, target, self.ctx.queue.srs)
            else:
                refused = self._take(self.tx, await stages.rcpt_verdicts(
                    [state for check, state in self.tx.states
                     if not (routed and isinstance(check, recipient.RecipientCheck))], target))
            if refused:
                break
        if refused is None and not routed:  # encryption at rest, no_key = "defer"
            refused = encryption_key.check(self.ctx.queue.encryption, self.ctx.aliases, rcpt)
        if refused:
            self._refuse("rcpt refused", refused, self.tx.mail_from, rcpt)
            return
        if rcpt not in self.tx.rcpts:
            self.tx.rcpts.append(rcpt)
        self.reply(250, "2.1.5 OK")

    async def cmd_DATA(self, arg: str) -> None:
        if self.tx.mail_from is None:
            self.reply(503, "5.5.1 Need MAIL before DATA")
            return
        if not self.tx.rcpts:
            self.reply(554, "5.5.1 No valid recipients")
            return
        if arg:
            self.reply(501, "5.5.4 Syntax: DATA")
            return
        self.reply(354, "End data with <CR><LF>.<CR><LF>")
        msg_id = new_id()
        body = self.ctx.queue.spool.body_buffer(msg_id)
        self.conn.await_transfer(self.cfg.limits.max_message_size)
        try:
            fault = await self._read_data(body)
        except BaseException:
            body.discard()
            raise
        self.conn.working()
        tx, self.tx = self.tx, Transaction()
        if fault is None and tx.states is not None:
            fault = await self._body_checks(tx, body)
        elif fault is None and self.user:
            fault = sender.check_from(self.ctx.aliases, self.user, await stages.header_block(body))
        if fault:
            body.discard()
            self._refuse("data refused", fault, tx.mail_from, tx.rcpts)
            return
        if body.error is not None:  # a large body could not be spilled to disk
            self._refuse_unstored(body.error)
            return
        if not self._keep_fitting(tx, body.size):  # LMTP: per recipient, after DATA
            body.discard()
            self.reply(452, "4.2.2 No recipient has room for the message")
            return
        protocol = self.protocol_name if self.esmtp else "SMTP"  # LHLO is always extended
        if self.tls:
            protocol += "S"
        if self.user:
            protocol += "A"
        ssl_obj = self.conn.transport.get_extra_info("ssl_object") if self.conn.transport else None
        tls_desc = f"{ssl_obj.version()} with cipher {ssl_obj.cipher()[0]}" if ssl_obj else None
        modifiers = self.ctx.modifiers[self.kind]
        if modifiers is None and tx.states is not None and (
                tx.subject is not None
                or stages.has_our_results(await stages.header_block(body), self.cfg.hostname)):
            # A header change the direct path cannot make: today's modifiers as modules.
            modifiers = [self.ctx.modules[n]
                         for n in pipelines.DEFAULT_PIPELINES[self.kind][1]]
        stored = body
        if modifiers is None:  # today's modifiers, called directly
            head = [received.header(helo=self.helo or "unknown", peer_ip=self.peer_ip,
                                    hostname=self.cfg.hostname, protocol=protocol,
                                    msg_id=msg_id, rcpts=tx.rcpts, tls=tls_desc)]
            if tx.states is not None:
                head += self._check_fields(tx)
            if self.is_submission:
                head.append(submission.missing_headers(body.first, self.cfg.hostname,
                                                       tx.mail_from or self.user or ""))
            if self.user and self.ctx.signing is not None:
                head[1:1] = [await self._dkim_signature(body, head[1:], tx.mail_from or "")]
            total = body.size + sum(len(h) for h in head)
        else:
            try:
                stored = await self._modified(tx, body, msg_id, modifiers)
            except module.DeliveryError as e:  # a modifier refused the message
                self._refuse("data refused", e.reply, tx.mail_from, tx.rcpts)
                return
            head, total = [], stored.size
            if not tx.rcpts:  # rewritten to nobody: nothing to keep
                stored.discard()
                logs.event(log, INFO, "dropped", id=msg_id, reason="no recipients left")
                self.reply(250, f"2.0.0 OK {msg_id} has no recipients left")
                return
        enc = self.ctx.queue.encryption  # [encryption] learn_autocrypt: the user's own key
        own_header = (await stages.header_block(stored)
                      if self.user and enc is not None and enc.learns(self.user) else b"")
        try:
            await self.ctx.queue.enqueue(tx.mail_from or "", tx.rcpts, head, total,
                                         auth=self.user, source=self.kind, msg_id=msg_id,
                                         body=stored, quarantine=tx.quarantine,
                                         client_ip=self.peer_ip if self.ctx.rules else "")
        except (SpoolFull, OSError) as e:
            self._refuse_unstored(e)
            return
        metrics.accepted(self.kind)
        if logs.enabled(log, INFO):  # the Message-ID search only when it is written
            logs.event(log, INFO, "accepted", id=msg_id, client=logs.client(self.peer_ip),
                       endpoint=self.kind, helo=self.helo, sasl_user=self.user,
                       tls=f"{ssl_obj.version()}/{ssl_obj.cipher()[0]}" if ssl_obj else None,
                       message_id=_message_id(head[1:], stored.first), size=total,
                       nrcpt=len(tx.rcpts), **{"from": f"<{tx.mail_from}>"}, rcpts=tx.rcpts)
        self.reply(250, f"2.0.0 OK queued as {msg_id}")
        if own_header:
            autocrypt.learn_soon(enc, self.user, own_header)

    def _keep_fitting(self, tx: Transaction, size: int) -> bool:
        """LMTP drops from tx the recipients that cannot take the message
        (endpoint/lmtp.py); SMTP answers once for all, at RCPT. False: none left."""
        return True

    # -- a configured pipeline's checks ---------------------------------------

    def _source(self) -> module.Source:
        ssl_obj = self.conn.transport.get_extra_info("ssl_object") if self.conn.transport else None
        return module.Source(endpoint=self.kind, client_ip=self.peer_ip, helo=self.helo,
                             auth=self.user,
                             tls=f"{ssl_obj.version()} {ssl_obj.cipher()[0]}" if ssl_obj else None)

    @staticmethod
    def _take(tx: Transaction, verdicts: list[module.Verdict]) -> Reply | None:
        """Fold one phase's verdicts into the transaction; the first refusal."""
        for v in verdicts:
            if v.reject is not None:
                return v.reject
        for v in verdicts:
            tx.quarantine = tx.quarantine or v.quarantine
            if v.add_headers:
                tx.added = (tx.added or []) + [f"{n}: {stages.field_value(val)}"
                                               for n, val in v.add_headers]
            if v.auth_results:
                tx.auth_results = (tx.auth_results or []) + [stages.field_value(r)
                                                             for r in v.auth_results]
            if v.subject is not None:
                tx.subject = stages.field_value(v.subject)
        return None

    def _check_fields(self, tx: Transaction) -> list[bytes]:
        """The header fields the checks asked for, after Received."""
        fields = stages.check_fields(self.cfg.hostname, tx.auth_results or [], tx.added or [])
        return [fields] if fields else []

    async def _connection_checks(self, checks: list[Any]) -> Reply | None:
        """Before the greeting: each check's state for this connection, and its
        connection hook. The first refusal, or None."""
        self.source = self._source()
        self.states = [(c, c.state(self.source)) for c in checks]
        return self._take(self.at_connection,
                          [await st.connection(self.source) for _, st in self.states])

    async def _helo_checks(self, name: str) -> bool:
        """Each check's HELO hook at EHLO/HELO; on a refusal, send it and forget
        any earlier HELO (MAIL then needs a new one). False when refused."""
        assert self.states is not None and self.source is not None
        self.at_helo = Transaction()
        refused = self._take(self.at_helo, [await st.helo(name) for _, st in self.states])
        if refused is not None:
            self.helo, self.source.helo, self.tx = None, None, Transaction()
            self._refuse("helo refused", refused, None)
            return False
        self.source.helo = name
        return True

    async def _start_checks(self, tx: Transaction, checks: list[Any], path: str) -> Reply | None:
        """A new message of the connection: it starts with the verdicts of the
        connection and of HELO, then each check's MAIL hook (which starts the
        message for a check that keeps per-message data)."""
        assert self.states is not None
        tx.states = self.states
        for held in (self.at_connection, self.at_helo):
            tx.quarantine = tx.quarantine or held.quarantine
            if held.added:
                tx.added = (tx.added or []) + held.added
            if held.auth_results:
                tx.auth_results = (tx.auth_results or []) + held.auth_results
        return self._take(tx, [await st.mail(path) for _, st in tx.states])

    async def _body_checks(self, tx: Transaction, body: BodyBuffer) -> Reply | None:
        assert tx.states is not None
        return self._take(tx, await stages.body_verdicts([st for _, st in tx.states], body))

    async def _rewritten(self, rcpt: str) -> list[str]:
        """The addresses a configured pipeline's modifiers make of `rcpt`
        (the DATA phase rewrites the envelope the same way); [rcpt] by default."""
        modifiers = self.ctx.modifiers[self.kind]
        if not modifiers:
            return [rcpt]
        env = module.Envelope(msg_id="", mail_from=self.tx.mail_from or "", rcpts=[rcpt],
                              source=self._source())
        out = await stages.rewrite_rcpts([m.state(env) for m in modifiers], [rcpt])
        return out or [rcpt]

    async def _modified(self, tx: Transaction, body: BodyBuffer, msg_id: str,
                        modifiers: list[Any]) -> BodyBuffer:
        """A configured pipeline's modifiers, in order: sender, recipients,
        header fields, body. Rewrites tx's envelope; the new message, streamed
        into a buffer of its own (the received one is discarded)."""
        env = module.Envelope(msg_id=msg_id, mail_from=tx.mail_from or "",
                              rcpts=list(tx.rcpts), source=self._source(), size=body.size)
        states = [m.state(env) for m in modifiers]
        await stages.rewrite_envelope(states, env)
        tx.mail_from, tx.rcpts = env.mail_from, env.rcpts
        out = self.ctx.queue.spool.body_buffer(f"{msg_id}-m")
        try:
            await stages.rewrite_message(
                body, out, states, subject=tx.subject,
                prepend=self._check_fields(tx) if tx.states is not None else (),
                hostname=self.cfg.hostname if tx.states is not None else "")
        except BaseException:
            out.discard()
            raise
        finally:
            body.discard()
        return out

    def _refuse(self, what: str, reply: Reply, mail_from: str | None,
                to: str | list[str] | None = None) -> None:
        """Send a policy refusal, and log it with its reason."""
        self.send(reply)
        metrics.refused(self.kind, what, reply.code, reply.text)
        if isinstance(to, str):
            to = f"<{to}>"
        logs.event(log, INFO, what, client=logs.client(self.peer_ip), endpoint=self.kind,
                   helo=self.helo, sasl_user=self.user,
                   **{"from": None if mail_from is None else f"<{mail_from}>"}, to=to,
                   reason=f"{reply.code} {reply.text}")

    def _refuse_unstored(self, e: Exception) -> None:
        """The queue could not store the message: a temporary failure, nothing kept."""
        if isinstance(e, SpoolFull) or disk_full(e):
            text = "4.3.1 Insufficient system storage, try again later"
            logs.event(log, logging.WARNING, "queue disk full: refusing mail",
                       client=logs.client(self.peer_ip), endpoint=self.kind,
                       reason=f"452 {text}")
            self.reply(452, text)
            metrics.refused(self.kind, "data refused", 452, text)
        else:
            log.error("queue write failed: %r", e)
            self.reply(451, "4.3.0 Local error in processing, try again later")

    async def _dkim_signature(self, body: BodyBuffer, added: list[bytes], mail_from: str) -> bytes:
        """DKIM-Signature fields for a submitted message (b"" when not ours to sign)."""
        signing = self.ctx.signing
        assert signing is not None
        domain = signing.domain_for(b"".join(added) + submission.header_block(body.first),
                                    mail_from)
        if domain is None:
            return b""
        message = b"".join(added) + await asyncio.to_thread(body.read_all)
        try:
            return await signing.sign(message, domain)
        except Exception as e:  # unsigned mail beats lost mail
            log.warning("DKIM signing failed domain=%s error=%r", domain, e)
            return b""

    async def _read_data(self, body: BodyBuffer) -> Reply | None:
        """Read the message up to CRLF.CRLF, dot-unstuffed, in blocks of whole lines.

        The data are always read to the end, even when refused, so the next
        command is parsed in sync. Returns the refusal, or None.
        """
        limit = self.cfg.limits.max_message_size
        fault: Reply | None = None
        buf = self.buf
        skipping = False  # inside an over-long line: drop input up to its CRLF
        while True:
            if skipping:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    del buf[:-1]  # keep a trailing CR that may start the CRLF
                    await self._fill()
                    continue
                del buf[: eol + 2]
                skipping = False
            # buf now starts at the beginning of a line.
            if buf[:3] == b".\r\n":
                del buf[:3]
                break
            end = buf.find(b"\r\n.\r\n")
            if end >= 0:
                block = bytes(buf[: end + 2])
                del buf[: end + 5]
                last = True
            else:
                cut = buf.rfind(b"\r\n")
                if cut < 0:
                    if len(buf) > MAX_TEXT_LINE:
                        if fault is None:
                            fault = Reply(554, "5.6.0 Message has a line longer than 998 octets")
                            body.discard()
                        skipping = True
                        continue
                    await self._fill()
                    continue
                block = bytes(buf[: cut + 2])
                del buf[: cut + 2]
                last = False
            if fault is None:
                fault = self._inspect(block)
                if fault:
                    body.discard()
            if fault is None:
                block = block.replace(b"\r\n.", b"\r\n")
                if block[:1] == b".":
                    block = block[1:]
                if body.size + len(block) > limit:
                    fault = Reply(552, "5.3.4 Message size exceeds fixed maximum message size")
                    body.discard()
                else:
                    body.write(block)
            if last:
                break
            if not (buf[:3] == b".\r\n" or b"\r\n.\r\n" in buf):
                await self._fill()
        return fault

    @staticmethod
    def _inspect(block: bytes) -> Reply | None:
        if b"\0" in block:  # as Postfix does: NUL would reach IMAP literals
            return Reply(554, "5.6.0 Message contains NUL characters")
        crlf = block.count(b"\r\n")
        if block.count(b"\n") != crlf or block.count(b"\r") != crlf:
            return Reply(554, "5.6.0 Bare CR or LF in message; lines must end with CRLF")
        if len(block) >= MAX_TEXT_LINE and max(map(len, block.split(b"\r\n"))) > 998:
            return Reply(554, "5.6.0 Message has a line longer than 998 octets")
        return None


async def _vetted(modules: dict[str, Any], rule: pipelines.Rule | None, rcpt: str,
                  sender: str) -> Reply | None:
    """A rule's targets may refuse a recipient at RCPT (`vet_rcpt`, optional):
    the first refusal, or None."""
    for name in rule.targets if rule is not None else ():
        vet = getattr(modules.get(name), "vet_rcpt", None)
        if vet is not None and (refused := await vet(rcpt, sender)) is not None:
            return refused
    return None


def _message_id(added: list[bytes], first: bytes) -> str | None:
    """The Message-ID field's value (as far as the first block holds the header)."""
    for block in (*added, submission.header_block(first)):
        m = _MESSAGE_ID_RE.search(block)
        if m:
            return m.group(1).decode("utf-8", "replace").strip()[:200]
    return None


def _strip_source_route(path: str) -> str:
    """`@a,@b:user@d` -> `user@d`; the route's domains must be valid (literals may hold ':')."""
    depth = 0
    for i, c in enumerate(path):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == ":" and depth == 0:
            for hop in path[:i].split(","):
                if not hop.startswith("@"):
                    raise addr.AddressError("bad source route")
                addr.split("x" + hop)
            return path[i + 1:]
    raise addr.AddressError("source route without a mailbox")


async def sweep(ctx: SMTPContext) -> None:
    """Close SMTP connections past their deadline (see endpoint.connection)."""
    await connection.sweep(ctx.sessions, b"421 4.4.2 Timeout exceeded, closing connection\r\n",
                           connection.sweep_interval(ctx.config.limits.command_timeout))
