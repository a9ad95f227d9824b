"""`pillarbox backup DEST` and `pillarbox restore SRC`: a copy of the data
directory taken while the server runs, and putting it back.

What is copied, and in which order (the order is what makes it safe):

1. SQLite databases (`*.db`, `*.sqlite` outside the Maildirs: the directory)
   through SQLite's online backup API: one consistent snapshot each.
2. The queue: maildrop/ first (pickup appends a file to a segment, then
   deletes it: copied before the segments, a message is in one or both, and
   pickup skips a known ID), then the segments in ascending order, listed
   again until no new one appeared (compaction appends a message to the
   newest segment before it deletes the old one), then bodies/, then the done
   marks, then state/. A message is either live in the copied queue or marked
   done there; a done mark is written only after its Maildir delivery was
   synced, and the mailboxes are copied after the queue, so every message
   acknowledged before the backup is delivered in the copy, or delivered
   again after a restore (a duplicate at worst, as after a crash).
3. The Maildirs, one user at a time: the files (new/ before cur/: a reader
   moves files from new/ to cur/), then a snapshot of the user's IMAP index,
   then the copied files are made to agree with that snapshot: every indexed
   message gets its file under the indexed name (copied again if it was
   renamed or taken from new/ meanwhile), and a file the snapshot indexes in
   another folder (moved meanwhile) is dropped. A restored index therefore
   never lists a message without its file (unless it was expunged during the
   backup, which the first sync after the restore completes), and a file
   without an index entry (delivered meanwhile) gets the next UID at the
   first sync, as any delivery does.
4. Everything else (TLS pair, DKIM keys, other files) as plain copies.
   Sockets, SQLite's -wal/-shm/-journal files and queue/tmp/ are skipped.

Written files are 0600, directories 0700; the copy is synced to disk before
the command reports success.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pillarbox.store.mailbox_index import INDEX_NAME, split_name

MARKER = "pillarbox-backup.json"
SQLITE_SUFFIXES = (".db", ".sqlite")
SQLITE_SIDE = ("-wal", "-shm", "-journal")
DIR_MODE, FILE_MODE = 0o700, 0o600


class BackupError(Exception):
    """The backup or restore cannot be done; the text says why."""


class Progress:
    """Files and bytes copied, shown on one terminal line now and then."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.files = self.bytes = 0
        self._last = 0.0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        now = time.monotonic()
        if self.show and now - self._last > 0.5:
            self._last = now
            sys.stderr.write(f"\r{self.files} files, {self.bytes / 1e6:.1f} MB copied ")
            sys.stderr.flush()

    def end(self) -> None:
        if self.show and self._last:
            sys.stderr.write("\n")


def _entries(d: Path) -> Iterator[tuple[os.DirEntry, os.stat_result]]:
    """The entries of d in name order with their lstat; what vanishes meanwhile is left out
    (the server keeps working while a backup runs)."""
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            yield entry, entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue


def _mkdir(path: Path) -> None:
    """path, and every parent this makes, 0700 whatever the umask."""
    if not path.parent.exists():
        _mkdir(path.parent)
    path.mkdir(mode=DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)


def _copy_file(src: Path, dst: Path, progress: Progress) -> bool:
    """Copy one file with its mtime (a message's internal date); False if it vanished."""
    try:
        fin = open(src, "rb")
    except FileNotFoundError:
        return False
    with fin:
        st = os.fstat(fin.fileno())
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    os.chmod(dst, FILE_MODE)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    progress.add(st.st_size)
    return True


def _copy_sqlite(src: Path, dst: Path, progress: Progress) -> None:
    """A consistent snapshot of a live SQLite database (WAL included)."""
    # mode=rw: a database that vanished meanwhile is an error, never created empty here.
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    try:
        source.execute("PRAGMA busy_timeout=30000")
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    os.chmod(dst, FILE_MODE)
    progress.add(dst.stat().st_size)


def _is_sqlite(name: str) -> bool:
    return name.endswith(SQLITE_SUFFIXES)


def _skipped(name: str, st: os.stat_result) -> bool:
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or \
        name.endswith(SQLITE_SIDE)


