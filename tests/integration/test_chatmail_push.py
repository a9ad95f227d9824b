"""chatmail mode, push: device tokens through IMAP METADATA, the iroh relay
entry, and one notification POST per token on each new message, retried on
failure, the token dropped when the push service answers 410."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import psycopg
import pytest
from aiohttp import web

from . import chatmail_messages as m
from .imap_raw import RawIMAP
from .pg_server import BACKENDS
from .support import ALICE, BOB, Server, wait_until


def pending_pushes(relay: Server, storage_url: str) -> list[tuple]:
    """The directory's notifications waiting for a retry: (address, token, attempt)."""
    query = "SELECT address, token, attempt FROM chatmail_push_pending ORDER BY token"
    if storage_url:
        with psycopg.connect(storage_url) as db:
            return [tuple(r) for r in db.execute(query)]
    db = sqlite3.connect(relay.data_dir / "pillarbox.db")
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


class PushService:
    """A small HTTP server standing for notifications.delta.chat."""

    def __init__(self) -> None:
        self.posts: list[str] = []
        self.failures = {"tok-flaky": 1}  # answers 500 this many times first
        self.refused: set[str] = set()  # answers 503 while a token is here
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _notify(self, request: web.Request) -> web.Response:
        token = (await request.read()).decode()
        with self.lock:
            self.posts.append(token)
            if token in self.refused:
                return web.Response(status=503)
            if self.failures.get(token, 0) > 0:
                self.failures[token] -= 1
                return web.Response(status=500)
        return web.Response(status=410 if token == "tok-gone" else 200)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/notify", self._notify)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def count(self, token: str) -> int:
        with self.lock:
            return self.posts.count(token)

    def accept(self, token: str) -> int:
        """Stop refusing `token`; the number of POSTs it had so far."""
        with self.lock:
            self.refused.discard(token)
            return self.posts.count(token)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def push():
    service = PushService()
    yield service
    service.stop()


@pytest.fixture
def relay(make_server, push) -> Server:
    return make_server({"mode": "chatmail", "chatmail.strict_dkim": False,
                        "chatmail.notify_url": f"http://127.0.0.1:{push.port}/notify",
                        "chatmail.notify_retry_base": 0.05,
                        "chatmail.iroh_relay": "https://iroh.example.test"})


def deliver(relay: Server, to: str = ALICE) -> None:
    with relay.smtp() as s:
        s.sendmail("carol@example.net", [to], m.pgp_mime("carol@example.net", to,
                                                         m.sequoia_armored()))


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)
def test_tokens_and_notifications(relay, push):
    with RawIMAP(relay.imaps_port, ALICE) as c:
        for token in ("tok-good", "tok-gone", "tok-flaky"):
            c.ok(f'SETMETADATA "" (/private/devicetoken "{token}")')
        (line,), _ = c.ok('GETMETADATA "" /private/devicetoken')
        value = line.split(b'"')[-2].decode()
        assert sorted(value.split()) == ["tok-flaky", "tok-gone", "tok-good"]
        (line,), _ = c.ok('GETMETADATA "" /shared/vendor/deltachat/irohrelay')
        assert line == (b'METADATA "" (/shared/vendor/deltachat/irohrelay '
                        b'"https://iroh.example.test")')
        _, tagged = c.cmd('SETMETADATA "" (/shared/vendor/deltachat/irohrelay "x")')
        assert tagged.startswith(b"NO")
        # Ordinary entries still work beside the special ones.
        c.ok('SETMETADATA "" (/private/comment "mine")')
        assert c.ok('GETMETADATA "" /private/comment')[0] == [
            b'METADATA "" (/private/comment "mine")']

    deliver(relay)
    wait_until(lambda: push.count("tok-good") == 1 and push.count("tok-gone") == 1
               and push.count("tok-flaky") == 2, 10, "one POST per token, the flaky one retried")
    # 410: the token is gone from the user's list.
    with RawIMAP(relay.imaps_port, ALICE) as c:
        wait_until(lambda: b"tok-gone" not in c.ok('GETMETADATA "" /private/devicetoken')[0][0],
                   10, "the rejected token removed")
    deliver(relay)
    wait_until(lambda: push.count("tok-good") == 2 and push.count("tok-flaky") == 3, 10,
               "the second message notified")
    # Mail for a user without tokens posts nothing.
    before = len(push.posts)
    deliver(relay, BOB)
    relay.wait_for_messages(BOB, 1)
    assert push.count("tok-gone") == 1 and len(push.posts) == before


