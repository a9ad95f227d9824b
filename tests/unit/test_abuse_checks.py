"""The door checks' parts that need no server: DNSBL query names, the rate
buckets and their bound, the greylist table's decisions and its bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from pillarbox.check import dnsbl, greylist, helo, message_rate


def test_dnsbl_query_names_reverse_ipv4_octets_and_ipv6_nibbles() -> None:
    assert dnsbl.query_name("192.0.2.9", "zen.example") == "9.2.0.192.zen.example"
    assert dnsbl.query_name("::ffff:192.0.2.9", "zen.example") == "9.2.0.192.zen.example"
    six = dnsbl.query_name("2001:db8::1", "zen.example")
    assert six == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.zen.example"
    assert dnsbl.query_name("not-an-ip", "zen.example") is None


@pytest.mark.parametrize(("zones", "why"), [
    ([], "zones: name at least one zone"),
    (["nodot"], "zones[0].zone"),
    ([{"zone": "a.test", "codes": ["127.0.0.9-127.0.0.2"]}], "ends before it starts"),
    ([{"zone": "a.test", "bogus": 1}], "unknown key bogus"),
])
def test_dnsbl_refuses_bad_zones(zones, why) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        dnsbl._validate({"zones": zones, "timeout": "2s", "quarantine_score": 0})


def test_buckets_allow_a_burst_then_the_rate_and_stay_bounded() -> None:
    b = message_rate.Buckets(rate=60, burst=3, max_keys=100)
    assert [b.take("k", 0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take("k", 1.0)  # one a second comes back
    assert not b.take("k", 1.0)
    for i in range(1000):
        b.take(f"ip{i}", 2.0)
    assert len(b) == 100


def test_helo_literal_and_names() -> None:
    class Cfg:
        hostname, domains = "mx.example.org", ["example.org"]
    opts = {o.name: o.default for o in helo.KIND.options}
    c = helo.HeloCheck("h", opts, Cfg())
    assert c.fault("[IPv6:2001:db8::1]", "2001:db8::1") is None
    assert c.fault("[192.0.2.1]", "::ffff:192.0.2.1") is None
    assert c.fault("mail.example.net.", "192.0.2.1") is None
    assert c.fault("host.123", "192.0.2.1").text.endswith("fully qualified domain name")
    assert c.fault("mx.example.org", "192.0.2.1").text.endswith("our own name, not yours")


def test_greylist_table_decides_and_stays_bounded(tmp_path: Path) -> None:
    g = greylist.Greylist(tmp_path / "g.sqlite", delay=300, expire=3600, known_for=86400,
                          max_entries=1000)
    net = greylist.network_of("192.0.2.77")
    assert net == "192.0.2.0/24"
    assert greylist.network_of("2001:db8:1:2:3::4") == "2001:db8:1:2::/64"
    assert not g.passes(net, "a@remote.test", "x@example.org", 0)
    assert not g.passes(net, "a@remote.test", "x@example.org", 100)  # before the delay
    assert g.passes(net, "a@remote.test", "x@example.org", 400)
    assert g.passes(net, "b@REMOTE.test", "y@example.org", 500)  # a known sender domain
    assert not g.passes(net, "a@other.test", "x@example.org", 500)
    assert not g.passes(net, "a@other.test", "x@example.org", 5000)  # expired: starts over
    for i in range(3000):
        g.passes(f"198.51.{i // 256}.0/24", f"s{i}@spam.test", "x@example.org", 6000 + i)
    g.passes(net, "c@remote.test", "x@example.org", 6000 + 3000 + greylist.PRUNE_EVERY + 1)
    db = g._conn()
    assert db.execute("SELECT count(*) FROM triplet").fetchone()[0] <= 1001
    g.close()
