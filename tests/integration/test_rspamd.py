"""The `rspamd` check against a real rspamd (Debian's package, started once for
this file by rspamd_server.py), driven over SMTP through a real pillarbox."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pillarbox import module, registry
from pillarbox.check import rspamd as rspamd_check
from pillarbox.resolver import make_resolver

from .dns_server import DNSServer
from .rspamd_server import (
    GREY_SUBJECT,
    GTUBE,
    GTUBE_ADD_HEADER,
    GTUBE_REWRITE_SUBJECT,
    SOFT_SUBJECT,
    RspamdServer,
)
from .support import ALICE, BOB, Server, free_ports, make_message, parse, token, wait_until

SENDER = "sender@remote.test"


@pytest.fixture(scope="module")
def rspamd():
    # Under /tmp, reachable by rspamd's own user (pytest's tmp dirs are root's alone).
    rs = RspamdServer(Path(tempfile.mkdtemp(prefix="pbx-rspamd-", dir="/tmp")))
    try:
        rs.start()
        print(f"rspamd started in {rs.startup_seconds:.2f}s")
        yield rs
    finally:
        rs.cleanup()


@pytest.fixture
def silent_http():
    """A TCP server that takes the request and never answers (a hung rspamd)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)  # read nothing back, answer nothing

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a bare close would not)
    srv.close()
    for c in held:
        c.close()
    t.join(5)


def _config(url: str, **options) -> str:
    opts = "".join(f'{k} = {v!r}\n'.replace("'", '"') for k, v in options.items())
    return f'''
[module.spam]
kind = "rspamd"
url = "{url}"
{opts}
[pipeline.smtp]
checks = ["relay", "recipient", "spam"]
'''


def _server(make_server, url: str, **options):
    return make_server(extra_toml=_config(url, **options))


@pytest.fixture(scope="module")
def pbx(rspamd, seed_data_dir, tmp_path_factory):
    """One pillarbox asking the real rspamd, shared by this file's tests of
    rspamd's actions (each test finds its own message by its Subject)."""
    srv = Server(tmp_path_factory.mktemp("rspamd-pbx"), extra_toml=_config(rspamd.url),
                 seed=seed_data_dir)
    srv.start()
    yield srv
    problems = srv.shutdown_and_check()
    assert not problems, "\n".join(problems)


def _send(srv, subject: str, body: str = "Lunch tomorrow at noon?\r\n"):
    """(code, text) of the DATA reply for one message to alice."""
    with srv.raw() as c:
        c.reply()
        c.expect("EHLO client.test", 250)
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<{ALICE}>", 250)
        c.expect("DATA", 354)
        c.send(make_message(SENDER, ALICE, subject, body) + b".\r\n")
        r = c.reply(timeout=30)
        c.cmd("QUIT")
    return r.code, r.text


def _with_subject(srv, subject: str) -> list:
    return [m for m in map(parse, srv.messages(ALICE)) if m["Subject"] == subject]


def _delivered(srv, subject: str):
    (msg,) = wait_until(lambda: _with_subject(srv, subject), 10, f"the message {subject}")
    return msg


def test_gtube_is_refused_with_rspamds_message(pbx):
    tok = token()
    assert _send(pbx, tok, f"{GTUBE}\r\n") == (550, "5.7.1 Gtube pattern")
    assert _with_subject(pbx, tok) == []


def test_a_clean_message_passes_with_rspamds_result_field(pbx):
    tok = token()
    code, text = _send(pbx, tok)
    assert code == 250, text
    msg = _delivered(pbx, tok)
    result = msg["X-Spam-Result"]
    assert result.startswith("score=") and "; required=15.00; action=\"no action\"; symbols=" \
        in result, result
    assert "MIME_GOOD(-0.10)" in result  # rspamd's own symbol, with its weight
    assert msg["X-Spam"] is None


