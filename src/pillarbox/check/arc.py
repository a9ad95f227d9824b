"""ARC (RFC 8617): verify the chain of ARC sets that intermediaries (mailing
lists, forwarders) added, by dkimpy, keys looked up through the shared
resolver. The result is RFC 8617's: none (no ARC set), pass, or fail (a set
does not verify, the chain is broken or was reported broken, or a key could
not be fetched; the comment says which).

This only reads the chain; sealing what we forward is modify/arc_seal.py.
"""

from __future__ import annotations

import re
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import authres.arc
import dkim

from pillarbox.check.dkim import LIBRARY_LOG, comment, dnsfunc
from pillarbox.check.lookup import INLINE_MAX, Lookups, run


@dataclass(frozen=True)
class ARCResult:
    result: str  # none | pass | fail
    reason: str = ""

    def entry(self) -> str:
        return _entry(self)


@lru_cache(maxsize=1024)
def _entry(r: ARCResult) -> str:
    return str(authres.arc.ARCAuthenticationResult(result=r.result,
                                                   result_comment=r.reason or None))


_ARC_SEAL = re.compile(rb"(?im)^arc-seal[ \t]*:")


def verify_sync(message: bytes, lookups: Lookups) -> ARCResult:
    """The chain's validation status. Blocking: run it in a worker thread."""
    try:
        cv, _sets, why = dkim.ARC(message, logger=LIBRARY_LOG).verify(dnsfunc=dnsfunc(lookups))
    except Exception as e:  # the library on hostile input: a result, never a crash
        return ARCResult("fail", comment(f"cannot verify: {type(e).__name__}"))
    if cv == dkim.CV_None:
        return ARCResult("none")
    if cv == dkim.CV_Pass:
        return ARCResult("pass")
    if lookups.failed:
        return ARCResult("fail", "DNS failure: key lookup failed")
    return ARCResult("fail", comment(str(why)))


async def verify(message: bytes, resolver: Any, executor: Executor | None = None) -> ARCResult:
    end = message.find(b"\r\n\r\n")
    if not _ARC_SEAL.search(message if end < 0 else message[:end + 2]):
        return ARCResult("none")  # no chain: nothing for dkimpy to parse
    return await run(resolver, lambda lookups: verify_sync(message, lookups),
                     inline=len(message) <= INLINE_MAX, executor=executor)
