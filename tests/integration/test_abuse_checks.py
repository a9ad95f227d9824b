"""Checks at the door on a running server, against the tests' DNS server:
DNSBL (hit, miss, scoring), HELO names, greylisting, the message rate and
the connections per address. Each asserts the exact reply."""

from __future__ import annotations

import psycopg
import pytest

from .outbound import fixture_dns  # noqa: F401 (a fixture: pytest finds it by name)
from .pg_server import BACKENDS
from .support import ALICE, BOB, HOSTNAME, RawSMTP, make_message, parse, token, wait_until


def _pipeline(*checks: str) -> str:
    names = ", ".join(f'"{c}"' for c in checks)
    return f'\n[pipeline.smtp]\nchecks = [{names}, "relay", "recipient"]\n'


def _dnsbl_server(make_server, dns, zones: str, extra: str = ""):
    toml = f'[module.bl]\nkind = "dnsbl"\nzones = {zones}\n{extra}' + _pipeline("bl")
    return make_server({"dns.nameservers": [dns.address]}, extra_toml=toml)


def test_a_dnsbl_listing_is_a_554_greeting_naming_the_zone(make_server, dns):
    dns.a("1.0.0.127.bl.test", "127.0.0.2")
    srv = _dnsbl_server(make_server, dns, '["clean.test", "bl.test"]')
    with srv.raw() as c:
        r = c.reply()
        assert (r.code, r.text) == (
            554, "5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test")
        r = c.cmd("EHLO client.test")
        assert (r.code, r.text) == (503, "5.5.1 Refused at connection, only QUIT is accepted")
        assert c.cmd("QUIT").code == 221
    assert dns.queried("1.0.0.127.clean.test", "A")
    assert "dnsbl listed" in srv.log_text() and "zone=bl.test" in srv.log_text()


def test_no_listing_an_answer_outside_the_codes_or_a_dns_failure_lets_the_client_in(
        make_server, dns):
    dns.a("1.0.0.127.errors.test", "127.255.255.254")  # a list's "you are blocked" code
    dns.a("1.0.0.127.narrow.test", "127.0.0.20")
    dns.servfail("1.0.0.127.broken.test")
    zones = ('["clean.test", "errors.test", "broken.test", '
             '{zone = "narrow.test", codes = ["127.0.0.2-127.0.0.11"]}]')
    srv = _dnsbl_server(make_server, dns, zones)
    tok = token()
    with srv.smtp() as s:
        s.sendmail("a@remote.test", [ALICE], make_message("a@remote.test", ALICE, tok))
    msg = parse(srv.wait_for_messages(ALICE, 1)[0])
    assert msg["Subject"] == tok and msg["X-DNSBL"] is None
    for zone in ("clean.test", "errors.test", "broken.test", "narrow.test"):
        assert dns.queried(f"1.0.0.127.{zone}", "A"), zone
    assert "dnsbl lookup failed" in srv.log_text()


def test_a_scoring_zone_records_and_quarantines_every_message_of_the_connection(
        make_server, dns):
    dns.a("1.0.0.127.score.test", "127.0.0.4")
    srv = _dnsbl_server(make_server, dns, '[{zone = "score.test", reject = false, score = 2}]',
                        "quarantine_score = 2\n")
    toks = [token(), token()]
    with srv.smtp() as s:
        for tok in toks:
            s.sendmail("a@remote.test", [ALICE], make_message("a@remote.test", ALICE, tok))
    junk = srv.maildir(ALICE) / ".Junk" / "new"
    wait_until(lambda: junk.is_dir() and len(list(junk.iterdir())) == 2, 10, "2 mails in Junk")
    msgs = [parse(f.read_bytes()) for f in junk.iterdir()]
    assert sorted(m["Subject"] for m in msgs) == sorted(toks)
    assert [m["X-DNSBL"] for m in msgs] == ["score=2; score.test=127.0.0.4"] * 2
    assert srv.messages(ALICE) == []


