"""ACME (RFC 8555): certificates for acme.names, with HTTP-01 answered here.

The `acme` library (certbot's) speaks the protocol, in a worker thread (it is
synchronous); acme_challenge.py serves the challenge tokens on listen.http; this module decides
when to renew, writes the pair into data_dir/tls/ and asks the server to load
it into every endpoint (`reload_tls`), without a restart.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pillarbox.config import Config
from pillarbox.endpoint.http.env import HTTPEnv

log = logging.getLogger("pillarbox.acme")

ORDER_TIMEOUT = 90.0  # seconds for the CA to validate and issue
MIN_WAIT = 3600.0  # between renewals of a valid certificate, whatever renew_before says
RETRY = (60.0, 300.0, 900.0, 3600.0)  # after failures


def renewal_due(cert_pem: bytes | None, names: list[str], renew_before: float,
                now: datetime.datetime) -> bool:
    """Whether the pair on disk must be replaced: none, self-signed, not
    covering every name, or expiring within renew_before."""
    if not cert_pem:
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        sans = set(cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    except (ValueError, x509.ExtensionNotFound):
        return True
    if cert.issuer == cert.subject or not set(names) <= sans:
        return True
    return cert.not_valid_after_utc - now <= datetime.timedelta(seconds=renew_before)


def _obtain(cfg: Config, challenges: dict[str, str]) -> tuple[bytes, bytes]:
    """One order, start to finish (blocking): (fullchain PEM, key PEM)."""
    import josepy
    from acme import challenges as achallenges
    from acme import client, crypto_util, errors, messages

    state = cfg.data_dir / "acme"
    state.mkdir(mode=0o700, exist_ok=True)
    account_path = state / "account-key.pem"
    if account_path.exists():
        account_key = serialization.load_pem_private_key(account_path.read_bytes(), None)
    else:
        account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(account_path, account_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    jwk = josepy.JWKRSA(key=account_key)
    verify: bool | str = str(cfg.acme.ca_file) if cfg.acme.ca_file else True
    net = client.ClientNetwork(jwk, user_agent="pillarbox", verify_ssl=verify)
    directory = client.ClientV2.get_directory(cfg.acme.directory, net)
    acme = client.ClientV2(directory, net)
    contact = (f"mailto:{cfg.acme.email}",) if cfg.acme.email else ()
    try:
        acme.new_account(messages.NewRegistration(contact=contact,
                                                  terms_of_service_agreed=True))
    except errors.ConflictError as e:  # this key has an account already: use it
        net.account = acme.query_registration(messages.RegistrationResource(
            uri=e.location, body=messages.Registration()))
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    order = acme.new_order(crypto_util.make_csr(key_pem, cfg.acme.names))
    tokens = []
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            challb = next((c for c in authz.body.challenges
                           if isinstance(c.chall, achallenges.HTTP01)), None)
            if challb is None:
                raise RuntimeError(f"the CA offers no http-01 challenge for "
                                   f"{authz.body.identifier.value}")
            response, validation = challb.response_and_validation(jwk)
            token = challb.chall.encode("token")
            challenges[token] = validation
            tokens.append(token)
            acme.answer_challenge(challb, response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        done = acme.poll_and_finalize(order, deadline)
    finally:
        for token in tokens:
            challenges.pop(token, None)
    return done.fullchain_pem.encode(), key_pem


def _write(path: Path, data: bytes) -> None:
    """Atomically, mode 0600 (a key)."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Renewer:
    """The task that keeps a valid certificate in data_dir/tls/."""

    def __init__(self, env: HTTPEnv, reload_tls: Callable[[], Awaitable[str | None]]) -> None:
        self.env = env
        self.reload_tls = reload_tls
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look again now (a reload may have changed [acme])."""
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            cfg = self.env.config()
            wait = None
            if cfg.acme.directory:
                cert_path = cfg.cert_path
                pem = cert_path.read_bytes() if cert_path.exists() else None
                now = datetime.datetime.now(datetime.UTC)
                if renewal_due(pem, cfg.acme.names, cfg.acme.renew_before, now):
                    wait = await self._renew(cfg, failures)
                    failures = 0 if wait == MIN_WAIT else failures + 1
                else:
                    wait = self._until_due(pem, cfg, now)
            self._wake.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    @staticmethod
    def _until_due(pem: bytes, cfg: Config, now: datetime.datetime) -> float:
        cert = x509.load_pem_x509_certificate(pem)
        due = cert.not_valid_after_utc - datetime.timedelta(seconds=cfg.acme.renew_before)
        return max(60.0, (due - now).total_seconds())

    async def _renew(self, cfg: Config, failures: int) -> float:
        try:
            chain, key = await asyncio.to_thread(_obtain, cfg, self.env.challenges)
            await asyncio.to_thread(self._install, cfg, chain, key)
        except Exception as e:  # the CA, the network, the disk: try again later
            log.warning("acme: no certificate names=%s error=%r", ",".join(cfg.acme.names), e)
            return RETRY[min(failures, len(RETRY) - 1)]
        error = await self.reload_tls()
        if error is not None:
            log.warning("acme: the new certificate was not loaded: %s", error)
        log.warning("acme: new certificate names=%s", ",".join(cfg.acme.names))
        return MIN_WAIT

    @staticmethod
    def _install(cfg: Config, chain: bytes, key: bytes) -> None:
        cfg.cert_path.parent.mkdir(parents=True, exist_ok=True)
        _write(cfg.key_path, key)  # key first: a reload between the two refuses the pair
        _write(cfg.cert_path, chain)
