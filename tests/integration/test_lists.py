"""Mailing lists (issue 18) over real SMTP: local members get the post in
their Maildir, remote ones through the queue to an SMTP double (their MX in
the tests' DNS server), which records what arrived. Every test runs against
SQLite and PostgreSQL (the lists live in the directory database)."""

from __future__ import annotations

import base64
import email
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pillarbox.lists.store import ListStore
from pillarbox.lists.unsubscribe import unsubscribe
from pillarbox.store.backend import open_database

from .dns_server import DNSServer, query_txt
from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    REMOTE,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
)
from .pg_server import BACKENDS
from .support import ALICE, BOB, DOMAIN, free_ports, make_message, token, wait_until
from .test_http import get as http_get

TEAM = f"team@{DOMAIN}"
CAROL = f"carol@{REMOTE}"
DAVE = f"dave@{REMOTE}"
STRANGER = f"mallory@{REMOTE}"
UNSUB_URL = "https://mx.example.test/lists/unsubscribe/{token}"

pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)


def _lists_toml(**options) -> str:
    opts = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in options.items())
    return (f'[module.lists]\nkind = "mailing_list"\n{opts}\n'
            f'[[rule]]\nrcpt = ["{TEAM}", "team+*@{DOMAIN}", "team-*@{DOMAIN}"]\n'
            'targets = ["lists"]\n')


@pytest.fixture(name="list_server")
def fixture_list_server(outbound, dns):
    """A server with team@ (owner and moderator alice@, members alice@, bob@,
    carol@remote.test), its DKIM keys in DNS, remote.test's MX the double."""
    made = []

    def make(members=(ALICE, BOB, CAROL), http_port=None, **options):
        listen = {"listen.http": [f"127.0.0.1:{http_port}"]} if http_port else {}
        srv = outbound(listen, start=False, extra_toml=_lists_toml(**options))
        zone = srv.cli_ok("dns").stdout
        assert dns.load_zone(zone) > 0, zone
        point_mx(dns, REMOTE)
        srv.cli_ok("list", "create", TEAM, "--name", "Team", "--owner", ALICE)
        made.append(srv)
        store = _store(srv)  # the CLI's own tables, without a process per step
        store.set(TEAM, "moderators", ALICE)
        store.add_members(TEAM, list(members))
        srv.start()
        return srv

    yield make
    for srv in made:
        srv.list_store.db.close()


def _store(srv) -> ListStore:
    """The lists in the database the server's config names (as the CLI opens it)."""
    if getattr(srv, "list_store", None) is None:
        srv.list_store = ListStore(open_database(srv.config["storage"]["url"], srv.data_dir))
    return srv.list_store


def _members(srv) -> dict[str, bool]:
    return dict(_store(srv).members(TEAM))


def _held(srv) -> list:
    return _store(srv).held(TEAM)


def _send(srv, frm: str, rcpt: str, message: bytes):
    """MAIL, RCPT, DATA on the MX port: (RCPT reply, DATA reply or None)."""
    with srv.smtp() as s:
        s.mail(frm)
        rcpt_reply = s.rcpt(rcpt)
        if rcpt_reply[0] != 250:
            return rcpt_reply, None
        return rcpt_reply, s.data(message)