def test_helo_names_that_are_refused_and_the_reason(make_server):
    srv = make_server(extra_toml='[module.names]\nkind = "helo"\n' + _pipeline("names"))
    refused = {
        "localhost": "5.7.1 HELO name must be a fully qualified domain name",
        HOSTNAME: "5.7.1 HELO name is our own name, not yours",
        "EXAMPLE.test": "5.7.1 HELO name is our own name, not yours",
        "bad_na!me.test": "5.7.1 HELO name is not a valid host name or address literal",
        "host.-bad-.test": "5.7.1 HELO name is not a valid host name or address literal",
        "[192.0.2.1]": "5.7.1 HELO address literal [192.0.2.1] is not your address [127.0.0.1]",
        "[999.1.1.1]": "5.7.1 HELO address literal is malformed",
    }
    with srv.raw() as c:
        assert c.reply().code == 220
        for name, text in refused.items():
            for verb in ("EHLO", "HELO"):
                r = c.cmd(f"{verb} {name}")
                assert (r.code, r.text) == (550, text), name
        r = c.cmd("MAIL FROM:<a@remote.test>")
        assert (r.code, r.text) == (503, "5.5.1 Send EHLO first")
        c.expect("EHLO [127.0.0.1]", 250)
        c.expect("EHLO client.test", 250)
        c.expect("MAIL FROM:<a@remote.test>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)


def test_helo_record_only_adds_a_header_field(make_server):
    srv = make_server(extra_toml='[module.names]\nkind = "helo"\nrecord_only = true\n'
                                 + _pipeline("names"))
    tok = token()
    with srv.raw() as c:
        assert c.reply().code == 220
        c.expect("EHLO localhost", 250)
        c.expect("MAIL FROM:<a@remote.test>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(make_message("a@remote.test", ALICE, tok) + b".\r\n")
        assert c.reply().code == 250
    msg = parse(srv.wait_for_messages(ALICE, 1)[0])
    assert msg["X-HELO-Check"] == "HELO name must be a fully qualified domain name (localhost)"


def _greylisted(c: RawSMTP, sender: str, rcpt: str) -> tuple[int, str]:
    c.expect("RSET", 250)
    c.expect(f"MAIL FROM:<{sender}>", 250)
    r = c.cmd(f"RCPT TO:<{rcpt}>")
    return r.code, r.text


GREY = (451, "4.7.1 Greylisted, please try again later")


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)
def test_greylisting_refuses_the_first_attempt_then_passes_and_remembers_the_sender(
        make_server, storage, storage_url):
    srv = make_server(extra_toml='[module.grey]\nkind = "greylist"\ndelay = "0s"\n'
                                 + _pipeline("grey"))
    with srv.raw() as c:
        c.reply()
        c.expect("EHLO client.test", 250)
        assert _greylisted(c, "a@remote.test", ALICE) == GREY
        assert _greylisted(c, "a@remote.test", ALICE) == (250, "2.1.5 OK")  # the retry
        # (net, remote.test) passed once: another sender and recipient pass at once.
        assert _greylisted(c, "b@remote.test", BOB) == (250, "2.1.5 OK")
        assert _greylisted(c, "a@other.test", ALICE) == GREY
    srv.restart()  # the tables are in data_dir, or in PostgreSQL
    with srv.raw() as c:
        c.reply()
        c.expect("EHLO client.test", 250)
        assert _greylisted(c, "c@remote.test", ALICE) == (250, "2.1.5 OK")
        assert _greylisted(c, "a@other.test", ALICE) == (250, "2.1.5 OK")
    if storage == "sqlite":
        assert (srv.data_dir / "greylist.sqlite").stat().st_mode & 0o077 == 0
    else:
        assert not (srv.data_dir / "greylist.sqlite").exists()
        with psycopg.connect(storage_url) as db:
            known = db.execute("SELECT domain FROM greylist_known ORDER BY domain").fetchall()
        assert known == [("other.test",), ("remote.test",)]


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)
def test_greylisting_refuses_a_retry_before_the_delay(make_server):
    srv = make_server(extra_toml='[module.grey]\nkind = "greylist"\ndelay = "1h"\n'
                                 'expire = "2h"\n' + _pipeline("grey"))
    with srv.raw() as c:
        c.reply()
        c.expect("EHLO client.test", 250)
        assert _greylisted(c, "a@remote.test", ALICE) == GREY
        assert _greylisted(c, "a@remote.test", ALICE) == GREY


def test_a_burst_of_messages_then_450_at_mail(make_server):
    srv = make_server(extra_toml='[module.rate]\nkind = "rate_limit"\nper_ip = 1\nburst = 3\n'
                                 + _pipeline("rate"))
    with srv.raw() as c:
        c.reply()
        c.expect("EHLO client.test", 250)
        for _ in range(3):
            c.expect("MAIL FROM:<a@remote.test>", 250)
            c.expect("RSET", 250)
    with srv.raw() as c:  # counted per address, across connections
        c.reply()
        c.expect("EHLO client.test", 250)
        r = c.cmd("MAIL FROM:<a@remote.test>")
        assert (r.code, r.text) == (450, "4.7.1 Too many messages from your address, "
                                         "try again later")


def _greeted(srv) -> RawSMTP | None:
    c = srv.raw()
    if c.reply().code == 220:
        return c
    c.close()
    return None


def test_connections_per_address_over_the_limit_get_421(make_server):
    srv = make_server(limits__max_connections_per_ip=2)
    # The harness's port probes count until the server has seen them close.
    first = wait_until(lambda: _greeted(srv), 10, "a first connection")
    second = wait_until(lambda: _greeted(srv), 10, "a second connection")
    try:
        with srv.raw() as third:
            r = third.reply()
            assert (r.code, r.text) == (
                421, f"4.7.0 {HOSTNAME} too many connections from your address, try later")
            assert third.replies_until_close() == []
    finally:
        first.close()
        second.close()
