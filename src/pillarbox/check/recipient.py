"""RCPT check for local domains: the address exists, is enabled, has room.

An SRS0 address (a bounce to mail we forwarded, srs.py) exists when its hash
and age check out; any other is refused, so nobody can relay through it."""

from __future__ import annotations

from pillarbox import srs as srs_
from pillarbox.check import Reply
from pillarbox.directory.aliases import Aliases


def check(aliases: Aliases, rcpt: str, srs: srs_.Srs | None = None) -> Reply | None:
    if srs is not None and srs_.is_srs(rcpt):
        if srs.reverse(rcpt) is None:
            return Reply(550, f"5.7.1 <{rcpt}>: invalid or expired SRS address")
        return None
    user = aliases.users.get(rcpt)
    if user is not None and not aliases.targets(rcpt):
        if not user.enabled:
            return Reply(550, f"5.2.1 <{rcpt}>: mailbox disabled")
        if user.over_quota:
            return Reply(452, f"4.2.2 <{rcpt}>: mailbox full, try again later")
        return None
    x = aliases.expand(rcpt)
    if len(x.local) == 1 and x.local[0] in x.via and not (x.remote or x.commands):
        # alice+shopping@: as alice@ herself, a full mailbox is said at once
        user = aliases.users.get(x.local[0])
        if user is not None and user.over_quota:
            return Reply(452, f"4.2.2 <{rcpt}>: mailbox full, try again later")
    if not x.empty:
        return None
    if x.disabled:
        return Reply(550, f"5.2.1 <{rcpt}>: mailbox disabled")
    if x.loop:
        return Reply(550, f"5.4.6 <{rcpt}>: alias loop, tell the postmaster")
    return Reply(550, f"5.1.1 <{rcpt}>: no such user here")
