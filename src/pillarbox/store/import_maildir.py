"""`pillarbox import-maildir SRC ADDRESS`: take over a Maildir made by another
server, keeping what IMAP clients have cached.

SRC is one user's Maildir in the Maildir++ layout (INBOX at the root, other
mailboxes as `.NAME` folders beside new/ cur/ tmp/), as Dovecot, Courier and
pillarbox write it. From Dovecot, each mailbox's `dovecot-uidlist` gives the
UIDVALIDITY, the next UID and the UID of every file, and `dovecot-keywords`
the names behind the keyword letters (a-z) in the file names; the flags are
the `:2,` letters (D F R S T). A mailbox without a uidlist (a plain Maildir)
gets a new UIDVALIDITY and UIDs in file-name (arrival) order. The
`subscriptions` file is taken over too.

The user's pillarbox Maildir is built beside its final place and renamed
into it when complete, so a failed import leaves nothing half-made. The
target must hold no messages (it may hold the empty folders a first login
made); the server must be stopped, since it keeps open mailboxes in memory.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox.store import line_ends
from pillarbox.store.mailbox_index import (
    INDEX_NAME,
    MIGRATIONS,
    SPECIAL_USE,
    flags_from_letters,
    new_object_id,
    split_name,
    valid_name,
)

DIR_MODE, FILE_MODE = 0o700, 0o600
_SYSTEM_LETTERS = set("DFRST")  # Draft Flagged Replied Seen Trashed


class MaildirImportError(Exception):
    """The import cannot be done; the text says why (nothing was changed)."""


@dataclass
class Mailbox:
    name: str
    uidvalidity: int
    uidnext: int
    # (uid, source path, file name in cur/, flags, internal date, size)
    messages: list[tuple[int, Path, str, frozenset[str], float, int]] = field(
        default_factory=list)
    had_uidlist: bool = False


def read_uidlist(path: Path) -> tuple[int, int, dict[str, int]] | None:
    """Dovecot's dovecot-uidlist (versions 1 and 3): (uidvalidity, next uid, base -> uid)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    if not lines:
        return None
    head = lines[0].split()
    uidvalidity = uidnext = 0
    if head and head[0] == "1" and len(head) >= 3:
        uidvalidity, uidnext = int(head[1]), int(head[2])
    else:
        for word in head[1:]:
            if word[:1] == "V" and word[1:].isdigit():
                uidvalidity = int(word[1:])
            elif word[:1] == "N" and word[1:].isdigit():
                uidnext = int(word[1:])
    uids: dict[str, int] = {}
    for line in lines[1:]:
        uid, _, rest = line.partition(" ")
        if not uid.isdigit() or not rest:
            continue
        # v3: "UID [extension fields] :FILENAME"; v1: "UID FILENAME"
        if rest.startswith(":"):
            name = rest[1:]
        elif " :" in rest:
            name = rest.split(" :", 1)[1]
        else:
            name = rest.split()[-1]
        uids[split_name(name)[0]] = int(uid)
    return uidvalidity, uidnext, uids


