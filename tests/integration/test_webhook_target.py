"""The `webhook` target against a real aiohttp web server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import socket
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from pillarbox import module
from pillarbox.target import webhook

MESSAGE = (b"From: Ann <ann@example.test>\r\nTo: tickets@example.test\r\n"
           b"Subject: printer\r\n  on fire\r\nX-Mixed: caf\xc3\xa9\r\n\r\n"
           b"It is burning.\r\n")
RCPTS = ["tickets@example.test", "ops@example.test"]


def envelope(msg_id: str = "MSGID1", rcpts: list[str] = RCPTS) -> module.Envelope:
    return module.Envelope(msg_id, "ann@example.test", list(rcpts),
                           module.Source("smtp", client_ip="192.0.2.7", helo="mx.test"),
                           size=len(MESSAGE))


class Hook:
    """A web server that records each request and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[tuple[int, str]] = []
        self.release = asyncio.Event()  # a "hang" answer waits for it
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        status, reason = self.answers.pop(0) if self.answers else (200, "OK")
        if status == 0:  # hang until released: the client's timeout must fire
            await self.release.wait()
            status, reason = 200, "OK"
        return web.Response(status=status, reason=reason)


async def with_hook(test: Callable[[Hook], Awaitable[None]]) -> None:
    hook = Hook()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/in", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hook.url = f"http://{host}:{port}/in"
    try:
        await test(hook)
    finally:
        hook.release.set()
        await runner.cleanup()


def make(url: str, **options) -> webhook.WebhookTarget:
    return webhook.KIND.make("helpdesk", {"url": url, **options}, None)


async def deliver(target, message: bytes | io.RawIOBase = MESSAGE, rcpts=RCPTS, msg_id="MSGID1"):
    d = await target.start(envelope(msg_id, rcpts))
    for rcpt in rcpts:
        await d.add_rcpt(rcpt)
    await d.body(io.BytesIO(message) if isinstance(message, bytes) else message)
    return await d.commit()


def run(test: Callable[[Hook], Awaitable[None]]) -> None:
    asyncio.run(with_hook(test))


def test_rfc822_posts_the_message_bytes_after_commit_only():
    async def test(hook: Hook) -> None:
        target = make(hook.url, headers={"Authorization": "Bearer t0ken"})
        d = await target.start(envelope())
        for rcpt in RCPTS:
            await d.add_rcpt(rcpt)
        await d.body(io.BytesIO(MESSAGE))
        assert hook.requests == [], "sent before commit"
        assert await d.commit() == {r: None for r in RCPTS}
        await target.close()
        (headers, body), = hook.requests
        assert body == MESSAGE
        assert headers["Content-Type"] == "message/rfc822"
        assert headers["Content-Length"] == str(len(MESSAGE))
        assert "Transfer-Encoding" not in headers
        assert headers["Authorization"] == "Bearer t0ken"
        assert headers["X-Pillarbox-Message-Id"] == "MSGID1"
        assert "X-Pillarbox-Signature" not in headers  # no secret, no signature

    run(test)


def test_abort_sends_nothing():
    async def test(hook: Hook) -> None:
        target = make(hook.url)
        d = await target.start(envelope())
        await d.add_rcpt(RCPTS[0])
        await d.body(io.BytesIO(MESSAGE))
        await d.abort()
        assert await deliver(target, msg_id="SECOND") == {r: None for r in RCPTS}
        await target.close()
        assert [h["X-Pillarbox-Message-Id"] for h, _ in hook.requests] == ["SECOND"]

    run(test)


