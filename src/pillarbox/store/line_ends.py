"""Maildir files with bare LF line ends, rewritten with CRLF in place.

IMAP (RFC 3501 2.2, RFC 9051) allows only CRLF line ends, but mutt,
procmail, fdm, getmail and Dovecot's LDA write Maildir files with "\\n". The
store converts such a file once, when it first takes it in: every size it
keeps and reports (RFC822.SIZE, BODYSTRUCTURE, partial fetches, the quota)
is then simply the file's, and a file that has CRLF already is not touched.

The converted copy is written to tmp/, synced, given the old file's mtime
(INTERNALDATE), and renamed over the old name, so a reader sees either the
old file or the new one. A size in the name (",S=") is changed to the new
size; the rest of the name (flags) stays.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pillarbox.fileio import fsync_dir

CHUNK = 1 << 20
_BARE_LF = re.compile(rb"(?<!\r)\n")
_SIZE_FIELD = re.compile(r",S=\d+")


def has_bare_lf(path: Path) -> bool:
    """Whether a "\\n" in the file is not preceded by "\\r" (read in chunks)."""
    prev_cr = False
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            bare = chunk.count(b"\n") - chunk.count(b"\r\n")
            if prev_cr and chunk[:1] == b"\n":
                bare -= 1
            if bare:
                return True
            prev_cr = chunk[-1:] == b"\r"
    return False


def _convert(chunk: bytes, prev_cr: bool) -> bytes:
    out = _BARE_LF.sub(b"\r\n", chunk)
    if prev_cr and chunk[:1] == b"\n":  # its CR ended the chunk before
        out = out[1:]
    return out


def crlf(data: bytes) -> bytes:
    """`data` with every bare LF made CRLF."""
    return _convert(data, False)


def with_size(fname: str, size: int) -> str:
    return _SIZE_FIELD.sub(f",S={size}", fname, count=1)


def rewrite(src: Path, dst: Path, sync: bool = True) -> int:
    """Blocking: write src with CRLF line ends to the new file dst; return its size."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size, prev_cr = 0, False
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                view = memoryview(_convert(chunk, prev_cr))
                prev_cr = chunk[-1:] == b"\r"
                size += len(view)
                while view:
                    view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        dst.unlink(missing_ok=True)
        raise
    os.close(fd)
    return size


def to_crlf(folder: Path, fname: str, st: os.stat_result,
            sync: bool = True) -> tuple[str, os.stat_result] | None:
    """Blocking: rewrite folder/cur/fname with CRLF if it has a bare LF.

    Returns the new (file name, stat), or None when the file needed nothing.
    `sync=False`: no fsync (the caller syncs everything at the end)."""
    src = folder / "cur" / fname
    if not has_bare_lf(src):
        return None
    tmp = folder / "tmp" / f"{fname.partition(':')[0]}.crlf"
    size = rewrite(src, tmp, sync)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    new = with_size(fname, size)
    try:
        os.rename(tmp, folder / "cur" / new)
        if new != fname:
            os.unlink(src)
        if sync:
            fsync_dir(folder / "cur")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return new, os.stat(folder / "cur" / new)
