"""Who gets encryption at rest ([encryption] in the config), and with which key.

`decide(address)` is called for each local delivery: None when encryption is
not required for that mailbox; else a Decision holding the user's key (or
None, when the user has none and `no_key` says what to do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from pillarbox.address import domain_of
from pillarbox.directory.keys import Keys
from pillarbox.modify.pgp_encrypt import EncryptingReader

NO_KEY_POLICIES = ("clear", "defer", "hold")
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

    @property
    def enabled(self) -> bool:
        return bool(self.settings.domains or self.settings.users)

    def required(self, address: str) -> bool:
        a = address.lower()
        return a in self.settings.users or domain_of(a) in self.settings.domains

    def decide(self, address: str) -> Decision | None:
        if not self.required(address):
            return None
        return Decision(self.keys.get(address), self.settings.no_key)

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
        cert, protect = decision.cert, self.settings.protect_subject
        return lambda: EncryptingReader(plain(), cert, size,  # type: ignore[return-value]
                                        protect)

    def refuses_at_rcpt(self, address: str) -> bool:
        """`no_key = "defer"` and a mailbox that needs a key has none."""
        return (self.settings.no_key == "defer" and self.required(address)
                and self.keys.get(address) is None)

    def learns(self, address: str) -> bool:
        """Autocrypt learning on for this user's domain."""
        learn = self.settings.learn_autocrypt
        return "*" in learn or domain_of(address.lower()) in learn

