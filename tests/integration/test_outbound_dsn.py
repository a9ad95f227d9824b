"""Bounces (RFC 3464 delivery status notifications) for outbound mail.

A permanent failure (5xx from the remote server, a domain that does not
exist or takes no mail) produces one multipart/report to the envelope sender;
a local sender finds it in its Maildir, where the test parses it with the
`email` package. A bounce is never bounced.
"""

from __future__ import annotations

from email.utils import parseaddr

import pytest

from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    DSN,
    REMOTE,
    REMOTE_MX,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
    queue_entry,
    submit,
    wait_dsn,
    wait_queue_empty,
)
from .support import ALICE, BOB, HOSTNAME, make_message, parse, token

CAROL = f"carol@{REMOTE}"
DAVE = f"dave@{REMOTE}"


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
def test_550_produces_a_dsn_in_the_local_senders_mailbox(outbound, dns, double, stage):
    point_mx(dns)
    reply = "550 5.7.1 we do not want this message, policy 42"
    if stage == "RCPT":
        double.script_rcpt(CAROL, reply)
    else:
        double.script_data(reply)
    srv = outbound()
    subject = f"will bounce {token()}"
    original = make_message(ALICE, CAROL, subject, "the body\r\n")
    qid = submit(srv, CAROL, message=original)

    dsn = wait_dsn(srv, ALICE)
    msg = dsn.msg
    # the envelope and the outer header
    assert msg["Return-Path"].strip() == "<>", "a DSN has the null envelope sender"
    assert "mailer-daemon" in msg["From"].lower(), msg["From"]
    assert ALICE in msg["To"], msg["To"]
    assert msg["Subject"], "a DSN needs a Subject"
    assert msg["Auto-Submitted"] and msg["Auto-Submitted"].lower().startswith("auto-replied")
    # the per-message fields
    assert dsn.per_message["Reporting-MTA"].replace(" ", "").lower() == f"dns;{HOSTNAME}"
    assert dsn.per_message["Arrival-Date"], "Arrival-Date is expected"
    # the per-recipient fields
    assert dsn.final_recipients() == [CAROL]
    block = dsn.recipient(CAROL)
    assert block["Final-Recipient"].replace(" ", "").lower() == f"rfc822;{CAROL}"
    assert block["Action"].strip().lower() == "failed"
    assert block["Status"].strip() == "5.7.1", block
    diag = " ".join(block["Diagnostic-Code"].split())
    assert diag.lower().startswith("smtp;"), diag
    assert "550 5.7.1 we do not want this message, policy 42" in diag, diag
    if stage == "DATA":
        assert block["Remote-MTA"] and REMOTE_MX in block["Remote-MTA"], block
    # the human part names the recipient and the reply too
    human = dsn.human.get_payload(decode=True).decode("utf-8", "replace")
    assert CAROL in human and "policy 42" in human, human
    # the original header, and not the body
    orig = dsn.original_headers()
    assert orig["Subject"] == subject
    assert orig["Message-ID"] == parse(original)["Message-ID"]
    assert parseaddr(str(orig["From"]))[1] == ALICE
    assert b"the body" not in dsn.original.get_payload(decode=True)

    wait_queue_empty(srv)
    assert queue_entry(srv, qid) is None
    assert double.messages == []


def test_per_recipient_rcpt_failure_bounces_only_that_recipient(outbound, dns, double):
    point_mx(dns)
    double.script_rcpt(DAVE, "550 5.1.1 <dave@remote.test>: no such mailbox")
    srv = outbound()
    marker = token()
    submit(srv, [CAROL, DAVE], body=f"marker {marker}\r\n")

    (msg,) = double.wait_for_messages(1)
    assert msg.rcpts == [CAROL], "the accepted recipient gets the message"
    assert marker.encode() in msg.content
    dsn = wait_dsn(srv, ALICE)
    assert dsn.final_recipients() == [DAVE], "only the failed recipient is in the DSN"
    block = dsn.recipient(DAVE)
    assert block["Status"].strip() == "5.1.1"
    assert "no such mailbox" in block["Diagnostic-Code"]
    wait_queue_empty(srv)
    assert len(double.messages) == 1, "the accepted recipient must not get it twice"


def _dns_nxdomain(dns):
    pass  # nothing at all is known about remote.test


def _dns_null_mx(dns):
    dns.mx(REMOTE, (0, "."))


def _dns_no_address(dns):
    dns.txt(REMOTE, "v=spf1 -all")  # the name exists, but has no MX, A or AAAA


