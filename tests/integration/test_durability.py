"""Never acknowledge what is not durable: kill -9 under load loses nothing."""

from __future__ import annotations

import os
import re
import smtplib
import threading
import time

import pytest

from .pg_server import BACKENDS, sharing_mail
from .support import ALICE, BOB, CLIENT_NAME, make_message, wait_until

pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)


@pytest.fixture
def make_server(make_server, storage, tmp_path):
    """On PostgreSQL with a shared_dir: the spool under it, delivered under its lease."""
    return sharing_mail(make_server, storage, tmp_path)


THREADS = 8
USERS = [ALICE, BOB]
SENDER = "load@remote.test"
TOKEN_RE = re.compile(rb"^Subject: (load-[0-9a-z-]+)\r?$", re.M)


def _load(server, acked: dict, lock: threading.Lock, stop: threading.Event, n: int,
          errors: list, users: list[str] = USERS):
    i = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname=CLIENT_NAME,
                              timeout=20) as s:
                while not stop.is_set():
                    i += 1
                    tok = f"load-{n}-{i}-{time.monotonic_ns()}"
                    # every third message goes to both users: a message leaves the
                    # queue only when every recipient has it
                    rcpts = users if i % 3 == 0 else [users[(n + i) % len(users)]]
                    body = f"message {tok}\r\n" + ("z" * 70 + "\r\n") * 20
                    s.sendmail(SENDER, rcpts, make_message(SENDER, rcpts, tok, body))
                    # sendmail returned: the end of DATA got 250 -> acknowledged
                    with lock:
                        acked[tok] = rcpts
        except (smtplib.SMTPException, OSError) as e:
            if not stop.is_set():
                errors.append(repr(e))
                time.sleep(0.02)  # server down (killed); try again until told to stop


def _start_load(server, users: list[str] = USERS):
    acked: dict[str, list[str]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    threads = [
        threading.Thread(target=_load, args=(server, acked, lock, stop, n, errors, users),
                         daemon=True)
        for n in range(THREADS)
    ]
    for t in threads:
        t.start()
    return acked, lock, stop, errors, threads


def _delivered(server) -> dict[tuple[str, str], int]:
    """(user, token) -> number of copies in the user's Maildir."""
    seen: dict[tuple[str, str], int] = {}
    for u in USERS:
        for raw in server.messages(u):
            for m in TOKEN_RE.finditer(raw):
                key = (u, m.group(1).decode())
                seen[key] = seen.get(key, 0) + 1
    return seen


def test_kill9_under_concurrent_load_loses_no_acknowledged_message(server):
    acked, lock, stop, errors, threads = _start_load(server)
    try:
        wait_until(lambda: len(acked) >= 150, 60, "150 acknowledged messages under load")
        assert not errors, f"errors before the kill: {errors[:5]}"
        server.kill9()  # mid-load: 8 sessions are sending right now
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    with lock:
        acknowledged = dict(acked)
    expected = {(u, tok) for tok, rcpts in acknowledged.items() for u in rcpts}
    delivered_at_kill = len(set(_delivered(server)) & expected)

    # restart, and kill -9 again as soon as it listens (recovery may be under way)
    server.start()
    server.kill9()
    server.start()

    def all_there():
        seen = _delivered(server)
        return seen if expected <= set(seen) else None

    try:
        seen = wait_until(all_there, 60, "every acknowledged message in the Maildirs")
    except AssertionError:
        seen = _delivered(server)
        lost = sorted(expected - set(seen))
        raise AssertionError(
            f"{len(lost)} of {len(expected)} acknowledged deliveries lost after kill -9:"
            f" {lost[:10]}"
        ) from None
    duplicates = sum(c - 1 for k, c in seen.items() if k in expected and c > 1)
    unacked_delivered = len(set(seen) - expected)
    print(
        f"kill -9 under load: acknowledged messages={len(acknowledged)}"
        f" deliveries={len(expected)} delivered_at_kill={delivered_at_kill}"
        f" delivered_after_restart={len(set(seen) & expected)} lost=0"
        f" duplicates={duplicates} delivered_but_unacknowledged={unacked_delivered}"
    )
    # Only deliveries in flight at a kill may repeat: at most one message per
    # queue worker, each to at most len(USERS) mailboxes, and there were two kills.
    bound = 2 * server.config["queue"]["workers"] * len(USERS)
    assert duplicates <= bound, f"{duplicates} duplicates after two kills, bound {bound}"
    # every message file in new/ is whole (Maildir: written in tmp/, renamed)
    for u in USERS:
        for raw in server.messages(u):
            assert raw.rstrip().endswith(b"z" * 70), f"truncated message in {u}: {raw[-200:]!r}"
    # and the restarted server still takes mail
    with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname=CLIENT_NAME,
                      timeout=10) as s:
        s.sendmail(SENDER, [USERS[0]], make_message(SENDER, USERS[0], "after-restart"))
    wait_until(lambda: any(b"Subject: after-restart" in m for m in server.messages(USERS[0])),
               10, "delivery after the restarts")


