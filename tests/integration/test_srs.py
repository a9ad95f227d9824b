"""SRS: mail an alias forwards to another domain leaves with an SRS0 sender, and a
bounce to that address comes back through us to the original sender.

A real pillarbox forwards to a fake remote MX (smtp_double.py) found through a
real DNS server (dns_server.py); the bounce is sent to pillarbox's MX port as
the remote MX would send it.
"""

from __future__ import annotations

import re
import stat
import time

from pillarbox import srs

from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    REMOTE,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
    wait_queue_empty,
)
from .support import BOB, assert_reply, make_message, token

CAROL = f"carol@{REMOTE}"
FWD = "fwd@example.test"
OUTSIDE = "someone@sender.test"
SRS0 = re.compile(r"^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=sender\.test=someone@example\.test$")


def _send_mx(srv, frm: str, rcpt: str, body: bytes | None = None) -> str:
    tok = token()
    with srv.smtp() as s:
        refused = s.sendmail(frm, [rcpt], body or make_message(frm or "x@y.test", rcpt, tok))
    assert refused == {}, refused
    return tok


def _rcpt(srv, rcpt: str, frm: str = ""):
    with srv.smtp() as s:
        s.mail(frm)
        return s.rcpt(rcpt)


def _dsn(to: str) -> bytes:
    return (f"From: MAILER-DAEMON@mx.remote.test\r\nTo: <{to}>\r\n"
            f"Subject: Undelivered Mail Returned to Sender {token()}\r\n"
            "Content-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n").encode()


def test_forward_rewrites_the_sender_and_the_bounce_comes_back(outbound, dns, double):
    point_mx(dns)
    point_mx(dns, "sender.test")
    srv = outbound()
    srv.add_alias(FWD, CAROL)
    tok = _send_mx(srv, OUTSIDE, FWD)
    (msg,) = double.wait_for_messages(1)
    assert msg.rcpts == [CAROL] and tok.encode() in msg.content
    assert SRS0.match(msg.mail_from), msg.mail_from
    key = srv.data_dir / "srs.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    # The remote MX bounces to the SRS address: we pass it on to the sender.
    with srv.smtp() as s:
        s.mail("")
        assert_reply(s.rcpt(msg.mail_from), 250, "2.1.5")
        # Any case: local parts are lowercased on the way in.
        assert_reply(s.rcpt(msg.mail_from.lower()), 250, "2.1.5")
        code, _ = s.data(_dsn(msg.mail_from))
        assert code == 250
    (_, back) = double.wait_for_messages(2)
    assert back.rcpts == [OUTSIDE]
    assert back.mail_from == "", "the bounce keeps its null sender"
    assert b"Undelivered Mail Returned to Sender" in back.content
    wait_queue_empty(srv)

    # A sender in our own domains is not rewritten: SPF passes for it here.
    _send_mx(srv, BOB, FWD)
    msgs = double.wait_for_messages(3)
    assert msgs[2].mail_from == BOB


def test_forged_or_expired_srs_addresses_are_refused(outbound, dns, double):
    srv = outbound()
    srv.add_alias(FWD, CAROL)
    point_mx(dns)
    _send_mx(srv, OUTSIDE, FWD)  # makes the key
    (msg,) = double.wait_for_messages(1)
    good = msg.mail_from
    hash_, ts = good.split("=")[1:3]
    forged_hash = "AAAA" if hash_.upper() != "AAAA" else "BBBB"
    for bad in (good.replace(hash_, forged_hash, 1),
                good.replace("someone@", "other@", 1),           # another sender
                good.replace("=sender.test=", "=evil.test=", 1),  # another domain
                "SRS0=xx=AA=sender.test@example.test",             # malformed
                "SRS0=@example.test"):
        assert_reply(_rcpt(srv, bad), 550, "5.7.1", bad)
    # A hash made with the server's key over a timestamp 30 days old.
    secret = (srv.data_dir / "srs.key").read_bytes()
    old = srs.Srs(secret).forward(OUTSIDE, "example.test", now=time.time() - 30 * 86400)
    assert old is not None and old.split("=")[2] != ts
    assert_reply(_rcpt(srv, old), 550, "5.7.1", old)
    fresh = srs.Srs(secret).forward(OUTSIDE, "example.test")
    assert_reply(_rcpt(srv, fresh), 250, "2.1.5", fresh)


def test_srs_off_keeps_the_sender(outbound, dns, double):
    point_mx(dns)
    srv = outbound({"delivery.srs": False})
    srv.add_alias(FWD, CAROL)
    _send_mx(srv, OUTSIDE, FWD)
    (msg,) = double.wait_for_messages(1)
    assert msg.mail_from == OUTSIDE
    assert not (srv.data_dir / "srs.key").exists()
