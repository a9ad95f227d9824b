"""The SPF result cache: a sender checked once per RESULT_TTL, temporary
errors never kept, the least recently used result dropped first."""

from __future__ import annotations

from pillarbox.check import spf


def result(r: str = "pass", who: str = "a@sender.test") -> spf.SPFResult:
    return spf.SPFResult(r, "mailfrom", who)


def test_kept_then_expired(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(spf.time, "monotonic", lambda: now[0])
    cache = spf.ResultCache(ttl=60)
    key = ("192.0.2.1", "a@sender.test", "mx.sender.test", "mx.example.test")
    cache.put(key, result())
    now[0] += 59
    assert cache.get(key) == result()
    now[0] += 2
    assert cache.get(key) is None


def test_temperror_not_kept() -> None:
    cache = spf.ResultCache()
    cache.put(("ip",), result("temperror"))
    assert cache.get(("ip",)) is None
    cache.put(("ip",), result("fail"))
    assert cache.get(("ip",)) == result("fail")


def test_least_recently_used_dropped() -> None:
    cache = spf.ResultCache(size=2)
    cache.put(("a",), result(who="a@x.test"))
    cache.put(("b",), result(who="b@x.test"))
    assert cache.get(("a",)) is not None  # a is now the most recent
    cache.put(("c",), result(who="c@x.test"))
    assert cache.get(("b",)) is None
    assert cache.get(("a",)) is not None and cache.get(("c",)) is not None
