"""pillarbox beside an MTA, spoken to directly: the tcp_table maps (raw
sockets, as Postfix's tcp: client speaks), LMTP (smtplib.LMTP) and the policy
service (raw sockets). The same through a real Postfix: test_postfix_real.py."""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from .outbound import fixture_dns  # noqa: F401 (a fixture: pytest finds it by name)
from .pgp_keys import sequoia_key
from .support import ALICE, BOB, DOMAIN, free_ports, make_message, port_open, token, wait_until

CAROL = f"carol@{DOMAIN}"

POLICY_TOML = """
[module.limit]
kind = "rate_limit"
per_ip = 1
burst = 2

[module.grey]
kind = "greylist"

[pipeline.policy]
checks = ["limit", "grey"]
"""


@pytest.fixture
def beside(make_server, tmp_path):
    lmtp, access, alias, policy = free_ports(4)
    sock = tmp_path / "lmtp.sock"
    srv = make_server({
        "listen.lmtp": [f"127.0.0.1:{lmtp}", str(sock)],
        "postfix.recipient_access": [f"127.0.0.1:{access}"],
        "postfix.virtual_alias": [f"127.0.0.1:{alias}"],
        "postfix.policy": [f"127.0.0.1:{policy}"],
        "limits.max_message_size": "40K",
    }, extra_toml=POLICY_TOML)
    for port in (lmtp, access, alias, policy):
        wait_until(lambda port=port: port_open(port), 10, f"port {port}")
    srv.lmtp_port, srv.lmtp_sock = lmtp, sock
    srv.access_port, srv.alias_port, srv.policy_port = access, alias, policy
    return srv


