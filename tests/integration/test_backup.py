"""`pillarbox backup DEST` while mail is being delivered and read, then
`pillarbox restore` into a new data directory: every message acknowledged
before the backup is there, with the same UIDVALIDITY, UID and flags."""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import stat
import threading

import pytest

from .support import ALICE, free_ports, make_message, wait_until


def _send(srv, n: int, tag: str) -> list[str]:
    ids = []
    with contextlib.closing(srv.smtp()) as s:
        for i in range(n):
            mid = f"<{tag}.{i}@backup.test>"
            s.sendmail("bob@elsewhere.test", [ALICE],
                       make_message("bob@elsewhere.test", ALICE, f"{tag} {i}", date_and_id=False,
                                    headers={"Message-ID": mid}))
            ids.append(mid)
    return ids


def _view(c: imaplib.IMAP4, box: str) -> tuple[int, dict[str, tuple[int, frozenset]]]:
    typ, _ = c.select(f'"{box}"')
    assert typ == "OK"
    uidvalidity = int(c.response("UIDVALIDITY")[1][0])
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    out: dict[str, tuple[int, frozenset]] = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            flags = frozenset(re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split())
            mid = re.search(rb"Message-ID:\s*(\S+)", item[1], re.I).group(1).decode()
            # Messages delivered during the backup may come twice (see OPERATING.md);
            # the others never do.
            assert mid not in out or mid.startswith("<during"), f"{mid} twice in {box}"
            out[mid] = (uid, flags - {"\\Recent"})
    return uidvalidity, out


def _defer_one(srv) -> set[str]:
    """A message waiting in the queue for a route that refuses connections; the
    ids the queue then holds."""
    with contextlib.closing(srv.submission(ALICE)) as s:
        s.sendmail(ALICE, ["someone@nowhere.test"],
                   make_message(ALICE, "someone@nowhere.test", "deferred"))
    wait_until(lambda: any("someone@nowhere.test" in str(e) for e in srv.queue_list()), 10,
               "the deferred message")
    return {e["id"] for e in srv.queue_list()}


def _modes(root) -> list[str]:
    bad = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            if stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode) != 0o700:
                bad.append(os.path.join(dirpath, name))
        for name in files:
            if stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode) != 0o600:
                bad.append(os.path.join(dirpath, name))
    return bad


