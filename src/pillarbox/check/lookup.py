"""DNS answers for the authentication checks, over the shared resolver.

One place decides what a DNS error means: a name that does not exist (or is
not a valid name at all) has no records; a server failure or a timeout is a
temporary failure (`DNSFailure`), which the checks record as `temperror`
and never take as "no record". The protocol libraries are synchronous and
run in a worker thread: `Lookups` is their blocking view, sending every
query back to the shared resolver on the event loop (resolver.sync_lookup).
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


def _answer(get: Callable[[], Any]) -> list[Any]:
    try:
        return list(get())
    except _NO_SUCH_NAME:
        return []
    except Exception as e:  # SERVFAIL, timeout, refused, anything else: not "no record"
        raise _failure(e) from None


def txt_strings(rdatas: list[Any]) -> list[bytes]:
    """Each TXT record as one byte string (its strings joined, RFC 7208 3.3)."""
    return [b"".join(r.strings) for r in rdatas]


async def txt(resolver: Any, name: str) -> list[bytes]:
    """The TXT records of `name` ([] if none); DNSFailure if DNS failed."""
    try:
        answer = await resolver.resolve(name, "TXT", search=False)
    except _NO_SUCH_NAME:
        return []
    except Exception as e:
        raise _failure(e) from None
    return txt_strings(list(answer))


class Lookups:
    """Blocking queries for a library in a worker thread (never call on the
    event loop). `failed` tells whether any query failed for a DNS reason,
    for libraries that fold DNS errors into a plain "invalid"."""

    def __init__(self, resolver: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._lookup = shared.sync_lookup(resolver, loop)
        self.failed = False

    def query(self, name: str, rdtype: str) -> list[Any]:
        try:
            return _answer(lambda: self._lookup(name, rdtype))
        except DNSFailure:
            self.failed = True
            raise

    def txt(self, name: str) -> list[bytes]:
        return txt_strings(self.query(name, "TXT"))


async def in_thread(executor: Executor | None, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a worker thread of `executor` (None: asyncio's default
    one). The authentication check brings its own pool, so that library calls
    waiting on slow DNS never take the threads the rest of the server reads
    and writes messages with."""
    return await asyncio.get_running_loop().run_in_executor(
        executor, functools.partial(fn, *args))
