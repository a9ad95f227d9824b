"""DNS answers for the authentication checks, over the shared resolver.

One place decides what a DNS error means: a name that does not exist (or is
not a valid name at all) has no records; a server failure or a timeout is a
temporary failure (`DNSFailure`), which the checks record as `temperror`
and never take as "no record".

The protocol libraries (pyspf, dkimpy) are synchronous. `run` calls them on
the event loop with `Lookups` answering from the shared cache only; a lookup
the cache cannot answer is noted, fetched asynchronously, and the library
runs again (a sender seen before costs no round, a new one a few). Large
messages, or a library still missing answers after MAX_ROUNDS, go to a
worker thread whose lookups wait on the resolver (resolver.sync_lookup).
Threads cost more than the checks themselves on small messages.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import dns.exception
import dns.name
import dns.resolver

from pillarbox import resolver as shared

# A name no one can have records for: hostile input, not a DNS failure.
_NO_SUCH_NAME = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.name.EmptyLabel,
                 dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.BadEscape,
                 dns.name.IDNAException, dns.exception.SyntaxError, UnicodeError)


class DNSFailure(Exception):
    """The DNS could not answer (SERVFAIL, timeout, no server): try again later."""


def _failure(e: Exception) -> DNSFailure:
    if isinstance(e, (dns.exception.Timeout, TimeoutError)):
        return DNSFailure("DNS timeout")
    return DNSFailure("DNS server failure")


def txt_strings(rdatas: list[Any]) -> list[bytes]:
    """Each TXT record as one byte string (its strings joined, RFC 7208 3.3)."""
    return [b"".join(r.strings) for r in rdatas]


async def txt(resolver: Any, name: str) -> list[bytes]:
    """The TXT records of `name` ([] if none); DNSFailure if DNS failed."""
    try:
        answer = shared.cached(resolver, name, "TXT") or \
            await resolver.resolve(name, "TXT", search=False)
    except _NO_SUCH_NAME:
        return []
    except Exception as e:
        raise _failure(e) from None
    return txt_strings(list(answer))


MAX_ROUNDS = 12  # SPF's 10 lookups and its void lookups, then a thread
# Messages up to this size are verified on the event loop (DKIM hashes them
# whole: about a millisecond for 256 KiB); larger ones in a worker thread.
INLINE_MAX = 256 * 1024


class Lookups:
    """The libraries' blocking view of DNS. In a worker thread (`loop` given)
    each query waits on the resolver; on the event loop (no `loop`) a query
    the cache cannot answer is noted in `missing` and fails as DNSFailure,
    and `run` fetches it and runs the library again. `failed` tells whether
    any query failed for a DNS reason, for libraries that fold DNS errors
    into a plain "invalid"."""

    def __init__(self, resolver: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._resolver = resolver
        self._lookup = shared.sync_lookup(resolver, loop) if loop is not None else None
        self._fetched: dict[tuple[str, str], list[Any] | DNSFailure] = {}
        self.missing: list[tuple[str, str]] = []
        self.failed = False

    def query(self, name: str, rdtype: str) -> list[Any]:
        got = self._fetched.get((name, rdtype))
        if got is None:
            if self._lookup is not None:
                got = _outcome(lambda: self._lookup(name, rdtype))
            else:
                got = _outcome(lambda: shared.cached(self._resolver, name, rdtype))
                if got is None:
                    self.missing.append((name, rdtype))
                    got = DNSFailure("not looked up yet")
        if isinstance(got, DNSFailure):
            self.failed = True
            raise got
        return got

    def txt(self, name: str) -> list[bytes]:
        return txt_strings(self.query(name, "TXT"))

    async def fetch_missing(self) -> None:
        for name, rdtype in self.missing:
            try:
                answer = await self._resolver.resolve(name, rdtype, search=False)
                self._fetched[(name, rdtype)] = list(answer)
            except _NO_SUCH_NAME:
                self._fetched[(name, rdtype)] = []
            except Exception as e:
                self._fetched[(name, rdtype)] = _failure(e)
        self.missing = []


def _outcome(get: Callable[[], Any]) -> list[Any] | DNSFailure | None:
    try:
        answer = get()
    except _NO_SUCH_NAME:
        return []
    except Exception as e:  # SERVFAIL, timeout, refused, anything else: not "no record"
        return _failure(e)
    return None if answer is None else list(answer)


async def run(resolver: Any, fn: Callable[[Lookups], Any], inline: bool = True,
              executor: Executor | None = None) -> Any:
    """`fn(lookups)`: on the event loop in rounds when `inline` (see above),
    else (or after MAX_ROUNDS) in a worker thread of `executor`."""
    if inline:
        lookups = Lookups(resolver)
        for _ in range(MAX_ROUNDS):
            lookups.failed = False
            result = fn(lookups)
            if not lookups.missing:
                return result
            await lookups.fetch_missing()
    return await in_thread(executor, fn, Lookups(resolver, asyncio.get_running_loop()))


async def in_thread(executor: Executor | None, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a worker thread of `executor` (None: asyncio's default
    one). The authentication check brings its own pool, so that library calls
    waiting on slow DNS never take the threads the rest of the server reads
    and writes messages with."""
    return await asyncio.get_running_loop().run_in_executor(
        executor, functools.partial(fn, *args))
