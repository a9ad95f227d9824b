"""[http] and [acme] settings (issue 16), and when ACME renews."""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pillarbox import config, dnsrecords
from pillarbox.endpoint.http.acme import renewal_due

BASE = 'hostname = "mx.example.org"\ndomains = ["example.org"]\n'


def load(extra: str) -> config.Config:
    return config.from_dict(tomllib.loads(BASE + extra), Path("/tmp/pillarbox.toml"), False)


@pytest.mark.parametrize("extra, key", [
    ('[http]\nmetrics_token = "short"', "http.metrics_token"),
    ('[http]\nclient_ports = "random"', "http.client_ports"),
    ('[http]\nmta_sts_mode = "on"', "http.mta_sts_mode"),
    ('[http]\nmta_sts_max_age = "1h"', "http.mta_sts_max_age"),
    ('[http]\nmax_request_size = "1G"', "http.max_request_size"),
    ('[http]\nnope = 1', "http.nope"),
    ('[acme]\ndirectory = "http://ca.test/dir"', "acme.directory"),
    ('[acme]\nnames = ["not a name"]', "acme.names"),
    ('[acme]\ndirectory = "https://ca.test/dir"\n[tls]\ncert = "c.pem"\nkey = "k.pem"',
     "acme.directory"),
])
def test_bad_values_are_refused_with_their_key(extra, key):
    with pytest.raises(config.ConfigError) as e:
        load(extra)
    assert e.value.key == key


def test_defaults_and_the_policy_they_make():
    cfg = load("")
    assert cfg.acme.names == ["mx.example.org"] and cfg.acme.directory == ""
    assert cfg.http.metrics_token == "" and cfg.listen["metrics"] == []
    assert "mode: testing" in dnsrecords.mta_sts_policy(cfg)
    acme = load('[acme]\ndirectory = "https://ca.test/dir"')
    assert "mode: enforce" in dnsrecords.mta_sts_policy(acme)
    assert (dnsrecords.mta_sts_id(dnsrecords.mta_sts_policy(acme))
            != dnsrecords.mta_sts_id(dnsrecords.mta_sts_policy(cfg)))


def _cert(names: list[str], days: int, self_signed: bool = False) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer = subject if self_signed else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Some CA")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_renewal_due():
    now = datetime.datetime.now(datetime.UTC)
    month = 30 * 86400
    assert renewal_due(None, ["a.test"], month, now)
    assert renewal_due(b"not a certificate", ["a.test"], month, now)
    assert renewal_due(_cert(["a.test"], 90, self_signed=True), ["a.test"], month, now)
    assert renewal_due(_cert(["a.test"], 90), ["a.test", "b.test"], month, now)
    assert renewal_due(_cert(["a.test"], 20), ["a.test"], month, now)
    assert not renewal_due(_cert(["a.test", "b.test"], 90), ["a.test"], month, now)
