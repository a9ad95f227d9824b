"""No open relay: mail to other domains only from authenticated users."""

from __future__ import annotations

from pillarbox.check import Reply


def check(rcpt_is_local: bool, authenticated: str | None) -> Reply | None:
    if rcpt_is_local or authenticated:
        return None
    return Reply(554, "5.7.1 Relaying denied: authenticate on the submission port to send "
                      "to other domains")


# -- as a module (kind "relay") -----------------------------------------------------

from pillarbox import module  # noqa: E402
from pillarbox.address import domain_of  # noqa: E402


class _State(module.BaseCheckState):
    def __init__(self, config, source: module.Source) -> None:
        self.config, self.source = config, source

    async def rcpt(self, rcpt: str) -> module.Verdict:
        refused = check(self.config.is_local_domain(domain_of(rcpt)), self.source.auth)
        return module.ACCEPT if refused is None else module.Verdict(reject=refused)


class RelayCheck:
    def __init__(self, name: str, env) -> None:
        self.name, self.env = name, env

    def state(self, source: module.Source) -> _State:
        return _State(self.env.config, source)


KIND = module.Kind(
    name="relay", role="check", options=(),
    make=lambda name, options, env: RelayCheck(name, env),
    help="RCPT to another domain only for authenticated users (554 5.7.1 Relaying denied).")