def test_add_header_marks_the_message_as_spam(pbx):
    tok = token()
    assert _send(pbx, tok, f"{GTUBE_ADD_HEADER}\r\n")[0] == 250
    msg = _delivered(pbx, tok)
    assert msg["X-Spam"] == "Yes"
    assert msg["X-Spam-Result"] == 'score=6.00; required=15.00; action="add header"; ' \
                                   "symbols=GTUBE(0.00)"


def test_soft_reject_and_greylist_defer_with_451(pbx):
    assert _send(pbx, SOFT_SUBJECT) == (451, "4.7.1 Test soft reject")
    assert _send(pbx, GREY_SUBJECT) == (451, "4.7.1 Greylisted, please try again later")
    assert _with_subject(pbx, SOFT_SUBJECT) == _with_subject(pbx, GREY_SUBJECT) == []


def test_rewrite_subject_replaces_the_subject_with_rspamds(pbx):
    tok = token()
    assert _send(pbx, tok, f"{GTUBE_REWRITE_SUBJECT}\r\n")[0] == 250
    msg = _delivered(pbx, f"*** SPAM *** {tok}")
    assert msg["X-Spam"] == "Yes"
    assert msg["X-Spam-Result"].startswith('score=0.00; required=15.00; '
                                           'action="rewrite subject"; symbols=GTUBE(0.00)')


def test_rewrite_subject_gives_rspamds_new_subject(rspamd):
    """The check's verdict carries rspamd's Subject (the session applies it)."""
    raw = make_message(SENDER, ALICE, "hello", f"{GTUBE_REWRITE_SUBJECT}\r\n")
    v = _scan(rspamd.url, raw, header="X-Rspamd", flag_header="X-Spam-Flag")
    assert v.reject is None and v.subject == "*** SPAM *** hello"
    assert v.add_headers[0] == ("X-Spam-Flag", "Yes")
    assert v.add_headers[1][0] == "X-Rspamd"
    assert v.add_headers[1][1].startswith('score=0.00; required=15.00; action="rewrite subject"')
    assert _scan(rspamd.url, make_message(SENDER, ALICE, "hello")).subject is None


def test_rspamd_down_with_fallback_defer_gives_451(make_server):
    srv = _server(make_server, f"http://127.0.0.1:{free_ports(1)[0]}", fallback="defer")
    assert _send(srv, token()) == (451, "4.7.1 Spam filter unavailable, try again later")
    assert srv.messages(ALICE) == []
    assert "rspamd unavailable" in srv.log_text() and "fallback=defer" in srv.log_text()


def test_rspamd_down_with_fallback_accept_delivers_with_a_field_saying_so(make_server):
    srv = _server(make_server, f"http://127.0.0.1:{free_ports(1)[0]}", fallback="accept")
    tok = token()
    assert _send(srv, tok)[0] == 250
    msg = _delivered(srv, tok)
    assert msg["X-Spam-Result"] == 'unavailable; reason="unreachable (ClientConnectorError)"'


@pytest.mark.parametrize("fallback", ["defer", "accept"])
def test_a_silent_rspamd_hits_the_timeout_and_gives_the_fallback(make_server, silent_http,
                                                                 fallback):
    srv = _server(make_server, silent_http, fallback=fallback, timeout=1)
    tok = token()
    t0 = time.monotonic()
    code, text = _send(srv, tok)
    elapsed = time.monotonic() - t0
    assert 1 <= elapsed < 6, elapsed  # the 1 s timeout, not a hang (nor the default 10 s)
    if fallback == "defer":
        assert (code, text) == (451, "4.7.1 Spam filter unavailable, try again later")
    else:
        assert code == 250
        assert _delivered(srv, tok)["X-Spam-Result"] == 'unavailable; reason="timeout"'



# -- what pillarbox sends, and rspamd answers it must not trust -----------------------

