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

A notification waiting for a retry is written to the directory
(chatmail_push_pending: address, token, attempt, first and next try), one
row per token, removed when it is sent or given up; `resume()` at the start
schedules what a stopped server left. A message for a token already waiting
joins that wait: the one push wakes the app, which fetches everything. With
several nodes on one PostgreSQL directory a starting node takes over every
node's rows, so a push may then go twice (a push is only a wake-up call).
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
        self.waiting: set[tuple[str, str]] = set()  # pending and sleeping until a retry
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
            if (address, token) in self.waiting:
                continue  # its retry's push wakes the app for this message too
            self._schedule(address, token, 0, time.time(), 0.0)

    def resume(self) -> None:
        """At the start: schedule the retries a stopped server left waiting."""
        if not self.url:
            return
        try:
            rows = accounts.pending_pushes(self.db, MAX_PENDING)
        except Exception as e:  # the server starts anyway; they stay for the next start
            log.warning("pending push notifications not read error=%r", e)
            return
        now = time.time()
        for address, token, attempt, first_try, next_try in rows:
            self._schedule(address, token, attempt, first_try, max(0.0, next_try - now))
        if rows:
            log.info("push notifications resumed count=%d", len(rows))

    def _schedule(self, address: str, token: str, attempt: int, first_try: float,
                  wait: float) -> None:
        if len(self.pending) >= MAX_PENDING:
            log.warning("push notification dropped: too many pending")
            return
        task = asyncio.get_running_loop().create_task(
            self._notify(address, token, attempt, first_try, wait))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _notify(self, address: str, token: str, attempt: int, first_try: float,
                      wait: float) -> None:
        key = (address, token)
        try:
            while True:
                if wait:
                    self.waiting.add(key)
                    await asyncio.sleep(wait)
                    self.waiting.discard(key)
                status = await self._post(token)
                if status == 410:
                    await self._write(accounts.remove_token, address, token)
                    log.info("push token removed: the push service calls it invalid")
                if status in (200, 410):
                    break
                attempt += 1
                wait = self.retry_base * BACKOFF ** (attempt - 1)
                next_try = time.time() + wait
                if next_try - first_try > DROP_AFTER:
                    log.warning("push notification dropped after retries status=%s", status)
                    break
                await self._write(accounts.save_pending_push, address, token, attempt,
                                  first_try, next_try)
            if attempt:
                await self._write(accounts.forget_pending_push, address, token)
        finally:
            self.waiting.discard(key)

    async def _write(self, fn: Any, *args: Any) -> None:
        """A directory write for the pending list; failing, the retry stays in memory."""
        try:
            await asyncio.to_thread(fn, self.db, *args)
        except Exception as e:
            log.warning("push state not written error=%r", e)

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
