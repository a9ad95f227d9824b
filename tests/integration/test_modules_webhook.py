"""An SMTP-to-webhook gateway for tickets@: a [[rule]] sends the address to a
webhook target; a real HTTP server checks the signature, answers 503 once (the
queue retries), then 400 for another message (a DSN to the sender). The config
is the example of docs/MODULES.md."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import threading

import pytest

from .doc_examples import example, replaced
from .support import ALICE, make_message, token, wait_until

SECRET = "webhook-secret-for-tests"


class _Hook(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []
    got: list[tuple[dict, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((dict(self.headers), body))
        code = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hook():
    _Hook.answers, _Hook.got = [], []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_tickets_go_to_the_webhook_with_retry_and_bounce(make_server, hook):
    url = f"http://127.0.0.1:{hook.server_address[1]}/tickets"
    # docs/MODULES.md's example, pointed at the test's HTTP server and secret
    toml = replaced(example("an SMTP-to-webhook gateway for tickets@"),
                    "https://helpdesk.example.test/inbound-mail", url)
    toml = replaced(toml, "change-me-to-a-long-random-string", SECRET)
    srv = make_server({"queue.retry_schedule": ["1s"]}, extra_toml=toml)
    _Hook.answers = [503]
    tok = token()
    with srv.submission(ALICE) as s:
        s.sendmail(ALICE, ["tickets@example.test"], make_message(ALICE, "tickets@example.test",
                                                                 tok))
    wait_until(lambda: len(_Hook.got) >= 2, 15, "the retry after 503")
    for headers, body in _Hook.got[:2]:
        want = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Pillarbox-Signature"] == want
        assert tok.encode() in body
    wait_until(lambda: srv.queue_list() == [], 10, "the queue to drain")
    assert srv.messages(ALICE) == []  # delivered: no DSN

    _Hook.answers = [400]
    tok2 = token()
    with srv.submission(ALICE) as s:
        s.sendmail(ALICE, ["tickets@example.test"], make_message(ALICE, "tickets@example.test",
                                                                 tok2))
    (dsn,) = srv.wait_for_messages(ALICE, 1)
    assert b"tickets@example.test" in dsn and b"400" in dsn
    assert len(_Hook.got) == 3