class _Canned:
    """An HTTP server on 127.0.0.1 answering every request with one canned
    reply (status, body), and recording each request (headers, body)."""

    def __init__(self, status: int = 200, body: bytes = b"") -> None:
        self.status, self.body = status, body
        self.requests: list[tuple[list[tuple[str, str]], bytes]] = []
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                canned.requests.append((list(self.headers.items()), data))
                self.send_response(canned.status)
                self.send_header("Content-Length", str(len(canned.body)))
                self.end_headers()
                self.wfile.write(canned.body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def canned():
    made: list[_Canned] = []

    def make(status: int = 200, body: bytes | dict = b"") -> _Canned:
        c = _Canned(status, json.dumps(body).encode() if isinstance(body, dict) else body)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


NO_ACTION = {"score": 1.5, "required_score": 15.0, "action": "no action", "symbols": {}}


def _scan(url: str, message: bytes, source: module.Source | None = None, resolver=None,
          **options) -> module.Verdict:
    async def run() -> module.Verdict:
        opts = registry.validate_options(rspamd_check.KIND, "spam", {"url": url, **options})
        check = rspamd_check.KIND.make("spam", opts, registry.Env(config=None,
                                                                  resolver=resolver))
        st = check.state(source or module.Source("smtp", client_ip="127.0.0.1",
                                                  helo="client.test"))
        await st.mail(SENDER)
        await st.rcpt(ALICE)
        try:
            return await st.body(parse(message), io.BytesIO(message))
        finally:
            await check.close()

    return asyncio.run(run())


def test_submission_tells_rspamd_the_envelope_and_the_authenticated_user(make_server, canned):
    c = canned(body=NO_ACTION)
    srv = make_server(extra_toml=f'''
[module.spam]
kind = "rspamd"
url = "{c.url}"

[pipeline.submission]
checks = ["sender", "relay", "recipient", "spam"]
''')
    tok = token()
    msg = make_message(ALICE, [BOB, "carol@elsewhere.test"], tok)
    with srv.submission(ALICE) as s:
        s.sendmail(ALICE, [BOB, "carol@elsewhere.test"], msg)
    ((headers, body),) = c.requests
    got = [(k.lower(), v) for k, v in headers]
    assert ("ip", "127.0.0.1") in got and ("helo", "client.test") in got
    assert ("from", ALICE) in got and ("user", ALICE) in got
    assert [v for k, v in got if k == "rcpt"] == [BOB, "carol@elsewhere.test"]
    assert ("mta-name", "mx.example.test") in got and ("hostname", "localhost") in got
    assert ("tls-version", "TLSv1.3") in got
    assert body == msg  # the message as received, streamed whole
    assert "score=1.50; required=15.00; action=\"no action\"" in \
        parse(srv.wait_for_messages(BOB, 1)[0])["X-Spam-Result"]


@pytest.mark.parametrize(("status", "body", "reason"), [
    (200, b"{not json", "malformed answer"),
    (200, b'{"action": "launch missiles", "score": 1, "required_score": 15}',
     "malformed answer"),
    (200, b'{"action": "reject", "score": "high", "required_score": 15}', "malformed answer"),
    (200, b'["reject"]', "malformed answer"),
    (200, b"[" * 100_000, "malformed answer"),
    (500, b"oops", "status 500"),
    (200, b" " * (rspamd_check.MAX_REPLY + 1), "answer too large"),
])
def test_an_answer_rspamd_should_not_send_gives_the_fallback(canned, status, body, reason):
    c = canned(status, body)
    raw = make_message(SENDER, ALICE, "hello")
    v = _scan(c.url, raw, fallback="accept")
    assert v.reject is None
    assert v.add_headers == [("X-Spam-Result", f'unavailable; reason="{reason}"')]
    v = _scan(c.url, raw, fallback="defer")
    assert (v.reject.code, v.reject.text) == (451, "4.7.1 Spam filter unavailable, "
                                                   "try again later")


def test_rspamds_texts_are_cleaned_and_bounded(canned):
    symbols = {f"SYM_{i}\r\nX-Evil: 1": {"score": i / 10} for i in range(500)}
    symbols["HUGE"] = {"score": -1e300}
    c = canned(body={"action": "rewrite subject", "score": 1e300, "required_score": 15.0,
                     "subject": "*** SPAM ***\r\nBcc: everyone@example.test hello",
                     "symbols": symbols})
    v = _scan(c.url, make_message(SENDER, ALICE, "hello"))
    assert v.subject == "*** SPAM *** Bcc: everyone@example.test hello"
    (flag, result) = v.add_headers
    assert flag == ("X-Spam", "Yes")
    assert len(result[1]) <= rspamd_check.MAX_FIELD and result[1].endswith(", ...")
    assert "\r" not in result[1] and "\n" not in result[1]
    assert result[1].startswith('score=1000000.00; required=15.00; action="rewrite subject"; '
                                'symbols=HUGE(-1000000.00), SYM_499__X-Evil:_1(49.90), ')
    c2 = canned(body={"action": "reject", "score": 20.0, "required_score": 15.0,
                      "messages": {"smtp_message": "no\r\n250 thanks" + "x" * 500}})
    v = _scan(c2.url, make_message(SENDER, ALICE, "hello"))
    assert v.reject.code == 550
    assert v.reject.text == ("5.7.1 no 250 thanks" + "x" * 500)[:6 + rspamd_check.MAX_TEXT]


def test_the_client_name_is_its_forward_confirmed_reverse_name(canned):
    c = canned(body=NO_ACTION)
    with DNSServer() as dns_srv:
        dns_srv.add("7.2.0.192.in-addr.arpa", "PTR", "mail.remote.test.")
        dns_srv.a("mail.remote.test", "192.0.2.7")
        dns_srv.add("8.2.0.192.in-addr.arpa", "PTR", "liar.remote.test.")
        dns_srv.a("liar.remote.test", "192.0.2.99")
        resolver = make_resolver([dns_srv.address])
        raw = make_message(SENDER, ALICE, "hello")
        for ip, want in [("192.0.2.7", "mail.remote.test"), ("192.0.2.8", "unknown"),
                         ("192.0.2.9", "unknown")]:
            _scan(c.url, raw, module.Source("smtp", client_ip=ip, helo="x"), resolver)
            headers = dict((k.lower(), v) for k, v in c.requests[-1][0])
            assert (headers["ip"], headers["hostname"]) == (ip, want)


def test_options_are_validated():
    ok = {"url": "http://127.0.0.1:11333"}
    for bad, why in [({"url": "ftp://x"}, "url:"), ({"url": "http://x:99999"}, "url:"),
                     ({"timeout": 0}, "timeout:"), ({"timeout": 601}, "timeout:"),
                     ({"fallback": "maybe"}, "fallback:"),
                     ({"header": "X Spam"}, "header:"), ({"flag_header": ""}, "flag_header:"),
                     ({"password": "a\r\nb"}, "password:")]:
        opts = registry.validate_options(rspamd_check.KIND, "spam", {**ok, **bad})
        with pytest.raises(ValueError, match=why):
            rspamd_check.KIND.validate(opts)
    rspamd_check.KIND.validate(registry.validate_options(rspamd_check.KIND, "spam", ok))


def test_each_message_of_a_connection_tells_rspamd_its_own_envelope(make_server, canned):
    """Check states live for the connection: the second message's request
    names its own sender and recipients only. The second is large (spilled
    to disk by the session): it reaches rspamd whole, streamed."""
    c = canned(body=NO_ACTION)
    srv = _server(make_server, c.url)
    small = make_message(SENDER, ALICE, token())
    large = make_message("other@remote.test", BOB, token(), ("x" * 998 + "\r\n") * 2000)
    with srv.smtp() as s:
        s.sendmail(SENDER, [ALICE], small)
        s.sendmail("other@remote.test", [BOB], large)
    assert [body for _, body in c.requests] == [small, large]
    first, second = ([(k.lower(), v) for k, v in h] for h, _ in c.requests)
    assert [v for k, v in first if k in ("from", "rcpt")] == [SENDER, ALICE]
    assert [v for k, v in second if k in ("from", "rcpt")] == ["other@remote.test", BOB]
    assert ("helo", "client.test") in second
