"""The login throttle's keys and windows (the protocol behaviour is in
tests/integration/test_login_throttle.py)."""

from __future__ import annotations

from pillarbox.check import ratelimit
from pillarbox.check.ratelimit import WindowCounter, source_of


def test_ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4():
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:ffff::9")
    assert source_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("fe80::1%eth0") == "fe80::/64"
    assert source_of("not an address" * 20) == ("not an address" * 20)[:64]


def test_lockout_starts_at_the_limit_and_ends_after_its_time():
    c = WindowCounter(limit=3, window=60, lockout=10)
    assert not c.add("k", 0) and not c.add("k", 1)
    assert c.add("k", 2)  # the third failure starts the lockout
    assert c.locked("k", 11.9) and not c.locked("k", 12.1)
    assert c.count("k", 61.5) == 1  # the first two left the window
    assert not c.add("k", 70)  # two in the window again: no lockout


def test_tables_are_bounded(monkeypatch):
    monkeypatch.setattr(ratelimit, "MAX_KEYS", 100)
    c = WindowCounter(limit=1, window=60, lockout=10)
    for i in range(1000):
        c.add(f"10.0.{i // 256}.{i % 256}", 0)
    assert len(c._events) == 100 and len(c._locked) == 100
    assert c.locked("10.0.3.231", 1)  # the newest are kept
