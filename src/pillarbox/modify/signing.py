"""When and with which domain to DKIM-sign, without blocking the event loop.

Mail from authenticated users is signed with the domain of its From header
when that domain is ours (DMARC alignment), else with the envelope sender's
domain when that is ours; anything else goes out unsigned. Signing runs in
worker processes: dkimpy's canonicalization is Python code that holds the GIL
(~2 ms a message for both signatures), so from a thread it competed with the
event loop (relay bench: 230 msg/s signed in threads against 837 unsigned),
and a 25 MB body stalled the loop ~0.5 s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.parser
import email.policy
import multiprocessing
import os
import select
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from email.utils import getaddresses
from pathlib import Path

from pillarbox.address import domain_of
from pillarbox.config import Config
from pillarbox.modify.dkim_sign import sign_with


class Signing:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.dkim_dir: Path = config.dkim_dir
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def domain_for(self, header_block: bytes, mail_from: str) -> str | None:
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
            header_block)
        for _, address in getaddresses(headers.get_all("From", [])):
            d = domain_of(address)
            if address and self.config.is_local_domain(d):
                return d
        if mail_from and self.config.is_local_domain(domain_of(mail_from)):
            return domain_of(mail_from)
        return None

    async def sign(self, message: bytes, domain: str) -> bytes:
        """The DKIM-Signature header fields to prepend (b"" without keys)."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                return await loop.run_in_executor(self._workers(), sign_with,
                                                  str(self.dkim_dir), message, domain)
            except BrokenProcessPool:  # a worker died (OOM killer?): start afresh once
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _workers(self) -> concurrent.futures.ProcessPoolExecutor:
        # Started on first use, so an idle server (or one without DKIM keys)
        # carries no extra processes. forkserver, not fork: the server has
        # threads, and a forked child could inherit a lock held by one of them.
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["pillarbox.modify.dkim_sign"])
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=os.cpu_count() or 1, mp_context=ctx,
                initializer=watch_server, initargs=(os.getpid(),))
        return self._pool

    def close(self) -> None:
        """Stop the workers. Blocking: waits for them to exit, since a pool left
        to the interpreter's exit hook fails there (EBADF on Python 3.11)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def watch_server(pid: int) -> None:
    """In each signing worker: exit when the server process is gone.

    A worker waits on its task pipe, whose write end it holds itself, so it
    would outlive a server killed with SIGKILL (and keep the forkserver alive
    with it). A thread waits on a pidfd of the server instead.
    """

    def wait() -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd (old kernel): look every second
            while True:
                time.sleep(1)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    os._exit(0)
                except PermissionError:
                    pass
        select.select([fd], [], [])
        os._exit(0)

    threading.Thread(target=wait, name="watch-server", daemon=True).start()

