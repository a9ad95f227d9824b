"""Push notifications for chatmail mode: on each new message for a user with
device tokens, one POST per token to `[chatmail] notify_url` (the body is the
token, as notifications.delta.chat takes it).

Never blocks delivery: the Maildir writer's callback only schedules. A
failed POST (an error, a timeout, a status other than 200 or 410) is tried
again after notify_retry_base, then 8 times that, 64 times..., and dropped
once the next try would be more than DROP_AFTER after the first. 410 Gone
means the push service calls the token invalid: it is removed. At most
MAX_PENDING notifications wait at once (more are dropped with a warning),
at most CONCURRENCY requests run at once.

Pending notifications live in memory: a restart drops them (a missed push
costs a delay until the app's own polling, not a message).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp

from pillarbox.directory import chatmail_accounts as accounts

log = logging.getLogger("pillarbox.push")

BACKOFF = 8.0
DROP_AFTER = 5 * 3600.0
MAX_PENDING = 10_000
CONCURRENCY = 16
TIMEOUT = 60.0


def _unescape(name: str) -> str:
    """The inverse of target.mailbox.path_name."""
    if name == "%2e" or name == "%2e%2e":
        return name.replace("%2e", ".")
    return name.replace("%2f", "/").replace("%00", "\0").replace("%25", "%")


class Notifier:
    def __init__(self, url: str, db: Any, mail_root: Path, retry_base: float = 8.0) -> None:
        self.url, self.db, self.mail_root = url, db, mail_root
        self.retry_base = retry_base
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.pending: set[asyncio.Task] = set()
        self.session: aiohttp.ClientSession | None = None

    def address_of(self, path: Path) -> str | None:
        """The user whose Maildir `path` is (or a folder of it)."""
        try:
            rel = path.relative_to(self.mail_root).parts
        except ValueError:
            return None
        if len(rel) < 2:
            return None
        return f"{_unescape(rel[1])}@{_unescape(rel[0])}"

    def delivered(self, path: Path) -> None:
        """MaildirWriter.on_delivered: schedule the POSTs, return at once."""
        if not self.url:
            return
        try:
            address = self.address_of(path)
            found = accounts.tokens(self.db, address, time.time()) if address else []
        except Exception as e:  # a directory hiccup must not touch delivery
            log.warning("push tokens not read error=%r", e)
            return
        for token in found:
            if len(self.pending) >= MAX_PENDING:
                log.warning("push notification dropped: too many pending")
                return
            task = asyncio.get_running_loop().create_task(self._notify(address, token))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _notify(self, address: str, token: str) -> None:
        start = time.monotonic()
        delay = self.retry_base
        while True:
            status = await self._post(token)
            if status == 200:
                return
            if status == 410:
                await asyncio.to_thread(accounts.remove_token, self.db, address, token)
                log.info("push token removed: the push service calls it invalid")
                return
            if time.monotonic() + delay - start > DROP_AFTER:
                log.warning("push notification dropped after retries status=%s", status)
                return
            await asyncio.sleep(delay)
            delay *= BACKOFF

    async def _post(self, token: str) -> int | str:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        async with self.slots:
            try:
                async with self.session.post(self.url, data=token.encode()) as resp:
                    await resp.read()
                    return resp.status
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                return type(e).__name__

    async def close(self) -> None:
        for task in list(self.pending):
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
