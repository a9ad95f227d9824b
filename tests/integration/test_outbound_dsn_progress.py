"""DSNs while a message is still in the queue (RFC 3464, per recipient).

A recipient that fails for good is reported at once, even when others of
the same message are still deferred; each recipient is reported once (the
record survives a restart); a sender whose mail is still deferred after
`queue.delay_warning` hears so once (Action: delayed); and
`queue delete --bounce` tells the sender about the recipients it gave up.
The fake remote MX (tests/integration/smtp_double.py) answers per recipient.
"""

from __future__ import annotations

import time

import pytest

from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    DSN,
    REMOTE,
    dsns_in,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
    submit,
    wait_deferred,
    wait_dsn,
    wait_queue_empty,
)
from .support import ALICE, make_message, token, wait_until

CAROL = f"carol@{REMOTE}"
DAVE = f"dave@{REMOTE}"


def wait_dsns(srv, n: int, addr: str = ALICE, timeout: float = 15) -> list[DSN]:
    """The first n DSNs in addr's Maildir, oldest first, once there are n."""
    found = wait_until(lambda: len(dsns_in(srv, addr)) >= n and dsns_in(srv, addr), timeout,
                       f"{n} DSN(s) in {addr}'s mailbox")
    return [DSN(raw) for raw in found]


def action(dsn: DSN, addr: str) -> str:
    return dsn.recipient(addr)["Action"].strip().lower()


@pytest.mark.parametrize("outcome", ["delivered", "failed"])
def test_permanent_failure_is_reported_at_once_and_only_once(outbound, dns, double, outcome):
    point_mx(dns)
    double.script_rcpt(DAVE, "550 5.1.1 <dave@remote.test>: no such mailbox")
    later = "250 2.1.5 OK" if outcome == "delivered" else "550 5.1.1 carol is gone"
    double.script_rcpt(CAROL, "451 4.3.0 greylisted, come back later", later)
    srv = outbound({"queue.retry_schedule": ["1h"]})
    qid = submit(srv, [CAROL, DAVE])

    # Dave's DSN comes now, not when Carol's delivery ends (an hour away).
    dsn = wait_dsn(srv, ALICE)
    assert dsn.final_recipients() == [DAVE], "only the failed recipient is reported"
    assert action(dsn, DAVE) == "failed"
    assert dsn.recipient(DAVE)["Status"].strip() == "5.1.1"
    assert "550 5.1.1 <dave@remote.test>: no such mailbox" in " ".join(
        dsn.recipient(DAVE)["Diagnostic-Code"].split())
    entry = wait_deferred(srv, qid)
    assert [r["addr"] for r in entry["rcpts"]] == [CAROL], "Carol is still to do"

    srv.cli_ok("queue", "retry", qid)
    wait_until(lambda: len(double.rcpt_attempts(CAROL)) >= 2, 15, "Carol's second attempt")
    wait_queue_empty(srv)  # a DSN, had one been queued, is delivered by now
    dsns = [DSN(raw) for raw in dsns_in(srv, ALICE)]
    if outcome == "delivered":
        assert len(dsns) == 1, "a delivered recipient is in no DSN, Dave not twice"
        (msg,) = double.wait_for_messages(1)
        assert msg.rcpts == [CAROL]
    else:
        assert len(dsns) == 2, f"expected the first DSN and a final one, got {len(dsns)}"
        final = next(d for d in dsns if d.raw != dsn.raw)
        assert final.final_recipients() == [CAROL], "Dave is not reported twice"
        assert action(final, CAROL) == "failed"
        assert "carol is gone" in final.recipient(CAROL)["Diagnostic-Code"]


def test_already_reported_survives_a_restart(outbound, dns, double):
    point_mx(dns)
    double.script_rcpt(DAVE, "550 5.1.1 dave left")
    double.script_rcpt(CAROL, "451 4.3.0 later", "550 5.1.1 carol left")
    srv = outbound({"queue.retry_schedule": ["1h"]})
    qid = submit(srv, [CAROL, DAVE])
    assert wait_dsn(srv, ALICE).final_recipients() == [DAVE]
    wait_deferred(srv, qid)

    srv.restart()
    srv.cli_ok("queue", "retry", qid)
    wait_until(lambda: len(double.rcpt_attempts(CAROL)) >= 2, 15, "Carol's second attempt")
    wait_queue_empty(srv)
    dsns = [DSN(raw) for raw in dsns_in(srv, ALICE)]
    assert sorted(d.final_recipients() for d in dsns) == [[CAROL], [DAVE]], (
        [d.final_recipients() for d in dsns])
    assert len(double.rcpt_attempts(DAVE)) == 1, "a failed recipient is not tried again"