def test_json_carries_envelope_header_fields_and_base64_message():
    async def test(hook: Hook) -> None:
        target = make(hook.url, format="json")
        await deliver(target)
        await target.close()
        (headers, body), = hook.requests
        assert headers["Content-Type"] == "application/json"
        assert headers["Content-Length"] == str(len(body))
        doc = json.loads(body)
        assert doc["envelope"] == {
            "msg_id": "MSGID1", "mail_from": "ann@example.test", "rcpts": RCPTS,
            "size": len(MESSAGE),
            "source": {"endpoint": "smtp", "client_ip": "192.0.2.7", "helo": "mx.test",
                       "auth": None, "tls": None},
        }
        assert doc["headers"] == [["From", "Ann <ann@example.test>"],
                                  ["To", "tickets@example.test"],
                                  ["Subject", "printer  on fire"],
                                  ["X-Mixed", "caf\u00e9"]]
        assert base64.b64decode(doc["message"], validate=True) == MESSAGE

    run(test)


class ShortReads(io.RawIOBase):
    """A reader that returns at most 1000 bytes per read (as raw files may)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._data.seek(pos, whence)

    def tell(self) -> int:
        return self._data.tell()

    def readinto(self, b) -> int:
        chunk = self._data.read(min(len(b), 1000))
        b[:len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("fmt", ["rfc822", "json"])
def test_large_message_streams_in_blocks_and_arrives_whole(fmt):
    big = MESSAGE + bytes(range(256)) * 4099  # ~1 MiB, not a multiple of 3 or of a block

    async def test(hook: Hook) -> None:
        target = make(hook.url, format=fmt, secret="k")
        await deliver(target, ShortReads(big))
        await target.close()
        (headers, body), = hook.requests
        got = base64.b64decode(json.loads(body)["message"]) if fmt == "json" else body
        assert got == big
        assert headers["X-Pillarbox-Signature"] == \
            "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()

    run(test)


@pytest.mark.parametrize("fmt", ["rfc822", "json"])
def test_signature_is_hmac_sha256_of_the_body(fmt, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-from-file\n")

    async def test(hook: Hook) -> None:
        for target, key in ((make(hook.url, format=fmt, secret="s3cret"), b"s3cret"),
                            (make(hook.url, format=fmt, secret_file=str(secret_file)),
                             b"s3cret-from-file")):
            await deliver(target)
            await target.close()
            headers, body = hook.requests[-1]
            want = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Pillarbox-Signature"], want)
            wrong = "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()
            assert headers["X-Pillarbox-Signature"] != wrong

    run(test)


@pytest.mark.parametrize("status,reason", [
    (503, "Service Unavailable"), (500, "Internal Server Error"), (429, "Too Many Requests"),
    (408, "Request Timeout"), (302, "Found"),
])
def test_retryable_answers_are_temporary_errors(status, reason):
    async def test(hook: Hook) -> None:
        hook.answers = [(status, reason)]
        target = make(hook.url)
        with pytest.raises(module.DeliveryError) as e:
            await deliver(target)
        assert e.value.temporary
        assert e.value.reply.code == 451
        assert e.value.reply.text == f"4.4.1 webhook answered {status} {reason}"
        assert await deliver(target) == {r: None for r in RCPTS}  # then the retry succeeds
        await target.close()
        assert len(hook.requests) == 2

    run(test)


@pytest.mark.parametrize("status,reason", [(400, "Bad Request"), (404, "Not Found"),
                                           (413, "Payload Too Large")])
def test_other_4xx_is_permanent_with_the_status_line(status, reason):
    async def test(hook: Hook) -> None:
        hook.answers = [(status, reason)]
        target = make(hook.url)
        with pytest.raises(module.DeliveryError) as e:
            await deliver(target)
        await target.close()
        assert not e.value.temporary
        assert e.value.reply.code == 554
        assert e.value.reply.text == f"5.6.0 webhook answered {status} {reason}"

    run(test)


def test_2xx_other_than_200_delivers():
    async def test(hook: Hook) -> None:
        hook.answers = [(202, "Accepted"), (204, "No Content")]
        target = make(hook.url)
        assert await deliver(target) == {r: None for r in RCPTS}
        assert await deliver(target, rcpts=RCPTS[:1]) == {RCPTS[0]: None}
        await target.close()

    run(test)


def test_timeout_is_temporary():
    async def test(hook: Hook) -> None:
        hook.answers = [(0, "")]
        target = make(hook.url, timeout=0.3)
        with pytest.raises(module.DeliveryError) as e:
            await deliver(target)
        await target.close()
        assert e.value.temporary
        assert e.value.reply.text == "4.4.1 webhook did not answer within 0.3s"
        assert len(hook.requests) == 1

    run(test)


def test_refused_connection_is_temporary():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def test() -> None:
        target = make(f"http://127.0.0.1:{port}/in")
        with pytest.raises(module.DeliveryError) as e:
            await deliver(target)
        await target.close()
        assert e.value.temporary
        assert e.value.reply.text.startswith("4.4.1 webhook unreachable")

    asyncio.run(test())


def test_hostile_reason_phrase_is_made_printable():
    assert webhook.outcome(400, "Bad\x1b[31m Request\u2028").reply.text == \
        "5.6.0 webhook answered 400 Bad?[31m Request?"


def test_no_recipient_posts_nothing():
    async def test(hook: Hook) -> None:
        target = make(hook.url)
        d = await target.start(envelope())
        await d.body(io.BytesIO(MESSAGE))
        assert await d.commit() == {}
        await target.close()
        assert hook.requests == []

    run(test)


@pytest.mark.parametrize("options,key", [
    ({}, "url"),
    ({"url": "ftp://x.test/"}, "url"),
    ({"url": "http:///nohost"}, "url"),
    ({"url": "http://x.test/\r\nX: y"}, "url"),
    ({"url": "http://x.test/", "format": "xml"}, "format"),
    ({"url": "http://x.test/", "timeout": 0}, "timeout"),
    ({"url": "http://x.test/", "timeout": True}, "timeout"),
    ({"url": "http://x.test/", "secret": "a", "secret_file": "/nonexistent"},
     "secret, secret_file"),
    ({"url": "http://x.test/", "secret_file": "/nonexistent/secret"}, "secret_file"),
    ({"url": "http://x.test/", "headers": {"X-A": "1\r\nX-B: 2"}}, "headers"),
    ({"url": "http://x.test/", "headers": {"Bad Name": "1"}}, "headers"),
    ({"url": "http://x.test/", "headers": {"Content-Type": "text/plain"}}, "headers"),
    ({"url": "http://x.test/", "headers": {"X-Pillarbox-Signature": "forged"}}, "headers"),
])
def test_bad_options_are_config_errors_naming_the_option(options, key):
    with pytest.raises(ValueError) as e:
        webhook.KIND.make("helpdesk", options, None)
    assert str(e.value).startswith(f"{key}: ")
    assert "\n" not in str(e.value)


def test_kind_declares_its_options():
    assert webhook.KIND.name == "webhook" and webhook.KIND.role == "target"
    options = {o.name: o for o in webhook.KIND.options}
    assert set(options) == {"url", "format", "secret", "secret_file", "timeout", "headers"}
    assert options["url"].required
    assert (options["format"].default, options["timeout"].default) == ("rfc822", 30)
    assert isinstance(make("http://x.test/"), module.Closable)


def test_unreadable_message_is_a_temporary_error_and_posts_nothing(tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(MESSAGE)

    async def test(hook: Hook) -> None:
        for options in ({}, {"secret": "k"}, {"format": "json"}):
            target = make(hook.url, **options)
            d = await target.start(envelope())
            await d.add_rcpt(RCPTS[0])
            with path.open("rb") as f:
                await d.body(f)
            with pytest.raises(module.DeliveryError) as e:  # the reader was closed
                await d.commit()
            await target.close()
            assert e.value.temporary
            assert e.value.reply.text == "4.4.1 webhook: the message could not be read"
        assert hook.requests == []

    run(test)
