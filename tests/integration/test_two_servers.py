"""Two pillarbox servers, one domain each, mailing each other through the test
DNS server (each publishes what `pillarbox dns` says): mail one signs verifies
on the other (dkim, spf and dmarc pass), and a forward through the other's
alias back to the first keeps its DKIM signature valid and carries the
forwarder's ARC set, which the first verifies (arc=pass)."""

from __future__ import annotations

import email
import re

import dkim
import pytest

from .dns_server import DNSServer
from .outbound import fixture_dns, point_mx, submit  # noqa: F401 (fixture_dns: `dns`)
from .support import BOB, HOSTNAME, token

OTHER = "other.test"
CAROL = f"carol@{OTHER}"
FWD = f"fwd@{OTHER}"
CHECKS = '[pipeline.smtp]\nchecks = ["relay", "recipient", "authentication"]\n'


def _results(raw: bytes, host: str) -> str:
    """Our Authentication-Results field's value, unfolded, from the top."""
    msg = email.message_from_bytes(raw)
    for value in msg.get_all("Authentication-Results", []):
        text = " ".join(str(value).split())
        if text.lower().startswith(host + ";"):
            return text
    raise AssertionError(f"no Authentication-Results from {host} in {raw[:1500]!r}")


@pytest.fixture(name="pair")
def fixture_pair(make_server, dns: DNSServer):
    """(a, b): a serves example.test (alice, bob), b serves other.test (carol,
    and fwd@ forwarding to bob@example.test); each one's MX port is the other's
    SMTP port, both resolve through `dns`, both verify mail on their MX."""
    common = {"dns.nameservers": [dns.address], "remote.mta_sts": False,
              "remote.connect_timeout": "3s", "remote.command_timeout": "15s"}
    a = make_server(common, start=False, extra_toml=CHECKS)
    b = make_server({**common, "hostname": f"mx.{OTHER}", "domains": [OTHER]}, start=False,
                    seed=False, extra_toml=CHECKS)
    for srv in (a, b):
        assert dns.load_zone(srv.cli_ok("dns").stdout) > 0
    point_mx(dns, "example.test")
    point_mx(dns, OTHER)
    b.start()
    b.add_user(CAROL)
    b.add_alias(FWD, BOB)
    a.config["remote"]["port"] = b.smtp_port
    a.write_config()
    a.start()
    b.config["remote"]["port"] = a.smtp_port  # known only now: a restart picks it up
    b.write_config()
    b.stop()
    b.start()
    return a, b


def test_mail_signed_by_one_server_passes_every_check_on_the_other(pair):
    a, b = pair
    tok = token()
    submit(a, [CAROL], subject=tok)
    (raw,) = b.wait_for_messages(CAROL, 1, timeout=20)
    assert email.message_from_bytes(raw)["Subject"] == tok
    results = _results(raw, f"mx.{OTHER}")
    assert re.search(r"\bspf=pass smtp\.mailfrom=alice@example\.test\b", results), results
    assert re.search(r"\bdkim=pass header\.d=example\.test header\.s=\d{6}[re]\b", results), \
        results
    assert "dmarc=pass header.from=example.test" in results, results
    assert "arc=none" in results, results


def test_a_forward_through_the_others_alias_keeps_dkim_and_is_arc_sealed(pair):
    a, b = pair
    tok = token()
    submit(a, [FWD], subject=tok)
    (raw,) = a.wait_for_messages(BOB, 1, timeout=30)
    assert email.message_from_bytes(raw)["Subject"] == tok
    # The forwarder sealed it (i=1, its own domain) over what it verified.
    seals = re.findall(rb"(?im)^ARC-Seal:.*?\bi=(\d+)", raw)
    assert seals == [b"1"], raw[:3000]
    aar = " ".join(email.message_from_bytes(raw)["ARC-Authentication-Results"].split())
    assert aar.startswith(f"i=1; mx.{OTHER};") and "dkim=pass" in aar, aar
    # Back home: the original signature still verifies and so does the chain.
    results = _results(raw, HOSTNAME)
    assert re.search(r"\bdkim=pass header\.d=example\.test\b", results), results
    assert "arc=pass" in results, results
    assert "dmarc=pass header.from=example.test" in results, results
    # dkimpy agrees, with the keys both servers published.
    assert dkim.verify(raw, dnsfunc=_dnsfunc(a, b)) is True
    assert dkim.arc_verify(raw, dnsfunc=_dnsfunc(a, b))[0] == dkim.CV_Pass


def _dnsfunc(*servers):
    """dkimpy's key lookup answered from what the servers publish (`pillarbox dns`)."""
    records: dict[str, bytes] = {}
    for srv in servers:
        for line in srv.cli_ok("dns").stdout.splitlines():
            m = re.match(r"(\S+\._domainkey\.\S+?)\.?\s+\d+\s+IN\s+TXT\s+(.*)$", line)
            if m:
                records[m.group(1).lower()] = "".join(
                    re.findall(r'"([^"]*)"', m.group(2))).encode()

    def dnsfunc(name, timeout=5):
        return records.get(name.decode().rstrip(".").lower())

    return dnsfunc
