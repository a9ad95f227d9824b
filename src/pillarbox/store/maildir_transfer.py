"""The Maildir files in `pillarbox export` / `pillarbox import` (store/transfer.py).

Every user's Maildir travels as blobs of kind "maildir": each folder (INBOX
and the Maildir++ `.NAME` folders, empty ones too, as a blob with no bytes and
a path ending in "/"), each file in a folder's root (`maildirfolder` and the
like; the SQLite index and its side files stay behind: the index travels as
rows) and each message file in cur/ and new/ under its exact name, so the
flags in the name and the file names in the IMAP index still match.

Import writes each file into tmp/ of its folder, checks its SHA-256, syncs it,
renames it into place and gives it its old mtime; the directories are synced
once every file is in; then every file is read back and its digest compared
(the verify step). A user whose Maildir in the target already holds messages
is refused before anything is written. When the export's mail root is the
target's (the same directory), nothing is copied: the files are only verified.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pillarbox import address
from pillarbox.address import AddressError
from pillarbox.fileio import fsync_dir
from pillarbox.store import blob_lines
from pillarbox.store.mailbox_index import INDEX_NAME, split_name
from pillarbox.store.transfer import TransferError

KIND = "maildir"
SQLITE_SIDE = ("-wal", "-shm", "-journal")
PROGRESS_EVERY = 1000  # files between progress lines
FILE_MODE = 0o600
# A path inside a Maildir: [.FOLDER/][cur/|new/]NAME, or [.FOLDER]/ for a folder.
_PATH = re.compile(r"(?:\.[^/\x00]+/)?(?:(?:cur|new)/)?[^/\x00]+|(?:\.[^/\x00]+)?/")

Maildir = Callable[[str], Path]  # an address's Maildir (target/mailbox.py's maildir_path)
Progress = Callable[[str], None]


class MaildirError(TransferError):
    """The export's files cannot go into the target (said in plain words)."""


def _address(owner: str) -> bool:
    try:
        address.split(owner)
    except AddressError:
        return False
    return True


def _safe(path: str) -> bool:
    parts = path.rstrip("/").split("/")
    return bool(_PATH.fullmatch(path)) and not any(p in (".", "..") for p in parts) \
        and not parts[-1].startswith(INDEX_NAME)


def _folders(root: Path) -> list[tuple[str, Path]]:
    """(path prefix, folder): INBOX first, then the .NAME folders."""
    out = [("", root)]
    try:
        with os.scandir(root) as it:
            names = sorted(e.name for e in it if e.name.startswith(".") and e.is_dir()
                           and e.name not in (".", ".."))
    except FileNotFoundError:
        return []
    return out + [(name + "/", root / name) for name in names if (root / name / "cur").is_dir()]


def _names(d: Path, files: bool = True) -> list[str]:
    try:
        with os.scandir(d) as it:
            return sorted(e.name for e in it if e.is_file(follow_symlinks=False) == files
                          and not e.name.startswith("." if files else "\0"))
    except FileNotFoundError:
        return []


def _listing(root: Path) -> Iterator[tuple[str, Path | None]]:
    """(path in the export, file or None for a folder) for one Maildir."""
    for prefix, folder in _folders(root):
        yield (prefix or "/"), None
        for name in _names(folder):
            if name != INDEX_NAME and not name.startswith(INDEX_NAME) \
                    and not name.endswith(SQLITE_SIDE):
                yield prefix + name, folder / name
        for sub in ("new", "cur"):  # new/ first: a reader moves files new/ -> cur/
            for name in _names(folder / sub):
                yield f"{prefix}{sub}/{name}", folder / sub / name


def _find_live(folder: Path, base: str) -> Path | None:
    """A message renamed meanwhile (flags changed, taken from new/): its file now."""
    for sub in ("cur", "new"):
        for name in _names(folder / sub):
            if split_name(name)[0] == base:
                return folder / sub / name
    return None


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(blob_lines.CHUNK):
        yield chunk


class Source:
    """The Maildirs of the directory's users, for an export."""

    def __init__(self, maildir: Maildir, mail_root: Path) -> None:
        self.maildir = maildir
        self.mail_root = mail_root

    def header(self) -> dict[str, Any]:
        return {"mail_root": str(self.mail_root.resolve())}

    def write(self, out: IO[str], progress: Progress, db: Any) -> dict[str, int]:
        owners = [r[0] for r in db.execute("SELECT address FROM users ORDER BY address")]
        listed = [(o, path, f) for o in owners for path, f in _listing(self.maildir(o))]
        total = sum(1 for x in listed if x[2] is not None)
        files = size = 0
        for owner, path, f in listed:
            head = {"blob": KIND, "owner": owner, "path": path}
            if f is None:
                blob_lines.write(out, head, ())
                continue
            got = self._file(out, head, f)
            if got is None:
                continue
            files += 1
            size += got
            if files % PROGRESS_EVERY == 0:
                progress(f"maildir: {files}/{total} files, {size} bytes")
        progress(f"maildir: {files}/{total} files, {size} bytes")
        return {"maildir files": files, "maildir bytes": size,
                "maildir folders": sum(1 for x in listed if x[2] is None)}

    def _file(self, out: IO[str], head: dict, path: Path) -> int | None:
        """One file; one renamed meanwhile (a running server) under its new name;
        None for one gone (expunged)."""
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            if path.parent.name not in ("cur", "new"):
                return None
            live = _find_live(path.parent.parent, split_name(path.name)[0])
            if live is None:
                return None
            head["path"] = head["path"].rsplit("/", 2)[0] + "/" if head["path"].count("/") == 2 \
                else ""
            head["path"] += f"{live.parent.name}/{live.name}"
            try:
                f = open(live, "rb")  # noqa: SIM115
            except FileNotFoundError:
                return None
        with f:
            head["mtime"] = os.fstat(f.fileno()).st_mtime
            size, _ = blob_lines.write(out, head, _chunks(f))
        return size


