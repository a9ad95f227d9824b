"""When and with which domain to DKIM-sign, without blocking the event loop.

Mail from authenticated users is signed with the domain of its From header
when that domain is ours (DMARC alignment), else with the envelope sender's
domain when that is ours; anything else goes out unsigned. Small messages
are signed in a thread; large ones in a worker process, since dkimpy's body
hashing holds the GIL (a 25 MB body stalled the loop ~0.5 s from a thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.parser
import email.policy
from email.utils import getaddresses
from pathlib import Path

from pillarbox.address import domain_of
from pillarbox.config import Config
from pillarbox.modify.dkim_sign import DKIMSigner, sign_with

PROCESS_ABOVE = 1024 * 1024


class Signing:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.dkim_dir: Path = config.data_dir / "dkim"
        self.signer = DKIMSigner(self.dkim_dir)
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
        if len(message) <= PROCESS_ABOVE:
            return await asyncio.to_thread(self.signer.sign, message, domain)
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, sign_with, str(self.dkim_dir), message,
                                          domain)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
