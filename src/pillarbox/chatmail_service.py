"""What `mode = "chatmail"` runs inside the server (docs/CHATMAIL.md):
accounts made on first login, push notifications on delivery (and those a
stop left waiting for a retry), the expiry every `expire_every` (a day).
One `start()` call from server.py; `close()` at the stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pillarbox import expire
from pillarbox.directory.chatmail_accounts import Accounts
from pillarbox.push import Notifier

log = logging.getLogger("pillarbox.chatmail")

FIRST_EXPIRE = 600.0  # at most this after the start: not in a restart's rush


class ChatmailService:
    def __init__(self, config: Any, users: Any, maildir: Any) -> None:
        self.config, self.users = config, users
        Accounts(users, config).attach()
        self.notifier = Notifier(config.chatmail.notify_url, users.db,
                                 config.mail_root,
                                 retry_base=config.chatmail.notify_retry_base)
        maildir.on_delivered.append(self.notifier.delivered)
        self.notifier.resume()
        self.expiry = asyncio.get_running_loop().create_task(self._expire_loop())

    async def _expire_loop(self) -> None:
        every = self.config.chatmail.expire_every
        await asyncio.sleep(min(every, FIRST_EXPIRE))
        while True:
            try:
                report = await asyncio.to_thread(expire.run, self.config, self.users)
                log.warning("expire: %s", report.lines(with_addresses=False)[0])
            except Exception as e:  # try again next time; the server goes on
                log.error("expire failed error=%r", e)
            await asyncio.sleep(every)

    async def close(self) -> None:
        self.expiry.cancel()
        await asyncio.gather(self.expiry, return_exceptions=True)
        await self.notifier.close()


def start(config: Any, users: Any, maildir: Any) -> ChatmailService | None:
    return ChatmailService(config, users, maildir) if config.mode == "chatmail" else None
