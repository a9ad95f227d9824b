"""Outbound retries: temporary failures defer with backoff, `queue retry` forces an
attempt, max_lifetime turns a deferral into a bounce, DNS trouble is temporary,
and a restart (graceful or kill -9) in a deferred backlog loses nothing.
"""

from __future__ import annotations

import time

import pytest

from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    REMOTE,
    Submission,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
    queue_entry,
    submit,
    wait_all_deferred,
    wait_deferred,
    wait_dsn,
    wait_queue,
    wait_queue_empty,
)
from .support import ALICE, BOB, token

CAROL = f"carol@{REMOTE}"
TRY_LATER = "451 4.3.0 try later please"


def test_rcpt_451_is_retried_with_backoff_then_delivered(outbound, dns, double):
    point_mx(dns)
    double.script_rcpt(CAROL, TRY_LATER, TRY_LATER)  # then 250
    srv = outbound({"queue.retry_schedule": ["1s", "30s"]})
    marker = token()
    qid = submit(srv, CAROL, body=f"marker {marker}\r\n")

    # Attempt 1 fails; the first wait is 1s; attempt 2 fails; the next wait is 30s.
    entry = wait_deferred(srv, qid, attempts=2, timeout=20)
    (r,) = entry["rcpts"]
    assert r["state"] == "deferred" and r["attempts"] == 2, r
    assert "451 4.3.0 try later please" in r["last_error"], r
    (t1, reply1), (t2, reply2) = double.rcpt_attempts(CAROL)
    assert reply1 == reply2 == TRY_LATER
    assert t2 - t1 < 10, f"the first retry (schedule: 1s) came {t2 - t1:.2f}s after the first"
    wait = r["next_attempt"] - t2
    assert 25 <= wait <= 31, (
        f"after the 2nd failure the next attempt is {wait:.1f}s away, the schedule says 30s")
    assert double.messages == []

    # `queue retry ID` makes it due now: delivered long before the 30s wait.
    forced = time.time()
    out = srv.cli_ok("queue", "retry", qid).stdout
    assert "1" in out, out
    (msg,) = double.wait_for_messages(1, timeout=10)
    assert msg.received - forced < 10
    assert msg.rcpts == [CAROL] and marker.encode() in msg.content
    assert len(double.rcpt_attempts(CAROL)) == 3
    wait_queue_empty(srv)


def test_backoff_is_counted_from_the_failure(outbound, dns, double):
    """A slow server: the wait before the next attempt starts when the attempt ends.

    Counted from the start of the attempt instead, an attempt that takes longer
    than the wait (a slow or timing-out server) is followed by another at once.
    """
    point_mx(dns)
    double.rcpt_delay = 2.0
    double.script_rcpt(CAROL, TRY_LATER)  # then 250
    srv = outbound({"queue.retry_schedule": ["2s"]})
    submit(srv, CAROL)
    double.wait_for_messages(1, timeout=30)
    (t1, reply1), (t2, reply2) = double.rcpt_attempts(CAROL)
    assert reply1 == TRY_LATER and reply2.startswith("250")
    # t1 is when the 451 was given; the retry's RCPT reply comes after its own 2s delay.
    gap = (t2 - double.rcpt_delay) - t1
    assert gap >= 1.8, (
        f"the retry's RCPT came {gap:.2f}s after the 451 reply; the schedule says wait 2s")
    wait_queue_empty(srv)


def test_data_451_is_retried_and_delivered_once(outbound, dns, double):
    point_mx(dns)
    double.script_data("451 4.7.0 greylisted, come back later")
    srv = outbound({"queue.retry_schedule": ["1s"]})
    qid = submit(srv, CAROL)
    (msg,) = double.wait_for_messages(1, timeout=20)
    assert msg.rcpts == [CAROL]
    replies = [t.data_reply for t in double.transactions if t.data_reply]
    assert replies[0].startswith("451") and replies[-1].startswith("250"), replies
    wait_queue_empty(srv)
    assert queue_entry(srv, qid) is None
    assert len(double.messages) == 1, "accepted once, delivered once"


