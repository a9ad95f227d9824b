"""/metrics (issue 16): after a known load, exactly those counts; closed by default."""

from __future__ import annotations

import smtplib
import ssl

from prometheus_client.parser import text_string_to_metric_families

from .support import ALICE, BOB, PASSWORD, free_ports, wait_until
from .test_http import get

TOKEN = "a-metrics-token-for-tests"


def scrape(url: str, **kw) -> dict[tuple[str, tuple], float]:
    status, _, body = get(url, **kw)
    assert status == 200, body
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exactly_the_load(make_server):
    http, metrics_port, closed = free_ports(3)
    srv = make_server({"listen.http": [f"127.0.0.1:{http}"],
                       "listen.metrics": [f"127.0.0.1:{metrics_port}"],
                       "http.metrics_token": TOKEN},
                      extra_toml=f'[[route]]\ndomains = ["remote.test"]\n'
                                 f'host = "127.0.0.1:{closed}"\n')
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    before = scrape(url)
    assert value(before, "pillarbox_sessions_open", endpoint="smtp") == 0
    with smtplib.SMTP("127.0.0.1", srv.smtp_port) as smtp:
        smtp.ehlo("client.test")
        for i in range(3):
            smtp.sendmail("someone@remote.test", [ALICE], f"Subject: {i}\r\n\r\nhi\r\n")
        m = scrape(url)
        assert value(m, "pillarbox_sessions_open", endpoint="smtp") == 1
        for _ in range(2):
            smtp.mail("someone@remote.test")
            code, _ = smtp.rcpt("nobody@example.test")
            assert code == 550
            smtp.rset()
    with smtplib.SMTP("127.0.0.1", srv.submission_port) as sub:
        sub.starttls(context=ssl._create_unverified_context())
        sub.ehlo()
        sub.user, sub.password = BOB, "not-the-password-at-all"
        try:  # one PLAIN attempt (login() would go on with LOGIN)
            sub.auth("PLAIN", sub.auth_plain, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535
        else:
            raise AssertionError("a wrong password was taken")
        sub.user, sub.password = BOB, PASSWORD
        assert sub.auth("PLAIN", sub.auth_plain, initial_response_ok=True)[0] == 235
        sub.sendmail(BOB, ["carol@remote.test"], b"Subject: out\r\n\r\nto a dead host\r\n")

    def settled():
        m = scrape(url)
        done = (value(m, "pillarbox_deliveries_total", target="local", result="sent") >= 3
                and value(m, "pillarbox_deliveries_total", target="remote",
                          result="deferred") >= 1
                # the attempt is counted before the queue files the message as deferred
                and value(m, "pillarbox_queue_messages", state="deferred") >= 1)
        return m if done else None

    m = wait_until(settled, 20, "the deliveries to be counted")
    assert value(m, "pillarbox_messages_accepted_total", endpoint="smtp") == 3
    assert value(m, "pillarbox_messages_accepted_total", endpoint="submission") == 1
    assert value(m, "pillarbox_messages_refused_total", endpoint="smtp", stage="rcpt",
                 reason="5.1.1") == 2
    assert value(m, "pillarbox_deliveries_total", target="local", result="sent") == 3
    assert value(m, "pillarbox_deliveries_total", target="remote", result="deferred") == 1
    assert value(m, "pillarbox_deliveries_total", target="remote", result="sent") == 0
    assert value(m, "pillarbox_delivery_seconds_count", target="local") == 3
    assert value(m, "pillarbox_logins_total", protocol="smtp", result="ok") == 1
    assert value(m, "pillarbox_logins_total", protocol="smtp", result="failed") == 1
    assert sum(v for (n, labels), v in m.items() if n == "pillarbox_tls_handshakes_total"
               and ("endpoint", "submission") in labels) == 1
    assert value(m, "pillarbox_queue_messages", state="deferred") == 1
    assert value(m, "pillarbox_queue_messages", state="new") == 0
    assert value(m, "pillarbox_queue_oldest_seconds") > 0
    assert value(m, "pillarbox_disk_free_bytes") > 0
    assert value(m, "pillarbox_sessions_open", endpoint="smtp") == 0

    # the public listener: only with the token
    public = f"http://127.0.0.1:{http}/metrics"
    assert get(public)[0] == 404
    assert get(public, headers={"Authorization": "Bearer wrong-token-wrong-token"})[0] == 404
    assert scrape(public, headers={"Authorization": f"Bearer {TOKEN}"})


def test_metrics_are_closed_by_default(make_server):
    (http,) = free_ports(1)
    make_server({"listen.http": [f"127.0.0.1:{http}"]})
    assert get(f"http://127.0.0.1:{http}/metrics")[0] == 404
    assert get(f"http://127.0.0.1:{http}/metrics",
               headers={"Authorization": "Bearer "})[0] == 404
