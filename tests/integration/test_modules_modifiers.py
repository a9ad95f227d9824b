"""A configured list of modifiers runs through the module interface: the same
fields as the direct path, in the configured order, DKIM signatures that verify."""

from __future__ import annotations

from .doc_examples import example
from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
)
from .support import ALICE, BOB, PASSWORD, make_message, parse, token
from .test_outbound_dkim import _publish, _signatures, _verify_all


def test_generic_modifiers_sign_and_complete_the_header(outbound, dns):
    srv = outbound(start=False, extra_toml=(
        '[pipeline.submission]\nmodifiers = ["dkim_sign", "received", "submission_headers"]\n'))
    _publish(srv, dns)
    srv.start()
    tok = token()
    raw = (f"From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: {tok}\r\n"
           "X-Folded: one\r\n two\r\n\r\nbody line\r\n").encode()
    with srv.submission(ALICE, PASSWORD) as s:
        s.sendmail(ALICE, [BOB], raw)
    (got,) = srv.wait_for_messages(BOB, 1)
    msg = parse(got)
    assert msg["Subject"] == tok
    assert msg["Message-ID"] and msg["Date"]  # submission_headers
    assert "by mx.example.test (pillarbox)" in msg["Received"]
    assert b"\r\nX-Folded: one\r\n two\r\n" in got  # a folded field stays as it was
    assert got.endswith(b"\r\n\r\nbody line\r\n")
    head = got.split(b"\r\n\r\n", 1)[0]
    # signed last (body phase after every header phase): it covers the fields added
    assert head.index(b"DKIM-Signature:") < head.index(b"Received: from")
    assert len(_signatures(got)) == 2
    delivered = got.split(b"\r\n", 2)[2]  # without Return-Path and Delivered-To
    assert _verify_all(delivered, dns) == [True, True]


def test_generic_modifiers_without_signing_leave_the_message_unsigned(make_server):
    srv = make_server(extra_toml='[pipeline.submission]\nmodifiers = ["received"]\n')
    tok = token()
    raw = f"From: <{ALICE}>\r\nSubject: {tok}\r\n\r\nno date, no id\r\n".encode()
    with srv.submission(ALICE) as s:
        s.sendmail(ALICE, [BOB], raw)
    (got,) = srv.wait_for_messages(BOB, 1)
    msg = parse(got)
    assert msg["Subject"] == tok and msg["Received"]
    assert msg["Message-ID"] is None and msg["Date"] is None and msg["DKIM-Signature"] is None


REWRITE = '''
[module.old_to_new]
kind = "replace_rcpt"
table = { "@old-domain.test" = "@example.test" }

[pipeline.submission]
modifiers = ["received", "submission_headers", "dkim_sign", "old_to_new"]
'''


def test_a_recipient_rewriting_modifier_delivers_to_the_new_domain(make_server):
    srv = make_server(extra_toml=REWRITE)
    tok = token()
    with srv.submission(ALICE) as s:
        s.sendmail(ALICE, ["bob@old-domain.test"], make_message(ALICE, "bob@old-domain.test",
                                                                tok))
    (got,) = srv.wait_for_messages(BOB, 1)
    assert parse(got)["Subject"] == tok
    assert b"Delivered-To: bob@example.test" in got
    p = srv.cli("config", "show")  # an inline table of options shows and loads again
    assert p.returncode == 0, p.stderr
    assert '[module.old_to_new]\nkind = "replace_rcpt"\ntable = { "@old-domain.test" = ' \
        '"@example.test" }' in p.stdout
    srv.cfg_path.write_text(p.stdout)
    assert srv.cli("check").returncode == 0


# docs/MODULES.md's example
MX_REWRITE = example("recipient rewriting from old-domain.test to example.test")


def test_mail_from_outside_for_the_old_domain_reaches_the_new_one(make_server):
    """On the MX the rewrite happens before the checks judge the address: a
    domain we no longer list is not relaying, and an unknown user stays unknown."""
    srv = make_server(extra_toml=MX_REWRITE)
    tok = token()
    with srv.smtp() as s:
        s.sendmail("someone@remote.test", ["bob@old-domain.test"],
                   make_message("someone@remote.test", "bob@old-domain.test", tok))
        assert s.mail("someone@remote.test")[0] == 250
        code, text = s.rcpt("nobody@old-domain.test")
        assert code == 550 and b"nobody@example.test" in text, (code, text)
        s.rset()
    (got,) = srv.wait_for_messages(BOB, 1)
    assert parse(got)["Subject"] == tok
    assert b"Delivered-To: bob@example.test" in got