def _dkim_key(dns: DNSServer, domain: str) -> bytes:
    """An RSA key of `domain` (selector "s1") published in the tests' DNS; its PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    dns.txt(f"s1._domainkey.{domain}", f"v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}")
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _signed(message: bytes, domain: str, pem: bytes) -> bytes:
    return dkim.sign(message, b"s1", domain.encode(), pem,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + message


def _verdicts(content: bytes, dns: DNSServer) -> dict[str, bool]:
    """d= of each DKIM signature -> whether it verifies."""
    d = dkim.DKIM(content)
    sigs = email.message_from_bytes(content).get_all("DKIM-Signature", [])
    out = {}
    for i, s in enumerate(sigs):
        dom = re.search(r"\bd=([^;\s]+)", str(s)).group(1)
        ok = d.verify(idx=i, dnsfunc=lambda name, timeout=5: query_txt(dns, name, timeout))
        out[dom] = out.get(dom, False) or ok
    return out


def _header(content: bytes, name: str) -> str | None:
    v = email.message_from_bytes(content).get(name)
    return None if v is None else " ".join(str(v).split())


def test_post_reaches_every_member_once_with_list_headers(list_server, dns, double):
    srv = list_server()
    pem = _dkim_key(dns, REMOTE)
    subject = f"hello list {token()}"
    post = _signed(make_message(CAROL, TEAM, subject, "Signed by remote.test.\r\n"), REMOTE, pem)

    rcpt, data = _send(srv, CAROL, TEAM, post)
    assert rcpt[0] == 250 and data[0] == 250, (rcpt, data)

    (remote,) = double.wait_for_messages(1)
    # VERP: the envelope sender names the member
    assert remote.mail_from == f"team+bounces-carol={REMOTE}@{DOMAIN}"
    assert remote.rcpts == [CAROL]
    for local in (ALICE, BOB):
        (copy,) = srv.wait_for_messages(local, 1)
        assert _header(copy, "List-Id") == '"Team" <team.example.test>'
        assert _header(copy, "Return-Path") == f"<team+bounces@{DOMAIN}>"
    c = remote.content
    assert _header(c, "List-Id") == '"Team" <team.example.test>'
    assert _header(c, "List-Post") == f"<mailto:{TEAM}>"
    assert _header(c, "List-Help") == f"<mailto:team-request@{DOMAIN}?subject=help>"
    assert _header(c, "List-Subscribe") == f"<mailto:team-subscribe@{DOMAIN}>"
    assert _header(c, "List-Unsubscribe") == f"<mailto:team-unsubscribe@{DOMAIN}>"
    assert _header(c, "Precedence") == "list"
    assert _header(c, "Subject") == subject  # no prefix by default
    assert _header(c, "From") == f"<{CAROL}>"  # remote.test publishes no DMARC policy
    assert _header(c, "ARC-Seal") is not None
    # the author's signature still verifies, and the list's own
    assert _verdicts(c, dns) == {REMOTE: True, DOMAIN: True}

    # Once each: nothing more arrives once the queue is empty.
    wait_until(lambda: not srv.queue_list(), 15, "an empty queue")
    assert len(double.messages) == 1
    assert len(srv.messages(ALICE)) == len(srv.messages(BOB)) == 1

    # A message carrying our List-Id (a member's auto-forward) is not resent.
    rcpt, data = _send(srv, CAROL, TEAM, c)
    assert data[0] == 250
    wait_until(lambda: "list loop" in srv.log_text(), 10, "the loop to be noticed")
    wait_until(lambda: not srv.queue_list(), 15, "an empty queue")
    assert len(double.messages) == 1 and len(srv.messages(BOB)) == 1

    # Members only (the default): a stranger is refused at RCPT, no bounce later.
    rcpt, _ = _send(srv, STRANGER, TEAM, make_message(STRANGER, TEAM, "spam"))
    assert rcpt[0] == 550 and rcpt[1].startswith(b"5.7.1"), rcpt
    rcpt, _ = _send(srv, CAROL, f"nolist+x@{DOMAIN}", make_message(CAROL, TEAM, "x"))
    assert rcpt[0] == 550, rcpt
    # addresses the rule routes to the list that are none of its own, or forged tokens
    for bad, status in ((f"team+garbage@{DOMAIN}", b"5.1.1"), (f"team-x@{DOMAIN}", b"5.1.1"),
                        (f"team+approve-00ff@{DOMAIN}", b"5.7.1"),
                        (f"team+confirm-{'a' * 300}@{DOMAIN}", None)):
        rcpt, _ = _send(srv, CAROL, bad, make_message(CAROL, bad, "x"))
        assert rcpt[0] in (501, 550), (bad, rcpt)
        assert status is None or rcpt[1].startswith(status), (bad, rcpt)


def test_dmarc_reject_author_gets_a_rewritten_from(list_server, dns, double):
    srv = list_server(members=(BOB, CAROL, "erin@strict.test"))
    dns.txt("_dmarc.strict.test", "v=DMARC1; p=reject")
    author = "erin@strict.test"
    msg = make_message(author, TEAM, f"strict {token()}").replace(
        f"From: <{author}>".encode(), f'From: "Erin Example" <{author}>'.encode())
    rcpt, data = _send(srv, author, TEAM, msg)
    assert data[0] == 250, (rcpt, data)
    (copy,) = srv.wait_for_messages(BOB, 1)
    assert _header(copy, "From") == f'"Erin Example via Team" <{TEAM}>'
    assert _header(copy, "Reply-To") == f'"Erin Example" <{author}>'
    (remote,) = double.wait_for_messages(1)
    assert _verdicts(remote.content, dns) == {DOMAIN: True}


def test_moderated_post_held_then_approved_by_reply(list_server, double):
    srv = list_server()
    _store(srv).set(TEAM, "policy", "moderated")
    subject = f"needs approval {token()}"
    rcpt, data = _send(srv, CAROL, TEAM, make_message(CAROL, TEAM, subject))
    assert data[0] == 250
    # the moderator (alice@) is asked; nobody else got anything
    (notice,) = srv.wait_for_messages(ALICE, 1)
    reply_to = _header(notice, "Reply-To").strip("<>")
    tok = re.fullmatch(rf"team\+approve-([0-9a-f]+)@{DOMAIN}", reply_to).group(1)
    held = srv.cli_ok("list", "held").stdout  # the CLI's listing, once
    assert tok in held and subject in held
    assert srv.messages(BOB) == [] and double.messages == []

    # a stranger cannot approve with the token
    _, data = _send(srv, STRANGER, reply_to, make_message(STRANGER, reply_to, "Re: ok"))
    assert data[0] == 250
    wait_until(lambda: "not a moderator" in srv.log_text(), 10, "the refusal")
    assert [h.token for h in _held(srv)] == [tok]

    # the moderator replies: delivered to everyone
    _, data = _send(srv, ALICE, reply_to, make_message(ALICE, reply_to, "Re: approve"))
    assert data[0] == 250
    (copy,) = srv.wait_for_messages(BOB, 1)
    assert _header(copy, "Subject") == subject
    double.wait_for_messages(1)
    assert _held(srv) == []
    # the token is used up: refused in the dialogue
    rcpt, _ = _send(srv, ALICE, reply_to, make_message(ALICE, reply_to, "again"))
    assert rcpt[0] == 550, rcpt

    # and with the CLI
    subject2 = f"second {token()}"
    _send(srv, CAROL, TEAM, make_message(CAROL, TEAM, subject2))
    (held2,) = wait_until(lambda: _held(srv), 10, "the hold")
    assert held2.subject == subject2
    tok2 = held2.token
    srv.cli_ok("list", "approve", tok2)
    msgs = srv.wait_for_messages(BOB, 2)
    assert any(subject2.encode() in m for m in msgs)


def _confirm_by_mail(srv, double, who: str, to: str, n: int, subject: str = "") -> None:
    """`who` writes to `to`, then answers the confirmation request (the n-th
    message the double receives)."""
    _, data = _send(srv, who, to, make_message(who, to, subject or "please"))
    assert data[0] == 250, data
    req = double.wait_for_messages(n)[n - 1]
    assert req.rcpts == [who]
    confirm = _header(req.content, "Reply-To").strip("<>")
    assert re.fullmatch(rf"team\+confirm-[0-9a-f]+@{DOMAIN}", confirm), confirm
    _, data = _send(srv, who, confirm, make_message(who, confirm, "Re: confirm"))
    assert data[0] == 250


def test_subscribe_and_unsubscribe_by_mail_with_confirmation(list_server, double):
    srv = list_server(members=(ALICE,))
    _confirm_by_mail(srv, double, DAVE, f"team-subscribe@{DOMAIN}", 1)
    wait_until(lambda: DAVE in _members(srv), 10, "dave joined")
    owner_note = srv.wait_for_messages(ALICE, 1)[0]
    assert f"{DAVE} joined".encode() in owner_note
    double.wait_for_messages(2)  # dave's welcome

    _confirm_by_mail(srv, double, DAVE, f"team-request@{DOMAIN}", 3, subject="unsubscribe")
    wait_until(lambda: DAVE not in _members(srv), 10, "dave left")
    assert any(f"{DAVE} left".encode() in m for m in srv.wait_for_messages(ALICE, 2))


def test_one_click_unsubscribe_token(list_server, double):
    (http,) = free_ports(1)
    srv = list_server(unsubscribe_url=UNSUB_URL, http_port=http)
    _send(srv, CAROL, TEAM, make_message(CAROL, TEAM, f"one-click {token()}"))
    (remote,) = double.wait_for_messages(1)
    unsub = _header(remote.content, "List-Unsubscribe")
    assert _header(remote.content, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    m = re.match(r"<https://mx\.example\.test/lists/unsubscribe/([^>]+)>, "
                 rf"<mailto:team-unsubscribe@{DOMAIN}>$", unsub)
    assert m, unsub
    (local,) = srv.wait_for_messages(BOB, 1)
    bob_token = re.search(r"unsubscribe/([^>]+)>", _header(local, "List-Unsubscribe")).group(1)
    assert bob_token != m.group(1)  # per member

    store = _store(srv)
    forged = m.group(1)[:-1] + ("0" if m.group(1)[-1] != "0" else "1")
    assert unsubscribe(forged, store) is None
    assert unsubscribe("garbage", store) is None

    # over the server's own HTTP endpoint, as a mail client's button does (RFC 8058)
    def url(tok: str) -> str:
        return f"http://127.0.0.1:{http}/lists/unsubscribe/{tok}"

    one_click = {"data": {"List-Unsubscribe": "One-Click"}}
    status, _, page = http_get(url(m.group(1)))  # a GET only asks
    assert status == 200 and b"method=post" in page and CAROL.encode() in page
    assert CAROL in _members(srv)
    assert http_get(url(m.group(1)), "POST", data={"x": "y"})[0] == 400
    assert http_get(url(forged), "POST", **one_click)[0] == 404
    assert http_get(url("A" * 5000), "POST", **one_click)[0] in (400, 404, 414)
    status, _, body = http_get(url(m.group(1)), "POST", **one_click)
    assert status == 200, body
    assert CAROL not in _members(srv)
    assert http_get(url(m.group(1)), "POST", **one_click)[0] == 404  # done already
    assert BOB in _members(srv)


def test_member_disabled_after_repeated_dsns_to_their_verp_address(list_server, double):
    srv = list_server(bounce_limit=2)
    verp = f"team+bounces-carol={REMOTE}@{DOMAIN}"
    for i in range(2):
        dsn = make_message(f"mailer-daemon@{REMOTE}", verp, f"Undelivered {i}",
                           "550 5.1.1 no such user\r\n")
        _, data = _send(srv, "", verp, dsn)
        assert data[0] == 250, data
    wait_until(lambda: _members(srv).get(CAROL) is False, 10, "carol disabled")
    assert f"{CAROL}\tdisabled" in srv.cli_ok("list", "members", TEAM).stdout
    (note,) = srv.wait_for_messages(ALICE, 1)
    assert f"{CAROL} disabled".encode() in note
    # posts no longer go to her
    _send(srv, BOB, TEAM, make_message(BOB, TEAM, f"after {token()}"))
    srv.wait_for_messages(ALICE, 2)
    wait_until(lambda: not srv.queue_list(), 15, "an empty queue")
    assert double.messages == []