def _copy_plain_tree(src: Path, dst: Path, progress: Progress) -> None:
    """Files and directories as they are; SQLite files by the backup API."""
    _mkdir(dst)
    for entry, st in _entries(src):
        if _skipped(entry.name, st):
            continue
        if stat.S_ISDIR(st.st_mode):
            _copy_plain_tree(Path(entry.path), dst / entry.name, progress)
        elif _is_sqlite(entry.name):
            _copy_sqlite(Path(entry.path), dst / entry.name, progress)
        else:
            _copy_file(Path(entry.path), dst / entry.name, progress)


# -- the queue ----------------------------------------------------------------

def _files(d: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(d) if e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return []


def copy_queue(src: Path, dst: Path, progress: Progress) -> None:
    """The spool in the order that keeps every live message (see the module text)."""
    for sub in ("maildrop", "segments", "bodies", "state", "tmp"):
        _mkdir(dst / sub)
    for name in _files(src / "maildrop"):
        _copy_file(src / "maildrop" / name, dst / "maildrop" / name, progress)
    copied: set[str] = set()
    while True:
        segs = [n for n in _files(src / "segments") if n.endswith(".seg") and n not in copied]
        if not segs:
            break
        for name in segs:  # ascending: an older segment before the one it was compacted into
            _copy_file(src / "segments" / name, dst / "segments" / name, progress)
            copied.add(name)
    for name in _files(src / "bodies"):
        _copy_file(src / "bodies" / name, dst / "bodies" / name, progress)
    for name in _files(src / "segments"):
        if name.endswith(".done") and f"{name[:-5]}.seg" in copied:
            _copy_file(src / "segments" / name, dst / "segments" / name, progress)
    for name in _files(src / "state"):
        _copy_file(src / "state" / name, dst / "state" / name, progress)
    # Anything else a newer spool keeps beside these (queue/tmp is scratch).
    for entry, st in _entries(src):
        if entry.name in ("maildrop", "segments", "bodies", "state", "tmp"):
            continue
        if stat.S_ISDIR(st.st_mode):
            _copy_plain_tree(Path(entry.path), dst / entry.name, progress)
        elif not _skipped(entry.name, st):
            _copy_file(Path(entry.path), dst / entry.name, progress)


# -- the Maildirs ---------------------------------------------------------------

def _is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() or (path / "new").is_dir() or (path / INDEX_NAME).exists()


def _folders(root: Path) -> dict[str, Path]:
    """The user's mailboxes on disk: INBOX and the Maildir++ .NAME folders."""
    out = {"INBOX": root}
    for e, st in _entries(root):
        if e.name.startswith(".") and stat.S_ISDIR(st.st_mode) and (Path(e.path) / "cur").is_dir():
            out[e.name[1:]] = Path(e.path)
    return out


def _by_base(d: Path) -> dict[str, str]:
    return {split_name(n)[0]: n for n in _files(d) if not n.startswith(".")}


def _find_live(folder: Path, base: str) -> Path | None:
    for sub in ("cur", "new"):
        name = _by_base(folder / sub).get(base)
        if name is not None:
            return folder / sub / name
    return None


def copy_user_maildir(src: Path, dst: Path, progress: Progress) -> None:
    """One user's Maildir: files, then the index snapshot, then agreement (module text)."""
    _mkdir(dst)
    folders = _folders(src)
    for name, folder in folders.items():
        out = dst if name == "INBOX" else dst / folder.name
        for sub in ("tmp", "new", "cur"):
            _mkdir(out / sub)
        for entry, st in _entries(folder):
            if (stat.S_ISREG(st.st_mode) and entry.name != INDEX_NAME
                    and not entry.name.endswith(SQLITE_SIDE)):
                _copy_file(Path(entry.path), out / entry.name, progress)  # maildirfolder etc.
        for sub in ("new", "cur"):  # new/ first: a reader moves files new/ -> cur/
            for fname in _files(folder / sub):
                if fname.startswith("."):
                    continue
                if not _copy_file(folder / sub / fname, out / sub / fname, progress) \
                        and sub == "cur":
                    # Renamed meanwhile (flags changed): copy it under its new name.
                    live = _find_live(folder, split_name(fname)[0])
                    if live is not None:
                        _copy_file(live, out / live.parent.name / live.name, progress)
    index = src / INDEX_NAME
    if not index.exists():
        return
    try:
        _copy_sqlite(index, dst / INDEX_NAME, progress)
    except sqlite3.OperationalError:
        if index.exists():
            raise
        return  # the user was deleted meanwhile: the files copied are what there was
    _agree(src, dst, folders, progress)


def _agree(src: Path, dst: Path, folders: dict[str, Path], progress: Progress) -> None:
    """Make the copied files match the copied index (see the module text)."""
    db = sqlite3.connect(dst / INDEX_NAME)
    try:
        rows = db.execute("SELECT mailbox, base, fname FROM messages").fetchall()
    finally:
        db.close()
    indexed: dict[str, dict[str, str]] = {}
    for mailbox, base, fname in rows:
        indexed.setdefault(mailbox, {})[base] = fname
    owner = {base: mailbox for mailbox, bases in indexed.items() for base in bases}

    def out_of(name: str) -> Path:
        return dst if name == "INBOX" else dst / f".{name}"

    extra: list[tuple[Path, str]] = []  # (copied file, its base) with no entry where it is
    for mailbox, bases in indexed.items():
        out = out_of(mailbox)
        live_folder = folders.get(mailbox) or (src if mailbox == "INBOX" else src / f".{mailbox}")
        for sub in ("tmp", "new", "cur"):
            _mkdir(out / sub)
        if mailbox != "INBOX" and not (out / "maildirfolder").exists():
            (out / "maildirfolder").touch(mode=FILE_MODE)
        cur, new = _by_base(out / "cur"), _by_base(out / "new")
        for base, fname in bases.items():
            have = cur.pop(base, None)
            if have is not None and have != fname:
                os.rename(out / "cur" / have, out / "cur" / fname)
            elif have is None and base in new:
                os.rename(out / "new" / new.pop(base), out / "cur" / fname)
            elif have is None:
                live = _find_live(live_folder, base)
                if live is not None:
                    _copy_file(live, out / "cur" / fname, progress)
                # else expunged during the backup: the first sync after a restore drops it.
            if base in new:  # indexed already: a second copy in new/ would be taken in again
                (out / "new" / new.pop(base)).unlink(missing_ok=True)
        extra += [(out / "cur" / f, b) for b, f in cur.items()]
        extra += [(out / "new" / f, b) for b, f in new.items()]
    for name in folders:
        if name not in indexed:
            out = out_of(name)
            extra += [(out / sub / f, b) for sub in ("cur", "new")
                      for b, f in _by_base(out / sub).items()]
    # The old copy of a message moved to another folder meanwhile, once the copy in the
    # folder the index names is there; the others are new mail, taken in at the next sync.
    for path, base in extra:
        mailbox = owner.get(base)
        if mailbox is not None and (out_of(mailbox) / "cur" / indexed[mailbox][base]).exists():
            path.unlink(missing_ok=True)


def copy_mail(src: Path, dst: Path, progress: Progress) -> None:
    """mail/DOMAIN/LOCAL/... : each user's Maildir as one unit."""
    _mkdir(dst)
    for entry, st in _entries(src):
        path = Path(entry.path)
        if stat.S_ISDIR(st.st_mode):
            if _is_maildir(path):
                copy_user_maildir(path, dst / entry.name, progress)
            else:
                copy_mail(path, dst / entry.name, progress)
        elif not _skipped(entry.name, st):
            _copy_file(path, dst / entry.name, progress)


# -- the whole data directory ---------------------------------------------------

def _check_dest(dest: Path, data_dir: Path) -> None:
    d, data = dest.resolve(), data_dir.resolve()
    if d == data or data in d.parents or d in data.parents:
        raise BackupError(f"{dest} is inside the data directory {data_dir} (or holds it); "
                          "choose a place outside it")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")


def _places(data_dir: Path, places: dict[str, Path] | None) -> dict[str, Path]:
    """Where queue, mail and dkim live: in data_dir, or (storage.shared_dir) elsewhere."""
    out = {name: data_dir / name for name in ("queue", "mail", "dkim")}
    out.update(places or {})
    return out


def backup(data_dir: Path, dest: Path, progress: Progress | None = None,
           hostname: str = "", places: dict[str, Path] | None = None) -> Progress:
    """Copy data_dir into dest (missing or empty) while the server may run.

    `places` names the queue, mail and dkim directories when they are not in
    data_dir (a shared directory: this node's spool, the Maildirs, the keys);
    the backup holds them under those names all the same."""
    progress = progress or Progress(False)
    if not data_dir.is_dir():
        raise BackupError(f"no data directory at {data_dir}")
    where = _places(data_dir, places)
    for d in (data_dir, *where.values()):
        _check_dest(dest, d)
    _mkdir(dest)
    started = time.time()
    entries = list(_entries(data_dir))
    # Databases first, then the queue, then the mail (the order matters: module text).
    for entry, st in entries:
        if stat.S_ISREG(st.st_mode) and _is_sqlite(entry.name):
            _copy_sqlite(Path(entry.path), dest / entry.name, progress)
    if where["queue"].is_dir():
        copy_queue(where["queue"], dest / "queue", progress)
    if where["mail"].is_dir():
        copy_mail(where["mail"], dest / "mail", progress)
    if where["dkim"] != data_dir / "dkim" and where["dkim"].is_dir():
        _copy_plain_tree(where["dkim"], dest / "dkim", progress)
    for entry, st in entries:
        if entry.name in ("queue", "mail") or _skipped(entry.name, st) or (
                stat.S_ISREG(st.st_mode) and _is_sqlite(entry.name)):
            continue
        if entry.name == "dkim" and where["dkim"] != data_dir / "dkim":
            continue  # stale: the keys in use are in the shared directory
        if stat.S_ISDIR(st.st_mode):
            _copy_plain_tree(Path(entry.path), dest / entry.name, progress)
        else:
            _copy_file(Path(entry.path), dest / entry.name, progress)
    marker = {"pillarbox_backup": 1, "data_dir": str(data_dir.resolve()),
              "hostname": hostname or socket.gethostname(), "started": started,
              "finished": time.time(), "files": progress.files, "bytes": progress.bytes}
    fd = os.open(dest / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as f:
        json.dump(marker, f, indent=1)
        f.write("\n")
    os.sync()
    progress.end()
    return progress


def restore(src: Path, data_dir: Path, progress: Progress | None = None,
            places: dict[str, Path] | None = None) -> Progress:
    """Copy a backup made by `backup` into data_dir (missing or empty); server stopped.
    Its queue, mail and dkim go to `places` where those are outside data_dir."""
    progress = progress or Progress(False)
    if not (src / MARKER).is_file():
        raise BackupError(f"{src} is not a pillarbox backup (no {MARKER} in it)")
    where = _places(data_dir, places)
    for what, d in (("data directory", data_dir),
                    *((name, p) for name, p in where.items() if p != data_dir / name)):
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise BackupError(f"the {what} {d} exists and is not empty; "
                              "move it away (or point the config at a new place) first")
    _mkdir(data_dir)
    for entry, st in _entries(src):
        if entry.name == MARKER:
            continue
        target = where.get(entry.name, data_dir / entry.name)
        if stat.S_ISDIR(st.st_mode):
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_tree_exact(Path(entry.path), target, progress)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(Path(entry.path), data_dir / entry.name, progress)
    os.sync()
    progress.end()
    return progress


def _copy_tree_exact(src: Path, dst: Path, progress: Progress) -> None:
    """A backup is not live: every file as it is (SQLite files included)."""
    _mkdir(dst)
    for entry, st in _entries(src):
        if stat.S_ISDIR(st.st_mode):
            _copy_tree_exact(Path(entry.path), dst / entry.name, progress)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(Path(entry.path), dst / entry.name, progress)
