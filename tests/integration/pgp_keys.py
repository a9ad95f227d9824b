"""Test keys for encryption at rest: made with pysequoia and with GnuPG (gpg).

GnuPG 2.2 cannot read every v6/SEIPDv2 message, so a test that decrypts
with gpg uses a key gpg made (v4)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pysequoia


@dataclass
class GpgHome:
    path: Path

    def run(self, *args: str, input: bytes | None = None) -> bytes:
        env = {**os.environ, "GNUPGHOME": str(self.path)}
        p = subprocess.run(["gpg", "--batch", "--yes", "--passphrase", "", "--pinentry-mode",
                            "loopback", *args], input=input, capture_output=True, env=env,
                           timeout=60)
        if p.returncode != 0:
            raise AssertionError(f"gpg {args} failed: {p.stderr.decode(errors='replace')}")
        return p.stdout

    def fingerprint(self, uid: str) -> str:
        out = self.run("--with-colons", "--list-keys", uid).decode()
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))

    def export(self, uid: str, armor: bool = True) -> bytes:
        return self.run(*(["--armor"] if armor else []), "--export", uid)

    def decrypt(self, data: bytes) -> bytes:
        return self.run("--decrypt", input=data)


def gpg_home(tmp: Path) -> GpgHome:
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    return GpgHome(tmp)


def gpg_key(home: GpgHome, uid: str, encrypting: bool = True, *extra: str) -> str:
    """An Ed25519 key with (unless not `encrypting`) a Cv25519 encryption subkey."""
    home.run(*extra, "--quick-gen-key", uid, "ed25519", "cert,sign", "never")
    fpr = home.fingerprint(uid)
    if encrypting:
        home.run(*extra, "--quick-add-key", fpr, "cv25519", "encr", "never")
    return fpr


def sequoia_key(uid: str, v6: bool = False) -> pysequoia.Tsk:
    return pysequoia.Tsk.generate(uid, profile=pysequoia.Profile.RFC9580 if v6 else None)


def sequoia_decrypt(tsk: pysequoia.Tsk, data: bytes) -> bytes:
    out = pysequoia.decrypt(data, tsk.decryptor()).bytes
    assert out is not None
    return out