@pytest.mark.parametrize("setup, status", [
    (_dns_nxdomain, "5.1.2"),
    (_dns_null_mx, "5.1.10"),
    (_dns_no_address, "5.1.2"),
], ids=["nxdomain", "null-mx", "no-mx-no-a"])
def test_undeliverable_domain_bounces(outbound, dns, double, setup, status):
    setup(dns)
    srv = outbound({"queue.retry_schedule": ["1h"]})
    submit(srv, CAROL)
    dsn = wait_dsn(srv, ALICE)
    block = dsn.recipient(CAROL)
    assert block["Action"].strip().lower() == "failed"
    assert block["Status"].strip() == status, block
    wait_queue_empty(srv)
    assert double.connections == 0


def test_a_failing_bounce_is_not_bounced(outbound, dns, double):
    """MAIL FROM:<> from the internet, forwarded by an alias to a remote address
    that refuses it: the failure is logged, nobody is told, nothing loops."""
    point_mx(dns)
    double.rcpt_default = "550 5.1.1 no such user"
    srv = outbound()
    srv.add_alias("fwd@example.test", CAROL)
    subject = f"a bounce {token()}"
    with srv.smtp() as s:
        refused = s.sendmail("", ["fwd@example.test"],
                             make_message("mailer-daemon@elsewhere.test", "fwd@example.test",
                                          subject))
    assert refused == {}

    # The forward was attempted once, with the null sender kept...
    txs = double.wait_for_transactions(1)
    # ...and once it has failed for good the queue is empty: a bounce of it
    # would have been queued before the original left the queue.
    wait_queue_empty(srv)
    assert [(t.mail_from, t.rcpts) for t in double.transactions] == [
        ("", [(CAROL, "550 5.1.1 no such user")])], txs
    for user in (ALICE, BOB):
        assert srv.messages(user) == [], f"{user} got something"


def test_dsn_to_a_remote_sender_goes_out_with_null_sender_and_is_not_bounced_again(
        outbound, dns, double):
    """ext@sender.test -> fwd@example.test -> carol@remote.test (550): the DSN goes to
    ext@sender.test with MAIL FROM:<>; when that fails too, nothing more happens."""
    point_mx(dns)
    point_mx(dns, "sender.test")
    double.script_rcpt(CAROL, "550 5.1.1 carol left")
    double.script_rcpt("ext@sender.test", "550 5.1.1 ext left too")
    srv = outbound()
    srv.add_alias("fwd@example.test", CAROL)
    subject = f"forwarded {token()}"
    with srv.smtp() as s:
        refused = s.sendmail("ext@sender.test", ["fwd@example.test"],
                             make_message("ext@sender.test", "fwd@example.test", subject))
    assert refused == {}

    txs = double.wait_for_transactions(2, timeout=20)
    wait_queue_empty(srv)
    assert len(double.transactions) == 2, double.summary()
    first, second = txs[:2]
    # The forward goes out with an SRS sender ([delivery] srs); the DSN we make
    # ourselves goes to the original sender.
    assert first.mail_from.startswith("SRS0=") and first.mail_from.endswith(
        "=sender.test=ext@example.test"), first.mail_from
    assert first.rcpts == [(CAROL, "550 5.1.1 carol left")]
    assert second.mail_from == "", "a DSN is sent with the null envelope sender"
    assert second.rcpts == [("ext@sender.test", "550 5.1.1 ext left too")]
    assert second.data_reply is None


def test_dsn_to_a_remote_sender_is_a_delivery_report(outbound, dns, double):
    point_mx(dns)
    point_mx(dns, "sender.test")
    double.script_rcpt(CAROL, "550 5.1.1 carol left")
    srv = outbound()
    srv.add_alias("fwd@example.test", CAROL)
    subject = f"forwarded {token()}"
    with srv.smtp() as s:
        s.sendmail("ext@sender.test", ["fwd@example.test"],
                   make_message("ext@sender.test", "fwd@example.test", subject))

    (msg,) = double.wait_for_messages(1, timeout=20)
    wait_queue_empty(srv)
    assert msg.mail_from == "" and msg.rcpts == ["ext@sender.test"]
    dsn = DSN(msg.content)
    block = dsn.recipient(CAROL)
    assert block["Status"].strip() == "5.1.1"
    assert "carol left" in block["Diagnostic-Code"]
    assert (block["Original-Recipient"] or "").replace(" ", "").lower() == (
        "rfc822;fwd@example.test"), block
    assert dsn.original_headers()["Subject"] == subject
