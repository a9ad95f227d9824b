"""store/backup.py: a user's Maildir copied while a reader changes it.

The server's changes are made, deterministically, at the worst moment: after
the message files were copied and before the IMAP index snapshot is taken.
The restored copy must still show every message once, under its UID, with
its flags."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pillarbox.store import backup
from pillarbox.store.mailbox_index import INDEX_NAME, MailStore


def _deliver(root: Path, name: str, text: str) -> None:
    (root / "new" / name).write_bytes(f"Subject: {text}\r\n\r\n{text}\r\n".encode())


def _subjects(store: MailStore, box: str) -> dict[int, tuple[str, frozenset[str]]]:
    store.sync(box)
    out = {}
    for uid, msg in store.box(box).msgs.items():
        first = store.file(box, msg).read_bytes().split(b"\r\n", 1)[0].decode()
        out[uid] = (first.removeprefix("Subject: "), msg.flags)
    return out


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, MailStore]:
    root = tmp_path / "data" / "mail" / "example.org" / "alice"
    store = MailStore(root)
    for i, name in enumerate("ABC"):
        _deliver(root, f"100000000{i}.M1P1Q{i}.host,S=10", name)
    store.sync("INBOX")  # A=1 B=2 C=3
    store.create("Keep")
    _deliver(root, "1000000009.M1P1Q9.host,S=10", "D")  # acknowledged, not yet seen
    return root, store


def test_changes_between_files_and_index_snapshot_keep_uids(live, tmp_path, monkeypatch):
    root, store = live
    real = backup._copy_sqlite

    def reader_acts_then_snapshot(src: Path, dst: Path, progress) -> None:
        if src.name == INDEX_NAME:
            store.store_flags("INBOX", [1], "add", {"\\Seen", "Project"})  # renames A's file
            store.sync("INBOX")  # D: new/ -> cur/, UID 4
            store.copy("INBOX", [2], "Keep", move=True)  # B: INBOX/cur -> .Keep/cur
        real(src, dst, progress)

    monkeypatch.setattr(backup, "_copy_sqlite", reader_acts_then_snapshot)
    dest = tmp_path / "backup"
    backup.backup(tmp_path / "data", dest)
    store.close()

    copy = MailStore(dest / "mail" / "example.org" / "alice")
    try:
        assert _subjects(copy, "INBOX") == {1: ("A", frozenset({"\\Seen", "Project"})),
                                            3: ("C", frozenset()), 4: ("D", frozenset())}
        assert _subjects(copy, "Keep") == {1: ("B", frozenset())}
    finally:
        copy.close()


def test_modes_marker_and_refusals(live, tmp_path):
    data = tmp_path / "data"
    (data / "tls").mkdir()
    (data / "tls" / "key.pem").write_text("key")
    os.chmod(data / "tls" / "key.pem", 0o644)
    dest = tmp_path / "backup"
    backup.backup(data, dest)
    assert (dest / "tls" / "key.pem").read_text() == "key"
    assert (dest / backup.MARKER).is_file()
    for dirpath, dirs, files in os.walk(dest):
        for n in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, n)).st_mode) == 0o700
        for n in files:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, n)).st_mode) == 0o600
    with pytest.raises(backup.BackupError, match="not an empty directory"):
        backup.backup(data, dest)
    with pytest.raises(backup.BackupError, match="inside the data directory"):
        backup.backup(data, data / "bk")
    with pytest.raises(backup.BackupError, match="not a pillarbox backup"):
        backup.restore(data, tmp_path / "new")
    backup.restore(dest, tmp_path / "new")
    assert not (tmp_path / "new" / backup.MARKER).exists()
    assert (tmp_path / "new" / "tls" / "key.pem").read_text() == "key"
    with pytest.raises(backup.BackupError, match="not empty"):
        backup.restore(dest, tmp_path / "new")


def _env(tag: str):
    from pillarbox.queue.spool import Envelope, new_id

    return Envelope(id=new_id(), mail_from=f"{tag}@remote.test", rcpts=["alice@example.org"],
                    received=0.0, size=10)


def test_queue_pickup_and_delivery_during_the_copy_lose_nothing(tmp_path, monkeypatch):
    """The server picks up a sendmail drop (appends it to a segment, deletes the drop
    file) right after a segment was copied: the drop must still be in the copy."""
    import asyncio

    from pillarbox.queue.spool import Spool

    data = tmp_path / "data"
    spool = Spool(data / "queue")
    spool.load()
    live, finished = _env("live"), _env("done")
    dropped = _env("drop")

    async def fill() -> None:
        for env in (live, finished):
            await spool.append(env, [b"body\r\n"])
        spool.done(finished.id)

    asyncio.run(fill())
    spool.drop(dropped, b"dropped body\r\n")
    real = backup._copy_file
    acted = []

    def server_acts(src: Path, dst: Path, progress) -> bool:
        ok = real(src, dst, progress)
        if src.name.endswith(".seg") and not acted:  # right after a segment was copied
            acted.append(1)
            asyncio.run(spool.pickup())  # maildrop/ -> the segment, drop file deleted
        return ok

    monkeypatch.setattr(backup, "_copy_file", server_acts)
    backup.backup(data, tmp_path / "backup")
    assert acted
    ids = {e.id for e in Spool(tmp_path / "backup" / "queue").load()}
    assert dropped.id in ids or (tmp_path / "backup" / "queue" / "maildrop" / dropped.id).exists()
    assert not (data / "queue" / "maildrop" / dropped.id).exists()  # it was picked up
    assert live.id in ids and finished.id not in ids
