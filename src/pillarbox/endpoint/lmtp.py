"""LMTP endpoint (RFC 2033): Postfix (`virtual_transport = lmtp:...`), Exim or
any MTA hands pillarbox mail for its local mailboxes.

The SMTP session does the work (endpoint/smtp.py: the same commands, the
same [pipeline.lmtp] checks and modifiers, the same queue, so encryption at
rest and quota apply as to mail from the MX). LMTP differs in three ways:

- LHLO instead of EHLO/HELO (which are refused);
- after DATA, one reply per recipient accepted at RCPT, in order: a
  recipient whose mailbox cannot take the message gets its own 452 4.2.2
  (no room now) or 552 5.2.2 (larger than the whole quota), the others the
  one reply the message got (250 when queued);
- only local recipients: there is no login, so the relay check refuses
  other domains as on the MX.

Listeners: "host:port", or a Unix socket path (made mode 0666: guard it by
its directory's permissions, as Postfix's private/ does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable

from pillarbox import address as addr
from pillarbox.check import Reply
from pillarbox.endpoint.smtp import Session, SMTPContext, SMTPProtocol, Transaction

log = logging.getLogger("pillarbox.lmtp")


class LMTPProtocol(SMTPProtocol):
    def __init__(self, ctx: SMTPContext) -> None:
        super().__init__(ctx, "lmtp")

    def start(self) -> None:
        self.session = LMTPSession(self.ctx, self.kind, self)
        self._task = asyncio.get_running_loop().create_task(self.session.run_guarded())


class LMTPSession(Session):
    protocol_name = "LMTP"

    def __init__(self, ctx: SMTPContext, kind: str, conn: SMTPProtocol) -> None:
        super().__init__(ctx, kind, conn)
        self.accepted: list[str] = []  # each RCPT that got 250, in order (repeats too)
        self._accepted_tx: Transaction | None = None
        self.late: dict[str, Reply] = {}  # refused after DATA, by recipient

    async def cmd_LHLO(self, arg: str) -> None:
        await super().cmd_EHLO(arg)

    async def cmd_EHLO(self, arg: str) -> None:
        self.reply(500, "5.5.1 This is an LMTP server: use LHLO")

    async def cmd_HELO(self, arg: str) -> None:
        self.reply(500, "5.5.1 This is an LMTP server: use LHLO")

    async def cmd_RCPT(self, arg: str) -> None:
        if self._accepted_tx is not self.tx:  # a new transaction (MAIL, RSET, LHLO)
            self.accepted, self._accepted_tx = [], self.tx
        before = len(self.tx.rcpts)
        await super().cmd_RCPT(arg)
        if not self.out or not self.out[-1].startswith(b"250"):
            return
        if len(self.tx.rcpts) > before:
            self.accepted.append(self.tx.rcpts[-1])
            return
        parsed = self._parse_path(arg, "TO:")  # a repeat: accepted before, as itself
        if parsed is not None:
            path = parsed[0]
            if path.lower() == "postmaster":
                path = f"postmaster@{self.cfg.domains[0]}"
            with contextlib.suppress(addr.AddressError):
                self.accepted.append(addr.normalize(path))

    async def cmd_DATA(self, arg: str) -> None:
        if self.tx.mail_from is None or not self.tx.rcpts or arg:
            await super().cmd_DATA(arg)  # refused before any data: one reply (RFC 2033 4.2)
            return
        accepted = self.accepted if self._accepted_tx is self.tx else list(self.tx.rcpts)
        self.late = {}
        await super().cmd_DATA(arg)
        # The session's one reply for the message is the last one written
        # (after 354, nothing is flushed until the next command is awaited).
        common = self.out.pop()
        self.out += [self.late[r].line() if r in self.late else common for r in accepted]
        self.late = {}

    def _keep_fitting(self, tx: Transaction, size: int) -> bool:
        keep = []
        for rcpt in tx.rcpts:
            why = self._no_room(rcpt, size)
            if why is None:
                keep.append(rcpt)
            else:
                self.late[rcpt] = why
                self._refuse("rcpt refused", why, tx.mail_from, rcpt)
                self.out.pop()  # said in the per-recipient replies, in order
        tx.rcpts = keep
        return bool(keep)

    def _no_room(self, rcpt: str, size: int) -> Reply | None:
        """Why the one mailbox `rcpt` delivers to cannot take `size` more
        octets; None when it can (or `rcpt` reaches several, or no quota)."""
        x = self.ctx.aliases.expand(rcpt)
        if len(x.local) != 1 or x.remote or x.commands:
            return None
        user = self.ctx.users.get(x.local[0])
        if user is None or not user.quota:
            return None
        if size > user.quota:
            return Reply(552, f"5.2.2 <{rcpt}>: message larger than the mailbox quota")
        if user.used + size > user.quota:
            return Reply(452, f"4.2.2 <{rcpt}>: mailbox full, try again later")
        return None


async def listen(addresses: list[tuple[str, int]],
                 factory: Callable[[], asyncio.Protocol]) -> list[asyncio.AbstractServer]:
    """Servers (not yet serving) on each "host:port", or Unix socket path (port 0)."""
    loop = asyncio.get_running_loop()
    out = []
    for host, port in addresses:
        if port == 0:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(host).st_mode):  # left by an earlier run
                    os.unlink(host)
            srv = await loop.create_unix_server(factory, host, start_serving=False)
            os.chmod(host, 0o666)
        else:
            srv = await loop.create_server(factory, host, port, backlog=1024,
                                           start_serving=False)
        out.append(srv)
        log.info("listening endpoint=lmtp address=%s", host if port == 0 else f"{host}:{port}")
    return out
