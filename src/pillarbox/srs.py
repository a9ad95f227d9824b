"""SRS, the Sender Rewriting Scheme, for mail an alias forwards to another domain.

When we forward `someone@sender.example`'s message to a remote address, the
next hop checks SPF for sender.example against our address, and fails. So
the envelope sender becomes an address of ours that encodes the original:

    SRS0=HHHH=TT=sender.example=someone@our.domain

in the SRS0 form of libsrs2 and postsrsd: TT is the day number modulo 1024
in two base32 characters (RFC 4648 alphabet), HHHH the first four base64
characters of an HMAC-SHA1 over the lowercased TT, domain and local part,
keyed with a secret of this server. A bounce to that address arrives on our
MX; `reverse` checks the hash and that the address is at most MAX_AGE_DAYS
old, and gives the original sender back, so only addresses we made recently
are passed on and we are no open relay. As libsrs2 does, the hash is compared
without regard to case (our SMTP endpoint lowercases local parts).

Written here rather than taken from PyPI: the two SRS libraries there,
pysrs (last release 2018) and srslib (a few releases over seven years, one
maintainer), are not well kept, and the scheme is these few lines of stdlib
HMAC. SRS1 (re-forwarding another forwarder's SRS0 address) is not made: such
an address is wrapped in SRS0 like any other, which works as long as it
fits in the 64 octets of a local part.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path

from pillarbox.fileio import write_new

KEY_NAME = "srs.key"
MAX_AGE_DAYS = 21  # libsrs2's and postsrsd's default
HASH_LENGTH = 4
MAX_LOCAL = 64  # octets (RFC 5321 4.5.3.1.1): longer would not come back through RCPT
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PERIOD = 1024  # days: the timestamp's range


def load_key(data_dir: Path) -> bytes:
    """The secret in data_dir/srs.key, made (mode 0600) on first use."""
    path = data_dir / KEY_NAME
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    write_new(path, secrets.token_hex(32).encode())  # or another process's, made meanwhile
    return path.read_bytes()


def is_srs(address: str) -> bool:
    return address[:5].lower() == "srs0="


def _day(now: float) -> int:
    return int(now // 86400) % _PERIOD


class Srs:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def _hash(self, ts: str, domain: str, local: str) -> str:
        mac = hmac.new(self.secret, digestmod=hashlib.sha1)
        for part in (ts, domain, local):
            mac.update(part.lower().encode("utf-8", "surrogateescape"))
        return base64.b64encode(mac.digest()).decode("ascii")[:HASH_LENGTH]

    def forward(self, sender: str, our_domain: str, now: float | None = None) -> str | None:
        """The SRS0 address for `sender` on our_domain; None if it would not fit."""
        local, _, domain = sender.rpartition("@")
        if not local or not domain:
            return None
        day = _day(time.time() if now is None else now)
        ts = _B32[day >> 5 & 31] + _B32[day & 31]
        new_local = f"SRS0={self._hash(ts, domain, local)}={ts}={domain}={local}"
        if len(new_local.encode("utf-8", "surrogateescape")) > MAX_LOCAL:
            return None
        return f"{new_local}@{our_domain}"

    def reverse(self, address: str, now: float | None = None) -> str | None:
        """The original sender of an SRS0 address we made, else None (forged,
        malformed, or older than MAX_AGE_DAYS)."""
        local = address.rpartition("@")[0]
        if not is_srs(local):
            return None
        parts = local[5:].split("=", 3)
        if len(parts) != 4:
            return None
        hash_, ts, domain, orig_local = parts
        if len(ts) != 2 or not domain or not orig_local:
            return None
        try:
            day = _B32.index(ts[0].upper()) << 5 | _B32.index(ts[1].upper())
        except ValueError:
            return None
        age = (_day(time.time() if now is None else now) - day) % _PERIOD
        if age > MAX_AGE_DAYS:
            return None
        want = self._hash(ts, domain, orig_local)
        if not hmac.compare_digest(want.lower().encode(), hash_.lower().encode()):
            return None
        return f"{orig_local}@{domain}"
