"""The authentication check on the MX (kind "authentication"): DKIM, SPF,
DMARC and ARC verdicts, recorded in one Authentication-Results field, and the
policies that refuse or file in Junk.

Two servers for the whole file (a server start costs more than all the
messages): `mx` with the default options, `strict` with strict_dkim,
spf_fail = "reject" and dkim_length = "refuse". Both ask the tests' DNS
server, where each test publishes the records of its own sender domains.
Messages come from 127.0.0.1 over SMTP and are signed here by dkimpy with
keys made here.
"""

from __future__ import annotations

import base64
import email
import email.policy
import smtplib

import dkim
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .dns_server import DNSServer
from .support import ALICE, Server, make_message, token, wait_until

HOST = "mx.example.test"  # the servers' hostname (support.HOSTNAME): the authserv-id


# -- keys and signing ----------------------------------------------------------------

class Keys:
    """One RSA and one ed25519 key pair, made once for the file (RSA 1024: the
    smallest the check accepts by default, and quick to make)."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.rsa_private = key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption())
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.rsa_record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        der = other.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        self.wrong_record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        ed = nacl.signing.SigningKey.generate()
        self.ed_private = base64.b64encode(bytes(ed))
        self.ed_record = ("v=DKIM1; k=ed25519; p="
                          f"{base64.b64encode(bytes(ed.verify_key)).decode()}")


def sign(keys: Keys, message: bytes, domain: str, selector: str = "sel", *,
         ed25519: bool = False, length: bool = False) -> bytes:
    """`message` with a DKIM-Signature of d=domain on top."""
    field = dkim.sign(message, selector.encode(), domain.encode(),
                      keys.ed_private if ed25519 else keys.rsa_private,
                      signature_algorithm=b"ed25519-sha256" if ed25519 else b"rsa-sha256",
                      include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
                      length=length)
    return field + message


def b_tag(signed: bytes) -> str:
    """The top signature's header.b value: the first 8 characters of its b=,
    quoted when they are no MIME token (RFC 8601 value)."""
    sig = email.message_from_bytes(signed)["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in sig.split(";") if "=" in t)
    b = "".join(tags["b"].split())[:8]
    return f'"{b}"' if "/" in b or "=" in b else b


def dkim_pass(domain: str, signed: bytes, selector: str = "sel") -> str:
    return f"dkim=pass header.d={domain} header.s={selector} header.b={b_tag(signed)}"


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def dns():
    server = DNSServer().start()
    yield server
    server.stop()
    assert not server.errors, f"the test DNS server failed: {server.errors}"


def _server(root, seed, dns: DNSServer, module_toml: str, check: str) -> Server:
    srv = Server(root, {"dns.nameservers": [dns.address]}, seed=seed,
                 extra_toml=f'{module_toml}\n[pipeline.smtp]\n'
                            f'checks = ["relay", "recipient", "{check}"]\n')
    srv.start()
    return srv


@pytest.fixture(scope="module")
def servers(tmp_path_factory, seed_data_dir, dns):
    root = tmp_path_factory.mktemp("auth")
    started: list[Server] = []
    try:
        started.append(_server(root / "mx", seed_data_dir, dns, "", "authentication"))
        started.append(_server(root / "strict", seed_data_dir, dns, """
[module.strict_auth]
kind = "authentication"
strict_dkim = true
spf_fail = "reject"
dkim_length = "refuse"
""", "strict_auth"))
        yield started
    finally:
        problems = []
        for srv in started:
            problems += srv.shutdown_and_check()
            if srv.logs:
                print(f"--- {srv.root} stderr (tail) ---\n{srv.log_tail(80)}")
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def mx(servers) -> Server:
    return servers[0]


@pytest.fixture
def strict(servers) -> Server:
    return servers[1]


# -- sending and reading ---------------------------------------------------------------------

def send(srv: Server, message: bytes, mail_from: str, helo: str = "client.test"
         ) -> tuple[int, str]:
    """One message over SMTP from 127.0.0.1; the first refusal or the DATA reply."""
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname=helo, timeout=20) as s:
        s.ehlo()
        code, text = s.mail(mail_from)
        if code != 250:
            return code, text.decode()
        code, text = s.rcpt(ALICE)
        assert code == 250, (code, text)
        code, text = s.data(message)
        return code, text.decode()


def message(frm: str, tok: str, body: str = "Hello from the authentication tests.\r\n") -> bytes:
    return make_message(frm, ALICE, tok, body)


def delivered(srv: Server, tok: str, folder: str = "") -> email.message.Message:
    """The message with Subject `tok` in ALICE's INBOX (or `folder`, e.g. ".Junk")."""
    new = srv.maildir(ALICE) / folder / "new" if folder else srv.maildir(ALICE) / "new"

    def find():
        for f in new.iterdir() if new.is_dir() else ():
            msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.compat32)
            if msg["Subject"] == tok:
                return msg
        return None

    return wait_until(find, 10, f"message {tok} in {folder or 'INBOX'}")


