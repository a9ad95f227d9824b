"""Mail address parsing shared by the SMTP dialogue, the CLI and the directory.

The grammar is RFC 5321 4.1.2 (with RFC 6531's UTF-8 for SMTPUTF8): a
dot-string or quoted-string local part, and a domain or an address literal
(IPv4, or IPv6 with its "IPv6:" tag). Nothing that is not printable gets
through: no control character may reach the queue, a log or a mailbox path.
"""

from __future__ import annotations

import ipaddress
import re
import string


class AddressError(ValueError):
    pass


_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_ADDRESS = 254  # characters (RFC 5321 4.5.3.1.3 path minus the brackets)
MAX_LOCAL = 64  # octets (RFC 5321 4.5.3.1.1)
MAX_DOMAIN = 253
_IDNA_DOTS = frozenset("\u3002\uff0e\uff61")


def _utf8_ok(c: str) -> bool:
    """A non-ASCII character allowed by RFC 6531: printable, not a space or a format mark."""
    return c.isprintable() and not c.isspace()


def _atom_ok(atom: str) -> bool:
    return bool(atom) and all(c in _ATEXT or (c > "\x7f" and _utf8_ok(c)) for c in atom)


def _quoted_ok(local: str) -> bool:
    """`"..."` with qtextSMTP and quoted-pairSMTP (RFC 5321 4.1.2); no control characters."""
    if len(local) < 2 or local[0] != '"' or local[-1] != '"':
        return False
    i, inner = 0, local[1:-1]
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            if i + 1 >= len(inner) or not " " <= inner[i + 1] <= "~":
                return False
            i += 2
            continue
        if c == '"' or not (" " <= c <= "~" or (c > "\x7f" and _utf8_ok(c))):
            return False
        i += 1
    return True


def _local_ok(local: str) -> bool:
    if not local or len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL:
        return False
    if local.startswith('"'):
        return _quoted_ok(local)
    return all(_atom_ok(a) for a in local.split("."))


def _address_literal(d: str) -> str:
    """`[1.2.3.4]` or `[IPv6:...]` in canonical form; general literals are refused."""
    inner = d[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            if "%" in inner:  # ipaddress takes a scope id; an address has none
                raise ValueError
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        if ":" in inner:  # General-address-literal (RFC 5321 4.1.3): no tag we know
            raise AddressError(f"unsupported address literal {d!r}")
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError as e:
        if isinstance(e, AddressError):
            raise
        raise AddressError(f"invalid address literal {d!r}") from None


def _label_ok(label: str) -> bool:
    if label.isascii():
        return bool(_LABEL_RE.match(label))
    # The codec would also split at U+3002 and friends: one label must stay one.
    if not all(_utf8_ok(c) and c not in _IDNA_DOTS for c in label):
        return False
    try:
        return bool(_LABEL_RE.match(label.encode("idna").decode("ascii")))
    except UnicodeError:
        return False


def _domain(d: str, original: str) -> str:
    """Validate a domain (no trailing dot) or an address literal; lowercased."""
    if d.startswith("[") and d.endswith("]"):
        return _address_literal(d)
    d = d.lower()
    labels = d.split(".")
    if len(d) > MAX_DOMAIN or not all(_label_ok(lb) for lb in labels):
        raise AddressError(f"invalid domain {original!r}")
    if not d.isascii() and len(d.encode("idna")) > MAX_DOMAIN:
        raise AddressError(f"invalid domain {original!r}")
    return d


def normalize_domain(domain: str) -> str:
    """A domain from config or the command line: one trailing root dot is forgiven."""
    d = domain.strip()
    if d.endswith(".") and not d.endswith(".."):
        d = d[:-1]
    return _domain(d, domain)


# The common case, ASCII dot-atom @ host name, in one regex match: the general
# parser below looks at each character and cost a tenth of SMTP intake's CPU.
_ATEXT_RE = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_PLAIN_RE = re.compile(rf"({_ATEXT_RE}(?:\.{_ATEXT_RE})*)@((?:{_LABEL}\.)*{_LABEL})")


def split(address: str) -> tuple[str, str]:
    """Validate `local@domain` (RFC 5321); return (local, domain) with the domain canonical."""
    m = _PLAIN_RE.fullmatch(address)
    if m is not None and len(m.group(1)) <= MAX_LOCAL and len(m.group(2)) <= MAX_DOMAIN \
            and len(address) <= MAX_ADDRESS:
        return m.group(1), m.group(2).lower()
    return _split(address)


def _split(address: str) -> tuple[str, str]:
    if len(address) > MAX_ADDRESS or "@" not in address:
        raise AddressError(f"invalid address {address!r}: expected local@domain")
    local, _, domain = address.rpartition("@")
    if not _local_ok(local):
        raise AddressError(f"invalid address {address!r}: bad local part")
    return local, _domain(domain, domain)


def is_bare_name(name: str) -> bool:
    """A local name without a domain (`root`), as sendmail and /etc/aliases take them."""
    return "@" not in name and not name.startswith(("|", '"')) and _local_ok(name)


def normalize(address: str) -> str:
    """Canonical form used as a key: lowercased, validated."""
    local, domain = split(address.strip())
    # Lowercasing can lengthen a local part (İ → i̇): validate what we return.
    local, domain = split(f"{local.lower()}@{domain}")
    return f"{local}@{domain}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
