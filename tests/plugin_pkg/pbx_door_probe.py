"""A test check that shows when the SMTP session calls its hooks: it refuses
at the connection or at HELO when told to, quarantines at the connection when
told to, and writes the hooks its state saw (in order) into `X-Door-Probe`."""

from __future__ import annotations

from pillarbox import module
from pillarbox.check import Reply


def _reply(text: str) -> Reply | None:
    if not text:
        return None
    code, _, rest = text.partition(" ")
    return Reply(int(code), rest)


class _State(module.BaseCheckState):
    def __init__(self, options: dict) -> None:
        self.options = options
        self.seen: list[str] = []

    async def connection(self, source: module.Source) -> module.Verdict:
        self.seen.append("connection")
        refused = _reply(self.options["connection_reply"])
        if refused:
            return module.Verdict(reject=refused)
        return module.Verdict(quarantine=self.options["quarantine"])

    async def helo(self, name: str) -> module.Verdict:
        self.seen.append(f"helo={name}")
        if name == self.options["refuse_helo"]:
            return module.Verdict(reject=Reply(550, f"5.7.1 HELO {name} refused by the probe"))
        return module.ACCEPT

    async def mail(self, sender: str) -> module.Verdict:
        self.seen.append("mail")
        return module.ACCEPT

    async def rcpt(self, rcpt: str) -> module.Verdict:
        self.seen.append(f"rcpt={rcpt}")
        return module.ACCEPT

    async def body(self, header, body) -> module.Verdict:
        self.seen.append("body")
        return module.Verdict(add_headers=[("X-Door-Probe", " ".join(self.seen))])


class DoorProbe:
    def __init__(self, name: str, options: dict, env) -> None:
        self.name, self.options = name, options

    def state(self, source: module.Source) -> _State:
        return _State(self.options)


KIND = module.Kind(
    name="door_probe", role="check",
    options=(module.Option("connection_reply", str, ""),
             module.Option("refuse_helo", str, ""),
             module.Option("quarantine", bool, False)),
    make=DoorProbe, help="shows when the session calls a check's hooks")