def read_keywords(path: Path) -> dict[str, str]:
    """dovecot-keywords: "N name" lines; letter a + N stands for the keyword."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        n, _, name = line.partition(" ")
        if n.isdigit() and int(n) < 26 and name.strip():
            out[chr(ord("a") + int(n))] = name.strip()
    return out


def read_subscriptions(path: Path) -> list[str]:
    """Dovecot's `subscriptions`: a "V\\t2" header then one name a line (levels
    separated by a tab in version 2), or plain names (Courier's with an "INBOX." prefix)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    if lines and lines[0].startswith("V\t"):
        lines = lines[1:]
    names = [ln.replace("\t", ".") for ln in lines if ln.strip()]
    # Courier names folders under the "INBOX." namespace; the folder .Sent is "Sent" here.
    return [n[6:] if n.startswith("INBOX.") else n for n in names]


def scan_mailbox(name: str, folder: Path, now: int) -> Mailbox:
    uidlist = read_uidlist(folder / "dovecot-uidlist")
    keywords = read_keywords(folder / "dovecot-keywords")
    files: list[tuple[str, str, Path]] = []  # (base, info, path)
    bases: set[str] = set()
    for sub in ("cur", "new"):
        try:
            names = sorted(os.listdir(folder / sub))
        except FileNotFoundError:
            continue
        for fn in names:
            base, info = split_name(fn) if sub == "cur" else (fn, "")
            if fn.startswith(".") or base in bases:  # a second copy (cur/ wins)
                continue
            bases.add(base)
            files.append((base, info, folder / sub / fn))
    uidvalidity, uidnext, known = uidlist if uidlist else (0, 1, {})
    box = Mailbox(name, uidvalidity or now, max(uidnext, 1), had_uidlist=uidlist is not None)
    used: set[int] = set()
    fresh: list[tuple[str, str, Path]] = []
    pending: list[tuple[int, str, str, Path]] = []
    for base, info, path in files:
        uid = known.get(base)
        if uid is None or uid in used:
            fresh.append((base, info, path))
        else:
            used.add(uid)
            pending.append((uid, base, info, path))
    top = max([box.uidnext - 1, *used], default=0)
    for base, info, path in sorted(fresh, key=lambda f: f[0]):
        top += 1
        pending.append((top, base, info, path))
    box.uidnext = max(box.uidnext, top + 1)
    for uid, base, info, path in sorted(pending):
        st = path.stat()
        flags = set(flags_from_letters(info))
        flags |= {keywords[c] for c in info if c in keywords}
        letters = "".join(sorted(c for c in info if c in _SYSTEM_LETTERS))
        box.messages.append((uid, path, f"{base}:2,{letters}", frozenset(flags),
                             st.st_mtime, st.st_size))
    return box


def scan(src: Path) -> tuple[list[Mailbox], list[str]]:
    """Every mailbox of the Maildir++ tree at src, and its subscriptions."""
    if not ((src / "cur").is_dir() or (src / "new").is_dir()):
        raise MaildirImportError(f"{src} is not a Maildir (no cur/ or new/ in it)")
    now = int(time.time())
    boxes = [scan_mailbox("INBOX", src, now)]
    for e in sorted(os.scandir(src), key=lambda e: e.name):
        if not (e.name.startswith(".") and e.name not in (".", "..") and e.is_dir()
                and (Path(e.path) / "cur").is_dir()):
            continue
        name = e.name[1:]
        why = valid_name(name)
        if why or name.upper() == "INBOX":
            raise MaildirImportError(f"folder {e.name!r} cannot be a pillarbox mailbox: "
                               f"{why or 'INBOX is the Maildir root'}")
        boxes.append(scan_mailbox(name, Path(e.path), now))
    return boxes, read_subscriptions(src / "subscriptions")


def _has_messages(root: Path) -> bool:
    for folder in [root, *(p for p in root.glob(".*") if p.is_dir())]:
        for sub in ("cur", "new"):
            try:
                if any(not n.startswith(".") for n in os.listdir(folder / sub)):
                    return True
            except (FileNotFoundError, NotADirectoryError):
                pass
    return False


def _write_index(path: Path, boxes: list[Mailbox], subscriptions: list[str]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        for i, sql in enumerate(MIGRATIONS, start=1):
            for stmt in filter(str.strip, sql.split(";")):
                db.execute(stmt)
            db.execute(f"PRAGMA user_version={i}")
        for box in boxes:
            db.execute("INSERT INTO mailboxes (name, uidvalidity, uidnext, highestmodseq, special,"
                       " mailboxid) VALUES (?, ?, ?, 1, ?, ?)",
                       (box.name, box.uidvalidity, box.uidnext, SPECIAL_USE.get(box.name),
                        new_object_id("F")))
            # SAVEDATE of imported mail: its internal date, as for mail indexed before.
            db.executemany(
                "INSERT INTO messages (mailbox, uid, base, fname, flags, internaldate, size, "
                "modseq, emailid, savedate) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                [(box.name, uid, split_name(fname)[0], fname, " ".join(sorted(flags)), date, size,
                  new_object_id("M"), date)
                 for uid, _, fname, flags, date, size in box.messages])
        names = {b.name for b in boxes}
        db.executemany("INSERT OR IGNORE INTO subscriptions (name) VALUES (?)",
                       [(n,) for n in subscriptions if n in names or n == "INBOX"])
        # Folders made later get a UIDVALIDITY above every imported one.
        db.execute("INSERT INTO meta (key, value) VALUES ('uidvalidity', ?)",
                   (max(b.uidvalidity for b in boxes),))
        db.execute("COMMIT")
    finally:
        db.close()


def import_maildir(src: Path, target: Path) -> list[Mailbox]:
    """Build the pillarbox Maildir for `target` from `src`; returns what was imported."""
    if not src.is_dir():
        raise MaildirImportError(f"no directory at {src}")
    if target.exists() and _has_messages(target):
        raise MaildirImportError(f"{target} already holds messages; importing would mix two "
                           "mailboxes' UIDs (import into a user that has no mail yet)")
    boxes, subscriptions = scan(src)
    target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    stage = target.parent / f".import-{target.name}-{os.getpid()}"
    old = target.parent / f".replaced-{target.name}-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for box in boxes:
            folder = stage if box.name == "INBOX" else stage / f".{box.name}"
            for sub in ("tmp", "new", "cur"):
                (folder / sub).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if box.name != "INBOX":
                (folder / "maildirfolder").touch(mode=FILE_MODE)
            for i, (uid, path, fname, flags, date, _) in enumerate(box.messages):
                dst = folder / "cur" / fname
                shutil.copyfile(path, dst)
                os.chmod(dst, FILE_MODE)
                shutil.copystat(path, dst)  # the mtime is the message's internal date
                os.chmod(dst, FILE_MODE)
                # Dovecot stores LF line ends; IMAP serves CRLF (line_ends.py).
                done = line_ends.to_crlf(folder, fname, dst.stat(), sync=False)  # os.sync below
                if done is not None:
                    box.messages[i] = (uid, path, done[0], flags, date, done[1].st_size)
        _write_index(stage / INDEX_NAME, boxes, subscriptions)
        os.sync()
        if target.exists():  # empty folders from a first login: replaced
            os.rename(target, old)
        os.rename(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return boxes
