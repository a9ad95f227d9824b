"""Counters of events per key over a sliding window, and the login throttle built
on them.

A per-connection count of failed logins stops nothing: an attacker opens a new
connection. The throttle counts failed logins (SMTP AUTH, IMAP LOGIN and
AUTHENTICATE alike) per source and per account, across connections:

- a source (an IPv4 address, or an IPv6 /64, which one host usually has whole)
  with `auth_max_failures` failures within `auth_failure_window` is refused
  every login for `auth_lockout`;
- an account with `auth_account_max_failures` failures within the window, from
  any sources, refuses for `auth_lockout` logins from sources that have not
  logged into it successfully in the last KNOWN_SOURCE_TTL: a password guessed
  at from many addresses, while its owner's own client keeps working;
- each failure is answered only after a delay that grows with the square of
  the failures counted (the larger share of the two limits), reaching
  `auth_failure_delay` at the limit.

A refusal is decided before the password is checked, so it costs no argon2 and
even the right password does not get in. Refused attempts are not counted and
do not extend a lockout: it always ends `auth_lockout` after the failure that
started it, so nobody can lock a user out for ever. Every table is bounded
(MAX_KEYS, oldest dropped first), so a flood of addresses costs bounded memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque

from pillarbox import client_ip, logs
from pillarbox.config import Limits

log = logging.getLogger("pillarbox.auth")

MAX_KEYS = 100_000  # per table
KNOWN_SOURCE_TTL = 7 * 86400.0


def source_of(ip: str) -> str:
    """The key a client address counts under: IPv4 as is, IPv6 by its /64."""
    addr = client_ip.parse(ip)
    if addr is None:
        return ip[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _bounded_put(table: dict, key, value) -> None:
    table.pop(key, None)  # re-inserted at the end: the table is oldest-first
    table[key] = value
    while len(table) > MAX_KEYS:
        del table[next(iter(table))]


class WindowCounter:
    """Events per key within the last `window` seconds; a key reaching `limit`
    is locked for `lockout` seconds."""

    def __init__(self, limit: int, window: float, lockout: float) -> None:
        self.limit, self.window, self.lockout = limit, window, lockout
        self._events: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}  # key -> until (monotonic)

    def count(self, key: str, now: float) -> int:
        events = self._events.get(key)
        if events is None:
            return 0
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return 0
        return len(events)

    def add(self, key: str, now: float) -> bool:
        """Count one event; True when it starts a lockout."""
        self.count(key, now)  # drop what left the window
        events = self._events.get(key) or deque(maxlen=self.limit)
        events.append(now)
        _bounded_put(self._events, key, events)
        if len(events) >= self.limit and self.lockout > 0 and not self.locked(key, now):
            _bounded_put(self._locked, key, now + self.lockout)
            return True
        return False

    def locked(self, key: str, now: float) -> bool:
        until = self._locked.get(key)
        if until is None:
            return False
        if until <= now:
            del self._locked[key]
            return False
        return True


class LoginThrottle:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        window, lockout = limits.auth_failure_window, limits.auth_lockout
        self.sources = WindowCounter(limits.auth_max_failures, window, lockout)
        self.accounts = WindowCounter(limits.auth_account_max_failures, window, lockout)
        self._known: dict[tuple[str, str], float] = {}  # (account, source) -> last login

    def reconfigure(self, limits: Limits) -> None:
        """A reload: the new limits count the failures already seen."""
        self.limits = limits
        for counter, limit in ((self.sources, limits.auth_max_failures),
                               (self.accounts, limits.auth_account_max_failures)):
            counter.limit = limit
            counter.window, counter.lockout = limits.auth_failure_window, limits.auth_lockout
            for key, events in counter._events.items():
                counter._events[key] = deque(events, maxlen=limit)

    @staticmethod
    def _account(name: str) -> str:
        return name.strip().lower()[:320]

    def refusal(self, ip: str, name: str) -> str | None:
        """Why a login from `ip` as `name` is refused now, or None."""
        now = time.monotonic()
        source, account = source_of(ip), self._account(name)
        if self.sources.locked(source, now):
            return "source"
        if self.accounts.locked(account, now):
            seen = self._known.get((account, source))
            if seen is None or seen <= now - KNOWN_SOURCE_TTL:
                return "account"
        return None

    async def failed(self, ip: str, name: str) -> None:
        """Count a failed login, then wait the delay it has earned."""
        now = time.monotonic()
        source, account = source_of(ip), self._account(name)
        if self.sources.add(source, now):
            # client first: fail2ban finds it there, before any user-chosen value
            logs.event(log, logging.WARNING, "login lockout", client=logs.client(ip),
                       source=source, failures=self.sources.limit,
                       seconds=self.sources.lockout)
        if self.accounts.add(account, now):
            logs.event(log, logging.WARNING, "login lockout", client=logs.client(ip),
                       account=account[:100], failures=self.accounts.limit,
                       seconds=self.accounts.lockout)
        share = max(self.sources.count(source, now) / self.sources.limit,
                    self.accounts.count(account, now) / self.accounts.limit)
        # quadratic: a typo or two costs next to nothing, guessing soon costs the most
        delay = self.limits.auth_failure_delay * min(1.0, share) ** 2
        if delay > 0:
            await asyncio.sleep(delay)

    def succeeded(self, ip: str, name: str) -> None:
        _bounded_put(self._known, (self._account(name), source_of(ip)), time.monotonic())
