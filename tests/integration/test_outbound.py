"""Outbound delivery: MX lookup, implicit MX, preference order, routes, TLS policy.

Every test runs a real pillarbox whose resolver is a real DNS server on
127.0.0.1 (dns_server.py) and whose MX hosts resolve to real SMTP servers on
127.0.0.1 (smtp_double.py, aiosmtpd). Mail enters as users send it: an
authenticated submission over STARTTLS, to addresses at other domains.
"""

from __future__ import annotations

from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    DEAD_IP,
    REMOTE,
    REMOTE_MX,
    Submission,
    dsns_in,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
    queue_entry,
    submit,
    wait_deferred,
    wait_dsn,
    wait_queue,
    wait_queue_empty,
)
from .smtp_double import GreetingServer
from .support import ALICE, BOB, make_message, token

CAROL = f"carol@{REMOTE}"


def _body_has(msg, marker: str) -> bool:
    return marker.encode() in msg.content


def test_delivery_via_mx(outbound, dns, double):
    point_mx(dns)
    srv = outbound()
    marker = token()
    qid = submit(srv, CAROL, body=f"marker {marker}\r\n")

    (msg,) = double.wait_for_messages(1)
    assert msg.mail_from == ALICE
    assert msg.rcpts == [CAROL]
    assert _body_has(msg, marker), msg.content[:2000]
    assert msg.tls, "the MX offers STARTTLS: opportunistic TLS must use it"
    assert msg.helo == "out.example.test", "EHLO must give [remote] helo"
    assert msg.auth_user is None
    # The message went out with the headers pillarbox added at submission.
    head = msg.content.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nReceived: " in b"\r\n" + head, head.decode(errors="replace")
    assert dns.queried(REMOTE, "MX") and dns.queried(REMOTE_MX, "A")
    wait_queue_empty(srv)
    assert queue_entry(srv, qid) is None


def test_fallback_to_a_record_without_mx(outbound, dns, double):
    """No MX record: the domain itself is the mail host (RFC 5321 5.1, implicit MX)."""
    dns.a(REMOTE, "127.0.0.1")
    srv = outbound()
    marker = token()
    submit(srv, CAROL, body=f"marker {marker}\r\n")

    (msg,) = double.wait_for_messages(1)
    assert msg.rcpts == [CAROL] and _body_has(msg, marker)
    assert dns.queried(REMOTE, "MX"), "an MX lookup must come first"
    assert dns.queried(REMOTE, "A"), "with no MX, the domain's A record is the mail host"
    wait_queue_empty(srv)


def test_mx_preference_order_skips_dead_first_mx(outbound, dns, double, make_double):
    """MX 10 is dead, MX 20 is up, MX 30 is a backup that must not be used."""
    backup = make_double(host="127.0.0.3", port=double.port)
    dns.mx(REMOTE, (30, "mx30.remote.test"), (10, "mx10.remote.test"),
           (20, "mx20.remote.test"))
    dns.a("mx10.remote.test", DEAD_IP)
    dns.a("mx20.remote.test", "127.0.0.1")
    dns.a("mx30.remote.test", "127.0.0.3")
    srv = outbound()
    marker = token()
    submit(srv, CAROL, body=f"marker {marker}\r\n")

    (msg,) = double.wait_for_messages(1)
    assert _body_has(msg, marker)
    wait_queue_empty(srv)
    assert backup.transactions == [] and backup.connections == 0, (
        f"the MX with preference 30 was used: {backup.summary()}")
    lookups = [name for name, rdtype in dns.queries if rdtype == "A"]
    assert "mx10.remote.test." in lookups, f"the dead MX 10 was never tried: {dns.queries}"
    assert lookups.index("mx10.remote.test.") < lookups.index("mx20.remote.test."), (
        f"MX 20 was tried before MX 10: {dns.queries}")


