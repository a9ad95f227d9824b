"""The `rspamd` check against a real rspamd (Debian's package, started once for
this file by rspamd_server.py), driven over SMTP through a real pillarbox."""

from __future__ import annotations

import asyncio
import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pillarbox import module
from pillarbox.check import rspamd as rspamd_check

from .rspamd_server import (
    GREY_SUBJECT,
    GTUBE,
    GTUBE_ADD_HEADER,
    GTUBE_REWRITE_SUBJECT,
    SOFT_SUBJECT,
    RspamdServer,
)
from .support import ALICE, free_ports, make_message, parse, token

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


def _server(make_server, url: str, **options):
    opts = "".join(f'{k} = {v!r}\n'.replace("'", '"') for k, v in options.items())
    return make_server(extra_toml=f'''
[module.spam]
kind = "rspamd"
url = "{url}"
{opts}
[pipeline.smtp]
checks = ["relay", "recipient", "spam"]
''')


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


def _delivered(srv, subject: str):
    (raw,) = srv.wait_for_messages(ALICE, 1)
    msg = parse(raw)
    assert msg["Subject"] == subject
    return msg


def test_gtube_is_refused_with_rspamds_message(make_server, rspamd):
    srv = _server(make_server, rspamd.url)
    assert _send(srv, token(), f"{GTUBE}\r\n") == (550, "5.7.1 Gtube pattern")
    assert srv.messages(ALICE) == []


def test_a_clean_message_passes_with_rspamds_result_field(make_server, rspamd):
    srv = _server(make_server, rspamd.url)
    tok = token()
    code, text = _send(srv, tok)
    assert code == 250, text
    msg = _delivered(srv, tok)
    result = msg["X-Spam-Result"]
    assert result.startswith("score=") and "; required=15.00; action=\"no action\"; symbols=" \
        in result, result
    assert "MIME_GOOD(-0.10)" in result  # rspamd's own symbol, with its weight
    assert msg["X-Spam"] is None


def test_add_header_marks_the_message_as_spam(make_server, rspamd):
    srv = _server(make_server, rspamd.url, header="X-Rspamd", flag_header="X-Spam-Flag")
    tok = token()
    assert _send(srv, tok, f"{GTUBE_ADD_HEADER}\r\n")[0] == 250
    msg = _delivered(srv, tok)
    assert msg["X-Spam-Flag"] == "Yes"
    assert msg["X-Rspamd"].startswith("score=6.00; required=15.00; action=\"add header\"; "
                                      "symbols=GTUBE(0.00)")


def test_soft_reject_and_greylist_defer_with_451(make_server, rspamd):
    srv = _server(make_server, rspamd.url)
    assert _send(srv, SOFT_SUBJECT) == (451, "4.7.1 Test soft reject")
    assert _send(srv, GREY_SUBJECT) == (451, "4.7.1 Greylisted, please try again later")
    assert srv.messages(ALICE) == []


def test_rewrite_subject_gives_rspamds_new_subject(rspamd):
    """The check's verdict carries rspamd's Subject (the session applies it)."""
    raw = make_message(SENDER, ALICE, "hello", f"{GTUBE_REWRITE_SUBJECT}\r\n")
    clean = make_message(SENDER, ALICE, "hello")

    async def scan(message: bytes) -> module.Verdict:
        check = rspamd_check.KIND.make("spam", {
            "url": rspamd.url, "timeout": 10, "fallback": "defer", "header": "X-Spam-Result",
            "flag_header": "X-Spam", "password": ""}, None)
        st = check.state(module.Source("smtp", client_ip="127.0.0.1", helo="client.test"))
        await st.mail(SENDER)
        await st.rcpt(ALICE)
        try:
            return await st.body(parse(message), io.BytesIO(message))
        finally:
            await check.close()

    v = asyncio.run(scan(raw))
    assert v.reject is None and v.subject == "*** SPAM *** hello"
    assert v.add_headers[0] == ("X-Spam", "Yes")
    assert asyncio.run(scan(clean)).subject is None


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
    assert 1 <= elapsed < 4, elapsed  # the timeout, not a hang
    if fallback == "defer":
        assert (code, text) == (451, "4.7.1 Spam filter unavailable, try again later")
    else:
        assert code == 250
        assert _delivered(srv, tok)["X-Spam-Result"] == 'unavailable; reason="timeout"'