def results(msg: email.message.Message) -> str:
    """Our one Authentication-Results field, unfolded (a forwarder's may be there too)."""
    fields = [f for f in msg.get_all("Authentication-Results") or []
              if f.split(";")[0].strip() == HOST]
    assert len(fields) == 1, fields
    return " ".join(fields[0].split())


def expect(*entries: str, helo: str = "spf=none smtp.helo=client.test") -> str:
    """Our field: the entries given, with the HELO identity's SPF result after
    the MAIL FROM one (RFC 7208 2.3; the tests' HELO name has no policy)."""
    entries_ = list(entries)
    if entries_ and entries_[0].startswith("spf=") and "smtp.mailfrom=" in entries_[0]:
        entries_.insert(1, helo)
    return f"{HOST}; " + "; ".join(entries_)


# -- DKIM ------------------------------------------------------------------------------------

def test_dkim_pass_rsa(mx, dns, keys):
    dns.txt("sel._domainkey.d-pass.test", keys.rsa_record)
    tok = token()
    signed = sign(keys, message("a@d-pass.test", tok), "d-pass.test")
    assert send(mx, signed, "a@d-pass.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@d-pass.test", dkim_pass("d-pass.test", signed),
        "dmarc=none header.from=d-pass.test", "arc=none")


def test_dkim_pass_ed25519(mx, dns, keys):
    dns.txt("ed._domainkey.d-ed.test", keys.ed_record)
    tok = token()
    signed = sign(keys, message("a@d-ed.test", tok), "d-ed.test", "ed", ed25519=True)
    assert send(mx, signed, "a@d-ed.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@d-ed.test", dkim_pass("d-ed.test", signed, "ed"),
        "dmarc=none header.from=d-ed.test", "arc=none")


def test_dkim_fail_with_another_key_published(mx, dns, keys):
    dns.txt("sel._domainkey.d-fail.test", keys.wrong_record)
    tok = token()
    signed = sign(keys, message("a@d-fail.test", tok), "d-fail.test")
    assert send(mx, signed, "a@d-fail.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@d-fail.test",
        f"dkim=fail header.d=d-fail.test header.s=sel header.b={b_tag(signed)}",
        "dmarc=none header.from=d-fail.test", "arc=none")


def test_dkim_fail_with_a_tampered_body(mx, dns, keys):
    dns.txt("sel._domainkey.d-tamper.test", keys.rsa_record)
    tok = token()
    signed = sign(keys, message("a@d-tamper.test", tok), "d-tamper.test")
    tampered = signed.replace(b"Hello from", b"Hullo from")
    assert tampered != signed
    assert send(mx, tampered, "a@d-tamper.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@d-tamper.test",
        f"dkim=fail header.d=d-tamper.test header.s=sel header.b={b_tag(signed)}",
        "dmarc=none header.from=d-tamper.test", "arc=none")


def test_dkim_none_for_an_unsigned_message(mx):
    tok = token()
    assert send(mx, message("a@d-none.test", tok), "a@d-none.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@d-none.test", "dkim=none",
        "dmarc=none header.from=d-none.test", "arc=none")


def test_dkim_signature_with_l_counts_for_nothing_by_default(mx, dns, keys):
    dns.txt("sel._domainkey.d-len.test", keys.rsa_record)
    dns.txt("_dmarc.d-len.test", "v=DMARC1; p=quarantine")
    tok = token()
    signed = sign(keys, message("a@d-len.test", tok), "d-len.test", length=True)
    # what l= allows: text added after the signed body still verifies in dkimpy
    assert send(mx, signed + b"Click here.\r\n", "a@d-len.test")[0] == 250
    assert results(delivered(mx, tok, ".Junk")) == expect(
        "spf=none smtp.mailfrom=a@d-len.test",
        "dkim=policy (l= tag not accepted) header.d=d-len.test header.s=sel "
        f"header.b={b_tag(signed)}",
        "dmarc=fail (p=quarantine dis=quarantine) header.from=d-len.test", "arc=none")


