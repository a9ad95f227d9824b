"""Never acknowledge what is not durable: kill -9 under load loses nothing."""

from __future__ import annotations

import re
import smtplib
import threading
import time

from .support import ALICE, BOB, CLIENT_NAME, make_message, wait_until

THREADS = 8
USERS = [ALICE, BOB]
SENDER = "load@remote.test"
TOKEN_RE = re.compile(rb"^Subject: (load-[0-9a-z-]+)\r?$", re.M)


def _load(server, acked: dict, lock: threading.Lock, stop: threading.Event, n: int,
          errors: list):
    i = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname=CLIENT_NAME,
                              timeout=5) as s:
                while not stop.is_set():
                    i += 1
                    tok = f"load-{n}-{i}-{time.monotonic_ns()}"
                    rcpt = USERS[(n + i) % len(USERS)]
                    body = f"message {tok}\r\n" + ("z" * 70 + "\r\n") * 20
                    s.sendmail(SENDER, [rcpt], make_message(SENDER, rcpt, tok, body))
                    # sendmail returned: the end of DATA got 250 -> acknowledged
                    with lock:
                        acked[tok] = rcpt
        except (smtplib.SMTPException, OSError) as e:
            if not stop.is_set():
                errors.append(repr(e))
                time.sleep(0.02)  # server down (killed); try again until told to stop


def _delivered(server) -> dict[str, int]:
    seen: dict[str, int] = {}
    for u in USERS:
        for raw in server.messages(u):
            for m in TOKEN_RE.finditer(raw):
                tok = m.group(1).decode()
                seen[tok] = seen.get(tok, 0) + 1
    return seen


def test_kill9_under_concurrent_load_loses_no_acknowledged_message(server):
    acked: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    threads = [
        threading.Thread(target=_load, args=(server, acked, lock, stop, n, errors), daemon=True)
        for n in range(THREADS)
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) >= 150, 30, "150 acknowledged messages under load")
        assert not errors, f"errors before the kill: {errors[:5]}"
        server.kill9()  # mid-load: 8 sessions are sending right now
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    with lock:
        acknowledged = dict(acked)
    delivered_before_restart = len(_delivered(server))

    server.start()

    def all_there():
        seen = _delivered(server)
        return seen if all(t in seen for t in acknowledged) else None

    try:
        seen = wait_until(all_there, 60, "every acknowledged message in the Maildirs")
    except AssertionError:
        seen = _delivered(server)
        lost = sorted(t for t in acknowledged if t not in seen)
        raise AssertionError(
            f"{len(lost)} of {len(acknowledged)} acknowledged messages lost after kill -9:"
            f" {lost[:10]}"
        ) from None
    duplicates = sum(c - 1 for t, c in seen.items() if t in acknowledged and c > 1)
    unacked_delivered = len([t for t in seen if t not in acknowledged])
    print(
        f"kill -9 under load: acknowledged={len(acknowledged)}"
        f" delivered_before_kill={delivered_before_restart}"
        f" delivered_after_restart={len(seen)} lost=0 duplicates={duplicates}"
        f" delivered_but_unacknowledged={unacked_delivered}"
    )
    # every message file in new/ is whole (Maildir: written in tmp/, renamed)
    for u in USERS:
        for raw in server.messages(u):
            assert raw.rstrip().endswith(b"z" * 70), f"truncated message in {u}: {raw[-200:]!r}"
    # and the restarted server still takes mail
    with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname=CLIENT_NAME,
                      timeout=10) as s:
        s.sendmail(SENDER, [USERS[0]], make_message(SENDER, USERS[0], "load-after-restart"))
