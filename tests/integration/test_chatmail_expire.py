"""chatmail mode, expiry (`pillarbox expire [--dry-run] --now TIME`): the
test sets the clock; inactive accounts go with their mail, old messages
after 20 days, large ones after 7, and the report says what went."""

from __future__ import annotations

import os
import sqlite3
import time

from .support import ALICE, BOB, wait_until

DAY = 86400


def listed(srv, addr: str) -> bool:
    db = sqlite3.connect(srv.data_dir / "pillarbox.db")
    try:
        return db.execute("SELECT 1 FROM users WHERE address = ?", (addr,)).fetchone() is not None
    finally:
        db.close()


def put(maildir, name: str, size: int, age_days: float, now: float, sub: str = "cur") -> object:
    path = maildir / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"Subject: x\r\n\r\n" + b"x" * size)
    when = now - age_days * DAY
    os.utime(path, (when, when))
    return path


def test_expire(make_server):
    srv = make_server({"mode": "chatmail", "chatmail.strict_dkim": False}, start=False)
    now = time.time()
    alice = srv.data_dir / "mail" / "example.test" / "alice"
    old = put(alice, "1.old:2,S", 100, 21, now, "new")
    large = put(alice, "2.large:2,S", 300_000, 8, now)
    recent_large = put(alice, "3.rl:2,S", 300_000, 6, now)
    recent = put(alice, "4.recent:2,S", 100, 19, now)
    in_folder = put(alice / ".Archive", "5.old:2,S", 100, 30, now)
    bob_mail = put(srv.data_dir / "mail" / "example.test" / "bob", "6.b:2,S", 10, 1, now)

    # A first run gives accounts without a last login today as theirs: nobody goes.
    first = srv.cli_ok("expire", "--dry-run", "--now", str(now)).stdout
    assert first.startswith("would remove 0 of 2 accounts, 2 old messages and 1 large ones")
    db = sqlite3.connect(srv.data_dir / "pillarbox.db")
    with db:
        db.execute("INSERT INTO chatmail_users (address, last_login) VALUES (?, ?), (?, ?)",
                   (ALICE, int(now - 2 * DAY), BOB, int(now - 91 * DAY)))
    db.close()

    dry = srv.cli_ok("expire", "--dry-run", "--now", str(now)).stdout.splitlines()
    assert dry[0].startswith("would remove 1 of 2 accounts, 2 old messages and 1 large ones")
    assert dry[1:] == [f"account {BOB}"]
    assert all(p.exists() for p in (old, large, recent_large, recent, in_folder, bob_mail))
    assert listed(srv, BOB)

    done = srv.cli_ok("expire", "--now", str(now)).stdout.splitlines()
    assert done[0].startswith("removed 1 of 2 accounts, 2 old messages and 1 large ones")
    assert not old.exists() and not large.exists() and not in_folder.exists()
    assert recent.exists() and recent_large.exists()
    assert not bob_mail.exists() and not listed(srv, BOB)

    # Twenty days on, alice (last seen 22 days before) keeps her account, not her mail.
    later = srv.cli_ok("expire", "--now", str(now + 20 * DAY)).stdout
    assert later.startswith("removed 0 of 1 accounts, 2 old messages")
    assert not recent.exists() and not recent_large.exists()
    # Ninety days without a login: the account goes.
    srv.cli_ok("expire", "--now", str(now + 89 * DAY))
    assert not listed(srv, ALICE)
    assert not alice.exists()


def test_the_server_expires_on_its_own(make_server):
    """`[chatmail] expire_every`: the running server expires without the CLI."""
    srv = make_server({"mode": "chatmail", "chatmail.strict_dkim": False,
                       "chatmail.expire_every": "1s"}, start=False)
    now = time.time()
    bob_mail = put(srv.data_dir / "mail" / "example.test" / "bob", "1.b:2,S", 10, 1, now)
    db = sqlite3.connect(srv.data_dir / "pillarbox.db")
    with db:
        db.execute("INSERT INTO chatmail_users (address, last_login) VALUES (?, ?), (?, ?)",
                   (ALICE, int(now), BOB, int(now - 91 * DAY)))
    db.close()
    srv.start()
    wait_until(lambda: not listed(srv, BOB), 10, "the inactive account expired by the server")
    assert not bob_mail.exists() and listed(srv, ALICE)
    wait_until(lambda: "expire: removed 1 of 2 accounts" in srv.log_text(), 10,
               "the expiry logged")
