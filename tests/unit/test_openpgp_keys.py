"""Key checks for encryption at rest (directory/openpgp.py, directory/keys.py):
each class of unusable key is refused with its exact one-line reason."""

from __future__ import annotations

import pysequoia
import pytest
from tests.integration.pgp_keys import gpg_home, gpg_key

from pillarbox.directory import openpgp
from pillarbox.directory.keys import Keys
from pillarbox.store.sqlite import Database

ALICE = "alice@example.test"
FAKED = ("--faked-system-time", "20200101T000000!")


def refusal(data: bytes, address: str = ALICE) -> str:
    with pytest.raises(openpgp.KeyRefused) as e:
        openpgp.inspect(data, address)
    return str(e.value)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return gpg_home(tmp_path_factory.mktemp("gnupg") / "home")


def test_expired_key(home):
    home.run(*FAKED, "--quick-gen-key", f"Old <{ALICE}>", "default", "default", "1d")
    fpr = home.fingerprint("Old")
    assert refusal(home.export("Old")) == f"key {fpr} expired on 2020-01-02"


def test_revoked_key():
    tsk = pysequoia.Tsk.generate(ALICE)
    cert = tsk.extract_certificate()
    revoked = cert.merge(pysequoia.Cert.from_bytes(bytes(cert) + bytes(cert.revoke(
        tsk.certifier()))))
    assert refusal(bytes(revoked)) == f"key {cert.fingerprint.upper()} is revoked"


def test_no_encryption_subkey(home):
    fpr = gpg_key(home, f"Signer <{ALICE}>", False)
    assert refusal(home.export("Signer")) == \
        f"key {fpr} has no valid encryption-capable subkey"


def test_only_encryption_subkey_expired(home):
    fpr = gpg_key(home, f"Sub <{ALICE}>", False, *FAKED)
    home.run(*FAKED, "--quick-add-key", fpr, "cv25519", "encr", "1d")
    assert refusal(home.export("Sub")) == f"key {fpr} has no valid encryption-capable subkey"


def test_no_user_id_with_the_address():
    cert = pysequoia.Tsk.generate("Someone <someone@elsewhere.test>").extract_certificate()
    assert refusal(bytes(cert)) == (f"key {cert.fingerprint.upper()} has no user ID with "
                                    f"<{ALICE}> (use --any-uid to import it anyway)")
    assert openpgp.inspect(bytes(cert), ALICE, any_uid=True)[1].fingerprint == cert.fingerprint


def test_secret_key_and_garbage_and_two_keys():
    tsk = pysequoia.Tsk.generate(ALICE)
    assert refusal(bytes(tsk)) == ("this is a secret key: import the public key only "
                                   "(gpg --export ADDRESS)")
    assert refusal(b"hello") == "not an OpenPGP public key (neither armored nor binary)"
    two = bytes(tsk.extract_certificate()) + bytes(
        pysequoia.Tsk.generate(ALICE).extract_certificate())
    assert refusal(two) == "expected one OpenPGP certificate, found 2"


@pytest.mark.parametrize("suite", ["RSA2k", "Cv25519"])
def test_rsa_and_curve25519_v4_and_v6_keys_are_accepted(tmp_path, suite):
    keys = Keys(Database(tmp_path / "db"))
    for profile in (pysequoia.Profile.RFC4880, pysequoia.Profile.RFC9580):
        cert = pysequoia.Tsk.generate(f"A <{ALICE}>", profile=profile,
                                      cipher_suite=getattr(pysequoia.CipherSuite, suite)
                                      ).extract_certificate()
        info = keys.put(ALICE.upper(), str(cert).encode())
        assert info.version == (6 if profile == pysequoia.Profile.RFC9580 else 4)
        assert keys.get(ALICE) == bytes(cert)
        assert keys.info(ALICE).fingerprint == cert.fingerprint
    assert keys.delete(ALICE) and keys.get(ALICE) is None and not keys.delete(ALICE)
