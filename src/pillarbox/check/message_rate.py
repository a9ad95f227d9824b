"""Messages per minute per client address and per authenticated user (kind
"rate_limit"; the login throttle is check/ratelimit.py). Each key has a
token bucket holding up to `burst` messages that refills at the rate: each
MAIL takes one, an empty bucket answers 450 4.7.1 at MAIL.

The buckets live in memory, shared by all connections of one instance (a
reload that remakes the instance starts them full). At most MAX_KEYS keys per
table: the least recently used ones are dropped first (a dropped key starts
with a full bucket again, which only errs towards letting mail in).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from pillarbox import logs, module
from pillarbox.check import Reply
from pillarbox.check.ratelimit import source_of

log = logging.getLogger("pillarbox.ratelimit")

MAX_KEYS = 100_000


class Buckets:
    """Token buckets by key: `rate` per minute, at most `burst` at once."""

    def __init__(self, rate: int, burst: int, max_keys: int = MAX_KEYS) -> None:
        self.per_second = rate / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._table: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, key: str, now: float) -> bool:
        tokens, then = self._table.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.per_second)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._table[key] = (tokens, now)  # at the end: most recently used
        while len(self._table) > self.max_keys:
            self._table.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._table)


class _State(module.BaseCheckState):
    def __init__(self, check: MessageRate, source: module.Source) -> None:
        self.check, self.source = check, source

    async def mail(self, sender: str) -> module.Verdict:
        return self.check.judge(self.source)


class MessageRate:
    def __init__(self, name: str, options: dict) -> None:
        self.name = name
        burst = options["burst"]
        self.per_ip = Buckets(options["per_ip"], burst) if options["per_ip"] else None
        self.per_user = Buckets(options["per_user"], burst) if options["per_user"] else None

    def state(self, source: module.Source) -> _State:
        return _State(self, source)

    def judge(self, source: module.Source, now: float | None = None) -> module.Verdict:
        now = time.monotonic() if now is None else now
        if source.auth:  # a user's mail counts against the user, wherever it comes from
            if self.per_user is not None and not self.per_user.take(source.auth.lower(), now):
                return self._refuse(source, Reply(
                    450, "4.7.1 Too many messages from your account, try again later"))
            return module.ACCEPT
        if self.per_ip is not None and not self.per_ip.take(source_of(source.client_ip), now):
            return self._refuse(source, Reply(
                450, "4.7.1 Too many messages from your address, try again later"))
        return module.ACCEPT

    @staticmethod
    def _refuse(source: module.Source, reply: Reply) -> module.Verdict:
        logs.event(log, logging.INFO, "message rate exceeded",
                   client=logs.client(source.client_ip), endpoint=source.endpoint,
                   sasl_user=source.auth)
        return module.Verdict(reject=reply)


def _validate(options: dict) -> None:
    for key in ("per_ip", "per_user"):
        if options[key] < 0:
            raise ValueError(f"{key}: must be >= 0 (0: no limit)")
    if options["burst"] < 1:
        raise ValueError("burst: must be at least 1")


KIND = module.Kind(
    name="rate_limit", role="check",
    options=(
        module.Option("per_ip", int, 30,
                      help="messages per minute from one client address (IPv6: its /64) "
                           "without authentication; 0: no limit"),
        module.Option("per_user", int, 60,
                      help="messages per minute from one authenticated user; 0: no limit"),
        module.Option("burst", int, 20,
                      help="messages at once before the rate applies (the bucket size)"),
    ),
    make=lambda name, options, env: MessageRate(name, options), validate=_validate,
    help="Limits messages per minute per client address and per authenticated user "
         "(token buckets with a burst): 450 4.7.1 at MAIL.")
