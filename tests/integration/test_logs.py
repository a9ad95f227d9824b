"""Logs an operator can trace mail with: one line per event, key=value (or JSON).

Each test drives a real server over real sockets and reads the lines it wrote
to stderr: the accepted message with its client, HELO, login, Message-ID,
size and recipients; each delivery attempt with relay, delays, DSN code,
status, TLS and the remote reply; refusals with their reason.
"""

from __future__ import annotations

import json
import re
import shlex

from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    REMOTE,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
    submit,
)
from .support import ALICE, BOB, CLIENT_NAME, make_message, token, wait_until

CAROL = f"carol@{REMOTE}"


def text_events(log: str, name: str) -> list[dict[str, str]]:
    """The fields of every text line of event `name` (quoted values unquoted)."""
    out = []
    for line in log.splitlines():
        m = re.match(r"\S+ level=(\w+) mod=(\S+) (.*)$", line)
        if not m:
            continue
        rest = m.group(3)
        if not rest.startswith(name + " "):
            continue
        fields = {"level": m.group(1), "mod": m.group(2)}
        for tok in shlex.split(rest[len(name):], posix=True):
            k, sep, v = tok.partition("=")
            assert sep, f"not key=value: {tok!r} in {line!r}"
            fields[k] = v
        out.append(fields)
    return out


def json_events(log: str, name: str) -> list[dict]:
    objs = [json.loads(line) for line in log.splitlines() if line.strip()]
    return [o for o in objs if o.get("msg") == name]


def _send_local(srv) -> str:
    """One message from bob to alice over the MX port; its Message-ID."""
    msg = make_message(BOB, [ALICE], f"logs {token()}")
    mid = re.search(rb"Message-ID: (<[^>]+>)", msg).group(1).decode()
    with srv.smtp() as s:
        assert s.sendmail(BOB, [ALICE], msg) == {}
    return mid


def test_accepted_and_mailbox_delivery_lines_have_the_trace_fields(make_server):
    srv = make_server()
    mid = _send_local(srv)
    srv.wait_for_messages(ALICE, 1)
    wait_until(lambda: text_events(srv.log_text(), "delivered"), 10, "the delivered line")
    log = srv.log_text()
    (acc,) = text_events(log, "accepted")
    assert acc["client"] == "unknown[127.0.0.1]", acc
    assert acc["helo"] == CLIENT_NAME
    assert acc["message_id"] == mid
    assert acc["from"] == f"<{BOB}>"
    assert acc["nrcpt"] == "1" and acc["rcpts"] == ALICE
    assert int(acc["size"]) > 0 and acc["endpoint"] == "smtp"
    assert "sasl_user" not in acc and "tls" not in acc
    (d,) = text_events(log, "delivered")
    assert d["id"] == acc["id"]
    assert d["to"] == f"<{ALICE}>" and d["relay"] == "mailbox"
    assert d["status"] == "sent" and d["dsn"] == "2.0.0"
    assert re.fullmatch(r"\d+(\.\d+)?", d["delay"]), d
    assert re.fullmatch(r"[\d.]+/[\d.]+/[\d.]+", d["delays"]), d
    # the queue's size at start
    assert text_events(log, "queue loaded")[0]["messages"] == "0"


def test_an_authenticated_submission_logs_the_login_and_tls(make_server):
    srv = make_server()
    with srv.submission(ALICE) as s:
        msg = make_message(ALICE, [BOB], f"logs {token()}")
        s.sendmail(ALICE, [BOB, ALICE], msg)
    srv.wait_for_messages(BOB, 1)
    (acc,) = text_events(srv.log_text(), "accepted")
    assert acc["sasl_user"] == ALICE and acc["endpoint"] == "submission"
    assert acc["nrcpt"] == "2" and set(acc["rcpts"].split(",")) == {ALICE, BOB}
    assert re.fullmatch(r"TLSv1\.[23]/\S+", acc["tls"]), acc


def test_refusals_are_logged_with_their_reason(make_server):
    srv = make_server()
    with srv.smtp() as s:
        s.mail(BOB)
        code, _ = s.rcpt("nobody@example.test")
        assert code == 550
    (r,) = text_events(srv.log_text(), "rcpt refused")
    assert r["client"] == "unknown[127.0.0.1]" and r["to"] == "<nobody@example.test>"
    assert r["reason"].startswith("550 5.1.1"), r


