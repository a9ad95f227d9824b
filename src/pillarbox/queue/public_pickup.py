"""Take mail from the public maildrop (public_drop.py) into the queue.

Polled every PICKUP_INTERVAL: the users who write there cannot reach the
control socket to say so. The envelope is made here, not by the writer: the
sender is the Unix user that owns the file (through its local alias, else
LOGIN@ the first domain) unless that is root or the server's own user, bare
recipient names are resolved like `pillarbox sendmail` does, and the
Received line names the uid.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import logging
import os
import pwd
from email.utils import formatdate

from pillarbox.address import AddressError
from pillarbox.config import Config
from pillarbox.directory.aliases import Aliases
from pillarbox.queue import public_drop, sendmail_pipeline
from pillarbox.queue.spool import SpoolFull, new_id

log = logging.getLogger("pillarbox.queue.public")

PICKUP_INTERVAL = 1.0  # seconds


class PublicPickup:
    def __init__(self, config: Config, queue, aliases: Aliases) -> None:
        assert config.maildrop_dir is not None
        self.config = config
        self.queue = queue
        self.aliases = aliases
        self.dir_fd = os.open(config.maildrop_dir, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        os.close(self.dir_fd)

    async def run(self) -> None:
        while True:
            try:
                await self.pickup()
            except OSError as e:  # the directory gone or unreadable: say so, keep trying
                log.warning("maildrop: cannot read %s: %s", self.config.maildrop_dir, e)
            await asyncio.sleep(PICKUP_INTERVAL)

    async def pickup(self) -> int:
        taken = 0
        for name in await asyncio.to_thread(public_drop.names, self.dir_fd):
            try:
                drop = await asyncio.to_thread(public_drop.read, self.dir_fd, name,
                                               self.config.limits.max_message_size)
                sender, rcpts = self._envelope(drop)
            except FileNotFoundError:
                continue
            except public_drop.BadDrop as e:
                log.warning("maildrop: removed %s: %s", name, e)
                await asyncio.to_thread(public_drop.remove, self.dir_fd, name)
                continue
            msg_id = new_id()
            data = self._head(drop, sender, msg_id) + drop.data
            quarantine = False
            # A configured [pipeline.sendmail]: its checks and modifiers (None by default).
            out = await sendmail_pipeline.admit(self.queue, msg_id, sender, rcpts, data,
                                                drop.uid)
            if out is not None:
                sender, rcpts, data, quarantine = (out.mail_from, out.rcpts, out.message,
                                                   out.quarantine)
            try:
                if rcpts:  # else all were refused, and reported
                    await self.queue.enqueue(sender, rcpts, [data], len(data),
                                             source="sendmail", msg_id=msg_id,
                                             quarantine=quarantine)
            except SpoolFull:
                log.warning("maildrop: disk too full to queue %s; it waits", name)
                return taken
            # A crash just here queues it twice at worst, never loses it.
            await asyncio.to_thread(public_drop.remove, self.dir_fd, name)
            if rcpts:
                log.info("maildrop: queued id=%s uid=%d from=<%s> rcpts=%d", msg_id, drop.uid,
                         sender, len(rcpts))
            taken += 1
        return taken

    def _resolve(self, name: str) -> list[str]:
        return self.aliases.resolve_local(name, self.config.domains[0])

    def _envelope(self, drop: public_drop.Drop) -> tuple[str, list[str]]:
        trusted = drop.uid in (0, os.geteuid())
        try:
            if trusted and drop.sender is not None:
                sender = "" if drop.sender in ("", "<>") else self._resolve(drop.sender)[0]
            else:
                sender = self._resolve(_login(drop.uid))[0]
        except (AddressError, IndexError):
            sender = self._resolve(f"uid{drop.uid}")[0]
        rcpts: list[str] = []
        for r in drop.rcpts:
            try:
                rcpts += self._resolve(r)
            except AddressError:
                log.warning("maildrop: %s: recipient %r is not an address; left out",
                            drop.name, r[:100])
        if not rcpts:
            raise public_drop.BadDrop("no valid recipient")
        return sender, list(dict.fromkeys(rcpts))

    def _head(self, drop: public_drop.Drop, sender: str, msg_id: str) -> bytes:
        date = formatdate(localtime=False, usegmt=True)
        head = (f"Received: by {self.config.hostname} (pillarbox sendmail, uid {drop.uid})"
                f" id {msg_id}; {date}\r\n")
        end = drop.data.find(b"\r\n\r\n")
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            drop.data[: end + 2] if end >= 0 else drop.data)
        if headers.get("From") is None:
            head += f"From: <{sender or self._resolve(_login(drop.uid))[0]}>\r\n"
        return head.encode()


def _login(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"
