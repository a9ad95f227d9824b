"""Address literals on the way out, and errors that can never pass (issue 9: 12, 15)."""

from __future__ import annotations

import time

from pillarbox.queue.spool import Envelope, Spool, new_id

from .outbound import (  # noqa: F401 (fixtures: pytest finds them by their name=)
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    submit,
)
from .support import ALICE, make_message, parse, token, wait_until


def test_mail_to_an_address_literal_goes_to_that_address(outbound, double):
    srv = outbound()
    tok = token()
    submit(srv, "someone@[127.0.0.1]", subject=tok)
    (msg,) = double.wait_for_messages(1)
    assert msg.rcpts == ["someone@[127.0.0.1]"], msg.rcpts
    assert tok.encode() in msg.content


def test_queued_mail_that_can_never_go_fails_at_once(outbound):
    """A message already in the queue (written by an older version, before the
    address checks) to an address no retry can fix bounces at once with a 5.x.x
    status, instead of being retried for days with 4.3.0."""
    srv = outbound(start=False)
    bad = ["x@[127%\x0e0.0.1]", "y@bad..domain.test"]
    tok = token()
    data = make_message(ALICE, bad, tok)
    env = Envelope(id=new_id(), mail_from=ALICE, rcpts=bad, received=time.time(),
                   size=len(data), auth=ALICE, source="submission")
    Spool(srv.data_dir / "queue", 0).drop(env, data)
    srv.start()
    (dsn,) = srv.wait_for_messages(ALICE, 1)
    text = parse(dsn).as_string()
    assert "5.1.2" in text or "5.3.0" in text, text[:2000]
    wait_until(lambda: srv.queue_list() == [], 10, "the queue to drain")
    log = srv.log_text()
    assert "x@[127%\\x0e0.0.1]" in log, "the failure is not logged"
    assert "\x0e" not in log, "a control character reached the log unescaped"