class Table:
    """A persistent tcp_table(5) client connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, raw: bytes) -> str:
        self.sock.sendall(raw)
        return self.file.readline().decode().rstrip("\n")

    def get(self, key: str) -> str:
        return self.send(f"get {key}\n".encode())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_recipient_access_map_answers_as_postfix_expects(beside):
    beside.add_user(CAROL, quota="1K")
    beside.cli_ok("user", "disable", BOB)
    with beside.smtp() as s:  # 2K into a 1K mailbox: carol is over quota after it
        s.sendmail("x@remote.test", [CAROL], make_message("x@remote.test", CAROL, "fill",
                                                          body=("y" * 70 + "\r\n") * 30))
    beside.wait_for_messages(CAROL, 1)
    beside.add_alias(f"team@{DOMAIN}", ALICE)
    t = Table(beside.access_port)
    try:
        assert t.get(ALICE) == "200 OK"
        assert t.get(f"alice+news@{DOMAIN}") == "200 OK"
        assert t.get(f"team@{DOMAIN}") == "200 OK"
        assert t.get(f"nobody@{DOMAIN}").startswith("500 ")
        assert t.get(DOMAIN).startswith("500 ")  # Postfix's partial keys are never ours
        assert t.get("alice@").startswith("500 ")
        assert t.get("alice@remote.test").startswith("500 ")
        assert wait_until(lambda: t.get(BOB) != "200 OK" and t.get(BOB), 5, "bob disabled") \
            == "200 REJECT%205.2.1%20mailbox%20disabled"
        assert wait_until(lambda: t.get(CAROL) != "200 OK" and t.get(CAROL), 5, "carol full") \
            == "200 DEFER_IF_PERMIT%204.2.2%20mailbox%20full,%20try%20again%20later"
        assert t.get("ALICE%40example.test") == "200 OK"  # %XX decoded, case folded
    finally:
        t.close()


def test_maps_see_cli_changes_within_a_second(beside):
    dave = f"dave@{DOMAIN}"
    access, alias = Table(beside.access_port), Table(beside.alias_port)
    try:
        assert access.get(dave).startswith("500 ")
        assert alias.get(f"crew@{DOMAIN}").startswith("500 ")
        beside.add_user(dave)
        beside.add_alias(f"crew@{DOMAIN}", dave, BOB)
        changed = time.monotonic()
        wait_until(lambda: access.get(dave) == "200 OK", 3, "dave in the access map")
        wait_until(lambda: alias.get(f"crew@{DOMAIN}").startswith("200 "), 3, "crew alias")
        # The cache looks for changes once a second: seen within that, plus slack.
        assert time.monotonic() - changed < 1.5
        beside.cli_ok("user", "disable", dave)
        wait_until(lambda: access.get(dave).startswith("200 REJECT"), 3, "dave disabled")
    finally:
        access.close()
        alias.close()


def test_virtual_alias_map_expands_aliases_only(beside):
    beside.add_alias(f"team@{DOMAIN}", ALICE, BOB, "friend@remote.test")
    beside.add_alias(f"hook@{DOMAIN}", "|cat >/dev/null")
    beside.add_alias(f"@{DOMAIN}", ALICE)  # catch-all: for addresses nobody has
    t = Table(beside.alias_port)
    try:
        assert t.get(f"team@{DOMAIN}") == f"200 {ALICE},{BOB},friend@remote.test"
        assert t.get(ALICE).startswith("500 ")  # a user, no alias
        assert t.get(f"alice+tag@{DOMAIN}").startswith("500 ")  # pillarbox files the detail
        assert t.get(f"hook@{DOMAIN}").startswith("500 ")  # |command: pillarbox expands it
        assert t.get(f"someone@{DOMAIN}") == f"200 {ALICE}"  # the catch-all
        assert t.get(f"@{DOMAIN}").startswith("500 ")  # never to users that exist
        assert t.get("x@remote.test").startswith("500 ")
    finally:
        t.close()


def test_tcp_table_hostile_input_gets_errors_not_a_crash(beside):
    t = Table(beside.access_port)
    try:
        assert t.send(b"put alice x\n").startswith("400 ")
        assert t.send(b"get " + b"a" * 5000 + b"\n").startswith("400 ")
        assert t.get(ALICE) == "200 OK"  # in step after the over-long line
        assert t.send(b"get \xff\xfe@example.test\n").startswith("500 ")
        assert t.send(b"get %00%0a@example.test\n").startswith("500 ")
        assert t.send(b"\n").startswith("400 ")
        assert t.get(ALICE) == "200 OK"
    finally:
        t.close()


def _lmtp(beside, via_socket: bool = False) -> smtplib.LMTP:
    if via_socket:
        c = smtplib.LMTP(str(beside.lmtp_sock), local_hostname="postfix.test", timeout=10)
    else:
        c = smtplib.LMTP("127.0.0.1", beside.lmtp_port, local_hostname="postfix.test",
                         timeout=10)
    code, _ = c.ehlo()  # smtplib.LMTP sends LHLO
    assert code == 250
    return c


def test_lmtp_delivers_with_a_reply_per_recipient(beside):
    beside.add_user(CAROL, quota="10K")
    c = _lmtp(beside)
    try:
        assert c.docmd("EHLO postfix.test")[0] == 500  # LMTP is LHLO only
        assert c.mail("sender@remote.test")[0] == 250
        for r in (ALICE, CAROL, BOB):
            assert c.rcpt(r)[0] == 250
        mark = token()
        big = make_message("sender@remote.test", [ALICE, CAROL, BOB], mark,
                           body=("z" * 70 + "\r\n") * 200)  # ~14K: more than carol's quota
        replies = [c.data(big)] + [c.getreply() for _ in range(2)]
        assert [r[0] for r in replies] == [250, 552, 250]
        assert replies[1][1].startswith(b"5.2.2 <carol@example.test>")
        # One message, queued once for the two who take it.
        assert replies[0][1] == replies[2][1]
    finally:
        c.close()
    for r in (ALICE, BOB):
        (msg,) = beside.wait_for_messages(r, 1)
        assert mark.encode() in msg and b"with LMTP" in msg
    assert beside.messages(CAROL) == []


def test_lmtp_full_mailbox_gets_452_after_data(beside):
    beside.add_user(CAROL, quota="10K")
    msg = make_message("sender@remote.test", CAROL, "six", body=("q" * 70 + "\r\n") * 85)
    c = _lmtp(beside, via_socket=True)
    try:
        c.mail("sender@remote.test")
        c.rcpt(CAROL)
        assert c.data(msg)[0] == 250  # ~6K of 10K
        beside.wait_for_messages(CAROL, 1)
        c.mail("sender@remote.test")
        c.rcpt(CAROL)
        c.rcpt(ALICE)
        code, text = c.data(msg)  # another 6K does not fit
        assert (code, text[:5]) == (452, b"4.2.2")
        assert c.getreply()[0] == 250  # alice takes it
    finally:
        c.close()
    beside.wait_for_messages(ALICE, 1)


def test_lmtp_message_too_large_is_refused_for_each_recipient(beside):
    c = _lmtp(beside)
    try:
        c.mail("sender@remote.test")
        c.rcpt(ALICE)
        c.rcpt(BOB)
        c.rcpt(ALICE)  # a repeat gets its own reply too (RFC 2033 4.2)
        huge = make_message("sender@remote.test", ALICE, "big", body=("h" * 70 + "\r\n") * 800)
        replies = [c.data(huge)] + [c.getreply() for _ in range(2)]
        assert [(r[0], r[1][:5]) for r in replies] == [(552, b"5.3.4")] * 3
        assert c.noop()[0] == 250  # in step after the refusal
        assert c.rcpt(ALICE)[0] == 503  # the transaction is over
    finally:
        c.close()


def test_lmtp_refuses_other_domains_and_unknown_users(beside):
    c = _lmtp(beside)
    try:
        c.mail("sender@remote.test")
        assert c.rcpt("someone@remote.test")[:2] == (554, c.rcpt("x@remote.test")[1])
        assert c.rcpt("someone@remote.test")[1].startswith(b"5.7.1 Relaying denied")
        assert c.rcpt(f"nobody@{DOMAIN}")[0] == 550
    finally:
        c.close()


class Policy:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def ask(self, **attrs: str) -> str:
        req = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
               "client_address": "192.0.2.7", "helo_name": "mx.remote.test", **attrs}
        self.sock.sendall("".join(f"{k}={v}\n" for k, v in req.items()).encode() + b"\n")
        lines = []
        while (line := self.file.readline()) not in (b"\n", b""):
            lines.append(line.decode().rstrip("\n"))
        assert len(lines) == 1 and lines[0].startswith("action="), lines
        return lines[0][len("action="):]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_policy_service_rate_limit_and_greylisting(beside):
    p = Policy(beside.policy_port)
    try:
        # Greylisting comes first for a new triplet; a rate limit of burst 2 per
        # client address then bites at the third message, however many recipients.
        first = p.ask(instance="m1", sender="a@remote.test", recipient=ALICE)
        assert first == "DEFER_IF_PERMIT 4.7.1 Greylisted, please try again later"
        for inst in ("m1", "m2"):  # m1's second recipient does not count again
            p.ask(instance=inst, sender="a@remote.test", recipient=BOB)
        third = p.ask(instance="m3", sender="a@remote.test", recipient=ALICE)
        assert third == "DEFER_IF_PERMIT 4.7.1 Too many messages from your address, try again later"
        other = p.ask(instance="m4", sender="a@remote.test", recipient=ALICE,
                      client_address="198.51.100.9", sasl_username="alice")
        assert other == "DUNNO"  # logged in: neither limited by address nor greylisted
    finally:
        p.close()


def test_policy_service_hostile_input(beside):
    p = Policy(beside.policy_port)
    try:
        assert p.ask(request="something_else") == "DUNNO"
        p.sock.sendall(b"no equals sign here\n\n")
        assert p.file.readline().startswith(b"action=DEFER_IF_PERMIT 4.3.0")
        assert p.file.readline() == b"\n"
        assert p.file.readline() == b""  # and closed
    finally:
        p.close()
    p = Policy(beside.policy_port)
    try:
        p.sock.sendall(b"x=" + b"y" * 5000 + b"\n\n")
        assert p.file.readline().startswith(b"action=DEFER_IF_PERMIT")
    finally:
        p.close()


def test_policy_service_dnsbl_verdicts(make_server, dns):
    dns.a("7.2.0.192.bl.test", "127.0.0.2")
    dns.a("7.2.0.192.score.test", "127.0.0.4")
    dns.a("9.2.0.192.score.test", "127.0.0.4")
    (port,) = free_ports(1)
    make_server({"postfix.policy": [f"127.0.0.1:{port}"],
                "dns.nameservers": [dns.address]}, extra_toml="""