def test_kill9_repeats_at_most_the_deliveries_in_flight(make_server):
    """A delivery finished before the kill is recorded as finished: after the
    restart only the messages the workers held at the kill are delivered again."""
    workers = 1
    server = make_server(queue__workers=workers)
    new = server.maildir(ALICE) / "new"

    def count() -> int:
        return len(os.listdir(new)) if new.is_dir() else 0

    acked, lock, stop, errors, threads = _start_load(server, [ALICE])
    try:
        # a backlog, so the worker is busy at the kill
        wait_until(lambda: len(acked) >= 200 and count() >= 50, 60,
                   "200 acknowledged and 50 delivered messages under load")
        assert not errors, f"errors before the kill: {errors[:5]}"
        # kill right after a delivery landed, when its completion is least likely
        # to have been recorded yet
        before = count()
        wait_until(lambda: count() > before, 10, "the next delivery", interval=0.001)
        server.kill9()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    with lock:
        expected = {(ALICE, tok) for tok in acked}
    at_kill = _delivered(server)
    assert all(c == 1 for c in at_kill.values()), "duplicates before any crash"
    server.start()
    seen = wait_until(lambda: (d := _delivered(server)) and expected <= set(d) and d, 60,
                      "every acknowledged message in the Maildir")
    repeated = sorted(k for k, c in seen.items() if c > 1)
    assert all(k in at_kill for k in repeated), "a message was delivered twice after the restart"
    assert len(repeated) <= workers, (
        f"{len(repeated)} messages delivered again after kill -9 with {workers} workers:"
        f" {repeated[:10]}"
    )


def _fill_deferred_backlog(queue_root, n: int) -> None:
    """n messages to a remote domain, deferred an hour: what a server leaves after 451s."""
    import asyncio

    from pillarbox.queue.spool import Delivery, Envelope, Spool, State, new_id

    spool = Spool(queue_root)
    body = b"Subject: deferred\r\n\r\n" + b"b" * 2000 + b"\r\n"
    now = time.time()
    envs = [Envelope(id=new_id(), mail_from=SENDER, rcpts=[f"r{i}@far.test"],
                     received=now, size=len(body)) for i in range(n)]

    async def write() -> None:
        await asyncio.gather(*(spool.append(e, [body]) for e in envs))

    asyncio.run(write())
    for e in envs:
        d = Delivery("remote", e.rcpts[0], e.rcpts[0], "deferred", 1, now + 3600, "451 later")
        (spool.states / e.id).write_bytes(State([d], expanded=True).to_json())


def test_mail_taken_at_start_with_a_big_backlog_is_kept_apart_from_it(make_server):
    """Regression: the listeners once opened before the spool had loaded, so a
    message taken in meanwhile raced the index rebuild (wrong offsets, a torn
    segment tail cut off). Now nothing is served until the queue is loaded."""
    n = 8000
    srv = make_server(start=False)
    _fill_deferred_backlog(srv.queue_dir, n)
    srv.start(timeout=60)
    toks = [f"startup-{i}-{time.monotonic_ns()}" for i in range(20)]
    with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname=CLIENT_NAME, timeout=20) as s:
        for tok in toks:
            s.sendmail(SENDER, [ALICE], make_message(SENDER, [ALICE], tok, f"body {tok}\r\n"))
    got = srv.wait_for_messages(ALICE, len(toks), timeout=30)
    found = sorted(t for raw in got for t in toks if f"body {t}\r\n".encode() in raw)
    assert found == sorted(toks), "messages taken at start-up were lost or mangled"
    entries = srv.queue_list()
    assert len(entries) == n, f"the backlog has {len(entries)} messages, not {n}"
    assert all(e["rcpts"][0]["state"] == "deferred" for e in entries)
