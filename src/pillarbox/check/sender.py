"""MAIL FROM check for authenticated users: only their own address or an alias they own."""

from __future__ import annotations

from pillarbox.check import Reply
from pillarbox.directory.aliases import Aliases


def check(aliases: Aliases, user: str, mail_from: str) -> Reply | None:
    if mail_from.lower() == user:
        return None
    if mail_from and user in aliases.owners(mail_from.lower()) and aliases.targets(
        mail_from.lower()
    ):
        return None
    return Reply(553, f"5.7.1 <{mail_from}>: sender address not owned by {user}")
