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
    if aliases.users.directory_stale():  # PostgreSQL down: the user may be new, try later
        return Reply(451, f"4.3.0 <{rcpt}>: user directory unavailable, try again later")
    return Reply(550, f"5.1.1 <{rcpt}>: no such user here")


# -- as a module (kind "recipient") -----------------------------------------------
# The SMTP session calls check() directly on the default pipeline (the hot
# path); these wrap it for pipelines that name it in the config.

from pillarbox import module  # noqa: E402
from pillarbox.address import domain_of  # noqa: E402


class _State(module.BaseCheckState):
    def __init__(self, env) -> None:
        self.env = env

    async def rcpt(self, rcpt: str) -> module.Verdict:
        if not self.env.config.is_local_domain(domain_of(rcpt)):
            return module.ACCEPT  # other domains: the relay check's business
        refused = check(self.env.aliases, rcpt, self.env.srs)
        return module.ACCEPT if refused is None else module.Verdict(reject=refused)


class RecipientCheck:
    def __init__(self, name: str, env) -> None:
        self.name, self.env = name, env

    def state(self, source: module.Source) -> _State:
        return _State(self.env)


KIND = module.Kind(
    name="recipient", role="check", options=(),
    make=lambda name, options, env: RecipientCheck(name, env),
    help="RCPT to a local domain: the user or alias exists, is enabled and has room "
         "(550 5.1.1, 550 5.2.1, 452 4.2.2); other domains pass.")