def test_values_with_spaces_quotes_and_controls_stay_one_parseable_line(make_server):
    srv = make_server()
    helo = 'evil" helo=forged x=\\y'
    with srv.smtp() as s:
        s.ehlo(helo)
        s.sendmail(BOB, [ALICE], make_message(BOB, [ALICE], "quoted"))
    srv.wait_for_messages(ALICE, 1)
    (acc,) = text_events(srv.log_text(), "accepted")
    assert acc["helo"] == helo, acc


def test_json_format_is_one_object_per_line_with_the_same_fields(make_server):
    srv = make_server({"log_format": "json"})
    mid = _send_local(srv)
    srv.wait_for_messages(ALICE, 1)
    wait_until(lambda: json_events(srv.log_text(), "delivered"), 10, "the delivered line")
    log = srv.log_text()
    (acc,) = json_events(log, "accepted")  # every line parsed, or json.loads raised
    assert acc["level"] == "info" and acc["mod"] == "pillarbox.smtp"
    assert acc["client"] == "unknown[127.0.0.1]" and acc["message_id"] == mid
    assert acc["nrcpt"] == 1 and acc["rcpts"] == [ALICE] and acc["helo"] == CLIENT_NAME
    (d,) = json_events(log, "delivered")
    assert d["id"] == acc["id"] and d["status"] == "sent" and d["relay"] == "mailbox"
    assert isinstance(d["delay"], float | int)
    assert any(o["msg"].startswith("listening endpoint=smtp") for o in map(json.loads,
               log.splitlines())), "a message without fields is JSON too"
    assert json_events(log, "queue loaded")[0]["messages"] == 0


def test_a_remote_delivery_logs_relay_tls_delays_and_the_reply(outbound, dns, double):
    point_mx(dns)
    srv = outbound()
    double.script_data("250 2.0.0 Ok: queued as REMOTE42")
    qid = submit(srv, CAROL)
    double.wait_for_messages(1)
    wait_until(lambda: text_events(srv.log_text(), "delivered"), 10, "the delivered line")
    (d,) = text_events(srv.log_text(), "delivered")
    assert d["id"] == qid and d["to"] == f"<{CAROL}>"
    assert d["relay"] == f"mx.{REMOTE}[127.0.0.1]:{double.port}", d
    assert d["status"] == "sent" and d["dsn"] == "2.0.0"
    assert d["reply"] == "250 2.0.0 Ok: queued as REMOTE42", d
    assert re.fullmatch(r"TLSv1\.[23]/\S+", d["tls"]), d
    queue, connect, transfer = (float(x) for x in d["delays"].split("/"))
    assert connect > 0 and transfer > 0, d


def test_a_refused_remote_recipient_logs_bounced_with_the_remote_reply(outbound, dns, double):
    point_mx(dns)
    srv = outbound()
    double.script_rcpt(CAROL, "550 5.1.1 no such mailbox here")
    qid = submit(srv, CAROL)
    wait_until(lambda: text_events(srv.log_text(), "delivery failed"), 10, "the failed line")
    (d,) = text_events(srv.log_text(), "delivery failed")
    assert d["id"] == qid and d["status"] == "bounced" and d["dsn"] == "5.1.1", d
    assert d["level"] == "warning"
    assert "no such mailbox here" in d["reply"], d
    assert d["relay"] == f"mx.{REMOTE}[127.0.0.1]:{double.port}", d


def test_a_reload_switches_the_log_format(make_server):
    srv = make_server()
    srv.config["log_format"] = "json"
    srv.write_config()
    p = srv.cli("reload")
    assert p.returncode == 0, p.stderr
    _send_local(srv)
    srv.wait_for_messages(ALICE, 1)
    wait_until(lambda: json_events(srv.log_text().split("reload ok")[-1].split("\n", 1)[1],
                                   "delivered"), 10, "a JSON delivered line after the reload")
    after = srv.log_text().split("reload ok")[-1].split("\n", 1)[1]
    (acc,) = json_events(after, "accepted")
    assert acc["client"] == "unknown[127.0.0.1]"
