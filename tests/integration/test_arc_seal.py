"""ARC sealing of forwarded mail (RFC 8617): a message an outside domain signed
comes in on the MX for an alias whose member is at another domain; at the
next hop (an SMTP double standing in for its MX) the original DKIM signature
still verifies and the ARC set pillarbox added verifies too. dkimpy checks
both, with keys served by the test DNS server (ours as `pillarbox dns`
publishes them, the outside domain's made here).
"""

from __future__ import annotations

import base64
import email
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .dns_server import DNSServer, query_txt
from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    REMOTE,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
    submit,
    wait_queue_empty,
)
from .support import ALICE, BOB, DOMAIN, HOSTNAME, make_message, token, wait_until

CAROL = f"carol@{REMOTE}"
DAVE = f"dave@{REMOTE}"
FWD = f"fwd@{DOMAIN}"
FWD2 = f"fwd2@{DOMAIN}"
OUTSIDE = "someone@sender.test"
SELECTOR = "outside1"
ARC_FIELDS = ("arc-seal", "arc-message-signature", "arc-authentication-results")


@pytest.fixture(scope="module", name="outside_key")
def fixture_outside_key() -> tuple[bytes, str]:
    """sender.test's RSA key: (PEM, the p= value of its DKIM record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


def _setup(outbound, dns: DNSServer, outside_key, overrides: dict | None = None):
    """A running server whose keys are published, MX records for remote.test
    and sender.test, and sender.test's DKIM key."""
    srv = outbound(overrides, start=False)
    assert dns.load_zone(srv.cli_ok("dns").stdout) > 0  # makes our keys, serves them
    point_mx(dns)
    point_mx(dns, "sender.test")
    dns.txt(f"{SELECTOR}._domainkey.sender.test", f"v=DKIM1; k=rsa; p={outside_key[1]}")
    srv.start()
    return srv


