"""Quarantine by source address: mail from these networks is accepted and
delivered to the recipients' Junk folder (kind "quarantine")."""

from __future__ import annotations

import ipaddress

from pillarbox import module


class _State(module.BaseCheckState):
    def __init__(self, hit: bool) -> None:
        self.hit = hit

    async def connection(self, source: module.Source) -> module.Verdict:
        return module.Verdict(quarantine=True) if self.hit else module.ACCEPT


class QuarantineCheck:
    def __init__(self, name: str, networks: list) -> None:
        self.name, self.networks = name, networks

    def matches(self, ip: str) -> bool:
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(a in n for n in self.networks if n.version == a.version)

    def state(self, source: module.Source) -> _State:
        return _State(self.matches(source.client_ip))


def _networks(options: dict) -> list:
    nets = []
    for n in options["client_ip"]:
        try:
            nets.append(ipaddress.ip_network(str(n), strict=False))
        except ValueError:
            raise ValueError(f"client_ip: not an IP address or network: {n!r}") from None
    return nets


def _validate(options: dict) -> None:
    _networks(options)


def _make(name: str, options: dict, env) -> QuarantineCheck:
    return QuarantineCheck(name, _networks(options))


KIND = module.Kind(
    name="quarantine", role="check",
    options=(module.Option("client_ip", list, required=True,
                           help='addresses or networks ("192.0.2.0/24", "2001:db8::/32") '
                                "whose mail goes to Junk"),),
    make=_make, validate=_validate,
    help="Mail from the given client addresses is accepted and filed in Junk.")
