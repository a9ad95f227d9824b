"""DMARC (RFC 7489): does the From domain's owner vouch for this message,
through an aligned DKIM or SPF pass, and what does its policy ask for when
it does not.

The organizational domain comes from the Public Suffix List that the
publicsuffixlist package bundles (no network at run time); the record's
tag-list is read by dkimpy's tag=value parser (DMARC uses DKIM's syntax).
Only the evaluation is here: policy discovery (RFC 7489 6.6.3), alignment
(3.1), p=/sp=/pct= (6.3, 6.6.4).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import authres.dmarc
import dkim.util
from publicsuffixlist import PublicSuffixList

from pillarbox.check.dkim import token
from pillarbox.check.lookup import DNSFailure, txt

POLICIES = ("none", "quarantine", "reject")
_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the bundled list, read once per process


@lru_cache(maxsize=4096)
def org_domain(domain: str) -> str:
    """The organizational domain (RFC 7489 3.2): one label below the public
    suffix; a public suffix itself is its own."""
    d = domain.lower().rstrip(".")
    return _psl().privatesuffix(d) or d


def aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment: equal (strict, "s") or same organizational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


@dataclass(frozen=True)
class Record:
    domain: str  # where it was found: the From domain or its organizational domain
    p: str
    sp: str
    pct: int
    adkim: str
    aspf: str


class RecordError(Exception):
    """A DMARC record that is there but cannot be used (permerror)."""


@lru_cache(maxsize=4096)  # pure: the same record text reads the same way
def parse(domain: str, text: bytes) -> Record:
    try:
        tags = {k.decode("ascii", "replace").lower(): v.decode("ascii", "replace").strip().lower()
                for k, v in dkim.util.parse_tag_value(text).items()}
    except dkim.util.InvalidTagValueList as e:
        raise RecordError(f"bad record: {e}") from None
    if tags.get("v") != "dmarc1":
        raise RecordError("not a DMARC1 record")
    p = tags.get("p", "")
    if p not in POLICIES:
        raise RecordError("no valid p= tag")
    sp = tags.get("sp", p)
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100  # RFC 7489 6.3: a bad value is ignored
    return Record(domain, p, sp if sp in POLICIES else p, min(max(pct, 0), 100),
                  "s" if tags.get("adkim") == "s" else "r",
                  "s" if tags.get("aspf") == "s" else "r")


async def _record_at(resolver: Any, domain: str) -> Record | None:
    found = [t for t in await txt(resolver, f"_dmarc.{domain}") if t[:8] == b"v=DMARC1"]
    if len(found) != 1:
        return None  # none, or several: no policy (RFC 7489 6.6.3)
    return parse(domain, found[0])


async def discover(resolver: Any, from_domain: str) -> Record | None:
    """The policy for `from_domain`: its own record, else its organizational
    domain's. DNSFailure, RecordError."""
    rec = await _record_at(resolver, from_domain)
    org = org_domain(from_domain)
    if rec is None and org != from_domain:
        rec = await _record_at(resolver, org)
    return rec


@dataclass(frozen=True)
class DMARCResult:
    result: str  # pass fail none temperror permerror
    from_domain: str
    policy: str = ""  # the record's policy for this domain (p= or sp=)
    disposition: str = "none"  # what the policy asks for this message, after pct=
    reason: str = ""

    def entry(self) -> str:
        return _entry(self)


@lru_cache(maxsize=4096)  # a domain's result repeats; authres is slow to write one
def _entry(r: DMARCResult) -> str:
    note = r.reason
    if r.result == "fail":
        note = f"p={r.policy} dis={r.disposition}"
    return str(authres.dmarc.DMARCAuthenticationResult(
        result=r.result, result_comment=note or None, header_from=token(r.from_domain)))


async def evaluate(resolver: Any, from_domain: str, dkim_pass: list[str],
                   spf_pass_domain: str | None, rng: random.Random | None = None
                   ) -> DMARCResult:
    """The DMARC result for one From domain. `dkim_pass`: the d= of each DKIM
    signature that passed; `spf_pass_domain`: the SPF-checked domain if SPF
    passed."""
    domain = from_domain.lower().rstrip(".")
    try:
        rec = await discover(resolver, domain)
    except DNSFailure:
        return DMARCResult("temperror", domain, reason="DNS failure")
    except RecordError as e:
        return DMARCResult("permerror", domain, reason=str(e))
    if rec is None:
        return DMARCResult("none", domain)
    policy = rec.p if rec.domain == domain else rec.sp
    if any(aligned(d, domain, rec.adkim) for d in dkim_pass) or (
            spf_pass_domain and aligned(spf_pass_domain, domain, rec.aspf)):
        return DMARCResult("pass", domain, policy)
    sampled = (rng or random).randrange(100) < rec.pct
    return DMARCResult("fail", domain, policy, policy if sampled else _LOWER[policy])
