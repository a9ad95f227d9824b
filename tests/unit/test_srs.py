"""srs: SRS0 addresses round-trip, and forged or old ones do not."""

from __future__ import annotations

import re
import stat

from pillarbox import srs

DAY = 86400.0


def test_round_trip_case_and_age() -> None:
    s = srs.Srs(b"k" * 32)
    now = 1000 * DAY + 5
    a = s.forward("Some.One@Sender.example", "example.org", now=now)
    assert re.fullmatch(r"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=Sender\.example=Some\.One@example\.org",
                        a)
    assert s.reverse(a, now=now) == "Some.One@Sender.example"
    assert s.reverse(a.lower(), now=now) == "some.one@sender.example"
    assert s.reverse(a, now=now + srs.MAX_AGE_DAYS * DAY) is not None
    assert s.reverse(a, now=now + (srs.MAX_AGE_DAYS + 1) * DAY) is None
    assert s.reverse(a, now=now - DAY) is None  # from the future
    assert srs.Srs(b"other").reverse(a, now=now) is None
    # The timestamp wraps at 1024 days.
    b = s.forward("x@y.example", "example.org", now=1023 * DAY)
    assert s.reverse(b, now=1025 * DAY) == "x@y.example"
    assert s.forward("x" * 60 + "@y.example", "example.org") is None
    for bad in ("SRS0=@example.org", "srs0=a=b=c@example.org", "alice@example.org",
                "SRS0=abcd=\u00e9\u00e9=y.example=x@example.org"):
        assert s.reverse(bad) is None, bad


def test_key_is_made_once_with_mode_0600(tmp_path) -> None:
    k = srs.load_key(tmp_path)
    assert len(k) == 64 and srs.load_key(tmp_path) == k
    assert stat.S_IMODE((tmp_path / srs.KEY_NAME).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [srs.KEY_NAME]
