"""Which new passwords `user add` and `user passwd` refuse.

A mailbox password is guessed online (SMTP AUTH, IMAP LOGIN) and, if the
database leaks, offline against the argon2id hash: a minimum length
(`limits.min_password_length`), the commonest breached passwords
(weak_passwords.txt, which names its source) and the address itself are
refused.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def _weak() -> frozenset[str]:
    text = resources.files(__package__).joinpath("weak_passwords.txt").read_text("utf-8")
    return frozenset(ln.casefold() for ln in text.splitlines() if ln and not ln.startswith("# ")
                     and ln != "#")


def is_common(password: str) -> bool:
    return password.casefold() in _weak()


def weakness(password: str, address: str, min_length: int) -> str | None:
    """Why `password` is not good enough for `address`, or None."""
    if len(password) < min_length:
        return (f"the password is too short: {len(password)} characters, at least "
                f"{min_length} are needed (limits.min_password_length)")
    local = address.rpartition("@")[0]
    if password.casefold() in (address.casefold(), local.casefold()):
        return "the password must not be the address or its local part"
    if is_common(password):
        return "the password is one of the commonest passwords; choose another"
    return None
