"""The one DNS resolver every part of the server asks: dnspython's async
resolver with a shared cache and bounded timeouts.

Checks that use a synchronous library for their protocol (pyspf, dkimpy,
authheaders) run that library in a worker thread and hand it `sync_lookup`,
which sends each query back to this resolver on the event loop: one cache,
one timeout policy, and the event loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from pillarbox.config import parse_hostport

CACHE_ENTRIES = 10_000  # names x types; dnspython's LRU drops the oldest
TIMEOUT = 5.0  # seconds per server tried
LIFETIME = 15.0  # seconds for one whole lookup, retries included


def make_resolver(nameservers: list[str]) -> dns.asyncresolver.Resolver:
    """A resolver asking `nameservers` ("host" or "host:port"; none: the
    system's resolv.conf), with the shared cache."""
    if not nameservers:
        r = dns.asyncresolver.Resolver()
    else:
        r = dns.asyncresolver.Resolver(configure=False)
        servers = []
        for ns in nameservers:
            host, port = parse_hostport(ns, "dns.nameservers") if ":" in ns else (ns, 53)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        r.nameservers = servers
    r.lifetime = LIFETIME
    r.timeout = TIMEOUT
    r.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
    return r


def sync_lookup(resolver: dns.asyncresolver.Resolver, loop: asyncio.AbstractEventLoop
                ) -> Callable[[str, str], dns.resolver.Answer]:
    """A blocking `lookup(name, rdtype)` for a library running in a worker
    thread; it raises dnspython's exceptions (NXDOMAIN, NoAnswer, Timeout, ...).
    Never call it on the event loop thread itself: it would wait on itself."""

    def lookup(name: str, rdtype: str) -> dns.resolver.Answer:
        answer = cached(resolver, name, rdtype)  # most lookups: no trip to the loop
        if answer is not None:
            return answer
        fut = asyncio.run_coroutine_threadsafe(
            resolver.resolve(name, rdtype, search=False), loop)
        return fut.result(LIFETIME + 1)

    return lookup


def cached(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str
            ) -> dns.resolver.Answer | None:
    """The answer the shared cache holds, as `resolve` would give it (a cached
    empty answer raises NoAnswer, a cached NXDOMAIN raises NXDOMAIN); None when
    the cache does not know. The cache is thread-safe."""
    cache = resolver.cache
    if not cache:
        return None
    try:
        qname, rdt = _key(name, rdtype)
    except dns.exception.DNSException:
        return None  # let resolve() raise what it raises for such a name
    answer = cache.get((qname, rdt, dns.rdataclass.IN))
    if answer is not None:
        if answer.rrset is None:
            raise dns.resolver.NoAnswer(response=answer.response)
        return answer
    answer = cache.get((qname, dns.rdatatype.ANY, dns.rdataclass.IN))
    if answer is not None and answer.response.rcode() == dns.rcode.NXDOMAIN:
        raise dns.resolver.NXDOMAIN(qnames=[qname], responses={qname: answer.response})
    return None


@functools.lru_cache(maxsize=4096)
def _key(name: str, rdtype: str) -> tuple[dns.name.Name, dns.rdatatype.RdataType]:
    return dns.name.from_text(name), dns.rdatatype.RdataType.make(rdtype)
