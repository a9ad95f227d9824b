"""DKIM signing (RFC 6376, RFC 8463) of mail our users send and of our bounces.

Keys live in `data_dir/dkim/<domain>/<selector>.key`, one file per key, mode 0600:

- ed25519: the base64 of the 32-byte seed (the format of dkimpy's `dknewkey`),
  selector "<YYYYMM>e";
- RSA-2048: a PEM private key (PKCS#1 as written here; PKCS#8 is read too),
  selector "<YYYYMM>r".

Every message is signed twice, with the newest key of each kind (by selector
name): receivers that know ed25519-sha256 check that one, the others rsa-sha256.
Both signatures use relaxed/relaxed canonicalization and oversign From, To,
Subject and Date (each is listed once more than it occurs, so that nobody can
add one after signing without breaking the signature).

Signing is CPU work (about 2 ms a message for both signatures): call
`DKIMSigner.sign` from a worker thread (`asyncio.to_thread`), never on the event
loop. One `DKIMSigner` may be shared by any number of threads. For large
messages prefer a worker process (`sign_with`): dkimpy's body canonicalization
holds the GIL, so even from a thread a 25 MB message stalls the loop ~0.5 s.

dkimpy does the RSA arithmetic in pure Python (about 18 ms per signature); for
our own keys the RSA step is handed to `cryptography` (OpenSSL) instead, see
`_install_fast_rsa`. Everything else (canonicalization, header selection,
folding, the ed25519 signature) is dkimpy's.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pillarbox.fileio import write_new

log = logging.getLogger("pillarbox.dkim")

RSA_BITS = 2048

#: Header fields signed when present (RFC 6376 5.4.1's list, plus Autocrypt,
#: which end-to-end-encrypting clients rely on).
SIGN_HEADERS = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "resent-date", "resent-from", "resent-sender", "resent-to",
    "resent-cc", "resent-message-id", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner",
    "list-archive", "autocrypt",
)
#: Header fields signed once more than they occur (also when absent).
OVERSIGN = ("from", "to", "subject", "date")

_SELECTOR_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_ALGORITHM = {"ed25519": b"ed25519-sha256", "rsa": b"rsa-sha256"}
_SUFFIX = {"ed25519": "e", "rsa": "r"}


class DKIMKeyError(Exception):
    pass


@dataclass(frozen=True)
class DKIMKey:
    selector: str
    kind: str            # "ed25519" | "rsa"
    private: bytes       # in the form dkimpy's sign() takes
    public_b64: str      # the p= value

    @property
    def txt_value(self) -> str:
        k = "ed25519" if self.kind == "ed25519" else "rsa"
        return f"v=DKIM1; k={k}; p={self.public_b64}"


def ascii_domain(domain: str) -> str:
    """The A-label form used in d= and in DNS names."""
    d = domain.strip().rstrip(".").lower()
    return d if d.isascii() else d.encode("idna").decode("ascii")


def domain_dir(dkim_dir: Path, domain: str) -> Path:
    return Path(dkim_dir) / domain.strip().rstrip(".").lower()


# -- fast RSA -------------------------------------------------------------------

class _RSAPem(bytes):
    """A PEM private key (what dkimpy's sign() takes) that also carries the loaded key."""

    key: rsa.RSAPrivateKey


class _LoadedRSA(dict):
    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        super().__init__()
        self.key = key


def _install_fast_rsa() -> bool:
    """Let dkimpy sign with OpenSSL when handed an `_RSAPem`; all else is unchanged.

    dkimpy's sign() parses the PEM with `parse_pem_private_key` and gen_header()
    signs with `RSASSA_PKCS1_v1_5_sign(hash, pk)`, both looked up in the `dkim`
    module. The wrappers take over only for our own key objects and call the
    originals for anything else, so other users of dkimpy see no change.
    """
    parse, rsa_sign = (getattr(dkim, "parse_pem_private_key", None),
                       getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None))
    if parse is None or rsa_sign is None:
        return False  # another dkimpy layout: stay on the pure-Python path
    if getattr(rsa_sign, "_pillarbox", False):
        return True

    def parse_pem_private_key(data):
        if isinstance(data, _RSAPem):
            return _LoadedRSA(data.key)
        return parse(data)

    def RSASSA_PKCS1_v1_5_sign(hash, private_key):  # noqa: N802 (dkimpy's name)
        if isinstance(private_key, _LoadedRSA) and hash.name == "sha256":
            return private_key.key.sign(hash.digest(), padding.PKCS1v15(),
                                        Prehashed(hashes.SHA256()))
        return rsa_sign(hash, private_key)

    RSASSA_PKCS1_v1_5_sign._pillarbox = True
    dkim.parse_pem_private_key = parse_pem_private_key
    dkim.RSASSA_PKCS1_v1_5_sign = RSASSA_PKCS1_v1_5_sign
    return True


