"""modify/arc.py: what goes into the ARC-Authentication-Results, and when no
seal is made. The keys are made in a temporary directory and served to dkimpy
from a dict; the integration test (tests/integration/test_arc_seal.py) does the
same over SMTP and real DNS."""

from __future__ import annotations

from pathlib import Path

import dkim
import dns.resolver
import pytest

from pillarbox.modify import arc, dkim_sign

HOST = "mx.example.test"
BODY = b"From: a@sender.test\r\nTo: fwd@example.test\r\nSubject: hi\r\n" \
       b"Date: Sun, 06 Dec 2026 00:00:00 +0000\r\n\r\nbody\r\n"


@pytest.fixture(name="sealer")
def fixture_sealer(tmp_path: Path):
    dkim_sign.generate_keys(tmp_path, "example.test")
    records = {f"{k.selector}._domainkey.example.test": k.txt_value.encode()
               for k in dkim_sign.load_keys(tmp_path, "example.test")}

    def lookup(name: str, rdtype: str):
        assert rdtype == "TXT"
        value = records.get(name.rstrip("."))
        if value is None:
            raise dns.resolver.NXDOMAIN()
        return [type("TXT", (), {"strings": [value[i:i + 255]
                                             for i in range(0, len(value), 255)]})()]

    def dnsfunc(name, timeout=5):
        return arc.txt_func(lookup)(name)

    return arc.Sealer(dkim_sign.DKIMSigner(tmp_path)), lookup, dnsfunc


def _aar(fields: bytes) -> str:
    for raw in arc.split_fields(fields):
        if raw[0] == b"arc-authentication-results":
            return " ".join(raw[1].decode().split(":", 1)[1].split())
    raise AssertionError(fields)


def test_the_aar_copies_our_topmost_results_only(sealer) -> None:
    s, lookup, dnsfunc = sealer
    msg = (b"Authentication-Results: MX.example.test 1; dkim=pass header.d=sender.test;\r\n"
           b" spf=pass smtp.mailfrom=sender.test; arc=pass\r\n"
           b"Authentication-Results: other.test; dkim=fail header.d=sender.test\r\n"
           b"Authentication-Results: mx.example.test; dmarc=fail (forged, lower down)\r\n"
           + BODY)
    fields = s.seal(msg, ["example.test"], HOST, lookup)
    assert _aar(fields) == ("i=1; mx.example.test; arc=none; dkim=pass header.d=sender.test;"
                            " spf=pass smtp.mailfrom=sender.test")
    cv, results, reason = dkim.arc_verify(fields + msg, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, reason
    assert b"d=example.test" in fields and b"a=rsa-sha256" in fields


def test_without_our_results_the_aar_says_arc_none(sealer) -> None:
    s, lookup, _ = sealer
    for head in (b"", b"Authentication-Results: other.test; dkim=pass\r\n",
                 b"Authentication-Results: mx.example.test; \xff(((broken\r\n"):
        assert _aar(s.seal(head + BODY, ["example.test"], HOST, lookup)) == \
            "i=1; mx.example.test; arc=none"


def test_no_rsa_key_no_seal_and_the_fallback_domain(sealer, tmp_path: Path) -> None:
    s, lookup, _ = sealer
    assert s.seal(BODY, ["nokeys.test"], HOST, lookup) == b""
    assert b"d=example.test" in s.seal(BODY, ["nokeys.test", "example.test"], HOST, lookup)


def test_chain_states(sealer) -> None:
    s, lookup, dnsfunc = sealer
    first = s.seal(BODY, ["example.test"], HOST, lookup) + BODY
    second = s.seal(first, ["example.test"], HOST, lookup)
    assert b"i=2; cv=pass" in second
    # Broken on the way: sealed cv=fail; a chain that says fail is not extended.
    broken = first.replace(b"\r\n\r\nbody", b"\r\n\r\nchanged")
    failed = s.seal(broken, ["example.test"], HOST, lookup)
    assert b"i=2; cv=fail" in failed and "arc=fail" in _aar(failed)
    assert dkim.arc_verify(failed + broken, dnsfunc=dnsfunc)[0] is None  # terminated
    assert s.seal(failed + broken, ["example.test"], HOST, lookup) == b""


def test_hostile_headers_do_not_crash_the_field_split() -> None:
    fields = arc.split_fields(b" leading continuation\r\nno colon here\r\n\xff\xfe: x\r\n"
                              b"Name : value\r\n\tfolded\r\n")
    assert [n for n, _ in fields] == [b"", b"", b"", b"name"]
    assert fields[-1][1] == b"Name : value\r\n\tfolded\r\n"
