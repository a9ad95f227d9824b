"""`pillarbox sendmail`: the sendmail-compatible way in, through the maildrop."""

from __future__ import annotations

from .support import ALICE, BOB, parse, token


def _msg(to: str, subject: str, body: str = "sent with pillarbox sendmail\n",
         cc: str | None = None) -> str:
    head = f"From: root@example.test\nTo: {to}\n"
    if cc:
        head += f"Cc: {cc}\n"
    return head + f"Subject: {subject}\n\n{body}"


def test_sendmail_t_i_delivers_to_header_recipients(server):
    tok = token()
    p = server.cli("sendmail", "-t", "-i", input=_msg(ALICE, tok, cc=f"Bob <{BOB}>"))
    assert p.returncode == 0, p.stderr
    for rcpt in (ALICE, BOB):
        (raw,) = server.wait_for_messages(rcpt, 1)
        msg = parse(raw)
        assert msg["Subject"] == tok
        assert b"sent with pillarbox sendmail" in raw


def test_sendmail_i_keeps_a_lone_dot_line(server):
    tok = token()
    body = f"before\n.\nafter the dot {tok}\n"
    p = server.cli("sendmail", "-t", "-i", input=_msg(ALICE, tok, body))
    assert p.returncode == 0, p.stderr
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert f"after the dot {tok}".encode() in raw, raw


def test_sendmail_explicit_recipient_and_f_sender(server):
    tok = token()
    # To: names alice, but without -t only the argument (bob) is a recipient
    p = server.cli("sendmail", "-i", "-f", ALICE, BOB, input=_msg(ALICE, tok))
    assert p.returncode == 0, p.stderr
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok
    assert server.messages(ALICE) == []


def test_sendmail_while_server_down_is_delivered_when_it_starts(make_server):
    server = make_server(start=False)
    tok = token()
    p = server.cli("sendmail", "-t", "-i", input=_msg(ALICE, tok))
    assert p.returncode == 0, p.stderr
    server.start()
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok


def test_sendmail_bad_address_exits_1(server):
    for args in (["-i", "bad@@address"], ["-i", "-f", "not an address", ALICE]):
        p = server.cli("sendmail", *args, input=_msg(ALICE, "never"))
        assert p.returncode == 1, (args, p)
        assert p.stderr.startswith("error:"), (args, p.stderr)
        assert "Traceback" not in p.stderr
    p = server.cli("sendmail", "-t", "-i", input="Subject: nobody to send to\n\nbody\n")
    assert p.returncode == 1 and p.stderr.startswith("error:"), p
