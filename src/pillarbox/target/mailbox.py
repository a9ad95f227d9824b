"""Local delivery into a user's Maildir, the Maildir way: tmp/, fsync, rename to new/.

The layout is `data_dir/mail/<domain>/<local>/{tmp,new,cur}`, readable by
Dovecot (`mail_location = maildir:DATA/mail/%d/%n`) and mutt.

Deliveries are committed in batches, like the queue's group commit: every
message that is ready while the previous batch is being written goes into
the next one. A batch writes all its files into tmp/, makes them durable with
one syncfs(2) (Linux; one fsync per file elsewhere or for tiny batches),
renames them into new/ and makes the renames durable the same way. Only
then does each delivery report success, and only then is the queue copy
marked done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pillarbox.store.mailbox_index import SPECIAL_USE, valid_name

log = logging.getLogger("pillarbox.delivery")
_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
SYNCFS_MIN_BATCH = 4

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _syncfs = _libc.syncfs
except (OSError, AttributeError):
    _syncfs = None


def path_name(part: str) -> str:
    """One path component for a local part or domain, one-to-one.

    "%" becomes "%25" first, then "/" "%2f" and NUL "%00"; "." and ".." are
    spelled "%2e". Every "%" in the result starts an escape, so two parts
    never share a name; ordinary names (alice, example.org) stay as they are,
    so Dovecot's %n/%d find them.
    """
    safe = part.replace("%", "%25").replace("/", "%2f").replace("\0", "%00")
    return safe.replace(".", "%2e") if safe in (".", "..") else safe


def maildir_path(mail_root: Path, address: str) -> Path:
    local, _, domain = address.lower().rpartition("@")
    return mail_root / path_name(domain) / path_name(local)


def _old_maildir_path(mail_root: Path, address: str) -> Path:
    """The mapping before path_name: "a/b" and "a%2fb" shared one Maildir."""
    local, _, domain = address.lower().rpartition("@")
    safe = local.replace("/", "%2f").replace("\0", "")
    if safe in (".", ".."):
        safe = safe.replace(".", "%2e")
    return mail_root / domain / safe


def migrate_paths(mail_root: Path, addresses: list[str]) -> tuple[list[tuple[Path, Path]],
                                                                  list[tuple[Path, list[str]]]]:
    """Rename Maildirs made under the old, ambiguous mapping to their path_name.

    Only names with "%" (or NUL) move. A directory that more than one user
    mapped to, or that is now another user's, holds mixed mail and cannot be
    split: it stays, and is returned among the conflicts for the log.
    Returns (renamed, conflicts). Blocking; run before anything is served.
    """
    new_paths = {a: maildir_path(mail_root, a) for a in addresses}
    taken = set(new_paths.values())
    by_old: dict[Path, list[str]] = {}
    for a in addresses:
        by_old.setdefault(_old_maildir_path(mail_root, a), []).append(a)
    renamed, conflicts = [], []
    for old, owners in by_old.items():
        moving = [a for a in owners if new_paths[a] != old]
        if not moving or not old.is_dir():
            continue
        if len(owners) > 1 or old in taken:
            conflicts.append((old, owners))
            continue
        new = new_paths[moving[0]]
        if new.exists():
            conflicts.append((old, owners))
            continue
        new.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, new)
        renamed.append((old, new))
    return renamed, conflicts


def usage(path: Path) -> int:
    """Bytes in a Maildir, from the S= sizes in the file names (as Dovecot does)."""
    total = 0
    for sub in ("new", "cur"):
        try:
            entries = os.scandir(path / sub)
        except FileNotFoundError:
            continue
        with entries:
            for e in entries:
                _, _, size = e.name.partition(",S=")
                digits = size.split(",", 1)[0].split(":", 1)[0]
                total += int(digits) if digits.isdigit() else e.stat().st_size
    return total


def ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)


def detail_folder(maildir: Path, detail: str, create: bool) -> Path | None:
    """Blocking: the Maildir++ folder of `maildir` named by a plus address's detail.

    Matched without regard to case (addresses are lowercased). None, meaning
    INBOX, when the name cannot be a folder, names a special-use folder (mail
    from outside must not land in Sent or Trash), or has no folder and
    `create` is off. With `create`, a missing folder is made."""
    if valid_name(detail) is not None or detail.lower() == "inbox":
        return None
    if any(detail.lower() == s.lower() for s in SPECIAL_USE):
        return None
    want = "." + detail.lower()
    try:
        with os.scandir(maildir) as entries:
            names = [e.name for e in entries if e.name.lower() == want and e.is_dir()]
    except FileNotFoundError:
        names = []
    for name in sorted(names, key=lambda n: n != "." + detail):
        if (maildir / name / "cur").is_dir():
            return maildir / name
    if not create:
        return None
    folder = maildir / ("." + detail)
    ensure_maildir(folder)
    (folder / "maildirfolder").touch()
    return folder


def junk_folder(maildir: Path) -> Path:
    """Blocking: the Junk folder of `maildir` (quarantined mail), made if missing."""
    folder = maildir / ".Junk"
    if not (folder / "cur").is_dir():
        ensure_maildir(folder)
        (folder / "maildirfolder").touch()
    return folder


@dataclass
class _Job:
    path: Path
    prefix: bytes
    open_body: Callable[[], BinaryIO]
    future: asyncio.Future
    tmp: Path | None = None
    name: str = ""
    size: int = 0
    error: BaseException | None = None


# Called with a batch's body openers before its files are written (in a
# worker thread): encryption at rest makes all the batch's bodies at once.
Prepare = Callable[[list[Callable[[], BinaryIO]]], None]


def _sync(fds: list[int]) -> None:
    if _syncfs is not None and len(fds) >= SYNCFS_MIN_BATCH:
        if _syncfs(fds[0]) == 0:
            return
    for fd in fds:
        os.fsync(fd)


def _prepare_batch(jobs: list[_Job], prepare: Prepare) -> None:
    """Blocking: runs in a worker thread."""
    try:
        prepare([job.open_body for job in jobs])
    except Exception as e:  # each body is then made as it is read
        log.warning("maildir batch preparation failed error=%r", e)


def _write_batch(jobs: list[_Job]) -> None:
    """Blocking: runs in a worker thread. Sets each job's size or error."""
    fds: list[int] = []
    made: set[Path] = set()
    try:
        for job in jobs:
            try:
                if job.path not in made:
                    ensure_maildir(job.path)
                    made.add(job.path)
                now = time.time()
                base = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOST}"
                job.tmp = job.path / "tmp" / base
                fd = os.open(job.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                fds.append(fd)
                size = os.write(fd, job.prefix)
                with job.open_body() as body:
                    while chunk := body.read(1 << 20):
                        view = memoryview(chunk)
                        while view:
                            n = os.write(fd, view)
                            view = view[n:]
                            size += n
                job.size, job.name = size, f"{base},S={size}"
            except OSError as e:
                job.error = e
        _sync(fds)
        dirs: dict[Path, int] = {}
        for job in jobs:
            if job.error is None and job.tmp is not None:
                try:
                    os.rename(job.tmp, job.path / "new" / job.name)
                    if job.path not in dirs:
                        dirs[job.path] = os.open(job.path / "new", os.O_RDONLY | os.O_DIRECTORY)
                except OSError as e:
                    job.error = e
        try:
            _sync(list(dirs.values()))
        finally:
            for fd in dirs.values():
                os.close(fd)
    except OSError as e:
        for job in jobs:
            job.error = job.error or e
    finally:
        for fd in fds:
            os.close(fd)
        for job in jobs:
            if job.error is not None and job.tmp is not None:
                try:
                    job.tmp.unlink(missing_ok=True)
                except OSError:
                    pass


class MaildirWriter:
    """Group-committing Maildir delivery. With `prepare`, a stage before the
    writer prepares the bodies (encryption at rest): while the writer writes
    and syncs one batch, the next one is being prepared, so the preparation
    is not added to the writer's time per message."""

    def __init__(self) -> None:
        self._pending: list[_Job] = []
        self._task: asyncio.Task | None = None
        self.prepare: Prepare | None = None
        self._unprepared: list[_Job] = []
        self._preparer: asyncio.Task | None = None
        # Called with the Maildir path after each committed delivery (IMAP IDLE).
        self.on_delivered: list[Callable[[Path], None]] = []

    async def deliver(self, path: Path, prefix: bytes,
                      open_body: Callable[[], BinaryIO]) -> int:
        """Write prefix + body into path/new/ durably; return the stored size."""
        fut = asyncio.get_running_loop().create_future()
        job = _Job(path, prefix, open_body, fut)
        if self.prepare is not None:
            self._unprepared.append(job)
            if self._preparer is None:
                self._preparer = asyncio.create_task(self._prepare_run(self.prepare))
        else:
            self._queue([job])
        return await fut

    def _queue(self, jobs: list[_Job]) -> None:
        self._pending.extend(jobs)
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _prepare_run(self, prepare: Prepare) -> None:
        try:
            while self._unprepared:
                batch, self._unprepared = self._unprepared, []
                try:
                    await asyncio.to_thread(_prepare_batch, batch, prepare)
                except asyncio.CancelledError:
                    for job in batch:
                        job.future.cancel()  # a no-op on a future already done
                    raise
                self._queue(batch)
        finally:
            self._preparer = None

    async def _run(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(_write_batch, batch)
                except BaseException as e:  # also cancellation: fail the waiters
                    for job in batch:
                        job.error = job.error or e
                    if isinstance(e, asyncio.CancelledError):
                        raise
                for job in batch:
                    if job.future.done():
                        continue
                    if job.error is not None:
                        job.future.set_exception(job.error)
                    else:
                        job.future.set_result(job.size)
                        for callback in self.on_delivered:
                            callback(job.path)
        finally:
            self._task = None


# -- as a module (kind "mailbox") ---------------------------------------------------
# The queue delivers its default route into Maildirs itself (batched, the hot
# path); this target is the same delivery for rules that name a mailbox.

from pillarbox import module  # noqa: E402
from pillarbox.check import Reply  # noqa: E402


class _Delivery(module.BaseDelivery):
    def __init__(self, target: MailboxTarget, envelope: module.Envelope) -> None:
        super().__init__(envelope)
        self.t = target

    async def add_rcpt(self, rcpt: str) -> None:
        to = self.t.deliver_to or rcpt
        user = self.t.env.users.get(to)
        if user is None:
            raise module.DeliveryError(Reply(550, f"5.1.1 <{to}>: no such user here"))
        if not user.enabled:
            raise module.DeliveryError(Reply(550, f"5.2.1 <{to}>: mailbox disabled"))
        if user.over_quota:
            raise module.DeliveryError(Reply(452, f"4.2.2 <{to}>: mailbox full"))
        self.rcpts.append(rcpt)

    async def commit(self) -> dict[str, module.DeliveryError | None]:
        assert self.message is not None
        data = await asyncio.to_thread(self.message.read)
        out: dict[str, module.DeliveryError | None] = {}
        for rcpt in self.rcpts:
            to = self.t.deliver_to or rcpt
            prefix = f"Return-Path: <{self.envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n"
            path = maildir_path(self.t.env.mail_root, to)
            if self.t.folder:
                path = await asyncio.to_thread(detail_folder, path, self.t.folder, True) or path
            enc = self.t.env.encryption
            opener = (enc.opener(to, lambda: io.BytesIO(data), len(data)) if enc is not None
                      else lambda: io.BytesIO(data))
            if isinstance(opener, str):  # encryption required, no key, no_key hold/defer
                out[rcpt] = module.DeliveryError(Reply(451, opener))
                continue
            size = await self.t.env.maildir.deliver(path, prefix.encode(), opener)
            self.t.env.users.add_used(to, size)
            out[rcpt] = None
        return out


class MailboxTarget:
    def __init__(self, name: str, options: dict, env) -> None:
        self.name, self.env = name, env
        self.deliver_to: str = options["deliver_to"].lower()
        self.folder: str = options["folder"]

    async def start(self, envelope: module.Envelope) -> _Delivery:
        return _Delivery(self, envelope)


KIND = module.Kind(
    name="mailbox", role="target",
    options=(module.Option("deliver_to", str, "",
                           help="the user whose mailbox receives it; empty: each recipient's own"),
             module.Option("folder", str, "", help="a folder instead of INBOX (made if missing)")),
    make=MailboxTarget,
    help="Delivers into local users' Maildirs.")
