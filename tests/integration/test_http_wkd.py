"""OpenPGP Web Key Directory (issue 16): the URL GnuPG computes for an address
(gpg-wks-client --print-wkd-url, Debian's GnuPG) gives the key the user
imported; the direct form too; a deleted key is gone at once."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

import pysequoia

from pillarbox.endpoint.http.wkd import local_hash

from .pgp_keys import sequoia_key
from .support import ALICE, BOB, DOMAIN, free_ports
from .test_http import get

WKS_CLIENT = "/usr/lib/gnupg/gpg-wks-client"  # Debian's gnupg brings it


def gpg_url(address: str) -> tuple[str, str]:
    """(host, path?query) of the advanced-form URL GnuPG asks for `address`."""
    out = subprocess.run([WKS_CLIENT, "--print-wkd-url", address], capture_output=True,
                         text=True, check=True, timeout=30).stdout.strip()
    u = urlsplit(out)
    return u.hostname, f"{u.path}?{u.query}"


def test_the_url_gnupg_computes_gives_the_imported_key(make_server, tmp_path):
    (http,) = free_ports(1)
    srv = make_server({"listen.http": [f"127.0.0.1:{http}"]})
    cert = sequoia_key(f"Alice <{ALICE}>").extract_certificate()
    (tmp_path / "alice.key").write_bytes(bytes(cert))
    srv.cli_ok("user", "key", "import", ALICE, tmp_path / "alice.key")
    base = f"http://127.0.0.1:{http}"

    host, path = gpg_url(ALICE.upper())  # GnuPG lower-cases; so must we
    assert host == f"openpgpkey.{DOMAIN}" and f"/{DOMAIN}/hu/{local_hash('alice')}" in path
    status, headers, body = get(base + path, headers={"Host": host})
    assert status == 200, body
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert pysequoia.Cert.from_bytes(body).fingerprint == cert.fingerprint

    # the direct form, asked at the domain itself, with and without l=
    direct = f"{base}/.well-known/openpgpkey/hu/{local_hash('alice')}"
    for url in (direct, direct + "?l=alice"):
        status, _, body = get(url, headers={"Host": DOMAIN})
        assert status == 200 and pysequoia.Cert.from_bytes(body).fingerprint == cert.fingerprint
    for host_ in (DOMAIN, f"openpgpkey.{DOMAIN}"):
        policy = "/.well-known/openpgpkey/policy" if host_ == DOMAIN else \
            f"/.well-known/openpgpkey/{DOMAIN}/policy"
        assert get(base + policy, headers={"Host": host_})[0] == 200

    # no key, a domain not ours, the wrong host for the advanced form, hostile input
    bob_host, bob_path = gpg_url(BOB)
    assert get(base + bob_path, headers={"Host": bob_host})[0] == 404
    assert get(f"{base}/.well-known/openpgpkey/hu/{local_hash('alice')}",
               headers={"Host": "other.test"})[0] == 404
    assert get(base + path, headers={"Host": DOMAIN})[0] == 404
    for bad in ("x" * 32, "ybndrfg8ejkmcpqxot1uwisza345h76", local_hash("alice") + "?l=bob",
                local_hash("alice") + "?l=" + "a" * 500, local_hash("alice") + "?l=%00%ff"):
        assert get(f"{base}/.well-known/openpgpkey/hu/{bad}",
                   headers={"Host": DOMAIN})[0] == 404, bad

    # deleted: gone at the next request
    srv.cli_ok("user", "key", "del", ALICE)
    assert get(base + path, headers={"Host": host})[0] == 404
