"""Password hashes: argon2id, the PHC string format Dovecot (ARGON2ID) reads too.

New hashes use RFC 9106's second recommended option (64 MiB, 3 passes) with
one lane, made and checked by libsodium (PyNaCl): it does the same work in
about half the CPU of argon2-cffi's four-lane hashes (72 ms against 140 ms a
check here), which sets how many logins a second the server takes. libsodium
checks any one-lane argon2id hash; others (argon2-cffi's default, p=4, as
written before) are checked by argon2-cffi, and `needs_rehash` says to replace
them. Memory and passes of an existing hash are left as the operator chose.
"""

from __future__ import annotations

import functools
import re

import nacl.exceptions
import nacl.pwhash
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

OPSLIMIT = 3  # passes (t)
MEMLIMIT = 64 * 1024 * 1024  # bytes (m = 65536 KiB)
_ONE_LANE = re.compile(r"^\$argon2id\$v=19\$m=\d+,t=\d+,p=1\$")
_other = PasswordHasher()  # verifies any argon2 parameters


def hash_password(password: str) -> str:
    return nacl.pwhash.argon2id.str(password.encode("utf-8", "surrogatepass"),
                                    opslimit=OPSLIMIT, memlimit=MEMLIMIT).decode("ascii")


def verify(password_hash: str | None, password: str) -> bool:
    """True if the password matches. Costs a full check even without a hash (an
    unknown user), so that timing does not tell which addresses exist."""
    encoded = password.encode("utf-8", "surrogatepass")
    if password_hash is None:
        _check_sodium(_dummy_hash(), encoded)
        return False
    if _ONE_LANE.match(password_hash):
        return _check_sodium(password_hash, encoded)
    try:
        return _other.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _ONE_LANE.match(password_hash) is None


def _check_sodium(password_hash: str, encoded: bytes) -> bool:
    try:
        return nacl.pwhash.argon2id.verify(password_hash.encode("ascii"), encoded)
    except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
        return False


@functools.cache
def _dummy_hash() -> str:
    return hash_password("pillarbox-dummy-password-for-timing")
