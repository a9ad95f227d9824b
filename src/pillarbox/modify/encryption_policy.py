"""Who gets encryption at rest ([encryption] in the config), and with which key.

`decide(address)` is called for each local delivery: None when encryption is
not required for that mailbox; else a Decision holding the user's key (or
None, when the user has none and `no_key` says what to do).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from pillarbox.address import domain_of
from pillarbox.directory.keys import Keys
from pillarbox.modify.pgp_encrypt import Sealing

NO_KEY_POLICIES = ("clear", "defer", "hold")
# A key found is remembered this long (seconds): a SQLite read per delivery
# cost the event loop a sixth of a millisecond. A key nobody has is looked up
# each time, so an import counts at once; a replaced or deleted key within this.
KEY_CACHE_TTL = 10.0
# The text a "hold" delivery is deferred with, and "defer" refuses RCPT with.
NO_KEY_TEXT = "4.7.0 recipient has not set up an encryption key yet"


@dataclass
class Decision:
    cert: bytes | None  # the user's certificate; None: no key
    no_key: str  # clear | defer | hold: what to do without one


class Encryption:
    def __init__(self, settings, keys: Keys) -> None:
        self.settings = settings  # config.EncryptionSettings
        self.keys = keys
        self._cache: dict[str, tuple[float, bytes]] = {}

    def key(self, address: str) -> bytes | None:
        """The user's certificate (Keys.get), remembered KEY_CACHE_TTL seconds."""
        a = address.lower()
        now = time.monotonic()
        hit = self._cache.get(a)
        if hit is not None and now - hit[0] < KEY_CACHE_TTL:
            return hit[1]
        cert = self.keys.get(a)
        if cert is None:
            self._cache.pop(a, None)
        else:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[a] = (now, cert)
        return cert

    @property
    def enabled(self) -> bool:
        return bool(self.settings.domains or self.settings.users)

    def required(self, address: str) -> bool:
        a = address.lower()
        return a in self.settings.users or domain_of(a) in self.settings.domains

    def decide(self, address: str) -> Decision | None:
        if not self.required(address):
            return None
        return Decision(self.key(address), self.settings.no_key)

    def opener(self, to: str, plain: Callable[[], BinaryIO], size: int
               ) -> Callable[[], BinaryIO] | str:
        """How a Maildir delivery for mailbox `to` reads the message: `plain`,
        or encrypted to the user's key (blocking reads: the writer's thread).
        A str is the error of a delivery held for want of a key."""
        decision = self.decide(to)
        if decision is None:
            return plain
        if decision.cert is None:
            return plain if decision.no_key == "clear" else NO_KEY_TEXT
        return Sealing(plain, decision.cert, size, self.settings.protect_subject)

    def refuses_at_rcpt(self, address: str) -> bool:
        """`no_key = "defer"` and a mailbox that needs a key has none."""
        return (self.settings.no_key == "defer" and self.required(address)
                and self.key(address) is None)

    def learns(self, address: str) -> bool:
        """Autocrypt learning on for this user's domain."""
        learn = self.settings.learn_autocrypt
        return "*" in learn or domain_of(address.lower()) in learn