[module.bl]
kind = "dnsbl"
zones = ["bl.test"]

[module.scored]
kind = "dnsbl"
zones = [{zone = "score.test", reject = false, score = 2}]

[pipeline.policy]
checks = ["scored", "bl"]
""")
    wait_until(lambda: port_open(port), 10, "the policy port")
    p = Policy(port)
    try:
        assert p.ask(instance="d1", recipient=ALICE) == \
            "554 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.test"
        assert p.ask(instance="d2", recipient=ALICE, client_address="192.0.2.8") == "DUNNO"
        scored = {"recipient": ALICE, "client_address": "192.0.2.9"}
        assert p.ask(instance="d3", **scored) == "PREPEND X-DNSBL: score=2; score.test=127.0.0.4"
        assert p.ask(instance="d3", **scored) == "DUNNO"  # once per message, not per recipient
    finally:
        p.close()
    assert dns.queried("7.2.0.192.bl.test", "A")


def test_recipient_without_a_required_key_is_deferred(make_server, tmp_path):
    """Encryption at rest with no_key = "defer": Postfix is told DEFER_IF_PERMIT
    for a user (or an alias reaching one) who has no key yet, OK once imported."""
    (access,) = free_ports(1)
    srv = make_server({"postfix.recipient_access": [f"127.0.0.1:{access}"],
                       "encryption.users": [ALICE], "encryption.no_key": "defer"})
    wait_until(lambda: port_open(access), 10, "the access map")
    srv.add_alias(f"team@{DOMAIN}", ALICE)
    deferred = ("200 DEFER_IF_PERMIT%204.7.0%20recipient%20has%20not%20set%20up%20an"
                "%20encryption%20key%20yet")
    t = Table(access)
    try:
        assert t.get(ALICE) == deferred
        assert wait_until(lambda: t.get(f"team@{DOMAIN}") == deferred, 5, "the alias")
        assert t.get(BOB) == "200 OK"  # not required to have one
        key = tmp_path / "alice.key"
        key.write_bytes(bytes(sequoia_key(ALICE).extract_certificate()))
        srv.cli_ok("user", "key", "import", ALICE, key)
        assert wait_until(lambda: t.get(ALICE) == "200 OK", 5, "the key counted")
    finally:
        t.close()
