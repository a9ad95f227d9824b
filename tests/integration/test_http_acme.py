"""ACME (issue 16): a certificate from Pebble (Let's Encrypt's test CA, Debian's
`pebble`), obtained with HTTP-01 answered by pillarbox, then renewed; SMTP
STARTTLS, IMAPS and HTTPS present each new certificate without a restart."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .dns_server import DNSServer
from .support import HOSTNAME, free_ports, port_open, wait_until

TIMEOUT = 60  # Pebble validates and issues in well under a second; a busy machine


def _pebble_tls(dir: Path) -> Path:
    """A CA and Pebble's own HTTPS pair from it; returns the CA file."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pillarbox test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    (dir / "pebble-cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (dir / "pebble-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ca_file = dir / "test-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_file


@pytest.fixture
def pebble(tmp_path):
    """A running Pebble: (directory URL, CA file, its HTTP-01 port, dns server)."""
    exe = shutil.which("pebble")
    assert exe, "pebble is not installed: scripts/ensure-system-packages installs it"
    ca_file = _pebble_tls(tmp_path)
    acme_port, mgmt_port, http01_port = free_ports(3)
    config = {"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{mgmt_port}",
        "certificate": str(tmp_path / "pebble-cert.pem"),
        "privateKey": str(tmp_path / "pebble-key.pem"),
        "httpPort": http01_port, "tlsPort": free_ports(1)[0],
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}
    (tmp_path / "pebble.json").write_text(json.dumps(config))
    with DNSServer() as dns:
        dns.a(HOSTNAME, "127.0.0.1")
        log = open(tmp_path / "pebble.log", "wb")
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        proc = subprocess.Popen([exe, "-config", str(tmp_path / "pebble.json"),
                                 "-dnsserver", dns.address], stdout=log, stderr=log, env=env)
        try:
            wait_until(lambda: port_open(acme_port) or proc.poll() is not None, 20,
                       "pebble to listen")
            assert proc.poll() is None, (tmp_path / "pebble.log").read_text()
            yield f"https://127.0.0.1:{acme_port}/dir", ca_file, http01_port, dns
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
            print("--- pebble log (tail) ---")
            print("\n".join((tmp_path / "pebble.log").read_text().splitlines()[-30:]))


def _ctx() -> ssl.SSLContext:
    return ssl._create_unverified_context()


def starttls_cert(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        with _ctx().wrap_socket(s, server_hostname=HOSTNAME) as t:
            return t.getpeercert(binary_form=True)


def implicit_cert(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s, \
            _ctx().wrap_socket(s, server_hostname=HOSTNAME) as t:
        return t.getpeercert(binary_form=True)


def served(srv) -> set[bytes]:
    return {starttls_cert(srv.smtp_port), starttls_cert(srv.submission_port),
            implicit_cert(srv.imaps_port), implicit_cert(srv.https_port)}


def pebble_issued(der: bytes) -> x509.Certificate | None:
    cert = x509.load_der_x509_certificate(der)
    return cert if "Pebble" in cert.issuer.rfc4514_string() else None


def test_acme_obtains_and_renews_and_every_endpoint_presents_it(make_server, pebble):
    directory, ca_file, http01_port, dns = pebble
    (https,) = free_ports(1)
    srv = make_server({"listen.http": [f"127.0.0.1:{http01_port}"],
                       "listen.https": [f"127.0.0.1:{https}"],
                       "dns.nameservers": [dns.address],
                       "acme": {"directory": directory, "ca_file": str(ca_file),
                                "email": "postmaster@example.test"}})
    srv.https_port = https

    def one_pebble_cert(exclude: bytes | None = None):
        certs = served(srv)
        if len(certs) != 1:  # some endpoint still on the old pair: not yet
            return None
        (der,) = certs
        return der if der != exclude and pebble_issued(der) else None

    first = wait_until(one_pebble_cert, TIMEOUT, "the ACME certificate on every endpoint")
    cert = pebble_issued(first)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [HOSTNAME]
    pem = (srv.data_dir / "tls" / "cert.pem").read_bytes()
    assert x509.load_pem_x509_certificates(pem)[0].public_bytes(
        serialization.Encoding.DER) == first
    pid = srv.pid

    # renewal: within renew_before of the end, a new one, loaded without a restart
    srv.config["acme"]["renew_before"] = "100000d"
    srv.write_config()
    srv.cli_ok("reload")
    second = wait_until(lambda: one_pebble_cert(exclude=first), TIMEOUT,
                        "the renewed certificate on every endpoint")
    assert pebble_issued(second).serial_number != cert.serial_number
    assert srv.pid == pid and srv.running()
