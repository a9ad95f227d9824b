"""HELO/EHLO name checks (kind "helo"): the name a client gives must be a
host name or an address literal, a fully qualified one, not ours, and an
address literal must be the client's own address. Each test can be turned
off; with `record_only` a failing name is recorded in a header field instead
of refused.

Meant for the MX (`smtp` pipeline): a submission client's name is often a
laptop's bare host name and says nothing about the user.
"""

from __future__ import annotations

import ipaddress
import re

from pillarbox import client_ip, module
from pillarbox.check import Reply

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")  # "_" seen in the wild (Windows)


def _literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None | bool:
    """The address of `[192.0.2.1]` / `[IPv6:2001:db8::1]`; False if no literal,
    None if a malformed one."""
    if not (name.startswith("[") and name.endswith("]")):
        return False
    inner = name[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return ipaddress.IPv6Address(inner[5:])
        return ipaddress.IPv4Address(inner)
    except ValueError:
        return None


def _same(a: ipaddress.IPv4Address | ipaddress.IPv6Address, peer: str) -> bool:
    return a == client_ip.parse(peer)


class HeloCheck:
    def __init__(self, name: str, options: dict, config) -> None:
        self.name = name
        self.options = options
        self.ours = {config.hostname.lower().rstrip("."),
                     *(d.lower().rstrip(".") for d in config.domains)}

    def state(self, source: module.Source) -> _State:
        return _State(self, source)

    def fault(self, name: str, peer: str) -> Reply | None:
        """Why `name` is refused, or None."""
        o = self.options
        lit = _literal(name)
        if lit is None:
            return Reply(550, "5.7.1 HELO address literal is malformed")
        if lit is not False:
            if o["literal_must_match"] and not _same(lit, peer):
                return Reply(550, f"5.7.1 HELO address literal {name} is not your address "
                                  f"[{peer}]")
            return None
        host = name.rstrip(".") if name.endswith(".") and not name.endswith("..") else name
        if len(host) > 253 or not all(_LABEL.match(p) for p in host.split(".")):
            return Reply(550, "5.7.1 HELO name is not a valid host name or address literal")
        if o["require_fqdn"] and ("." not in host or host.rsplit(".", 1)[1].isdigit()):
            return Reply(550, "5.7.1 HELO name must be a fully qualified domain name")
        if o["refuse_our_names"] and host.lower() in self.ours:
            return Reply(550, "5.7.1 HELO name is our own name, not yours")
        return None


class _State(module.BaseCheckState):
    def __init__(self, check: HeloCheck, source: module.Source) -> None:
        self.check, self.source = check, source

    async def helo(self, name: str) -> module.Verdict:
        refused = self.check.fault(name, self.source.client_ip)
        if refused is None:
            return module.ACCEPT
        if not self.check.options["record_only"]:
            return module.Verdict(reject=refused)
        header, why = self.check.options["header"], refused.text.partition(" ")[2]
        return module.Verdict(add_headers=[(header, f"{why} ({name[:100]})")] if header else [])


KIND = module.Kind(
    name="helo", role="check",
    options=(
        module.Option("require_fqdn", bool, True,
                      help="the name must have a dot and a non-numeric last label"),
        module.Option("refuse_our_names", bool, True,
                      help="refuse our hostname and our domains as the client's name"),
        module.Option("literal_must_match", bool, True,
                      help="an address literal must be the client's own address"),
        module.Option("record_only", bool, False,
                      help="record a failing name in a header field instead of refusing"),
        module.Option("header", str, "X-HELO-Check",
                      help="the header field of record_only"),
    ),
    make=lambda name, options, env: HeloCheck(name, options, env.config),
    help="Refuses EHLO/HELO names that are malformed, not fully qualified, ours, "
         "or an address literal that is not the client's (550 5.7.1).")
