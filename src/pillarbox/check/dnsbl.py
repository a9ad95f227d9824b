"""DNS blocklists on connect (kind "dnsbl"): the client's address is looked
up in each zone (reversed IPv4 octets or IPv6 nibbles + the zone, an A
query), all zones at once through the shared resolver, within `timeout`.

An answer among a zone's codes is a hit. A zone that rejects gives the
connection a 554 greeting naming the zone; a zone that only scores adds its
score to a header field (and the message goes to Junk at
`quarantine_score`). A DNS failure or a timeout is no hit: it is logged and
the client is let in (a list that is down must not stop all mail).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from pillarbox import client_ip, logs, module
from pillarbox.check import Reply
from pillarbox.config import ConfigError, parse_duration

log = logging.getLogger("pillarbox.dnsbl")

DEFAULT_CODES = ("127.0.0.2-127.0.0.255",)  # 127.255.255.x are lists' error codes


@dataclass(frozen=True)
class Zone:
    name: str
    codes: tuple[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address], ...]
    reject: bool
    score: int

    def counts(self, answer: str) -> bool:
        try:
            a = ipaddress.IPv4Address(answer)
        except ValueError:
            return False
        return any(lo <= a <= hi for lo, hi in self.codes)


def query_name(ip: str, zone: str) -> str | None:
    """`2.0.0.127.zone` / the 32 nibbles of an IPv6 address + zone; None for
    no IP address."""
    a = client_ip.parse(ip)
    if a is None:
        return None
    rev = a.reverse_pointer  # "1.0.0.127.in-addr.arpa", "...ip6.arpa"
    return rev.rsplit(".", 2)[0] + "." + zone


def _code_range(text: str, where: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    lo, _, hi = str(text).partition("-")
    try:
        a, b = ipaddress.IPv4Address(lo.strip()), ipaddress.IPv4Address((hi or lo).strip())
    except ValueError:
        raise ValueError(f"{where}: not an IPv4 address or range a-b: {text!r}") from None
    if b < a:
        raise ValueError(f"{where}: range {text!r} ends before it starts")
    return a, b


def _zones(options: dict) -> list[Zone]:
    out = []
    for i, z in enumerate(options["zones"]):
        where = f"zones[{i}]"
        if isinstance(z, str):
            z = {"zone": z}
        if not isinstance(z, dict):
            raise ValueError(f"{where}: expected a zone name or a table {{zone = ...}}")
        unknown = set(z) - {"zone", "codes", "reject", "score"}
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]}")
        name = z.get("zone")
        if not isinstance(name, str) or "." not in name or not all(
                p and len(p) < 64 for p in name.rstrip(".").split(".")):
            raise ValueError(f"{where}.zone: expected a DNS zone such as zen.spamhaus.org")
        codes = z.get("codes", list(DEFAULT_CODES))
        if not isinstance(codes, list) or not codes:
            raise ValueError(f"{where}.codes: expected a list of addresses or ranges")
        reject = z.get("reject", True)
        score = z.get("score", 1)
        if not isinstance(reject, bool):
            raise ValueError(f"{where}.reject: expected true or false")
        if isinstance(score, bool) or not isinstance(score, int) or score < 0:
            raise ValueError(f"{where}.score: expected a whole number >= 0")
        out.append(Zone(name.rstrip(".").lower(),
                        tuple(_code_range(c, f"{where}.codes") for c in codes), reject, score))
    if not out:
        raise ValueError("zones: name at least one zone")
    return out


def _timeout(options: dict) -> float:
    try:
        t = parse_duration(options["timeout"], "timeout")
    except ConfigError as e:
        raise ValueError(str(e)) from None
    if not 0 < t <= 60:
        raise ValueError("timeout: must be more than 0s and at most 1m")
    return t


def _validate(options: dict) -> None:
    _zones(options)
    _timeout(options)
    if options["quarantine_score"] < 0:
        raise ValueError("quarantine_score: must be >= 0")


class _State(module.BaseCheckState):
    def __init__(self, check: DNSBLCheck) -> None:
        self.check = check

    async def connection(self, source: module.Source) -> module.Verdict:
        return await self.check.judge(source.client_ip, source.endpoint)


class DNSBLCheck:
    def __init__(self, name: str, options: dict, resolver: dns.asyncresolver.Resolver) -> None:
        self.name = name
        self.zones = _zones(options)
        self.timeout = _timeout(options)
        self.quarantine_score = options["quarantine_score"]
        self.header = options["header"]
        self.resolver = resolver

    def state(self, source: module.Source) -> _State:
        return _State(self)

    async def lookup(self, ip: str, zone: Zone) -> str | None:
        """The first answer that counts, or None (no listing, or no answer)."""
        qname = query_name(ip, zone.name)
        if qname is None:
            return None
        try:
            answer = await asyncio.wait_for(
                self.resolver.resolve(qname, "A", search=False), self.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.exception.DNSException, TimeoutError, OSError) as e:
            logs.event(log, logging.WARNING, "dnsbl lookup failed", client=logs.client(ip),
                       zone=zone.name, error=type(e).__name__)
            return None
        for rd in answer:
            if zone.counts(rd.to_text()):
                return rd.to_text()
        return None

    async def judge(self, ip: str, endpoint: str) -> module.Verdict:
        found = await asyncio.gather(*(self.lookup(ip, z) for z in self.zones))
        hits = [(z, code) for z, code in zip(self.zones, found, strict=True) if code]
        if not hits:
            return module.ACCEPT
        for z, code in hits:
            logs.event(log, logging.INFO, "dnsbl listed", client=logs.client(ip),
                       endpoint=endpoint, zone=z.name, code=code,
                       action="reject" if z.reject else "score")
        for z, _ in hits:
            if z.reject:
                return module.Verdict(reject=Reply(
                    554, f"5.7.1 Service unavailable; client [{ip}] blocked using {z.name}"))
        score = sum(z.score for z, _ in hits)
        value = f"score={score}; " + "; ".join(f"{z.name}={code}" for z, code in hits)
        return module.Verdict(
            quarantine=0 < self.quarantine_score <= score,
            add_headers=[(self.header, value)] if self.header else [])


def _make(name: str, options: dict, env) -> DNSBLCheck:
    if env.resolver is None:
        from pillarbox.resolver import make_resolver

        env.resolver = make_resolver(env.config.nameservers)
    return DNSBLCheck(name, options, env.resolver)


KIND = module.Kind(
    name="dnsbl", role="check",
    options=(
        module.Option("zones", list, required=True,
                      help='DNS blocklist zones: "zone" or {zone = "...", codes = '
                           '["127.0.0.2-127.0.0.11"], reject = true, score = 1}'),
        module.Option("timeout", str, "2s", help="the longest wait for all lookups"),
        module.Option("quarantine_score", int, 0,
                      help="deliver to Junk when the scores of the listing zones reach "
                           "this (0: never)"),
        module.Option("header", str, "X-DNSBL",
                      help="header field recording the listings of zones that only "
                           'score ("": none)'),
    ),
    make=_make, validate=_validate,
    help="Looks the client's address up in DNS blocklists on connect: a listing in a "
         "rejecting zone is a 554 greeting, in a scoring zone a header field or Junk.")
