"""Local delivery into a user's Maildir, the Maildir way: tmp/, fsync, rename to new/.

The layout is `data_dir/mail/<domain>/<local>/{tmp,new,cur}`, readable by
Dovecot (`mail_location = maildir:DATA/mail/%d/%n`) and mutt.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import time
from pathlib import Path
from typing import BinaryIO

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def maildir_path(mail_root: Path, address: str) -> Path:
    local, _, domain = address.lower().rpartition("@")
    # A local part may hold characters that are unsafe in a path.
    safe = local.replace("/", "%2f").replace("\0", "")
    if safe in (".", ".."):
        safe = safe.replace(".", "%2e")
    return mail_root / domain / safe


def ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)


def deliver(path: Path, prefix: bytes, message: BinaryIO) -> int:
    """Write prefix + message into new/; return the stored size. Blocking."""
    ensure_maildir(path)
    now = time.time()
    base = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOST}"
    tmp = path / "tmp" / base
    try:
        with open(tmp, "wb") as f:
            f.write(prefix)
            shutil.copyfileobj(message, f, 1 << 20)
            size = f.tell()
            f.flush()
            os.fsync(f.fileno())
        final = path / "new" / f"{base},S={size}"
        os.rename(tmp, final)
        fd = os.open(path / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size
