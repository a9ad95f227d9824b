"""DKIM verification (RFC 6376, RFC 8463 ed25519-sha256) of every signature
of a message, by dkimpy, with keys looked up through the shared resolver.

Results use RFC 8601's words: pass; fail (does not verify: a changed body or
header, a wrong or missing key); neutral (the signature field cannot be
read); policy (a signature with `l=`, which this server does not accept:
text appended after the signed part would ride on it); temperror (the key
could not be fetched: DNS failure).
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import authres
import dkim
import dkim.util
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from pillarbox.check.lookup import INLINE_MAX, DNSFailure, Lookups, run

MAX_SIGNATURES = 8  # more on one message is abuse (each costs a lookup and a hash)
DEFAULT_MIN_KEY_BITS = 1024

# dkimpy logs a bad signature at ERROR; for us it is a result, not a fault.
LIBRARY_LOG = logging.getLogger("pillarbox.check.dkim.library")
LIBRARY_LOG.propagate = False
LIBRARY_LOG.addHandler(logging.NullHandler())

_TOKEN = re.compile(r"[A-Za-z0-9._@+/=-]{1,255}")


# dkimpy checks RSA signatures in pure Python (pow, int2str) and parses the
# key record anew for each signature: together half of what a DKIM check
# costs. The same checks through `cryptography` (OpenSSL), and the parsed key
# kept per record text; anything unusual goes to dkimpy's own code.
_library_rsa_verify = dkim.RSASSA_PKCS1_v1_5_verify
_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


@lru_cache(maxsize=1024)
def _rsa_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _rsa_verify(hash: Any, signature: bytes, public_key: dict) -> bool:
    algorithm = _HASHES.get(getattr(hash, "name", ""))
    try:
        key = _rsa_key(public_key["modulus"], public_key["publicExponent"])
        if algorithm is None or len(signature) != (key.key_size + 7) // 8:
            raise ValueError("not the common case")
        key.verify(signature, hash.digest(), padding.PKCS1v15(),
                   utils.Prehashed(algorithm()))
        return True
    except InvalidSignature:
        return False
    except Exception:
        return _library_rsa_verify(hash, signature, public_key)


dkim.RSASSA_PKCS1_v1_5_verify = _rsa_verify
dkim.evaluate_pk = lru_cache(maxsize=1024)(dkim.evaluate_pk)  # (name, record) -> key


def token(value: str) -> str | None:
    """`value` if it is safe as an Authentication-Results property value."""
    return value if _TOKEN.fullmatch(value) else None


def comment(text: str) -> str:
    """A library's message, safe inside an Authentication-Results comment."""
    text = re.sub(r"\bb'([^']*)'", r"\1", text)  # dkimpy shows bytes as b'...'
    return re.sub(r"[^ -'*-\[\]-~]", "", text)[:120].strip(" :")


@dataclass(frozen=True)
class Signature:
    """The verdict on one DKIM-Signature field."""

    result: str  # pass | fail | neutral | policy | temperror
    domain: str = ""  # d=, lower case
    selector: str = ""
    b: str = ""  # the first 8 characters of b= (RFC 6008), to tell signatures apart
    algorithm: str = ""
    length: bool = False  # has l=
    reason: str = ""

    def entry(self) -> str:
        r = authres.DKIMAuthenticationResult(result=self.result,
                                             result_comment=self.reason or None,
                                             header_d=token(self.domain),
                                             header_s=token(self.selector))
        if token(self.b):
            r.properties.append(authres.AuthenticationResultProperty("header", "b", self.b))
        return str(r)


def dnsfunc(lookups: Lookups):
    """dkimpy's key lookup (`dnsfunc(name, timeout)` -> the TXT record or None)
    over `lookups`; a DNS failure is dkimpy's DnsTimeoutError (and is noted in
    `lookups.failed`, since dkimpy reports it as a plain failure)."""

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = lookups.txt(name.decode("ascii", "replace").rstrip("."))
        except DNSFailure as e:
            raise dkim.DnsTimeoutError(str(e)) from None
        return records[0] if records else None

    return get_txt


def _field(fields: dict[bytes, bytes], tag: bytes) -> str:
    return fields.get(tag, b"").decode("ascii", "replace")


def _one(verifier: dkim.DKIM, idx: int, lookups: Lookups) -> Signature:
    try:
        # dkimpy parses and validates the field once, for us and for itself
        fields, include_headers, sig_headers = verifier.verify_headerprep(idx)
    except dkim.DKIMException as e:
        return _unusable(verifier, idx, e)
    sig = Signature(
        "neutral", domain=_field(fields, b"d").lower(), selector=_field(fields, b"s"),
        b=re.sub(r"\s+", "", _field(fields, b"b"))[:8], algorithm=_field(fields, b"a"),
        length=b"l" in fields)
    if sig.length:
        return _with(sig, "policy", "l= tag not accepted")
    lookups.failed = False
    try:
        ok = verifier.verify_sig(fields, include_headers, sig_headers[idx], dnsfunc(lookups))
    except dkim.DKIMException:
        ok = False  # a body hash mismatch, a bad key: does not verify
    except Exception as e:  # the library on hostile input: a result, never a crash
        return _with(sig, "neutral", comment(f"cannot verify: {type(e).__name__}"))
    if ok:
        return _with(sig, "pass", "")
    if lookups.failed:
        return _with(sig, "temperror", "key lookup failed")
    return _with(sig, "fail", "")


def _unusable(verifier: dkim.DKIM, idx: int, error: Exception) -> Signature:
    """The verdict on a signature field dkimpy refused to use: neutral, with
    what can be read of it."""
    value = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"][idx]
    try:
        fields = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList as e:
        return Signature("neutral", reason=comment(f"bad signature field: {e}"))
    return Signature("neutral", domain=_field(fields, b"d").lower(),
                     selector=_field(fields, b"s"),
                     b=re.sub(r"\s+", "", _field(fields, b"b"))[:8],
                     algorithm=_field(fields, b"a"), length=b"l" in fields,
                     reason=comment(str(error)))


def _with(sig: Signature, result: str, reason: str) -> Signature:
    return Signature(result, sig.domain, sig.selector, sig.b, sig.algorithm, sig.length, reason)


def verify_sync(message: bytes, lookups: Lookups,
                min_key_bits: int = DEFAULT_MIN_KEY_BITS) -> list[Signature]:
    """Every DKIM signature's verdict, top first ([] if unsigned). Blocking:
    run it in a worker thread."""
    try:
        verifier = dkim.DKIM(message, logger=LIBRARY_LOG, minkey=min_key_bits)
    except Exception as e:  # a message dkimpy cannot even split into fields
        if b"dkim-signature" in message[:1 << 20].lower():
            return [Signature("neutral", reason=comment(f"unreadable message: {e}"))]
        return []
    count = sum(1 for n, _ in verifier.headers if n.lower() == b"dkim-signature")
    return [_one(verifier, i, lookups) for i in range(min(count, MAX_SIGNATURES))]


async def verify(message: bytes, resolver: Any, min_key_bits: int = DEFAULT_MIN_KEY_BITS,
                 executor: Executor | None = None) -> list[Signature]:
    """Every DKIM signature's verdict; a large message's in a worker thread."""
    return await run(resolver, lambda lookups: verify_sync(message, lookups, min_key_bits),
                     inline=len(message) <= INLINE_MAX, executor=executor)
