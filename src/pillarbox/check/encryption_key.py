"""RCPT check for encryption at rest with `[encryption] no_key = "defer"`:
a mailbox that must be encrypted and has no key yet gets 450 4.7.0, so the
sending server retries later (LEAP's DEFER_IF_PERMIT)."""

from __future__ import annotations

from pillarbox.check import Reply


def check(encryption, aliases, rcpt: str) -> Reply | None:
    """The refusal for `rcpt` (a user, or an alias reaching local users), or None.
    `encryption`: modify.encryption_policy.Encryption, or None when off."""
    if encryption is None or encryption.settings.no_key != "defer":
        return None
    users = [rcpt] if aliases.users.get(rcpt) is not None else aliases.expand(rcpt).local
    for user in users:
        if encryption.refuses_at_rcpt(user):
            return Reply(450, f"4.7.0 recipient has not set up an encryption key yet <{user}>")
    return None
