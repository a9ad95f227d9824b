"""SPF (RFC 7208) by pyspf: is the client allowed to send for the MAIL FROM
domain, or for the HELO name when MAIL FROM is the null sender.

pyspf enforces the 10-lookup limit and the 2-void-lookup limit (permerror).
Its DNS goes through the shared resolver: pyspf calls one module-level
function for every query, which we replace once with one that uses the
`Lookups` of the worker thread running the check.

A result is kept for RESULT_TTL seconds per (client address, MAIL FROM,
HELO): a sender that sends often from one address is checked once a minute,
not once per message (the records it rests on are cached by the resolver
anyway; a changed record is seen at most RESULT_TTL late). Temporary errors
are never kept.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import authres
import spf as pyspf

from pillarbox.check.dkim import comment, token
from pillarbox.check.lookup import DNSFailure, Lookups, run

QUERY_TIME = 20  # seconds for a whole check (RFC 7208 4.6.4 recommends at least 20)
RESULT_TTL = 60.0  # seconds a result is reused (see above)
RESULTS_MAX = 20_000  # results kept, least recently used dropped first

_thread = threading.local()
_library_lookup = pyspf.DNSLookup


def _dns_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list:
    """pyspf's DNS function: [((name, type), value), ...]."""
    lookups: Lookups | None = getattr(_thread, "lookups", None)
    if lookups is None:  # pyspf used outside a check: its own resolver
        return _library_lookup(name, qtype, strict, timeout)
    if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
        return []  # type SPF (99) is obsolete (RFC 7208 3.1)
    try:
        rdatas = lookups.query(name, qtype)
    except DNSFailure as e:
        raise pyspf.TempError(str(e)) from None
    out = []
    for r in rdatas:
        if qtype in ("A", "AAAA"):
            value: Any = r.address
        elif qtype == "MX":
            value = (r.preference, r.exchange)
        elif qtype == "PTR":
            value = r.target.to_text(True)
        else:
            value = r.strings
        out.append(((name, qtype), value))
    return out


pyspf.DNSLookup = _dns_lookup


@dataclass(frozen=True)
class SPFResult:
    result: str  # pass fail softfail neutral none temperror permerror
    identity: str  # "mailfrom" or "helo"
    value: str  # the MAIL FROM address or the HELO name
    reason: str = ""

    @property
    def domain(self) -> str:
        return self.value.rsplit("@", 1)[-1].lower().rstrip(".")

    def entry(self) -> str:
        return _entry(self)


@lru_cache(maxsize=4096)  # a sender's result repeats; authres is slow to write one
def _entry(r: SPFResult) -> str:
    value = token(r.value) or token(r.domain)
    kw = {"smtp_mailfrom": value} if r.identity == "mailfrom" else {"smtp_helo": value}
    return str(authres.SPFAuthenticationResult(
        result=r.result, result_comment=r.reason or None, **kw))


def check_sync(lookups: Lookups, ip: str, mail_from: str, helo: str,
               receiver: str) -> SPFResult:
    """The SPF result for MAIL FROM (or, for the null sender, HELO). Blocking."""
    identity, value = ("mailfrom", mail_from) if mail_from else ("helo", helo)
    if not value:
        return SPFResult("none", identity, value, "no identity to check")
    _thread.lookups = lookups
    try:
        q = pyspf.query(i=ip, s=mail_from, h=helo, receiver=receiver, querytime=QUERY_TIME)
        result, _code, explanation = q.check()
    except Exception as e:  # the library on hostile input: a result, never a crash
        return SPFResult("permerror", identity, value, comment(type(e).__name__))
    finally:
        _thread.lookups = None
    reason = ""
    if result in ("permerror", "temperror"):  # the error, without pyspf's "SPF ... Error: "
        reason = comment(re.sub(r"^SPF \w+ Error: ", "", str(explanation)))
    return SPFResult(result, identity, value, reason)


class ResultCache:
    """Recent results by (client address, MAIL FROM, HELO, receiver)."""

    def __init__(self, ttl: float = RESULT_TTL, size: int = RESULTS_MAX) -> None:
        self.ttl, self.size = ttl, size
        self._kept: OrderedDict[tuple[str, ...], tuple[float, SPFResult]] = OrderedDict()

    def get(self, key: tuple[str, ...]) -> SPFResult | None:
        got = self._kept.get(key)
        if got is None:
            return None
        if got[0] < time.monotonic():
            del self._kept[key]
            return None
        self._kept.move_to_end(key)
        return got[1]

    def put(self, key: tuple[str, ...], result: SPFResult) -> None:
        if result.result == "temperror":
            return
        self._kept[key] = (time.monotonic() + self.ttl, result)
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)


async def check(resolver: Any, ip: str, mail_from: str, helo: str, receiver: str,
                executor: Executor | None = None, cache: ResultCache | None = None
                ) -> SPFResult:
    key = (ip, mail_from.lower(), helo.lower(), receiver)
    if cache is not None and (kept := cache.get(key)) is not None:
        return kept
    result = await run(resolver,
                       lambda lookups: check_sync(lookups, ip, mail_from, helo, receiver),
                       executor=executor)
    if cache is not None:
        cache.put(key, result)
    return result