def test_a_dead_push_service_never_blocks_delivery(make_server):
    relay = make_server({"mode": "chatmail", "chatmail.strict_dkim": False,
                         "chatmail.notify_url": "http://127.0.0.1:9/notify",
                         "chatmail.notify_retry_base": 0.05})
    with RawIMAP(relay.imaps_port, ALICE) as c:
        c.ok('SETMETADATA "" (/private/devicetoken "tok-any")')
    for _ in range(3):
        deliver(relay)
    relay.wait_for_messages(ALICE, 3)


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)
def test_a_notification_waiting_for_a_retry_survives_a_restart(relay, push, storage_url):
    push.refused.add("tok-later")
    with RawIMAP(relay.imaps_port, ALICE) as c:
        c.ok('SETMETADATA "" (/private/devicetoken "tok-later")')
    deliver(relay)
    # A second refusal: the first one's retry was written down before its wait.
    wait_until(lambda: push.count("tok-later") >= 2, 10, "the push refused and retried")
    relay.stop()
    assert [(a, t) for a, t, _ in pending_pushes(relay, storage_url)] == [(ALICE, "tok-later")]
    refused = push.accept("tok-later")

    relay.start()
    wait_until(lambda: push.count("tok-later") == refused + 1, 30,
               "the pending notification sent by the restarted server")
    wait_until(lambda: pending_pushes(relay, storage_url) == [], 10,
               "the sent notification no longer pending")
    # The restarted server notifies new messages as before.
    deliver(relay)
    wait_until(lambda: push.count("tok-later") == refused + 2, 10, "the next message notified")


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_database_down_mid_session_answers_unavailable_and_keeps_the_session(make_server,
                                                                            postgres):
    """The mailbox index is per node (SQLite in the Maildir); the directory calls an IMAP
    session makes (device tokens in PostgreSQL) get NO [UNAVAILABLE] while the database is
    down, the mailbox and the quota (the directory's copy) keep answering, and the same
    session works again once PostgreSQL is back."""
    relay = make_server({"mode": "chatmail", "chatmail.strict_dkim": False})
    get = 'GETMETADATA "" /private/devicetoken'
    with RawIMAP(relay.imaps_port, ALICE) as c:
        c.ok('SETMETADATA "" (/private/devicetoken "tok-1")')
        c.ok("SELECT INBOX")
        postgres.stop_server()
        try:
            _, tagged = c.cmd('SETMETADATA "" (/private/devicetoken "tok-2")')
            assert tagged.startswith(b"NO [UNAVAILABLE]"), tagged
            _, tagged = c.cmd(get)
            assert tagged.startswith(b"NO [UNAVAILABLE]"), tagged
            c.ok("STATUS INBOX (MESSAGES UIDNEXT)")
            untagged, _ = c.ok("GETQUOTAROOT INBOX")
            assert untagged[0].startswith(b'QUOTAROOT "INBOX"'), untagged
            c.ok("NOOP")
        finally:
            postgres.start_server()
        wait_until(lambda: c.cmd(get)[1].startswith(b"OK"), 10,
                   "GETMETADATA in the same session after PostgreSQL returned")
        c.ok('SETMETADATA "" (/private/devicetoken "tok-2")')
        (line,), _ = c.ok(get)
        assert sorted(line.split(b'"')[-2].split()) == [b"tok-1", b"tok-2"], line
