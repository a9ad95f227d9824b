"""The data directory's modes: readable by the service user only.

It holds password hashes, DKIM and TLS keys, and mail. The server and the
CLI run under umask 077, so what they create is 0600 (files) and 0700
(directories); `prepare` makes the directory itself 0700 and, when it finds
it more open (a data directory made by an older version), closes every file
and directory under it once.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("pillarbox.datadir")

UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def set_umask() -> None:
    os.umask(UMASK)


def prepare(data_dir: Path) -> int:
    """Create data_dir 0700, or close it and its contents if it is open to others.

    Returns the number of entries whose mode was changed. Blocking.
    """
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(data_dir.stat().st_mode) == DIR_MODE:
        return 0
    changed = tighten(data_dir)
    log.warning("data directory was readable by others: closed it and %d entries in it "
                "(directories 0700, files 0600) path=%s", changed, data_dir)
    return changed


def tighten(root: Path) -> int:
    """chmod root and everything under it: directories 0700, files 0600.

    Symbolic links are left alone (their targets may not be ours); the
    control socket keeps 0600 like any file."""
    changed = 0

    def fix(path: str, want: int, st: os.stat_result) -> None:
        nonlocal changed
        mode = stat.S_IMODE(st.st_mode)
        # Keep a file's execute bit off and never add bits, only remove them.
        if mode & ~want:
            os.chmod(path, mode & want)
            changed += 1

    fix(str(root), DIR_MODE, os.stat(root))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                fix(p, DIR_MODE, st)
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                fix(p, FILE_MODE, st)
    return changed