def test_queue_retry_without_id_retries_everything(outbound, dns, double):
    point_mx(dns)
    double.rcpt_default = TRY_LATER
    srv = outbound({"queue.retry_schedule": ["1h"]})
    with Submission(srv) as sub:
        ids = [sub.send(f"r{i}@{REMOTE}") for i in range(3)]
    wait_all_deferred(srv, ids)
    double.rcpt_default = "250 2.1.5 OK"
    srv.cli_ok("queue", "retry")
    double.wait_for_messages(3, timeout=15)
    wait_queue_empty(srv)


def test_connection_refused_is_temporary(outbound, dns, make_double):
    dns.mx(REMOTE, (10, "mx.remote.test"))
    dns.a("mx.remote.test", "127.0.0.2")  # nothing listens there
    srv = outbound({"queue.retry_schedule": ["1h"]})
    qid = submit(srv, CAROL)
    entry = wait_deferred(srv, qid)
    err = entry["rcpts"][0]["last_error"]
    assert err.startswith("4"), entry
    assert "mx.remote.test" in err, f"the error should name the host that failed: {err!r}"


def test_dns_servfail_is_temporary_then_delivered(outbound, dns, double):
    dns.servfail(REMOTE)
    srv = outbound({"queue.retry_schedule": ["1h"]})
    qid = submit(srv, CAROL)
    entry = wait_deferred(srv, qid)
    assert entry["rcpts"][0]["last_error"].startswith("4.4.3"), entry
    assert srv.messages(ALICE) == [], "a DNS failure is temporary: no bounce"
    # DNS comes back; a forced retry delivers.
    dns.remove(REMOTE)
    point_mx(dns)
    srv.cli_ok("queue", "retry", qid)
    double.wait_for_messages(1)
    wait_queue_empty(srv)


def test_lifetime_expiry_bounces_with_4_4_7(outbound, dns, double):
    point_mx(dns)
    double.rcpt_default = TRY_LATER
    srv = outbound({"queue.retry_schedule": ["1s"], "queue.max_lifetime": "3s"})
    subject = f"expiring {token()}"
    qid = submit(srv, CAROL, subject=subject)

    dsn = wait_dsn(srv, ALICE, timeout=20)
    assert len(double.rcpt_attempts(CAROL)) >= 2, "it must have been retried before expiring"
    block = dsn.recipient(CAROL)
    assert block["Action"].strip().lower() == "failed", block
    assert block["Status"].strip() == "4.4.7", block
    assert "451 4.3.0 try later please" in block.get("Diagnostic-Code", ""), block
    assert dsn.original_headers()["Subject"] == subject
    wait_queue_empty(srv)
    assert queue_entry(srv, qid) is None
    assert double.messages == []


def _backlog(outbound, dns, double, n: int):
    point_mx(dns)
    double.rcpt_default = TRY_LATER
    srv = outbound({"queue.retry_schedule": ["5s"]})
    markers = [token() for _ in range(n)]
    with Submission(srv) as sub:
        ids = [sub.send(CAROL, body=f"marker {m}\r\n") for m in markers]
    wait_all_deferred(srv, ids)
    return srv, markers, ids


def _markers_delivered(double, markers):
    got = []
    for m in double.messages:
        got += [k for k in markers if k.encode() in m.content]
    return got


@pytest.mark.parametrize("how", ["graceful", "kill -9"])
def test_restart_in_deferred_backlog_loses_nothing_and_resumes_schedule(
        outbound, dns, double, how):
    n = 5
    srv, markers, ids = _backlog(outbound, dns, double, n)
    if how == "graceful":
        srv.stop()
    else:
        srv.kill9()

    # Offline, the CLI still sees every message deferred, with its schedule.
    entries = {e["id"]: e for e in srv.queue_list()}
    assert sorted(entries) == sorted(ids), f"lost in the {how} stop: {entries}"
    due = {}
    for qid in ids:
        (r,) = entries[qid]["rcpts"]
        assert r["state"] == "deferred" and r["attempts"] >= 1, r
        assert TRY_LATER in r["last_error"], r
        due[qid] = r["next_attempt"]

    double.rcpt_default = "250 2.1.5 OK"
    srv.start()
    msgs = double.wait_for_messages(n, timeout=30)
    wait_queue_empty(srv, timeout=15)

    got = _markers_delivered(double, markers)
    assert sorted(set(got)) == sorted(markers), f"lost after the {how} restart"
    if how == "graceful":
        assert len(got) == n, f"duplicates after a graceful restart: {len(got)} for {n}"
    # The schedule resumed: nothing went out before its saved next attempt.
    earliest = min(due.values())
    first = min(m.received for m in msgs)
    assert first >= earliest - 0.5, (
        f"a deferred message went out {earliest - first:.1f}s before its next attempt")


