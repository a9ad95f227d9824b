"""MTA-STS (RFC 8461): the recipient domain's published TLS policy.

A domain announces a policy with a TXT record at `_mta-sts.<domain>`; the
policy itself is fetched over verified HTTPS from
`https://mta-sts.<domain>/.well-known/mta-sts.txt` and cached for its
max_age. Under `mode: enforce` mail goes only to MX hosts the policy names,
over TLS with a valid certificate.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.resolver

log = logging.getLogger("pillarbox.mta_sts")

MAX_POLICY_BYTES = 64 * 1024
FETCH_TIMEOUT = 15.0
MAX_AGE_CAP = 31557600  # one year, RFC 8461 3.2


@dataclass
class Policy:
    id: str
    mode: str  # enforce | testing | none
    mx: list[str] = field(default_factory=list)
    max_age: int = 86400
    fetched: float = 0.0

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            p = pattern.lower().rstrip(".")
            if p.startswith("*."):
                # A wildcard matches exactly one leftmost label.
                if host.endswith(p[1:]) and "." not in host[: -len(p) + 1]:
                    return True
            elif host == p:
                return True
        return False

    @property
    def fresh(self) -> bool:
        return time.time() - self.fetched < self.max_age


def parse_policy(text: str, policy_id: str) -> Policy | None:
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        return None
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        return None
    try:
        max_age = min(int((fields.get("max_age") or ["0"])[0]), MAX_AGE_CAP)
    except ValueError:
        return None
    return Policy(policy_id, mode, fields.get("mx", []), max_age, time.time())


class PolicyCache:
    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver
        self._cache: dict[str, Policy] = {}

    async def get(self, domain: str) -> Policy | None:
        cached = self._cache.get(domain)
        policy_id = await self._txt_id(domain)
        if policy_id is None:
            # No record now: keep honouring an unexpired cached policy (RFC 8461 5.1).
            return cached if cached is not None and cached.fresh else None
        if cached is not None and cached.id == policy_id and cached.fresh:
            return cached
        policy = await asyncio.to_thread(self._fetch, domain, policy_id)
        if policy is None:
            return cached if cached is not None and cached.fresh else None
        self._cache[domain] = policy
        return policy

    async def _txt_id(self, domain: str) -> str | None:
        try:
            answer = await self.resolver.resolve(f"_mta-sts.{domain}", "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers,
                dns.exception.Timeout):
            return None
        records = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
        records = [r for r in records if r.startswith("v=STSv1")]
        if len(records) != 1:
            return None
        for part in records[0].split(";"):
            k, _, v = part.strip().partition("=")
            if k == "id" and v:
                return v
        return None

    @staticmethod
    def _fetch(domain: str, policy_id: str) -> Policy | None:
        url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as resp:
                if resp.status != 200:
                    return None
                if not resp.headers.get("Content-Type", "").startswith("text/plain"):
                    return None
                text = resp.read(MAX_POLICY_BYTES).decode("utf-8", "replace")
        except (OSError, ValueError) as e:
            log.info("MTA-STS policy fetch failed domain=%s error=%r", domain, str(e))
            return None
        return parse_policy(text, policy_id)
