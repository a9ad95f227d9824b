"""SPF (RFC 7208) by pyspf: is the client allowed to send for the MAIL FROM
domain, or for the HELO name when MAIL FROM is the null sender.

pyspf enforces the 10-lookup limit and the 2-void-lookup limit (permerror).
Its DNS goes through the shared resolver: pyspf calls one module-level
function for every query, which we replace once with one that uses the
`Lookups` of the worker thread running the check.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import authres
import spf as pyspf

from pillarbox.check.dkim import comment, token
from pillarbox.check.lookup import DNSFailure, Lookups, run

QUERY_TIME = 20  # seconds for a whole check (RFC 7208 4.6.4 recommends at least 20)

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
        value = token(self.value) or token(self.domain)
        kw = {"smtp_mailfrom": value} if self.identity == "mailfrom" else {"smtp_helo": value}
        return str(authres.SPFAuthenticationResult(
            result=self.result, result_comment=self.reason or None, **kw))


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


async def check(resolver: Any, ip: str, mail_from: str, helo: str, receiver: str,
                executor: Executor | None = None) -> SPFResult:
    return await run(resolver, lambda lookups: check_sync(lookups, ip, mail_from, helo, receiver),
                     executor=executor)
