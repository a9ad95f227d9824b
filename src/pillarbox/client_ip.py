"""A client's IP address as the checks and limits compare it: the text a
socket gives ("192.0.2.7", "2001:db8::1%eth0", "::ffff:192.0.2.7" from a
dual-stack socket) read into an address, an IPv4-mapped IPv6 address taken
as the IPv4 address it is."""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse(text: str) -> Address | None:
    """The address, or None for what is none ("unknown", a Unix socket)."""
    try:
        a = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return a.ipv4_mapped
    return a
