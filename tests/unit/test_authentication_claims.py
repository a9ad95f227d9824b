"""authserv.claims_host: does an incoming Authentication-Results
field claim to come from our host (its authserv-id, RFC 8601 2.2)?"""

from __future__ import annotations

import pytest

from pillarbox.authserv import claims_host

HOST = "mx.example.org"


@pytest.mark.parametrize("value", [
    "mx.example.org; dkim=pass header.d=example.org",
    "MX.Example.ORG; spf=pass smtp.mailfrom=a@example.org",
    "mx.example.org. ; none",
    "mx.example.org 1; none",  # with an authres-version
    "  (forged) mx.example.org; dmarc=pass",
    "(a (nested \\) comment)) \r\n\t mx.example.org; none",
    '"mx.example.org"; arc=pass',
    "mx.example.org(no space); none",
    "mx.example.org",
])
def test_fields_naming_our_host_are_claims(value):
    assert claims_host(value, HOST)


@pytest.mark.parametrize("value", [
    "other.example.net; dkim=pass",
    "mx.example.org.evil.test; spf=pass",
    "sub.mx.example.org; none",
    "(mx.example.org) other.example.net; none",
    "",
    "   ",
    "(unterminated mx.example.org; none",
    '"mx.example.org.x"; none',
])
def test_other_hosts_and_garbage_are_not(value):
    assert not claims_host(value, HOST)
