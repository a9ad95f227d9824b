"""A real Postfix (Debian's package) in front of pillarbox, configured from
`pillarbox postfix`: Postfix asks pillarbox's tcp_table maps and policy
service at RCPT and delivers over LMTP. The tests read Postfix's own SMTP
replies and pillarbox's mailboxes.

One Postfix and one pillarbox for the whole module (starting Postfix is the
slow part); each test uses addresses of its own, and the rate-limit test
connects from 127.0.0.2 so the other tests' messages do not count for it.
"""

from __future__ import annotations

import email
import re
import smtplib

import pytest

from .pgp_keys import sequoia_decrypt, sequoia_key
from .postfix_instance import PostfixInstance
from .support import (
    ALICE,
    BOB,
    DOMAIN,
    Server,
    free_ports,
    make_message,
    port_open,
    token,
    wait_until,
)

SEALED = f"sealed@{DOMAIN}"  # encryption at rest is on for this user only
BURST = 6  # messages from one address before the policy's rate limit bites
POLICY_TOML = f"""
[module.limit]
kind = "rate_limit"
per_ip = 1
burst = {BURST}

[pipeline.policy]
checks = ["limit"]
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory, seed_data_dir):
    lmtp, access, alias, policy, smtp = free_ports(5)
    srv = Server(tmp_path_factory.mktemp("pillarbox"), {
        "listen.lmtp": [f"127.0.0.1:{lmtp}"],
        "postfix.recipient_access": [f"127.0.0.1:{access}"],
        "postfix.virtual_alias": [f"127.0.0.1:{alias}"],
        "postfix.policy": [f"127.0.0.1:{policy}"],
        "encryption.users": [SEALED],
    }, extra_toml=POLICY_TOML, seed=seed_data_dir)
    srv.start()
    postfix = None
    try:
        for port in (lmtp, access, alias, policy):
            wait_until(lambda port=port: port_open(port), 10, f"port {port}")
        srv.main_cf = main_cf = srv.cli_ok("postfix").stdout
        postfix = PostfixInstance(smtp, main_cf)
        postfix.start()
        yield srv, postfix
    finally:
        problems = srv.shutdown_and_check()
        if postfix is not None:
            print(f"--- postfix log (tail) ---\n{postfix.log_tail(60)}")
            postfix.stop()
        print(f"--- pillarbox stderr (tail) ---\n{srv.log_tail(40)}")
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def _wait_known(s: smtplib.SMTP, rcpt: str) -> None:
    """Until Postfix accepts `rcpt` (pillarbox sees a CLI change within a second)."""
    def accepted() -> bool:
        s.mail("sender@remote.test")
        code = s.rcpt(rcpt)[0]
        s.rset()
        return code == 250
    wait_until(accepted, 5, f"{rcpt} accepted by Postfix")


def test_pillarbox_postfix_prints_the_main_cf_lines(pair):
    srv, _ = pair
    text = srv.main_cf  # what the instance runs with
    assert f"virtual_mailbox_domains = {DOMAIN}\n" in text
    assert re.search(r"^virtual_transport = lmtp:inet:127\.0\.0\.1:\d+$", text, re.M)
    assert re.search(r"^virtual_mailbox_maps = tcp:127\.0\.0\.1:\d+$", text, re.M)
    assert re.search(r"^virtual_alias_maps = tcp:127\.0\.0\.1:\d+$", text, re.M)
    assert re.search(r"check_policy_service inet:127\.0\.0\.1:\d+,\n    check_recipient_access "
                     r"tcp:127\.0\.0\.1:\d+$", text, re.M)


def test_known_user_lands_in_the_mailbox(pair):
    srv, postfix = pair
    mark = token()
    with postfix.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE],
                   make_message("sender@remote.test", ALICE, mark))
    msgs = wait_until(lambda: [m for m in srv.messages(ALICE) if mark.encode() in m], 20,
                      f"the message in alice's mailbox; postfix log:\n{postfix.log_tail()}")
    assert b"by postfix.example.test" in msgs[0]  # Postfix's Received field
    assert b"with LMTP" in msgs[0]  # pillarbox's


def test_mail_through_postfix_is_stored_encrypted(pair, tmp_path):
    srv, postfix = pair
    srv.add_user(SEALED)
    key = sequoia_key(SEALED)
    (tmp_path / "sealed.key").write_bytes(bytes(key.extract_certificate()))
    srv.cli_ok("user", "key", "import", SEALED, tmp_path / "sealed.key")
    mark = token()
    with postfix.smtp(source="127.0.0.3") as s:  # not from the other tests' rate budget
        _wait_known(s, SEALED)
        s.sendmail("sender@remote.test", [SEALED],
                   make_message("sender@remote.test", SEALED, "sealed", body=f"{mark}\r\n"))
    (stored,) = wait_until(lambda: srv.messages(SEALED), 20,
                           f"the message in the mailbox; postfix log:\n{postfix.log_tail()}")
    assert mark.encode() not in stored
    outer = email.message_from_bytes(stored)
    assert outer.get_content_type() == "multipart/encrypted"
    assert b"by postfix.example.test" in stored  # routing fields stay outside
    armored = outer.get_payload()[1].get_payload(decode=True)
    assert mark.encode() in sequoia_decrypt(key, armored)


def test_postfix_refuses_unknown_disabled_and_full_recipients(pair):
    srv, postfix = pair
    erin, frank = f"erin@{DOMAIN}", f"frank@{DOMAIN}"
    srv.add_user(erin)
    srv.cli_ok("user", "disable", erin)
    srv.add_user(frank, quota="1K")
    with srv.smtp() as s:  # 2K into frank's 1K: full after it
        s.sendmail("x@remote.test", [frank], make_message("x@remote.test", frank, "fill",
                                                          body=("f" * 70 + "\r\n") * 30))
    srv.wait_for_messages(frank, 1)
    with postfix.smtp() as s:
        assert s.mail("sender@remote.test")[0] == 250
        code, text = s.rcpt(f"nobody@{DOMAIN}")
        assert (code, text[:5]) == (550, b"5.1.1"), text
        assert b"User unknown in virtual mailbox table" in text

        def refused(rcpt: str, code: int) -> bytes:  # the CLI change may take a second
            return wait_until(lambda: (r := s.rcpt(rcpt))[0] == code and r[1], 5,
                              f"{code} for {rcpt}")

        text = refused(erin, 554)
        assert text.startswith(b"5.2.1 <erin@example.test>: Recipient address rejected: "
                               b"mailbox disabled"), text
        text = refused(frank, 450)
        assert text.startswith(b"4.2.2 <frank@example.test>: Recipient address rejected: "
                               b"mailbox full"), text
        assert s.rcpt(ALICE)[0] == 250  # the others still pass


def test_alias_expands_through_postfix(pair):
    srv, postfix = pair
    srv.add_alias(f"team@{DOMAIN}", ALICE, BOB)
    mark = token()
    with postfix.smtp() as s:
        _wait_known(s, f"team@{DOMAIN}")
        s.sendmail("sender@remote.test", [f"team@{DOMAIN}"],
                   make_message("sender@remote.test", f"team@{DOMAIN}", mark))
    for rcpt in (ALICE, BOB):
        wait_until(lambda r=rcpt: [m for m in srv.messages(r) if mark.encode() in m], 20,
                   f"the alias's copy for {rcpt}; postfix log:\n{postfix.log_tail()}")
    assert re.search(r"to=<bob@example\.test>, orig_to=<team@example\.test>.*status=sent",
                     postfix.log_text())


def test_lmtp_reply_per_recipient_through_postfix(pair):
    srv, postfix = pair
    gina = f"gina@{DOMAIN}"
    srv.add_user(gina, quota="5K")
    mark = token()
    with postfix.smtp() as s:  # 8K: more than gina's whole quota, so 552 at LMTP
        _wait_known(s, gina)
        s.sendmail("", [ALICE, gina], make_message("sender@remote.test", [ALICE, gina], mark,
                                                   body=("g" * 70 + "\r\n") * 115))
    wait_until(lambda: [m for m in srv.messages(ALICE) if mark.encode() in m], 20,
               "alice's copy")
    log = wait_until(lambda: re.search(r"to=<gina@example\.test>.*status=bounced.*"
                                       r"5\.2\.2.*message larger than the mailbox quota",
                                       postfix.log_text()), 20,
                     f"Postfix's bounce for gina; log:\n{postfix.log_tail()}")
    assert log
    assert srv.messages(gina) == []


def test_policy_rate_limit_bites(pair):
    _, postfix = pair
    s = smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="client.test", timeout=30,
                     source_address=("127.0.0.2", 0))
    try:
        s.ehlo()
        codes = []
        for _ in range(BURST + 1):
            assert s.mail("sender@remote.test")[0] == 250
            code, text = s.rcpt(ALICE)
            codes.append(code)
            s.rset()
        assert codes == [250] * BURST + [450], codes
        assert text.startswith(b"4.7.1 <alice@example.test>: Recipient address rejected: "
                               b"Too many messages from your address"), text
    finally:
        s.close()