# -- SPF -------------------------------------------------------------------------------------

@pytest.mark.parametrize("record, result", [
    ("v=spf1 ip4:127.0.0.1 -all", "pass"),
    ("v=spf1 ip4:192.0.2.1 -all", "fail"),
    ("v=spf1 ip4:192.0.2.1 ~all", "softfail"),
    ("v=spf1 ?all", "neutral"),
])
def test_spf_results_are_recorded(mx, dns, record, result):
    domain = f"spf-{result}.test"
    dns.txt(domain, record)
    tok = token()
    assert send(mx, message(f"a@{domain}", tok), f"a@{domain}")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        f"spf={result} smtp.mailfrom=a@{domain}", "dkim=none",
        f"dmarc=none header.from={domain}", "arc=none")


def test_spf_permerror_past_ten_lookups(mx, dns):
    names = [f"h{i}.spf-many.test" for i in range(11)]
    for n in names:
        dns.a(n, "192.0.2.1")
    dns.txt("spf-many.test", "v=spf1 " + " ".join(f"a:{n}" for n in names) + " -all")
    tok = token()
    assert send(mx, message("a@spf-many.test", tok), "a@spf-many.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=permerror (Too many DNS lookups) smtp.mailfrom=a@spf-many.test", "dkim=none",
        "dmarc=none header.from=spf-many.test", "arc=none")


def test_spf_temperror_when_dns_fails(mx, dns, keys):
    dns.servfail("spf-down.test")
    dns.txt("sel._domainkey.d-ok.test", keys.rsa_record)
    tok = token()
    signed = sign(keys, message("a@d-ok.test", tok), "d-ok.test")
    assert send(mx, signed, "a@spf-down.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=temperror (DNS server failure) smtp.mailfrom=a@spf-down.test",
        dkim_pass("d-ok.test", signed), "dmarc=none header.from=d-ok.test", "arc=none")


def test_spf_for_the_null_sender_checks_helo(mx, dns):
    dns.txt("helo.spf-helo.test", "v=spf1 ip4:127.0.0.1 -all")
    tok = token()
    assert send(mx, message("a@spf-helo.test", tok), "", helo="helo.spf-helo.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=pass smtp.helo=helo.spf-helo.test", "dkim=none",
        "dmarc=none header.from=spf-helo.test", "arc=none")


def test_spf_checks_the_helo_identity_beside_mail_from(mx, dns):
    dns.txt("helo2.spf-helo.test", "v=spf1 -all")
    dns.txt("spf-both.test", "v=spf1 ip4:127.0.0.1 -all")
    tok = token()
    assert send(mx, message("a@spf-both.test", tok), "a@spf-both.test",
                helo="helo2.spf-helo.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=pass smtp.mailfrom=a@spf-both.test", "dkim=none",
        "dmarc=none header.from=spf-both.test", "arc=none",
        helo="spf=fail smtp.helo=helo2.spf-helo.test")


def test_spf_fail_refused_when_asked(strict, dns):
    dns.txt("spf-refused.test", "v=spf1 ip4:192.0.2.1 -all")
    code, text = send(strict, message("a@spf-refused.test", token()), "a@spf-refused.test")
    assert (code, text) == (550, "5.7.23 SPF policy of spf-refused.test does not allow "
                                 "mail from 127.0.0.1")


def test_spf_dns_failure_is_temporary_when_fail_is_refused(strict, dns):
    dns.servfail("spf-down2.test")
    code, text = send(strict, message("a@spf-down2.test", token()), "a@spf-down2.test")
    assert (code, text) == (451, "4.4.3 SPF record of spf-down2.test could not be looked "
                                 "up; try again later")


# -- DMARC -----------------------------------------------------------------------------------