def test_preferred_mx_gets_the_mail_when_both_are_up(outbound, dns, double, make_double):
    low = make_double(host="127.0.0.3", port=double.port)
    dns.mx(REMOTE, (20, "mx20.remote.test"), (5, "mx5.remote.test"))
    dns.a("mx5.remote.test", "127.0.0.3")
    dns.a("mx20.remote.test", "127.0.0.1")
    srv = outbound()
    submit(srv, CAROL)
    low.wait_for_messages(1)
    wait_queue_empty(srv)
    assert double.transactions == [], f"MX 20 was used while MX 5 was up: {double.summary()}"


def test_one_transaction_for_several_recipients_at_one_domain(outbound, dns, double):
    point_mx(dns)
    point_mx(dns, "other.test")
    rcpts = [f"r{i}@{REMOTE}" for i in range(3)] + ["dave@other.test"]
    srv = outbound()
    marker = token()
    submit(srv, rcpts, body=f"marker {marker}\r\n")

    msgs = double.wait_for_messages(2)
    wait_queue_empty(srv)
    by_domain = {m.rcpts[0].rsplit("@", 1)[1]: m for m in msgs}
    assert sorted(by_domain[REMOTE].rcpts) == sorted(rcpts[:3]), (
        "all recipients of one domain must share one transaction")
    assert by_domain["other.test"].rcpts == ["dave@other.test"]
    assert len(double.messages) == 2 and len(double.transactions) == 2, double.summary()
    assert all(_body_has(m, marker) for m in msgs)


def test_static_route_overrides_mx(outbound, dns, double, make_double):
    partner = make_double()
    point_mx(dns, "partner.test")  # the MX (the main double) must not be used
    srv = outbound(routes=[{"domains": ["partner.test"], "host": f"127.0.0.1:{partner.port}",
                            "tls": "none"}])
    marker = token()
    submit(srv, "pat@partner.test", body=f"marker {marker}\r\n")

    (msg,) = partner.wait_for_messages(1)
    assert msg.rcpts == ["pat@partner.test"] and _body_has(msg, marker)
    assert not msg.tls, 'tls = "none": no STARTTLS even when offered'
    wait_queue_empty(srv)
    assert double.transactions == [], "the route's host must be used instead of the MX"
    assert not dns.queried("partner.test", "MX"), "a route with a host needs no MX lookup"


def test_smarthost_with_auth_over_required_tls(outbound, dns, double, make_double):
    smarthost = make_double(auth=("relay-user", "relay pass"))
    srv = outbound(routes=[{
        "domains": ["*"], "host": f"127.0.0.1:{smarthost.port}", "tls": "required",
        "auth_user": "relay-user", "auth_password": "relay pass",
    }])
    marker = token()
    submit(srv, ["x@far-away.test", "y@elsewhere.test"], body=f"marker {marker}\r\n")

    msgs = smarthost.wait_for_messages(2)
    wait_queue_empty(srv)
    assert sorted(r for m in msgs for r in m.rcpts) == ["x@far-away.test", "y@elsewhere.test"]
    for m in msgs:
        assert m.tls, "the smarthost route requires TLS"
        assert m.auth_user == "relay-user", "the smarthost requires AUTH"
        assert m.mail_from == ALICE and _body_has(m, marker)
    assert ("PLAIN", "relay-user", True) in smarthost.auth_attempts or (
        ("LOGIN", "relay-user", True) in smarthost.auth_attempts), smarthost.auth_attempts
    assert double.transactions == []
    assert not dns.queried("far-away.test"), "a smarthost route needs no DNS for the domain"


def test_route_for_some_senders_only(outbound, dns, double, make_double):
    relay = make_double()
    point_mx(dns)
    srv = outbound(routes=[{"domains": ["*"], "senders": [BOB],
                            "host": f"127.0.0.1:{relay.port}"}])
    submit(srv, CAROL, frm=ALICE, subject="from alice")
    submit(srv, CAROL, frm=BOB, subject="from bob")
    (via_mx,) = double.wait_for_messages(1)
    (via_route,) = relay.wait_for_messages(1)
    assert via_mx.mail_from == ALICE
    assert via_route.mail_from == BOB
    wait_queue_empty(srv)