_FAST_RSA = _install_fast_rsa()


# -- keys ---------------------------------------------------------------------

def parse_key(selector: str, data: bytes) -> DKIMKey:
    """Read one key file's content; raise DKIMKeyError if it is not a usable key."""
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise DKIMKeyError(f"not a PEM private key without password: {e}") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 1024:
                raise DKIMKeyError(f"RSA key of {key.key_size} bits is too short")
            private = _RSAPem(key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.TraditionalOpenSSL,
                                                serialization.NoEncryption()))
            private.key = key
            spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
            return DKIMKey(selector, "rsa", private, base64.b64encode(spki).decode())
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return _ed25519_key(selector, key)
        raise DKIMKeyError(f"unsupported key type {type(key).__name__}")
    try:
        seed = base64.b64decode(data, validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise DKIMKeyError("neither a PEM key nor a base64 ed25519 seed")
    return _ed25519_key(selector, ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def _ed25519_key(selector: str, key: ed25519.Ed25519PrivateKey) -> DKIMKey:
    seed = key.private_bytes_raw()
    pub = key.public_key().public_bytes_raw()
    return DKIMKey(selector, "ed25519", base64.b64encode(seed),
                   base64.b64encode(pub).decode())


def load_keys(dkim_dir: Path, domain: str) -> list[DKIMKey]:
    """Every readable key of the domain, sorted by selector; broken files are logged."""
    d = domain_dir(dkim_dir, domain)
    try:
        names = sorted(p.name for p in d.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = []
    for name in names:
        selector, dot, ext = name.rpartition(".")
        if not dot or ext != "key" or not _SELECTOR_RE.match(selector):
            continue
        path = d / name
        try:
            keys.append(parse_key(selector, path.read_bytes()))
        except DKIMKeyError as e:
            log.warning("dkim key unusable path=%s error=%r", path, str(e))
        except OSError as e:
            log.warning("dkim key unreadable path=%s error=%r", path, e.strerror or str(e))
    return keys


def _newest_per_kind(keys: list[DKIMKey]) -> list[DKIMKey]:
    """The signing keys: the highest selector of each kind, ed25519 first."""
    best: dict[str, DKIMKey] = {}
    for k in keys:
        if k.kind not in best or k.selector > best[k.kind].selector:
            best[k.kind] = k
    return [best[kind] for kind in ("ed25519", "rsa") if kind in best]


def _new_key_file(kind: str) -> bytes:
    if kind == "ed25519":
        seed = ed25519.Ed25519PrivateKey.generate().private_bytes_raw()
        return base64.b64encode(seed) + b"\n"
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def generate_keys(dkim_dir: Path, domain: str) -> list[str]:
    """Make the domain's ed25519 and RSA-2048 keys unless it has a key of that kind.

    Returns the selectors created (empty when both kinds existed). Existing files
    are never overwritten.
    """
    dkim_dir = Path(dkim_dir)
    dkim_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    d = domain_dir(dkim_dir, domain)
    d.mkdir(mode=0o700, exist_ok=True)
    have = {k.kind for k in load_keys(dkim_dir, domain)}
    month = time.strftime("%Y%m", time.gmtime())
    created = []
    for kind in ("ed25519", "rsa"):
        if kind in have:
            continue
        selector = month + _SUFFIX[kind]
        if write_new(d / f"{selector}.key", _new_key_file(kind)):
            created.append(selector)
    return created


def txt_records(dkim_dir: Path, domain: str) -> list[tuple[str, str]]:
    """[(name relative to the domain, TXT value)] for every key of the domain."""
    return [(f"{k.selector}._domainkey", k.txt_value) for k in load_keys(dkim_dir, domain)]


# -- signing ------------------------------------------------------------------

def include_headers(header_names: list[bytes]) -> list[bytes]:
    """The h= list for a message whose header field names are `header_names`."""
    counts: dict[bytes, int] = {}
    for name in header_names:
        n = name.strip().lower()
        counts[n] = counts.get(n, 0) + 1
    out: list[bytes] = []
    for name in SIGN_HEADERS:
        b = name.encode()
        out += [b] * (counts.get(b, 0) + (1 if name in OVERSIGN else 0))
    return out


class DKIMSigner:
    """Signs with the keys in `dkim_dir` (config.dkim_dir). Thread-safe.

    Keys are read once per domain and cached; the cache notices keys added to or
    removed from a domain's directory (its mtime changes), so no restart is needed.
    """

    def __init__(self, dkim_dir: Path) -> None:
        self.dkim_dir = Path(dkim_dir)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, list[DKIMKey]]] = {}

    def keys(self, domain: str) -> list[DKIMKey]:
        """The keys `sign` uses for the domain: the newest of each kind."""
        name = domain.strip().rstrip(".").lower()
        try:
            mtime = domain_dir(self.dkim_dir, name).stat().st_mtime_ns
        except OSError:
            mtime = -1
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == mtime:
                return hit[1]
        keys = _newest_per_kind(load_keys(self.dkim_dir, name)) if mtime != -1 else []
        with self._lock:
            self._cache[name] = (mtime, keys)
        return keys

    def sign(self, message: bytes, domain: str) -> bytes:
        """The DKIM-Signature header fields (CRLF line ends) to prepend to `message`.

        `message` is the whole message, header and body, as it will be sent
        (CRLF line ends). Returns b"" when the domain has no keys; a message
        dkimpy cannot parse is logged and left unsigned (b"").
        """
        keys = self.keys(domain)
        if not keys:
            return b""
        d_tag = ascii_domain(domain).encode()
        try:
            signer = dkim.DKIM(message, linesep=b"\r\n", logger=log)
        except (dkim.DKIMException, IndexError, ValueError) as e:
            log.warning("dkim sign skipped domain=%s error=%r", domain, str(e))
            return b""
        h = include_headers([name for name, _ in signer.headers])
        out = []
        for key in keys:
            try:
                out.append(signer.sign(key.selector.encode(), d_tag, key.private,
                                       signature_algorithm=_ALGORITHM[key.kind],
                                       canonicalize=(b"relaxed", b"relaxed"),
                                       include_headers=h))
            except (dkim.DKIMException, IndexError, ValueError) as e:
                log.warning("dkim sign failed domain=%s selector=%s error=%r",
                            domain, key.selector, str(e))
        return b"".join(out)


_process_signers: dict[str, DKIMSigner] = {}


def sign_with(dkim_dir: Path | str, message: bytes, domain: str) -> bytes:
    """`DKIMSigner(dkim_dir).sign(message, domain)` with one cached signer per process.

    For a `concurrent.futures.ProcessPoolExecutor`: dkimpy's canonicalization of
    a large body holds the GIL for long stretches (a 25 MB message stalls the
    event loop about half a second even from a thread), a worker process does not.
    """
    key = str(dkim_dir)
    signer = _process_signers.get(key)
    if signer is None:
        signer = _process_signers.setdefault(key, DKIMSigner(Path(dkim_dir)))
    return signer.sign(message, domain)


# -- as a module (kind "dkim_sign") --------------------------------------------------

from collections.abc import AsyncIterator  # noqa: E402

from pillarbox import module  # noqa: E402


class _State(module.BaseModifierState):
    def __init__(self, signing, envelope: module.Envelope) -> None:
        self.signing, self.envelope = signing, envelope

    def body(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes] | None:
        if self.signing is None or not self.envelope.source.auth:
            return None  # only our own users' mail is signed
        return self._signed(chunks)

    async def _signed(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        message = b"".join([c async for c in chunks])  # a signature covers it all
        end = message.find(b"\r\n\r\n")
        domain = self.signing.domain_for(message[: end + 2] if end >= 0 else message,
                                         self.envelope.mail_from)
        signature = b""
        if domain is not None:
            try:
                signature = await self.signing.sign(message, domain)
            except Exception:  # unsigned mail beats lost mail
                signature = b""
        yield signature + message


class DKIMSignModifier:
    def __init__(self, name: str, signing) -> None:
        self.name, self.signing = name, signing

    def state(self, envelope: module.Envelope) -> _State:
        return _State(self.signing, envelope)


KIND = module.Kind(
    name="dkim_sign", role="modifier", options=(),
    make=lambda name, options, env: DKIMSignModifier(name, env.signing),
    help="Signs authenticated users' mail with the DKIM key of the From domain "
         "(data_dir/dkim/); other mail passes unsigned.")
