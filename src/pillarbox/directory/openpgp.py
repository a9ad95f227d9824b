"""Reading and judging an OpenPGP certificate (a user's public key) with pysequoia.

pysequoia parses certificates but does not refuse an expired or revoked one
by itself, so `inspect` checks explicitly, in this order: one public
certificate, not revoked, not expired, at least one encryption-capable key
that is bound, not revoked and not expired, a user ID with the user's
address. A refusal is a KeyRefused with a one-line reason for the operator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr

import pysequoia
from pysequoia import packet

_Tag = packet.Tag
_SigType = packet.SignatureType


class KeyRefused(Exception):
    """The certificate cannot be used; str(e) is the one-line reason."""


@dataclass
class SubkeyInfo:
    algorithm: str
    created: datetime | None
    expires: datetime | None
    encrypts: bool
    revoked: bool


@dataclass
class KeyInfo:
    fingerprint: str
    version: int  # 4 or 6
    algorithm: str  # of the primary key
    created: datetime | None
    expires: datetime | None
    user_ids: list[str]
    subkeys: list[SubkeyInfo] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What `user key show` prints."""
        def when(t: datetime | None) -> str:
            return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "never"

        out = [f"fingerprint {self.fingerprint.upper()}",
               f"version     v{self.version}",
               f"primary     {self.algorithm}, created {when(self.created)}",
               f"expires     {when(self.expires)}"]
        for s in self.subkeys:
            use = "encryption" if s.encrypts else "other"
            state = " (revoked)" if s.revoked else ""
            out.append(f"subkey      {s.algorithm} {use}, expires {when(s.expires)}{state}")
        out += [f"user ID     {u}" for u in self.user_ids]
        return out


def _alg(p: packet.Packet) -> str:
    a = p.key_algorithm
    return str(a).rpartition(".")[2] if a is not None else "unknown"


def _walk(cert: pysequoia.Cert) -> tuple[str, datetime | None, list[SubkeyInfo], bool]:
    """(primary algorithm, primary created, subkeys, primary encrypts) from the
    packets: each subkey's newest binding signature gives its flags and
    validity; a subkey revocation revokes it."""
    alg, created, primary_encrypts = "unknown", None, False
    subs: list[SubkeyInfo] = []
    current: SubkeyInfo | None = None
    newest: datetime | None = None
    for p in packet.PacketPile.from_bytes(bytes(cert)):
        tag = p.tag
        if tag == _Tag.PublicKey:
            alg, created = _alg(p), p.key_created
        elif tag == _Tag.PublicSubkey:
            current = SubkeyInfo(_alg(p), p.key_created, None, False, False)
            newest = None
            subs.append(current)
        elif tag == _Tag.Signature:
            st = p.signature_type
            flags = p.key_flags
            if current is None:
                # Primary key flags (an RSA primary key may encrypt itself).
                if flags is not None and (flags.storage_encryption
                                          or flags.transport_encryption):
                    primary_encrypts = True
                continue
            if st == _SigType.SubkeyRevocation:
                current.revoked = True
            elif st == _SigType.SubkeyBinding:
                made = p.signature_created
                if newest is not None and made is not None and made < newest:
                    continue
                newest = made
                current.encrypts = bool(flags is not None and (
                    flags.storage_encryption or flags.transport_encryption))
                period = p.key_validity_period
                current.expires = (current.created + period
                                   if period and current.created else None)
        elif tag in (_Tag.UserID, _Tag.UserAttribute):
            current = None if not subs else current
    return alg, created, subs, primary_encrypts


def emails(cert: pysequoia.Cert) -> list[str]:
    """The addresses of the certificate's user IDs ("Name <a@b>" or "a@b"), lowercased."""
    out = []
    for uid in cert.user_ids:
        addr = parseaddr(str(uid))[1]
        if "@" in addr:
            out.append(addr.lower())
    return out


def parse(data: bytes) -> pysequoia.Cert:
    """One public certificate from armored or binary bytes, else KeyRefused."""
    try:
        certs = pysequoia.Cert.split_bytes(data)
    except Exception:
        raise KeyRefused("not an OpenPGP public key (neither armored nor binary)") from None
    if len(certs) != 1:
        raise KeyRefused(f"expected one OpenPGP certificate, found {len(certs)}")
    cert = certs[0]
    with warnings.catch_warnings():  # deprecated in favour of Tsk, which we never want
        warnings.simplefilter("ignore", DeprecationWarning)
        secret = cert.has_secret_keys
    if secret:
        raise KeyRefused("this is a secret key: import the public key only "
                         "(gpg --export ADDRESS)")
    return cert


def inspect(data: bytes, address: str | None = None, any_uid: bool = False,
            now: datetime | None = None) -> tuple[pysequoia.Cert, KeyInfo]:
    """The certificate and its description, or KeyRefused saying why it is
    unusable for mail to `address` (None: no user ID check)."""
    cert = parse(data)
    now = now or datetime.now(UTC)
    fpr = cert.fingerprint
    if cert.is_revoked:
        raise KeyRefused(f"key {fpr.upper()} is revoked")
    expires = cert.expiration
    if expires is not None and expires <= now:
        raise KeyRefused(f"key {fpr.upper()} expired on {expires:%Y-%m-%d}")
    try:
        alg, created, subs, primary_encrypts = _walk(cert)
    except Exception as e:  # a packet the library parses but cannot describe
        raise KeyRefused(f"key {fpr.upper()} cannot be read: {e}") from None
    usable = primary_encrypts or any(
        s.encrypts and not s.revoked and (s.expires is None or s.expires > now) for s in subs)
    if usable:
        try:  # the library's own judgement (binding signatures, algorithms)
            pysequoia.encrypt(b"", [cert], armor=False)
        except Exception:
            usable = False
    if not usable:
        raise KeyRefused(f"key {fpr.upper()} has no valid encryption-capable subkey")
    if address is not None and not any_uid and address.lower() not in emails(cert):
        raise KeyRefused(f"key {fpr.upper()} has no user ID with <{address.lower()}> "
                         "(use --any-uid to import it anyway)")
    info = KeyInfo(fingerprint=fpr, version=6 if len(fpr) == 64 else 4, algorithm=alg,
                   created=created, expires=expires,
                   user_ids=[str(u) for u in cert.user_ids], subkeys=subs)
    return cert, info