def test_tls_required_refuses_server_without_starttls(outbound, dns, make_double):
    """tls = "required" on an MX route: a server without STARTTLS gets nothing."""
    plain = make_double(starttls=False)
    dns.mx("secure.test", (10, "mx.secure.test"))
    dns.a("mx.secure.test", "127.0.0.1")
    srv = outbound({"remote.port": plain.port},
                   routes=[{"domains": ["secure.test"], "tls": "required"}])
    qid = submit(srv, "sam@secure.test")

    entry = wait_deferred(srv, qid)
    (rcpt,) = entry["rcpts"]
    assert "4.7.4" in rcpt["last_error"], rcpt
    assert plain.connections >= 1, "the MX was never contacted"
    assert plain.transactions == [] and plain.messages == [], (
        f"mail was sent in clear despite tls = \"required\": {plain.summary()}")


def test_tls_required_refuses_route_host_without_starttls(outbound, make_double):
    plain = make_double(starttls=False)
    srv = outbound(routes=[{"domains": ["secure.test"], "host": f"127.0.0.1:{plain.port}",
                            "tls": "required"}])
    qid = submit(srv, "sam@secure.test")
    entry = wait_deferred(srv, qid)
    assert "4.7.4" in entry["rcpts"][0]["last_error"], entry
    assert plain.transactions == [], plain.summary()


def test_burst_to_one_host_reuses_connections(outbound, dns, double):
    point_mx(dns)
    srv = outbound()
    n = 6
    with Submission(srv) as sub:
        for i in range(n):
            sub.send(CAROL, subject=f"burst {i}")
    double.wait_for_messages(n)
    wait_queue_empty(srv)
    assert double.connections < n, (
        f"{n} messages to one host took {double.connections} connections: no reuse")


def test_concurrency_per_destination_is_limited(outbound, dns, double):
    point_mx(dns)
    double.rcpt_delay = 0.5  # a slow server, so that deliveries overlap
    srv = outbound({"remote.max_per_destination": 2, "queue.workers": 8})
    n = 6
    with Submission(srv) as sub:
        for i in range(n):
            sub.send(f"r{i}@{REMOTE}")
    double.wait_for_messages(n, timeout=30)
    wait_queue_empty(srv)
    assert double.max_open_connections <= 2, (
        f"{double.max_open_connections} connections at once, max_per_destination = 2")


EIGHT_BIT = "Grüße aus dem Testlabor — 8-bit body\r\n"


def test_8bit_body_goes_out_with_body_8bitmime(outbound, dns, double):
    point_mx(dns)
    srv = outbound()
    submit(srv, CAROL, body=EIGHT_BIT, mail_options=("BODY=8BITMIME",))
    (msg,) = double.wait_for_messages(1)
    assert "BODY=8BITMIME" in [o.upper() for o in msg.mail_options], msg.mail_options
    assert EIGHT_BIT.encode() in msg.content, "the 8-bit body must arrive unchanged"
    wait_queue_empty(srv)


def test_8bit_body_to_a_server_without_8bitmime_bounces_not_corrupts(outbound, dns, double):
    point_mx(dns)
    no8 = double
    no8.drop_extensions = ("8BITMIME",)
    srv = outbound()
    submit(srv, CAROL, body=EIGHT_BIT, mail_options=("BODY=8BITMIME",))
    dsn = wait_dsn(srv, ALICE)
    assert dsn.recipient(CAROL)["Status"].strip() == "5.6.3"
    assert no8.messages == [], "the message must not be sent 8-bit to a 7-bit server"
    wait_queue_empty(srv)


