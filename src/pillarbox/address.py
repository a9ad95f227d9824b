"""Mail address parsing shared by the SMTP dialogue, the CLI and the directory."""

from __future__ import annotations

import re


class AddressError(ValueError):
    pass


# RFC 5321 dot-atom or quoted local part; UTF-8 allowed (SMTPUTF8).
_LOCAL_RE = re.compile(r'^(?:[^\s"(),:;<>@\[\\\].]+(?:\.[^\s"(),:;<>@\[\\\].]+)*|"[^"\r\n]*")$')
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    if d.startswith("[") and d.endswith("]"):
        return d  # address literal
    try:
        ascii_d = d.encode("idna").decode("ascii") if not d.isascii() else d
    except UnicodeError:
        raise AddressError(f"invalid domain {domain!r}") from None
    labels = ascii_d.split(".")
    if len(ascii_d) > 253 or len(labels) < 1 or not all(_LABEL_RE.match(lb) for lb in labels):
        raise AddressError(f"invalid domain {domain!r}")
    return d


def split(address: str) -> tuple[str, str]:
    """Validate `local@domain`; return (local, domain) with the domain lowercased."""
    if len(address) > 254 or "@" not in address:
        raise AddressError(f"invalid address {address!r}: expected local@domain")
    local, _, domain = address.rpartition("@")
    if not local or len(local.encode()) > 64 or not _LOCAL_RE.match(local):
        raise AddressError(f"invalid address {address!r}: bad local part")
    return local, normalize_domain(domain)


def is_bare_name(name: str) -> bool:
    """A local name without a domain (`root`), as sendmail and /etc/aliases take them."""
    return "@" not in name and not name.startswith("|") and bool(_LOCAL_RE.match(name)) \
        and not name.startswith('"') and len(name.encode()) <= 64


def normalize(address: str) -> str:
    """Canonical form used as a key: lowercased, validated."""
    local, domain = split(address.strip())
    return f"{local.lower()}@{domain}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
