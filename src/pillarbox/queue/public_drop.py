"""The public maildrop: mail that `pillarbox sendmail` run by any local user leaves.

Root and the server's own user queue mail straight into data_dir/queue/maildrop
(spool.py). Everyone else cannot enter data_dir, so they write here: a
directory of its own (`maildrop_dir`), owned by the server's user, mode 1733
(anyone may create a file; nobody else may list it or remove another's file).
One file per message: a JSON line `{"v": 1, "rcpts": [...], "sender": ...}`,
then the message. The client writes `.NAME` and renames it to `NAME` when it
is complete.

Nothing in such a file is trusted: the file's owner (which its writer cannot
choose) is the submitter; the sender a user asked for counts only when that
owner is root or the server's user. The server opens entries without
following symlinks and refuses anything but a regular file with one link
(a hard link to a file the server can read is not the user's message).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

DIR_MODE = 0o1733
FILE_MODE = 0o644  # the server's user must read it; others cannot list the directory
HEADER_MAX = 64 * 1024
MAX_RCPTS = 10_000
STALE_PARTIAL = 86400.0  # a `.NAME` this old was abandoned by its writer


class BadDrop(Exception):
    """A maildrop file that is not a message; the text says why."""


@dataclass
class Drop:
    name: str
    uid: int  # the file's owner: who submitted it
    rcpts: list[str]
    sender: str | None  # what the submitter asked for; None: not given
    data: bytes


# -- the client side (pillarbox sendmail) ----------------------------------------------

def write(directory: Path, rcpts: list[str], sender: str | None, data: bytes) -> str:
    """Leave one message; return its name. Blocking; the file is fsync'd."""
    name = secrets.token_hex(16)
    tmp = directory / f".{name}"
    header = json.dumps({"v": 1, "rcpts": rcpts, "sender": sender}).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        view = memoryview(header + data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, directory / name)
    return name


# -- the server side --------------------------------------------------------------------

def prepare(directory: Path) -> None:
    """Make the directory (or check it): a real directory of ours, mode 1733."""
    directory.mkdir(parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise OSError(f"{directory} belongs to uid {st.st_uid}, not to the server's user "
                      f"(uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(directory, DIR_MODE)


def names(dir_fd: int) -> list[str]:
    """Complete entries, oldest name first; abandoned partial ones are removed."""
    out = []
    with os.scandir(dir_fd) as it:
        for e in it:
            if not e.name.startswith("."):
                out.append(e.name)
                continue
            try:
                if e.stat(follow_symlinks=False).st_mtime < time.time() - STALE_PARTIAL:
                    os.unlink(e.name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
    return sorted(out)


def read(dir_fd: int, name: str, max_size: int) -> Drop:
    """One entry, checked; BadDrop if it is not a message we may take."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                     dir_fd=dir_fd)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise BadDrop(f"cannot open it: {e.strerror}") from None  # a symlink: ELOOP
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadDrop("not a regular file")
        if st.st_nlink != 1:
            raise BadDrop("a file with other links")
        if st.st_size > max_size + HEADER_MAX:
            raise BadDrop(f"larger than max_message_size ({st.st_size} bytes)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(max_size + HEADER_MAX + 1)
    finally:
        os.close(fd)
    line, nl, data = raw.partition(b"\n")
    if not nl or len(line) > HEADER_MAX:
        raise BadDrop("no envelope line")
    try:
        env = json.loads(line)
    except ValueError:
        raise BadDrop("the envelope line is not JSON") from None
    if not isinstance(env, dict) or env.get("v") != 1:
        raise BadDrop("not a version 1 envelope")
    rcpts, sender = env.get("rcpts"), env.get("sender")
    if (not isinstance(rcpts, list) or not 0 < len(rcpts) <= MAX_RCPTS
            or not all(isinstance(r, str) and len(r) <= 320 for r in rcpts)):
        raise BadDrop("bad recipient list")
    if sender is not None and (not isinstance(sender, str) or len(sender) > 320):
        raise BadDrop("bad sender")
    if len(data) > max_size:
        raise BadDrop(f"larger than max_message_size ({len(data)} bytes)")
    return Drop(name, st.st_uid, rcpts, sender, data)


def remove(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