def test_utf8_address_needs_smtputf8_at_the_receiver(outbound, dns, double, make_double):
    point_mx(dns)
    point_mx(dns, "ascii-only.test", ip="127.0.0.3")
    old = make_double(host="127.0.0.3", port=double.port, drop_extensions=("SMTPUTF8",))
    srv = outbound()
    jorg, jose = f"jörg@{REMOTE}", "josé@ascii-only.test"
    submit(srv, [jorg, jose], mail_options=("SMTPUTF8", "BODY=8BITMIME"),
           message=make_message(ALICE, [jorg, jose], "Grüße"))

    (msg,) = double.wait_for_messages(1)
    assert msg.rcpts == [jorg]
    assert "SMTPUTF8" in [o.upper() for o in msg.mail_options], msg.mail_options
    dsn = wait_dsn(srv, ALICE)
    assert dsn.final_recipients() == [jose]
    assert dsn.recipient(jose)["Status"].strip() == "5.6.7"
    # RFC 6533: a UTF-8 address makes it the internationalized kind of report.
    assert dsn.report_type == "global-delivery-status"
    assert dsn.recipient(jose)["Final-Recipient"].startswith("utf-8;")
    assert dsn.original.get_content_type() == "message/global-headers"
    assert dsn.original_headers()["Subject"] == "Grüße"
    assert old.transactions == [], "no MAIL to a server that cannot take the address"
    wait_queue_empty(srv)


def test_multiline_reply_reaches_the_dsn(outbound, dns, double):
    point_mx(dns)
    double.script_rcpt(CAROL, "550-5.1.1 The mailbox you tried to reach does not exist.\r\n"
                              "550-5.1.1 Please double-check the recipient's address\r\n"
                              "550 5.1.1 and try again. xyz123")
    srv = outbound()
    submit(srv, CAROL)
    dsn = wait_dsn(srv, ALICE)
    block = dsn.recipient(CAROL)
    assert block["Status"].strip() == "5.1.1"
    diag = " ".join(block["Diagnostic-Code"].split())
    for part in ("does not exist", "double-check", "xyz123"):
        assert part in diag, f"{part!r} missing from the Diagnostic-Code {diag!r}"
    wait_queue_empty(srv)


def test_5xx_greeting_from_first_mx_falls_back_to_next_mx(outbound, dns, double):
    """Like Postfix (smtp_skip_5xx_greeting = yes): an MX host that greets with 5xx
    is skipped for the next one; the mail is not bounced while a good MX exists."""
    refusing = GreetingServer("554 5.7.1 mx10 does not talk to you", host="127.0.0.3",
                              port=double.port).start()
    try:
        dns.mx(REMOTE, (10, "mx10.remote.test"), (20, "mx20.remote.test"))
        dns.a("mx10.remote.test", "127.0.0.3")
        dns.a("mx20.remote.test", "127.0.0.1")
        srv = outbound()
        submit(srv, CAROL)
        (msg,) = double.wait_for_messages(1, timeout=15)
        assert msg.rcpts == [CAROL]
        assert refusing.connections >= 1, "MX 10 was never tried"
        wait_queue_empty(srv)
        assert dsns_in(srv, ALICE) == [], "bounced although MX 20 took the mail"
    finally:
        refusing.stop()


def test_smarthost_refusing_our_login_defers_not_bounces(outbound, make_double):
    """A wrong auth_password is the operator's mistake: like Postfix
    (smtp_sasl_auth_soft_bounce = yes), keep the mail and retry, don't bounce it."""
    smarthost = make_double(auth=("relay-user", "right password"))
    srv = outbound({"queue.retry_schedule": ["1h"]}, routes=[{
        "domains": ["*"], "host": f"127.0.0.1:{smarthost.port}", "tls": "required",
        "auth_user": "relay-user", "auth_password": "wrong password",
    }])
    qid = submit(srv, "x@far-away.test")
    smarthost.wait_for(lambda: smarthost.auth_attempts, 15, "an AUTH attempt")
    wait_queue(srv, lambda es: any(
        e["id"] == qid and e["rcpts"] and e["rcpts"][0]["attempts"] >= 1 for e in es) or (
        not any(e["id"] == qid for e in es)), 15, "the first attempt")
    assert smarthost.messages == []
    entry = queue_entry(srv, qid)
    assert entry is not None, (
        "the message left the queue (bounced) after the smarthost refused our login; "
        f"alice's mailbox: {[m[:300] for m in dsns_in(srv, ALICE)]}")
    (r,) = entry["rcpts"]
    assert r["state"] == "deferred", r
    assert "535" in r["last_error"], r
    assert dsns_in(srv, ALICE) == []