def test_new_mail_is_delivered_while_a_backlog_waits(outbound, dns, double):
    """A deferred backlog to one domain does not hold up mail to another."""
    point_mx(dns)
    point_mx(dns, "fast.test")
    double.rcpt_default = TRY_LATER
    double.script_rcpt("quick@fast.test", "250 2.1.5 OK")
    srv = outbound({"queue.retry_schedule": ["1h"]})
    with Submission(srv) as sub:
        ids = [sub.send(f"r{i}@{REMOTE}") for i in range(5)]
    wait_all_deferred(srv, ids)
    submit(srv, "quick@fast.test")
    (msg,) = double.wait_for_messages(1, timeout=10)
    assert msg.rcpts == ["quick@fast.test"]
    wait_queue(srv, lambda es: len(es) == 5 or None, 10, "only the backlog left")


def test_rcpt_452_defers_only_that_recipient_and_the_retry_sends_only_it(
        outbound, dns, double):
    dave = f"dave@{REMOTE}"
    point_mx(dns)
    double.script_rcpt(dave, "452 4.5.3 too many recipients, send the rest later")
    srv = outbound({"queue.retry_schedule": ["1h"]})
    marker = token()
    qid = submit(srv, [CAROL, dave], body=f"marker {marker}\r\n")

    (first,) = double.wait_for_messages(1)
    assert first.rcpts == [CAROL]
    entry = wait_deferred(srv, qid)
    assert [r["addr"] for r in entry["rcpts"]] == [dave], (
        "only the refused recipient is left to do", entry)
    assert "452 4.5.3" in entry["rcpts"][0]["last_error"]

    srv.cli_ok("queue", "retry", qid)
    msgs = double.wait_for_messages(2)
    assert msgs[1].rcpts == [dave], "the retry must not send to CAROL again"
    assert marker.encode() in msgs[1].content
    wait_queue_empty(srv)
    assert len(double.messages) == 2


def test_local_and_remote_recipients_of_one_message(outbound, dns, double):
    point_mx(dns)
    double.rcpt_default = "550 5.1.1 nobody here"
    srv = outbound()
    marker = token()
    submit(srv, [BOB, CAROL], body=f"marker {marker}\r\n")
    (got,) = srv.wait_for_messages(BOB, 1)
    assert marker.encode() in got
    dsn = wait_dsn(srv, ALICE)
    assert dsn.final_recipients() == [CAROL], "the local delivery succeeded: not in the DSN"
    wait_queue_empty(srv)


def test_sigterm_during_a_relay_burst_stops_promptly_and_loses_nothing(outbound, dns, double):
    """Regression: workers caught mid-transaction once swallowed the cancel and
    the server never exited. Stop while deliveries are in flight, then restart."""
    n = 40
    point_mx(dns)
    double.rcpt_delay = 0.05  # keep transactions open when SIGTERM comes
    srv = outbound()
    markers = [token() for _ in range(n)]
    with Submission(srv) as sub:
        for m in markers:
            sub.send(CAROL, body=f"marker {m}\r\n")
    double.wait_for(lambda: len(double.messages) >= 3 or None, 15, "the burst under way")
    started = time.monotonic()
    srv.stop()
    took = time.monotonic() - started
    assert not srv.running() and not srv.problems, srv.problems
    assert took < 12, f"SIGTERM during a relay burst took {took:.1f}s"

    double.rcpt_delay = 0.0
    srv.start()
    double.wait_for(lambda: set(_markers_delivered(double, markers)) == set(markers) or None,
                    30, "every message of the burst relayed after the restart")
    wait_queue_empty(srv, timeout=15)
