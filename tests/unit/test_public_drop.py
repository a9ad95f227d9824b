"""The public maildrop's file format and the server's suspicion of its entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pillarbox.queue import public_drop


@pytest.fixture
def maildrop(tmp_path: Path):
    d = tmp_path / "maildrop"
    public_drop.prepare(d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    yield d, fd
    os.close(fd)


def test_prepare_makes_a_sticky_world_writable_directory(maildrop) -> None:
    d, _ = maildrop
    assert d.stat().st_mode & 0o7777 == 0o1733
    d.chmod(0o755)
    public_drop.prepare(d)
    assert d.stat().st_mode & 0o7777 == 0o1733


def test_write_then_read(maildrop) -> None:
    d, fd = maildrop
    name = public_drop.write(d, ["root", "bob@example.test"], None, b"Subject: x\r\n\r\nhi\r\n")
    assert public_drop.names(fd) == [name]
    assert (d / name).stat().st_mode & 0o777 == 0o644
    drop = public_drop.read(fd, name, 1000)
    assert (drop.rcpts, drop.sender, drop.uid) == (["root", "bob@example.test"], None,
                                                   os.geteuid())
    assert drop.data == b"Subject: x\r\n\r\nhi\r\n"
    with pytest.raises(public_drop.BadDrop, match="larger"):
        public_drop.read(fd, name, 5)


@pytest.mark.parametrize(("content", "why"), [
    (b"no newline at all", "envelope"),
    (b"{not json\nbody", "JSON"),
    (b'{"v": 2, "rcpts": ["a"]}\nbody', "version"),
    (b'{"v": 1, "rcpts": []}\nbody', "recipient"),
    (b'{"v": 1, "rcpts": [1]}\nbody', "recipient"),
    (b'{"v": 1, "rcpts": ["a"], "sender": 5}\nbody', "sender"),
])
def test_malformed_entries_are_refused(maildrop, content: bytes, why: str) -> None:
    d, fd = maildrop
    (d / "x").write_bytes(content)
    with pytest.raises(public_drop.BadDrop, match=why):
        public_drop.read(fd, "x", 1000)


def test_fifo_symlink_and_hard_link_are_refused(maildrop, tmp_path: Path) -> None:
    d, fd = maildrop
    secret = tmp_path / "secret"
    secret.write_bytes(b'{"v": 1, "rcpts": ["a"]}\nsecret')
    os.mkfifo(d / "fifo")
    os.symlink(secret, d / "link")
    os.link(secret, d / "hard")
    for name, why in (("fifo", "regular"), ("link", "open"), ("hard", "links")):
        with pytest.raises(public_drop.BadDrop, match=why):
            public_drop.read(fd, name, 1000)


def test_partial_files_are_not_listed(maildrop) -> None:
    d, fd = maildrop
    (d / ".partial").write_bytes(b"half")
    assert public_drop.names(fd) == []
    old = 1_000_000.0
    os.utime(d / ".partial", (old, old))
    public_drop.names(fd)
    assert not (d / ".partial").exists()