def test_delay_warning_once_then_nothing_when_delivered(outbound, dns, double):
    point_mx(dns)
    double.rcpt_default = "451 4.3.0 try again later"
    srv = outbound({"queue.retry_schedule": ["1s"], "queue.delay_warning": "1s"})
    submitted = time.time()
    qid = submit(srv, CAROL)

    dsn = wait_dsn(srv, ALICE)
    assert time.time() - submitted >= 1.0, "the warning came before delay_warning"
    assert dsn.final_recipients() == [CAROL]
    block = dsn.recipient(CAROL)
    assert action(dsn, CAROL) == "delayed"
    assert block["Status"].strip().startswith("4."), block
    assert block["Will-Retry-Until"], "a delay warning says until when it retries"
    assert "try again later" in block["Diagnostic-Code"]
    assert "delayed" in dsn.msg["Subject"].lower(), dsn.msg["Subject"]

    # Two more failed attempts: still one warning.
    n = len(double.rcpt_attempts(CAROL))
    wait_until(lambda: len(double.rcpt_attempts(CAROL)) >= n + 2, 15, "two more attempts")
    double.rcpt_default = "250 2.1.5 OK"
    double.wait_for_messages(1)
    wait_queue_empty(srv)
    assert len(dsns_in(srv, ALICE)) == 1, "one delay warning, and nothing for a delivery"
    assert qid


def test_no_delay_warning_for_mail_from_the_internet(outbound, dns, double):
    """Mail that came in on port 25 (its sender may be forged) and is forwarded
    gets no delay warning: only senders we know are warned."""
    point_mx(dns)
    point_mx(dns, "sender.test")
    double.script_rcpt(CAROL, "451 4.3.0 later", "451 4.3.0 later", "451 4.3.0 later")
    srv = outbound({"queue.retry_schedule": ["1s"], "queue.delay_warning": "1s"})
    srv.add_alias("fwd@example.test", CAROL)
    with srv.smtp() as s:
        s.sendmail("ext@sender.test", ["fwd@example.test"],
                   make_message("ext@sender.test", "fwd@example.test", f"fwd {token()}"))
    (msg,) = double.wait_for_messages(1, timeout=20)  # the fourth attempt delivers
    assert msg.rcpts == [CAROL]
    wait_queue_empty(srv)
    assert all(t.mail_from != "" for t in double.transactions), double.summary()


def test_queue_delete_bounce_tells_the_sender(outbound, dns, double):
    point_mx(dns)
    double.rcpt_default = "451 4.3.0 try again later"
    srv = outbound({"queue.retry_schedule": ["1h"]})
    qid = submit(srv, [CAROL, DAVE], subject=f"stuck {token()}")
    wait_deferred(srv, qid)

    p = srv.cli_ok("queue", "delete", qid, "--bounce")
    assert f"deleted {qid}" in p.stdout
    dsn = wait_dsn(srv, ALICE)
    assert sorted(dsn.final_recipients()) == sorted([CAROL, DAVE])
    for rcpt in (CAROL, DAVE):
        assert action(dsn, rcpt) == "failed"
        assert "deleted by the postmaster" in dsn.recipient(rcpt)["Diagnostic-Code"]
    wait_queue_empty(srv)
    wait_until(lambda: f"id={qid}" in srv.log_text(), 5, "the deletion in the log")
    line = next(x for x in srv.log_text().splitlines() if "queue delete" in x and qid in x)
    assert ALICE in line and CAROL in line and DAVE in line, line


def test_queue_delete_without_bounce_is_logged_and_sends_nothing(outbound, dns, double):
    point_mx(dns)
    double.rcpt_default = "451 4.3.0 try again later"
    srv = outbound({"queue.retry_schedule": ["1h"]})
    qid = submit(srv, CAROL)
    wait_deferred(srv, qid)
    srv.cli_ok("queue", "delete", qid)
    wait_queue_empty(srv)
    line = next(x for x in srv.log_text().splitlines() if "queue delete" in x and qid in x)
    assert ALICE in line and CAROL in line and "bounce=no" in line, line
    assert dsns_in(srv, ALICE) == []


def test_queue_delete_bounce_without_a_running_server(outbound, dns, double):
    point_mx(dns)
    double.rcpt_default = "451 4.3.0 try again later"
    srv = outbound({"queue.retry_schedule": ["1h"]})
    qid = submit(srv, CAROL)
    wait_deferred(srv, qid)
    srv.stop()

    p = srv.cli_ok("queue", "delete", qid, "--bounce")
    assert "queue delete" in p.stderr and qid in p.stderr and ALICE in p.stderr, p.stderr
    assert CAROL in p.stderr, p.stderr
    srv.start()
    dsn = wait_dsn(srv, ALICE)
    assert dsn.final_recipients() == [CAROL]
    assert "deleted by the postmaster" in dsn.recipient(CAROL)["Diagnostic-Code"]
    wait_queue_empty(srv)
