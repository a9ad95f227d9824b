import re
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest

from pillarbox import config, dnsrecords
from pillarbox.modify import dkim_sign

CONFIG = """\
hostname = "mx.example.test"
domains = ["example.test", "other.test"]
[listen]
smtp = ["127.0.0.1:2525"]
submission = ["127.0.0.1:5870"]
submissions = ["127.0.0.1:4650"]
imap = ["127.0.0.1:1430"]
imaps = []
"""


def load(tmp_path: Path, text: str = CONFIG) -> config.Config:
    p = tmp_path / "pillarbox.toml"
    p.write_text(text)
    return config.load(p)


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    c = load(tmp_path)
    made = dnsrecords.ensure_dkim_keys(c)
    assert set(made) == {"example.test", "other.test"}
    assert dnsrecords.ensure_dkim_keys(c) == {}
    return c


def parse(text: str) -> dns.zone.Zone:
    return dns.zone.from_text(text, origin=".", relativize=False, check_origin=False)


def rdatas(zone: dns.zone.Zone, name: str, rtype: str) -> list:
    rds = zone.get_rdataset(dns.name.from_text(name), dns.rdatatype.from_text(rtype))
    assert rds is not None, f"no {rtype} for {name}"
    return list(rds)


def txt(zone: dns.zone.Zone, name: str) -> list[str]:
    return [b"".join(r.strings).decode() for r in rdatas(zone, name, "TXT")]


def test_every_record_kind_parses(cfg: config.Config) -> None:
    text = dnsrecords.records(cfg)
    zone = parse(text)
    for domain in cfg.domains:
        d = domain + "."
        (mx,) = rdatas(zone, d, "MX")
        assert (mx.preference, mx.exchange.to_text()) == (10, "mx.example.test.")
        assert txt(zone, d) == ["v=spf1 mx -all"]
        dkim_names = [n.to_text() for n in zone.nodes if "._domainkey." + d in n.to_text()]
        assert len(dkim_names) == 2
        published = {f"{n}.{d}": v for n, v in dkim_sign.txt_records(cfg.data_dir / "dkim",
                                                                      domain)}
        assert {n: txt(zone, n)[0] for n in dkim_names} == published
        assert {v.split(";")[1].strip() for v in published.values()} == {"k=ed25519", "k=rsa"}
        assert txt(zone, "_dmarc." + d) == [
            f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"]
        (sts,) = txt(zone, "_mta-sts." + d)
        assert re.fullmatch(r"v=STSv1; id=[A-Za-z0-9]{1,32}", sts)
        assert txt(zone, "_smtp._tls." + d) == [f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"]
        srv = {name: rdatas(zone, f"{name}.{d}", "SRV")[0] for name in
               ("_submission._tcp", "_submissions._tcp", "_imap._tcp", "_imaps._tcp")}
        assert srv["_submission._tcp"].port == 587
        assert srv["_submissions._tcp"].port == 465
        assert srv["_imap._tcp"].port == 143
        for name in ("_submission._tcp", "_submissions._tcp", "_imap._tcp"):
            assert srv[name].target.to_text() == "mx.example.test."
        # imaps is off in this config: RFC 6186 "not offered"
        assert srv["_imaps._tcp"].target.to_text() == "."
        assert srv["_imaps._tcp"].port == 0


def test_txt_strings_at_most_255_bytes(cfg: config.Config) -> None:
    zone = parse(dnsrecords.records(cfg))
    longest = 0
    for _, rds in zone.iterate_rdatasets(dns.rdatatype.TXT):
        for r in rds:
            assert all(len(s) <= 255 for s in r.strings)
            longest = max(longest, sum(len(s) for s in r.strings))
    assert longest > 255, "the RSA key record should need more than one string"


def test_txt_strings_split_and_escape() -> None:
    value = "v=DKIM1; " + "A" * 600 + '"\\'
    out = dnsrecords.txt_strings(value)
    zone = parse(f"x.test. 60 IN TXT {out}\n")
    (r,) = rdatas(zone, "x.test.", "TXT")
    assert [len(s) for s in r.strings] == [255, 255, 101]
    assert b"".join(r.strings).decode() == value


def test_comments_policy_and_reminders(cfg: config.Config) -> None:
    text = dnsrecords.records(cfg)
    policy = dnsrecords.mta_sts_policy(cfg)
    assert "mode: testing" in policy  # self-signed pair: enforce would lock senders out
    assert "mx: mx.example.test" in policy
    assert "https://mta-sts.example.test/.well-known/mta-sts.txt" in text
    for line in policy.splitlines():
        assert f";   {line}\n" in text
    assert "mta-sts.example.test. 3600 IN CNAME mx.example.test." in text
    for name in ("autoconfig", "autodiscover", "openpgpkey"):  # the web face (HTTP.md)
        assert f";   {name}.example.test. 3600 IN CNAME mx.example.test.\n" in text
    assert "PTR" in text and "AAAA" in text
    zone = parse(text)
    assert txt(zone, "_mta-sts.example.test.") == [
        f"v=STSv1; id={dnsrecords.mta_sts_id(policy)}"]


def test_mta_sts_id_follows_the_policy(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("")
    (tmp_path / "k.pem").write_text("")
    a = load(tmp_path)
    b = load(tmp_path, CONFIG.replace("[listen]", '[tls]\ncert = "c.pem"\nkey = "k.pem"\n'
                                      "[listen]"))
    pa, pb = dnsrecords.mta_sts_policy(a), dnsrecords.mta_sts_policy(b)
    assert "mode: enforce" in pb
    assert dnsrecords.mta_sts_id(pa) == dnsrecords.mta_sts_id(dnsrecords.mta_sts_policy(a))
    assert dnsrecords.mta_sts_id(pa) != dnsrecords.mta_sts_id(pb)


def test_domain_without_keys_still_prints(tmp_path: Path) -> None:
    c = load(tmp_path)
    text = dnsrecords.records(c)
    assert "no DKIM key for example.test" in text
    zone = parse(text)
    assert not [n for n in zone.nodes if "_domainkey" in n.to_text()]
    assert txt(zone, "_dmarc.other.test.")