class _FileWriter:
    def __init__(self, target: Target, dest: Path, mtime: float | None) -> None:
        self.target, self.dest, self.mtime = target, dest, mtime
        self.tmp = dest.parent.parent / "tmp" / f"{dest.name}.import-{secrets.token_hex(4)}" \
            if dest.parent.name in ("cur", "new") else dest.with_name(f".{dest.name}.import")
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self.h = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.h.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self, trailer: dict) -> None:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
        if self.h.hexdigest() != trailer["sha256"]:  # the file changed since the first reading
            self.tmp.unlink(missing_ok=True)
            raise MaildirError(f"{self.dest}: the bytes differ from the digest in the export")
        os.rename(self.tmp, self.dest)
        if self.mtime is not None:
            os.utime(self.dest, (self.mtime, self.mtime))
        self.target.done(self.dest, trailer)


class Target:
    """The target's Maildirs, for an import."""

    kind = KIND

    def __init__(self, maildir: Maildir, mail_root: Path, progress: Progress | None = None
                 ) -> None:
        self.maildir = maildir
        self.mail_root = mail_root
        self.progress = progress
        self.total = self.bytes = 0
        self.same = False
        self.written: list[tuple[Path, str, int]] = []
        self.dirs: set[Path] = set()
        self.folders = 0

    def check(self, header: dict, blobs: list[Any]) -> None:
        for b in blobs:
            if not isinstance(b.head.get("owner"), str) or not isinstance(b.head.get("path"), str) \
                    or not _safe(b.head["path"]) or not _address(b.head["owner"]):
                raise MaildirError(f"a Maildir file in the export has a path that is not "
                                   f"one: {str(b.head.get('owner'))[:100]!r} "
                                   f"{str(b.head.get('path'))[:200]!r}")
        self.total = sum(1 for b in blobs if not b.head["path"].endswith("/"))
        self.same = header.get("mail_root") == str(self.mail_root.resolve())
        if self.same:
            # The files are where they were: check them in verify(), write nothing.
            self.written = [(self._dest(b.head), b.trailer["sha256"], b.trailer["size"])
                            for b in blobs if not b.head["path"].endswith("/")]
            return
        full = []
        for owner in sorted({b.head["owner"] for b in blobs}):
            root = self.maildir(owner)
            if any(f is not None and f.parent.name in ("cur", "new") for _, f in _listing(root)):
                full.append(f"{root} ({owner})")
        if full:
            raise MaildirError("the target's Maildir is not empty: " + ", ".join(full)
                               + "; import into fresh Maildirs")

    def done(self, dest: Path, trailer: dict) -> None:
        """A file is in place (not yet verified)."""
        self.written.append((dest, trailer["sha256"], trailer["size"]))
        self._dir(dest.parent)
        self.bytes += trailer["size"]
        n = len(self.written)
        if self.progress is not None and (n % PROGRESS_EVERY == 0 or n == self.total):
            self.progress(f"maildir: {n}/{self.total} files, {self.bytes} bytes written")

    def _dir(self, d: Path) -> None:
        """`d` and the directories above it up to the mail root, to sync."""
        while d not in self.dirs and d != self.mail_root and self.mail_root in d.parents:
            self.dirs.add(d)
            d = d.parent
        self.dirs.add(self.mail_root)

    def _dest(self, head: dict) -> Path:
        return self.maildir(head["owner"]) / head["path"].rstrip("/")

    def open(self, head: dict) -> _FileWriter | None:
        if self.same:
            return None
        dest = self._dest(head)
        if head["path"].endswith("/"):  # a folder, maybe empty
            for sub in ("tmp", "new", "cur"):
                (dest / sub).mkdir(parents=True, exist_ok=True)
                self._dir(dest / sub)
            self.folders += 1
            return None
        if dest.parent.name in ("cur", "new"):
            for sub in ("tmp", "new", "cur"):
                (dest.parent.parent / sub).mkdir(parents=True, exist_ok=True)
        mtime = head.get("mtime")
        ok = isinstance(mtime, (int, float)) and math.isfinite(mtime) and 0 <= mtime < 1e11
        return _FileWriter(self, dest, mtime if ok else None)

    def verify(self, progress: Progress) -> dict[str, int]:
        for d in sorted(self.dirs):
            fsync_dir(d)
        if self.same:
            progress(f"maildir: the export's mail root is this config's ({self.mail_root}): "
                     "files not copied, only verified")
        size = 0
        for i, (path, digest, n) in enumerate(self.written, start=1):
            try:
                got = blob_lines.sha256_of(path)
            except FileNotFoundError:
                got = "missing"
            if got != digest:
                raise MaildirError(f"verify: {path} is not the file in the export ({got})")
            size += n
            if i % PROGRESS_EVERY == 0:
                progress(f"maildir: {i}/{len(self.written)} files, {size} bytes")
        progress(f"maildir: {len(self.written)}/{len(self.written)} files, {size} bytes"
                 + (" (already in place)" if self.same else ""))
        return {"maildir files": len(self.written), "maildir bytes": size}