def test_backup_while_delivering_then_restore(make_server, tmp_path):
    closed = free_ports(1)[0]
    srv = make_server(extra_toml=f'[[route]]\ndomains = ["nowhere.test"]\n'
                                 f'host = "127.0.0.1:{closed}"\ntls = "none"\n')
    seen = _send(srv, 12, "seen")
    c = srv.imap(ALICE)
    wait_until(lambda: (c.noop(), int(c.select("INBOX")[1][0]))[1] >= 12, 10, "12 messages")
    # the queue's workers deliver in parallel: UID 2 is not always seen.1
    (gone,) = [mid for mid, (uid, _) in _view(c, "INBOX")[1].items() if uid == 2]
    c.uid("STORE", "2", "+FLAGS", r"(\Deleted)")
    c.expunge()  # a gap in the UIDs
    c.uid("STORE", "3", "+FLAGS", r"(\Seen \Flagged Project)")
    assert c.create("Keep")[0] == "OK"
    assert c.uid("MOVE", "4:5", "Keep")[0] == "OK"
    c.uid("COPY", "6", "Keep")
    before = {box: _view(c, box) for box in ("INBOX", "Keep")}
    assert len(before["INBOX"][1]) >= 9 and len(before["Keep"][1]) >= 1
    # Acknowledged, in new/, not yet seen by any reader; and one deferred in the queue.
    unseen = _send(srv, 3, "unseen")
    srv.wait_for_messages(ALICE, 3)
    queued = _defer_one(srv)

    stop = threading.Event()
    errors: list[BaseException] = []

    def deliver() -> None:
        n = 0
        try:
            while not stop.is_set():
                _send(srv, 5, f"during{n}")
                n += 1
        except BaseException as e:  # reported below
            errors.append(e)

    def read() -> None:  # moves new/ to cur/ and changes flags while the copy runs
        r = srv.imap(ALICE)
        try:
            on = True
            while not stop.is_set():
                r.select("INBOX")
                r.uid("STORE", "7", "+FLAGS" if on else "-FLAGS", r"(\Answered)")
                on = not on
        except BaseException as e:
            errors.append(e)
        finally:
            with contextlib.suppress(Exception):
                r.logout()

    threads = [threading.Thread(target=deliver), threading.Thread(target=read)]
    for t in threads:
        t.start()
    dest = tmp_path / "backup"
    try:
        p = srv.cli_ok("backup", dest)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert "files" in p.stdout, p.stdout
    assert _modes(dest) == []
    # A second backup into the same place is refused.
    p = srv.cli("backup", dest)
    assert p.returncode == 1 and "not an empty directory" in p.stderr, p.stderr
    c.logout()
    srv.stop()

    new = make_server(start=False, seed=False)
    (new.data_dir / "junk").write_text("x")
    p = new.cli("restore", dest)
    assert p.returncode == 1 and "not empty" in p.stderr, p.stderr
    (new.data_dir / "junk").unlink()
    new.cli_ok("restore", dest)
    assert _modes(new.data_dir) == []
    new.start()
    assert queued <= {e["id"] for e in new.queue_list()}
    c = new.imap(ALICE)
    after = {box: _view(c, box) for box in ("INBOX", "Keep")}
    c.logout()
    for box in ("INBOX", "Keep"):
        uidvalidity, msgs = before[box]
        assert after[box][0] == uidvalidity, box
        for mid, (uid, flags) in msgs.items():
            got = after[box][1].get(mid)
            assert got is not None, f"{mid} lost from {box}"
            # UID 7's \Answered was being toggled during the copy: either is fine.
            assert got[0] == uid and got[1] - {"\\Answered"} == flags - {"\\Answered"}, \
                (box, mid, got, (uid, flags))
    for mid in unseen:
        assert mid in after["INBOX"][1], f"{mid} (acknowledged before the backup) lost"
    assert set(seen) - set(after["INBOX"][1]) - set(after["Keep"][1]) <= {gone}, \
        "only the expunged message is gone"


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_backup_and_restore_follow_the_shared_directory(make_server, tmp_path):
    """With [storage] shared_dir the Maildirs, this node's spool and the DKIM keys
    live there, not in data_dir: the backup holds them all the same, and a
    restore puts them back where the restoring config keeps them."""
    closed = free_ports(1)[0]
    route = f'[[route]]\ndomains = ["nowhere.test"]\nhost = "127.0.0.1:{closed}"\ntls = "none"\n'
    srv = make_server({"storage.shared_dir": str(tmp_path / "shared1"), "storage.node": "a"},
                      extra_toml=route)
    srv.cli_ok("dns")  # makes the DKIM keys, in shared1/dkim
    keys = sorted(p.name for p in (tmp_path / "shared1" / "dkim").rglob("*") if p.is_file())
    assert keys, "no DKIM key in the shared directory"
    ids = _send(srv, 3, "shared")
    c = srv.imap(ALICE)
    wait_until(lambda: (c.noop(), int(c.select("INBOX")[1][0]))[1] >= 3, 10, "3 messages")
    c.uid("STORE", "2", "+FLAGS", r"(\Flagged)")
    before = _view(c, "INBOX")
    c.logout()
    queued = _defer_one(srv)
    dest = tmp_path / "backup"
    srv.cli_ok("backup", dest)
    srv.stop()
    assert sorted(p.name for p in (dest / "dkim").rglob("*") if p.is_file()) == keys
    assert len(list((dest / "mail" / "example.test" / "alice").glob("*/*,S=*"))) == 3

    shared2 = tmp_path / "shared2"
    new = make_server({"storage.shared_dir": str(shared2), "storage.node": "a"},
                      start=False, seed=False, extra_toml=route)
    (shared2 / "mail").mkdir(parents=True)
    (shared2 / "mail" / "junk").write_text("x")
    p = new.cli("restore", dest)
    assert p.returncode == 1 and "mail" in p.stderr and "not empty" in p.stderr, p.stderr
    (shared2 / "mail" / "junk").unlink()
    new.cli_ok("restore", dest)
    assert not (new.data_dir / "mail").exists() and not (new.data_dir / "queue").exists()
    assert sorted(p.name for p in (shared2 / "dkim").rglob("*") if p.is_file()) == keys
    new.start()
    assert queued <= {e["id"] for e in new.queue_list()}
    c = new.imap(ALICE)
    assert _view(c, "INBOX") == before, "UIDVALIDITY, UIDs or flags changed"
    assert {mid for mid in before[1]} == set(ids)
    c.logout()
