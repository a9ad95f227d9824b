"""Fuzz the address parser (pillarbox.address): whatever the input, split and
normalize return a valid address or raise AddressError, never another
exception; a normalized address normalizes to itself; nothing non-printable
survives."""

from __future__ import annotations

import string

from hypothesis import example, given
from hypothesis import strategies as st

from pillarbox import address

# Pieces that make the parser's branches likely: quotes, escapes, literals,
# dots, IDNA, and the characters that must never pass.
_PIECES = st.sampled_from([
    "@", ".", "..", '"', "\\", "[", "]", "IPv6:", "ipv6:", "::", ":", "%", ",", " ", "\t",
    "\x00", "\x0e", "\x1b", "\x7f", "\u0085", "\u00ad", "\u200b", "\u202e", "\u3002", "\uff0e",
    "İ", "ß", "é", "xn--", "-", "127.0.0.1", "1", "255", "256", "::1", "example.test",
    "alice", "a" * 63, "b" * 70, "\ud800",
])
_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=6),
                           st.text(alphabet=string.ascii_letters + string.digits, max_size=8)),
                 max_size=12).map("".join)


def _check_valid(result: str) -> None:
    assert isinstance(result, str)
    assert result.isprintable(), f"non-printable character survived: {result!r}"
    local, _, domain = result.rpartition("@")
    assert local and domain
    assert len(local.encode("utf-8", "surrogatepass")) <= address.MAX_LOCAL
    assert not domain.endswith("."), result


@given(_TEXT)
@example("user@[IPv6:::1]")
@example("a@[127%\x0e0.0.1]")
@example('"a\x00b"@example.test')
@example("alice@example.test..")
@example("İİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİİ@x.test")  # lowercasing lengthens the local part
@example("a@ex\u00adample.test")  # IDNA would map the soft hyphen away
@example("a@b\u3002test")  # IDNA would split at the ideographic full stop
@example("a@[IPv6:fe80::1%eth0]")  # ipaddress takes a scope id
@example("\ud800@x.test")  # a lone surrogate
def test_normalize_is_valid_or_address_error(text: str) -> None:
    try:
        result = address.normalize(text)
    except address.AddressError:
        return
    _check_valid(result)
    assert address.normalize(result) == result, "normalize is not idempotent"
    assert address.split(result)[1] == result.rpartition("@")[2]


@given(_TEXT)
@example("a@[IPv6:::1:]")
@example("x@[tag:content]")
def test_split_is_valid_or_address_error(text: str) -> None:
    try:
        local, domain = address.split(text)
    except address.AddressError:
        return
    _check_valid(f"{local}@{domain}")
    assert address.split(f"{local}@{domain}") == (local, domain)


@given(_TEXT)
@example("example.test.")
@example("example.test..")
def test_normalize_domain_is_valid_or_address_error(text: str) -> None:
    try:
        d = address.normalize_domain(text)
    except address.AddressError:
        return
    assert d.isprintable() and d and not d.endswith(".")
    assert address.normalize_domain(d) == d


@given(st.text(max_size=40))
def test_escape_leaves_nothing_unprintable(text: str) -> None:
    from pillarbox.printable import escape

    out = escape(text)
    assert out.isprintable()
    if text.isprintable():
        assert out == text


_HEADER_PIECES = st.sampled_from([
    "From:", "from:", "FROM :", " ", "\t", "\r\n", "\r\n ", "<", ">", "@", ",", ";", ":",
    '"', "\\", "(", ")", "=?utf-8?b?", "=?utf-8?q?", "?=", "alice@example.test",
    "bob@example.test", "group:", "[IPv6:::1]", "\x00", "\x1b", "é", "\udcff",
])
_HEADER = st.lists(st.one_of(_HEADER_PIECES, st.text(max_size=5)), max_size=16).map(
    lambda parts: ("".join(parts) + "\r\n\r\n").encode("utf-8", "surrogateescape"))


@given(_HEADER)
@example(b"From: <alice@example.test\r\n  >, bob@example.test\r\n\r\n")
@example(b"From: undisclosed-recipients:;\r\n\r\n")
@example(b"From: a@b.test\r\nFrom: c@d.test\r\n\r\n")
def test_from_header_parse_is_addresses_or_refusal(header: bytes) -> None:
    """The From check on hostile headers: a list of valid addresses, None (no
    From), or a refusal; never another exception."""
    from pillarbox.check import sender

    try:
        found = sender.from_addresses(header)
    except sender._Unparsable:
        return
    if found is not None:
        assert found, "an empty address list must be refused, not returned"
        for a in found:
            assert address.normalize(a) == a


@given(st.from_regex(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]{1,70}@[A-Za-z0-9.-]{1,70}", fullmatch=True))
@example("a@b")
@example("a.b@c-d.example")
@example("-a-@-b.example")
@example("a..b@c.example")
@example("a@b..c")
@example("x" * 65 + "@b.example")
def test_fast_path_agrees_with_the_general_parser(text):
    """split's one-regex path for plain addresses says what the full parser says."""
    try:
        want = address._split(text)
    except address.AddressError:
        want = None
    try:
        got = address.split(text)
    except address.AddressError:
        got = None
    assert got == want
