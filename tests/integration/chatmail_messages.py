"""Messages for the chatmail E2EE tests: real PGP/MIME from pysequoia and gpg,
and the fakes and exceptions chatmail's filtermail knows (built here, in our
own words)."""

from __future__ import annotations

import base64
import functools
import subprocess
import tempfile
import warnings
from pathlib import Path

BOUNDARY = "b0undary-e2ee"


def armor(data: bytes) -> str:
    b64 = base64.b64encode(data).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN PGP MESSAGE-----\r\n\r\n" + "\r\n".join(lines) + \
        "\r\n-----END PGP MESSAGE-----\r\n"


def pgp_mime(from_addr: str, to_addr: str, armored: str, subject: str = "[...]",
             extra: str = "") -> bytes:
    armored = armored.replace("\r\n", "\n").replace("\n", "\r\n")
    return (f"From: <{from_addr}>\r\nTo: <{to_addr}>\r\nSubject: {subject}\r\n{extra}"
            "Message-ID: <e2ee-test@example.test>\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
            f'\tboundary="{BOUNDARY}"\r\n\r\n'
            f"--{BOUNDARY}\r\nContent-Type: application/pgp-encrypted\r\n"
            "Content-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n"
            f"--{BOUNDARY}\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n"
            "Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n"
            f"{armored}\r\n--{BOUNDARY}--\r\n").encode()


@functools.cache
def _sequoia_cert():
    import pysequoia

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pysequoia.Cert.generate("Bob <bob@example.test>")


def sequoia_armored(text: bytes = b"secret chat text") -> str:
    import pysequoia

    return pysequoia.encrypt(recipients=[_sequoia_cert()], bytes=text).decode()


@functools.cache
def gpg_armored(text: bytes = b"secret chat text") -> str:
    """Encrypted by GnuPG to a fresh key (PKESK + SEIPD, old-format headers)."""
    with tempfile.TemporaryDirectory() as home:
        Path(home).chmod(0o700)
        base = ["gpg", "--homedir", home, "--batch", "--quiet", "--no-tty"]
        subprocess.run([*base, "--passphrase", "", "--quick-gen-key", "Bob <bob@example.test>",
                        "future-default", "default", "never"], check=True, capture_output=True)
        out = subprocess.run([*base, "--trust-model", "always", "--encrypt", "--armor",
                              "-r", "bob@example.test"], input=text, check=True,
                             capture_output=True)
        return out.stdout.decode()


@functools.cache
def gpg_symmetric_armored(text: bytes = b"secret chat text") -> str:
    """GnuPG --symmetric: SKESK (old-format header) + SEIPD."""
    with tempfile.TemporaryDirectory() as home:
        Path(home).chmod(0o700)
        out = subprocess.run(["gpg", "--homedir", home, "--batch", "--quiet", "--no-tty",
                              "--pinentry-mode", "loopback", "--passphrase", "pw",
                              "--symmetric", "--armor"], input=text, check=True,
                             capture_output=True)
        return out.stdout.decode()


def literal_armored() -> str:
    """A literal-data packet (tag 11) where the SEIPD should be: cleartext."""
    body = b"b\x00\x00\x00\x00\x00Hello world!"
    return armor(bytes([0xC0 | 11, len(body)]) + body)


def fake_encrypted(from_addr: str, to_addr: str) -> bytes:
    """The PGP/MIME shape around plain text."""
    return pgp_mime(from_addr, to_addr, "-----BEGIN PGP MESSAGE-----\r\n\r\n"
                    "Hello, this is not encrypted at all\r\n-----END PGP MESSAGE-----\r\n")


def empty_armor(from_addr: str, to_addr: str) -> bytes:
    return pgp_mime(from_addr, to_addr,
                    "-----BEGIN PGP MESSAGE-----\r\n\r\n-----END PGP MESSAGE-----\r\n")


def securejoin(from_addr: str, to_addr: str, kind: str = "vc-request",
               text: str | None = None) -> bytes:
    body = text if text is not None else f"Secure-Join: {kind}"
    return (f"From: <{from_addr}>\r\nTo: <{to_addr}>\r\nSubject: Message from {from_addr}\r\n"
            f"Chat-Version: 1.0\r\nSecure-Join: {kind}\r\nSecure-Join-Invitenumber: x7Gq\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"sj\"\r\n\r\n"
            "--sj\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body}\r\n\r\n--sj--\r\n").encode()


def setup_message(from_addr: str, to_addr: str) -> bytes:
    """An Autocrypt Setup Message (its payload is itself encrypted, as a file)."""
    return (f"From: <{from_addr}>\r\nTo: <{to_addr}>\r\nSubject: Autocrypt Setup Message\r\n"
            "Autocrypt-Setup-Message: v1\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"asm\"\r\n\r\n"
            "--asm\r\nContent-Type: text/plain\r\n\r\nThis message holds your key.\r\n"
            "--asm\r\nContent-Type: application/autocrypt-setup\r\n"
            "Content-Disposition: attachment; filename=\"autocrypt-setup-message.html\"\r\n\r\n"
            "<html><body><pre>-----BEGIN PGP MESSAGE-----\r\n...\r\n"
            "-----END PGP MESSAGE-----</pre></body></html>\r\n--asm--\r\n").encode()


def mdn(from_addr: str, to_addr: str) -> bytes:
    return (f"From: <{from_addr}>\r\nTo: <{to_addr}>\r\nSubject: Receipt Notification\r\n"
            "Chat-Version: 1.0\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; "
            "report-type=disposition-notification; boundary=\"mdn\"\r\n\r\n"
            "--mdn\r\nContent-Type: text/plain\r\n\r\nThis is a receipt notification.\r\n"
            "--mdn\r\nContent-Type: message/disposition-notification\r\n\r\n"
            "Reporting-UA: Delta Chat\r\nOriginal-Message-ID: <x@example.test>\r\n"
            "Disposition: manual-action/MDN-sent-automatically; displayed\r\n--mdn--\r\n"
            ).encode()


def mailer_daemon_report(daemon: str, to_addr: str) -> bytes:
    return (f"From: Mail Delivery System <{daemon}>\r\nTo: <{to_addr}>\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
            " boundary=\"dsn\"\r\n\r\n--dsn\r\nContent-Type: text/plain\r\n\r\n"
            "Your message could not be delivered.\r\n--dsn\r\n"
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n"
            "\r\nFinal-Recipient: rfc822; nobody@example.net\r\nAction: failed\r\n"
            "Status: 5.1.1\r\n--dsn--\r\n").encode()


def plain(from_addr: str, to_addr: str, text: str = "Hello in cleartext") -> bytes:
    return (f"From: <{from_addr}>\r\nTo: <{to_addr}>\r\nSubject: hi\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{text}\r\n").encode()
