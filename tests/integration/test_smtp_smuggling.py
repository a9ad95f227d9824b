"""SMTP smuggling: a bare CR or LF never ends the data, and is refused.

Each variant sends a message whose body holds a fake end-of-data followed by a
whole smuggled transaction, then the real CRLF.CRLF. The server must answer
that with ONE reply (554 5.6.0), deliver neither message, and keep the session
usable.
"""

from __future__ import annotations

import base64

import pytest

from .support import (
    ALICE,
    BOB,
    CLIENT_NAME,
    PASSWORD,
    make_message,
    parse,
    token,
    wait_until,
)

VARIANTS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "CRLF.LF": b"\r\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
}


def _session_after_refusal(server, c, tok):
    """On the same connection: one clean transaction, then QUIT; exact replies."""
    c.send(
        f"MAIL FROM:<after@remote.test>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n"
    )
    codes = [c.reply().code for _ in range(4)]
    assert codes == [250, 250, 250, 354], (
        f"replies after the refusal are out of step (smuggled commands ran?): {codes}"
    )
    c.send(make_message("after@remote.test", [ALICE, BOB], f"after {tok}") + b".\r\nQUIT\r\n")
    rest = c.replies_until_close()
    assert [r.code for r in rest] == [250, 221], [str(r) for r in rest]


def _only_the_clean_message_arrives(server, tok):
    for rcpt in (ALICE, BOB):
        server.wait_for_messages(rcpt, 1)
    wait_until(lambda: server.queue_list() == [], 10, "the queue to drain")
    for rcpt in (ALICE, BOB):
        msgs = server.messages(rcpt)
        subjects = [parse(m)["Subject"] for m in msgs]
        assert subjects == [f"after {tok}"], f"{rcpt} got {subjects}"
        for m in msgs:
            assert b"smuggled" not in m and b"evil" not in m


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_smuggling_variant_refused_with_one_reply(server, variant):
    tok = token()
    fake_end = VARIANTS[variant]
    outer = (
        f"From: <a@remote.test>\r\nTo: <{ALICE}>\r\nSubject: outer {tok}\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <o{tok}@remote.test>\r\n"
        f"\r\nhello {tok}"
    ).encode()
    smuggled = (
        f"MAIL FROM:<evil@remote.test>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n"
        f"From: <evil@remote.test>\r\nTo: <{BOB}>\r\nSubject: smuggled {tok}\r\n"
        f"\r\nevil body\r\n"
    ).encode()
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        c.expect("MAIL FROM:<a@remote.test>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(outer + fake_end + smuggled + b".\r\n")
        r = c.reply()
        assert r.code == 554 and r.status == "5.6.0", (
            f"{variant}: expected one 554 5.6.0 for bare CR/LF in DATA, got {r}"
        )
        _session_after_refusal(server, c, tok)
    _only_the_clean_message_arrives(server, tok)


@pytest.mark.parametrize("bare", [b"\n", b"\r"], ids=["bare-LF", "bare-CR"])
def test_bare_cr_or_lf_in_body_refused(server, bare):
    tok = token()
    msg = make_message("a@remote.test", ALICE, f"bare {tok}", "one\r\ntwo")
    with server.raw() as c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        c.expect("MAIL FROM:<a@remote.test>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(msg + bare + b"three\r\n.\r\n")
        r = c.reply()
        assert r.code == 554 and r.status == "5.6.0", f"bare {bare!r} in body: {r}"
        _session_after_refusal(server, c, tok)
    _only_the_clean_message_arrives(server, tok)


@pytest.mark.parametrize(("kind", "variant"), [("submission", "LF.LF"),
                                               ("submissions", "CRLF.CR")])
def test_smuggling_refused_on_authenticated_ports(server, kind, variant):
    """The same strict DATA parsing on submission (STARTTLS) and submissions (TLS)."""
    tok = token()
    c = server.raw(kind)
    with c:
        assert c.reply().code == 220
        c.expect(f"EHLO {CLIENT_NAME}", 250)
        if kind == "submission":
            c.starttls()
            c.expect(f"EHLO {CLIENT_NAME}", 250)
        cred = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        c.expect(f"AUTH PLAIN {cred}", 235)
        c.expect(f"MAIL FROM:<{ALICE}>", 250)
        c.expect(f"RCPT TO:<{BOB}>", 250)
        c.expect("DATA", 354)
        c.send(
            f"From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: outer {tok}\r\n\r\nhello".encode()
            + VARIANTS[variant]
            + f"MAIL FROM:<{ALICE}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n"
              f"Subject: smuggled {tok}\r\n\r\nevil\r\n.\r\n".encode()
        )
        r = c.reply()
        assert r.code == 554 and r.status == "5.6.0", f"{kind} {variant}: {r}"
        c.expect("NOOP", 250)
        c.send("QUIT\r\n")
        rest = c.replies_until_close()
        assert [x.code for x in rest] == [221], [str(x) for x in rest]
    # nothing of it is delivered: send a marker and check it is the only mail
    with server.smtp() as s:
        s.sendmail("after@remote.test", [ALICE, BOB],
                   make_message("after@remote.test", [ALICE, BOB], f"after {tok}"))
    _only_the_clean_message_arrives(server, tok)