def test_dmarc_pass_by_dkim_alignment(mx, dns, keys):
    dns.txt("sel._domainkey.dm-dkim.test", keys.rsa_record)
    dns.txt("_dmarc.dm-dkim.test", "v=DMARC1; p=reject")
    tok = token()
    # relaxed alignment: signed by the organizational domain, From a subdomain
    signed = sign(keys, message("a@news.dm-dkim.test", tok), "dm-dkim.test")
    assert send(mx, signed, "bounce@other-dm.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=bounce@other-dm.test", dkim_pass("dm-dkim.test", signed),
        "dmarc=pass header.from=news.dm-dkim.test", "arc=none")


def test_dmarc_pass_by_spf_alignment(mx, dns):
    dns.txt("dm-spf.test", "v=spf1 ip4:127.0.0.1 -all")
    dns.txt("_dmarc.dm-spf.test", "v=DMARC1; p=reject")
    tok = token()
    assert send(mx, message("a@dm-spf.test", tok), "bounce@dm-spf.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=pass smtp.mailfrom=bounce@dm-spf.test", "dkim=none",
        "dmarc=pass header.from=dm-spf.test", "arc=none")


def test_dmarc_reject_refuses(mx, dns, keys):
    dns.txt("dm-reject.test", "v=spf1 ip4:192.0.2.1 -all")
    dns.txt("_dmarc.dm-reject.test", "v=DMARC1; p=reject")
    dns.txt("sel._domainkey.dm-forger.test", keys.rsa_record)
    tok = token()
    # a valid signature of another domain does not align
    signed = sign(keys, message("ceo@dm-reject.test", tok), "dm-forger.test")
    assert send(mx, signed, "a@dm-reject.test") == (
        550, "5.7.1 DMARC policy of dm-reject.test rejects this message")


def test_dmarc_quarantine_files_in_junk(mx, dns):
    dns.txt("_dmarc.dm-quar.test", "v=DMARC1; p=quarantine")
    tok = token()
    assert send(mx, message("a@dm-quar.test", tok), "a@dm-quar.test")[0] == 250
    assert results(delivered(mx, tok, ".Junk")) == expect(
        "spf=none smtp.mailfrom=a@dm-quar.test", "dkim=none",
        "dmarc=fail (p=quarantine dis=quarantine) header.from=dm-quar.test", "arc=none")


def test_dmarc_subdomain_policy(mx, dns):
    dns.txt("_dmarc.dm-sub.test", "v=DMARC1; p=none; sp=reject")
    tok = token()
    # the organizational domain's own mail: p=none, delivered with the verdict
    assert send(mx, message("a@dm-sub.test", tok), "a@dm-sub.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@dm-sub.test", "dkim=none",
        "dmarc=fail (p=none dis=none) header.from=dm-sub.test", "arc=none")
    # a subdomain without a record of its own: sp=reject
    assert send(mx, message("a@mail.dm-sub.test", token()), "a@mail.dm-sub.test") == (
        550, "5.7.1 DMARC policy of mail.dm-sub.test rejects this message")


def test_dmarc_pct_zero_is_not_enforced(mx, dns):
    dns.txt("_dmarc.dm-pct.test", "v=DMARC1; p=quarantine; pct=0")
    tok = token()
    assert send(mx, message("a@dm-pct.test", tok), "a@dm-pct.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@dm-pct.test", "dkim=none",
        "dmarc=fail (p=quarantine dis=none) header.from=dm-pct.test", "arc=none")
    # p=reject outside the sample is quarantined instead (RFC 7489 6.6.4)
    dns.txt("_dmarc.dm-pct2.test", "v=DMARC1; p=reject; pct=0")
    tok = token()
    assert send(mx, message("a@dm-pct2.test", tok), "a@dm-pct2.test")[0] == 250
    assert results(delivered(mx, tok, ".Junk")) == expect(
        "spf=none smtp.mailfrom=a@dm-pct2.test", "dkim=none",
        "dmarc=fail (p=reject dis=quarantine) header.from=dm-pct2.test", "arc=none")


def test_dmarc_dns_failure_is_temporary(mx, dns):
    dns.servfail("_dmarc.dm-down.test")
    code, text = send(mx, message("a@dm-down.test", token()), "a@dm-down.test")
    assert (code, text) == (451, "4.4.3 DMARC policy of dm-down.test could not be looked "
                                 "up; try again later")


# -- ARC -------------------------------------------------------------------------------------