def _signed_by_outside(outside_key, to: str, subject: str) -> bytes:
    msg = make_message(OUTSIDE, to, subject, "A body the forward must not touch.\r\n")
    sig = dkim.sign(msg, SELECTOR.encode(), b"sender.test", outside_key[0],
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + msg


def _send_mx(srv, rcpt: str, message: bytes) -> None:
    with srv.smtp() as s:
        assert s.sendmail(OUTSIDE, [rcpt], message) == {}


def _dnsfunc(dns: DNSServer):
    def dnsfunc(name, timeout=5):
        return query_txt(dns, name, timeout)
    return dnsfunc


def _fields(content: bytes, name: str) -> list[str]:
    """The unfolded values of every `name` field, top to bottom."""
    head = email.message_from_bytes(content.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    return [" ".join(str(v).split()) for v in head.get_all(name, [])]


def _tags(value: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in
            (t.partition("=") for t in value.replace(" ", "").split(";")) if k.strip()}


def _has_arc(content: bytes) -> bool:
    head = content.split(b"\r\n\r\n", 1)[0].lower()
    return any(re.search(rb"(^|\r\n)" + f.encode() + rb"\s*:", head) for f in ARC_FIELDS)


def test_forward_is_arc_sealed_and_keeps_its_dkim_signature(outbound, dns, double,
                                                           outside_key):
    srv = _setup(outbound, dns, outside_key)
    srv.add_alias(FWD, CAROL)
    srv.add_alias(FWD2, DAVE)
    original = _signed_by_outside(outside_key, FWD, f"forwarded {token()}")
    assert dkim.verify(original, dnsfunc=_dnsfunc(dns))  # signed as sent
    _send_mx(srv, FWD, original)

    (msg,) = double.wait_for_messages(1)
    assert msg.rcpts == [CAROL]
    assert msg.content.endswith(original), "the forward changed the message"
    # The outside domain's signature still verifies at the next hop.
    assert dkim.verify(msg.content, dnsfunc=_dnsfunc(dns)), "original DKIM signature broken"
    # One ARC set, instance 1, sealed by us with cv=none, and it verifies.
    seals = _fields(msg.content, "ARC-Seal")
    assert len(seals) == 1, seals
    seal = _tags(seals[0])
    assert (seal["i"], seal["cv"], seal["d"], seal["a"]) == ("1", "none", DOMAIN, "rsa-sha256")
    assert seal["s"].endswith("r"), "sealed with the domain's RSA DKIM key"
    cv, results, reason = dkim.arc_verify(msg.content, dnsfunc=_dnsfunc(dns))
    assert cv == dkim.CV_Pass, reason
    assert [r["instance"] for r in results] == [1]
    assert results[0]["as-domain"] == DOMAIN.encode() and results[0]["ams-valid"]
    (aar,) = _fields(msg.content, "ARC-Authentication-Results")
    assert aar.startswith(f"i=1; {HOSTNAME};"), aar
    assert "arc=none" in aar, aar
    # Whatever verdicts our own Authentication-Results field records, the AAR carries.
    ours = [v for v in _fields(msg.content, "Authentication-Results")
            if v.split(";")[0].strip() == HOSTNAME]
    for result in (ours[0].split(";")[1:] if ours else []):
        if result.strip() and not result.strip().startswith("arc="):
            assert result.strip().split()[0] in aar, (result, aar)

    # Second hop: the sealed message comes back in for another forward; that
    # seal is instance 2, cv=pass (the chain verified through DNS), and the
    # whole chain and the original signature still verify.
    _send_mx(srv, FWD2, msg.content)
    msgs = double.wait_for_messages(2)
    second = msgs[1].content
    assert msgs[1].rcpts == [DAVE]
    seals = _fields(second, "ARC-Seal")
    assert [(_tags(s)["i"], _tags(s)["cv"]) for s in seals] == [("2", "pass"), ("1", "none")]
    cv, results, reason = dkim.arc_verify(second, dnsfunc=_dnsfunc(dns))
    assert cv == dkim.CV_Pass, reason
    assert [r["instance"] for r in results] == [2, 1]
    assert dkim.verify(second, dnsfunc=_dnsfunc(dns))
    aars = _fields(second, "ARC-Authentication-Results")
    assert aars[0].startswith(f"i=2; {HOSTNAME};") and "arc=pass" in aars[0], aars

    # A chain broken on the way (the body changed after the seal) is sealed
    # with cv=fail, and only our own set is signed by that seal.
    tampered = msg.content.replace(b"must not touch", b"was touched", 1)
    _send_mx(srv, FWD2, tampered)
    third = double.wait_for_messages(3)[2].content
    seals = _fields(third, "ARC-Seal")
    assert [(_tags(s)["i"], _tags(s)["cv"]) for s in seals] == [("2", "fail"), ("1", "none")]
    wait_queue_empty(srv)


def test_only_forwards_from_outside_are_sealed(outbound, dns, double, outside_key):
    srv = _setup(outbound, dns, outside_key)
    srv.add_alias(FWD, CAROL)
    # A user's own mail, to a remote address and to a forwarding alias: DKIM-signed, no ARC.
    submit(srv, [DAVE, FWD], frm=ALICE)
    msgs = double.wait_for_messages(1)
    wait_queue_empty(srv)
    msgs = double.messages
    assert sorted(r for m in msgs for r in m.rcpts) == [CAROL, DAVE]
    for m in msgs:
        assert not _has_arc(m.content), m.content[:600]
        assert _fields(m.content, "DKIM-Signature"), "a user's mail is DKIM-signed instead"
    # Mail from outside to a local mailbox: no ARC fields either.
    _send_mx(srv, BOB, make_message(OUTSIDE, BOB, f"local {token()}"))
    (local,) = wait_until(lambda: srv.messages(BOB), 10, "the message in bob's mailbox")
    assert not _has_arc(local)
    # One message to a forwarded and a local recipient: only the forward is sealed.
    srv.add_alias(FWD2, DAVE, BOB)
    _send_mx(srv, FWD2, make_message(OUTSIDE, FWD2, f"both {token()}"))
    fwd = double.wait_for_messages(len(msgs) + 1)[-1]
    assert fwd.rcpts == [DAVE] and _has_arc(fwd.content)
    wait_until(lambda: len(srv.messages(BOB)) == 2, 10, "the second message for bob")
    assert not any(_has_arc(m) for m in srv.messages(BOB))


def test_arc_seal_off_sends_forwards_unsealed(outbound, dns, double, outside_key):
    srv = _setup(outbound, dns, outside_key, {"delivery.arc_seal": False})
    srv.add_alias(FWD, CAROL)
    original = _signed_by_outside(outside_key, FWD, f"unsealed {token()}")
    _send_mx(srv, FWD, original)
    (msg,) = double.wait_for_messages(1)
    assert not _has_arc(msg.content)
    assert dkim.verify(msg.content, dnsfunc=_dnsfunc(dns))


def test_a_sealing_failure_is_logged_and_the_mail_goes_unsealed(outbound, dns, double,
                                                                 outside_key):
    srv = _setup(outbound, dns, outside_key)
    srv.add_alias(FWD, CAROL)
    # A message with an ARC set whose key lookup fails (SERVFAIL): the chain
    # state cannot be known, so no seal; the mail still goes out.
    inner = _signed_by_outside(outside_key, FWD, f"servfail {token()}")
    chained = dkim.arc_sign(b"Authentication-Results: relay.sender.test; arc=none\r\n" + inner,
                            b"arc1", b"sender.test", outside_key[0], b"relay.sender.test")
    assert len(chained) == 3
    dns.servfail("arc1._domainkey.sender.test")
    _send_mx(srv, FWD, b"".join(chained) + inner)
    (msg,) = double.wait_for_messages(1)
    assert [_tags(s)["i"] for s in _fields(msg.content, "ARC-Seal")] == ["1"]
    wait_until(lambda: "ARC sealing failed" in srv.log_text(), 10, "the failure logged")