def _sealed(keys: Keys, dns: DNSServer, tok: str) -> bytes:
    """A message a forwarder (list.arc.test) verified and sealed: one ARC set."""
    dns.txt("seal._domainkey.arc.test", keys.rsa_record)
    original = message("a@arc-orig.test", tok)
    verified = (b"Authentication-Results: list.arc.test; spf=pass "
                b"smtp.mailfrom=a@arc-orig.test\r\n" + original)
    seal = dkim.arc_sign(verified, b"seal", b"arc.test", keys.rsa_private, b"list.arc.test")
    return b"".join(seal) + verified


def test_arc_chain_pass(mx, dns, keys):
    tok = token()
    assert send(mx, _sealed(keys, dns, tok), "a@arc-list.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@arc-list.test", "dkim=none",
        "dmarc=none header.from=arc-orig.test", "arc=pass")


def test_arc_chain_fail(mx, dns, keys):
    tok = token()
    tampered = _sealed(keys, dns, tok).replace(b"Hello from", b"Hullo from")
    assert send(mx, tampered, "a@arc-list.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@arc-list.test", "dkim=none",
        "dmarc=none header.from=arc-orig.test",
        "arc=fail (Most recent ARC-Message-Signature did not validate)")


# -- the strict DKIM rule and l= refusal -------------------------------------------------------

def test_strict_dkim_refuses_unsigned_and_misaligned_mail(strict, dns, keys):
    dns.txt("sel._domainkey.strict-other.test", keys.rsa_record)
    assert send(strict, message("a@strict.test", token()), "a@strict.test") == (
        554, "5.7.1 No valid DKIM signature found")
    # a valid signature, but of another domain than From's
    signed = sign(keys, message("a@strict.test", token()), "strict-other.test")
    assert send(strict, signed, "a@strict.test") == (
        554, "5.7.1 No valid DKIM signature found")


def test_strict_dkim_accepts_a_signature_of_the_from_domain(strict, dns, keys):
    dns.txt("sel._domainkey.strict-ok.test", keys.rsa_record)
    tok = token()
    signed = sign(keys, message("a@strict-ok.test", tok), "strict-ok.test")
    assert send(strict, signed, "a@strict-ok.test")[0] == 250
    assert results(delivered(strict, tok)) == expect(
        "spf=none smtp.mailfrom=a@strict-ok.test", dkim_pass("strict-ok.test", signed),
        "dmarc=none header.from=strict-ok.test", "arc=none")


def test_dkim_length_refused_when_asked(strict, dns, keys):
    dns.txt("sel._domainkey.strict-len.test", keys.rsa_record)
    signed = sign(keys, message("a@strict-len.test", token()), "strict-len.test", length=True)
    assert send(strict, signed, "a@strict-len.test") == (
        550, "5.7.1 DKIM signatures with l= are not accepted here")


def test_dkim_key_lookup_failure_is_temporary(mx, strict, dns, keys):
    dns.servfail("sel._domainkey.dk-down.test")
    tok = token()
    signed = sign(keys, message("a@dk-down.test", tok), "dk-down.test")
    assert send(mx, signed, "a@dk-down.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@dk-down.test",
        f"dkim=temperror (key lookup failed) header.d=dk-down.test header.s=sel "
        f"header.b={b_tag(signed)}",
        "dmarc=none header.from=dk-down.test", "arc=none")
    # under strict_dkim: not a 554 but try again later
    assert send(strict, signed, "a@dk-down.test") == (
        451, "4.4.3 DKIM key could not be looked up; try again later")


def test_malformed_signatures_and_seals_are_results_not_crashes(mx):
    tok = token()
    junk = (b"DKIM-Signature: v=1; a=rsa-sha256; d=junk.test; s=sel; h=from; bh=AAAA\r\n"
            b"DKIM-Signature: ;;;==;\r\n"
            b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=junk.test; s=sel; b=AAAA\r\n")
    assert send(mx, junk + message("a@junk.test", tok), "a@junk.test")[0] == 250
    assert results(delivered(mx, tok)) == expect(
        "spf=none smtp.mailfrom=a@junk.test",
        "dkim=neutral (missing b=) header.d=junk.test header.s=sel",
        "dkim=neutral (bad signature field)",
        "dmarc=none header.from=junk.test",
        "arc=fail (Incomplete ARC set for instance 1)")
