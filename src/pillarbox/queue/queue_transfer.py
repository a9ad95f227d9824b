"""The queue in `pillarbox export` / `pillarbox import` (store/transfer.py).

Each queued message travels as a blob of kind "queue": its envelope in the
head, its bytes as chunks, and in the trailer what was read after the bytes:
the recipients still to deliver (those delivered, or failed and reported to
the sender, stay behind), its delivery state (attempts, next attempt, last
error) with only those deliveries, and whether it was finished while it was
being read (then the import skips it). Messages still in maildrop/ (from
`pillarbox sendmail`, not yet taken in) travel as they are and go into the
target's maildrop/, so the target admits them as it would have.

Export reads the spool as `pillarbox queue list` does (server running or
not): a message finished while the export runs may be in the file (delivered
again after the move, never lost); one whose segment was compacted away is
looked for again. Mail accepted after the export is not in the file.

Import needs the target's server stopped (a spool has one writer): it appends
the messages through the spool's own writing path (a new segment, synced;
large bodies in bodies/, as the server keeps them), writes their state files,
then reads the spool back and compares envelope, state and SHA-256 of each
message (the verify step).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pillarbox.fileio import fsync_dir
from pillarbox.queue.spool import (
    Envelope,
    MessageReader,
    OfflineEntry,
    Spool,
    SpoolFull,
    State,
    offline_entries,
)
from pillarbox.store import blob_lines
from pillarbox.store.transfer import TransferError

KIND = "queue"
Progress = Callable[[str], None]


class QueueError(TransferError):
    """The queue in the export cannot go into the target (said in plain words)."""


def _envelope(env: Envelope) -> dict[str, Any]:
    d = json.loads(env.to_json())
    d.pop("body_file", None)  # where the target keeps the body is the target's business
    return d


def left_to_do(env: Envelope, state: State | None) -> tuple[list[str], State | None]:
    """The recipients still to deliver and the state with only their deliveries."""
    if state is None or not state.expanded:
        return list(env.rcpts), state
    keep = [d for d in state.deliveries
            if d.state in ("pending", "deferred") or (d.state == "failed" and not d.reported)]
    rcpts = [r for r in env.rcpts if any(d.rcpt == r for d in keep)]
    return rcpts, State(deliveries=keep, expanded=True, delay_warned=state.delay_warned)


def _reader(root: Path, e: OfflineEntry) -> IO[bytes]:
    if e.where == "maildrop":
        f = open(e.path, "rb")  # noqa: SIM115 (closed by the caller)
        f.seek(e.offset)
        return f
    tail = root / "bodies" / e.env.body_file if e.env.body_file else None
    return MessageReader(e.path, e.offset, e.length, tail)  # type: ignore[return-value]


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(blob_lines.CHUNK):
        yield chunk


def _finished(root: Path, e: OfflineEntry) -> bool:
    """Finished while the export read it (a running server)."""
    if e.where == "maildrop":
        return False  # taken into the queue: the queue copy is the one that counts
    try:
        return e.env.id in e.path.with_suffix(".done").read_text().split()
    except FileNotFoundError:
        return False


class Source:
    """The queue of a config, for an export."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def header(self) -> dict[str, Any]:
        return {"queue_root": str(self.root.resolve())}

    def write(self, out: IO[str], progress: Progress, db: Any) -> dict[str, int]:
        entries = offline_entries(self.root) if self.root.exists() else []
        n = size = 0
        for e in entries:
            try:
                f = _reader(self.root, e)
            except FileNotFoundError:  # delivered, or compacted into a newer segment
                again = [x for x in offline_entries(self.root) if x.env.id == e.env.id]
                if not again:
                    continue
                e = again[0]
                f = _reader(self.root, e)
            with f:
                head = {"blob": KIND, "where": e.where, "envelope": _envelope(e.env)}

                def after(e: OfflineEntry = e) -> dict[str, Any]:
                    state = e.state
                    if e.where == "queue":
                        try:
                            state = State.from_json((self.root / "state" / e.env.id).read_bytes())
                        except FileNotFoundError:
                            pass
                    rcpts, state = left_to_do(e.env, state)
                    return {"rcpts": rcpts, "finished": _finished(self.root, e),
                            "state": json.loads(state.to_json()) if state else None}

                got, _ = blob_lines.write(out, head, _chunks(f), after)
            n += 1
            size += got
            progress(f"queue: {n}/{len(entries)} messages, {size} bytes")
        if not entries:
            progress("queue: 0 messages")
        return {"queue messages": n, "queue bytes": size}


class _Append:
    """One message into the spool, as the server stores one it accepted."""

    def __init__(self, target: Target, head: dict) -> None:
        self.target = target
        self.env = Envelope(**head["envelope"])
        self.where = head["where"]
        self.h = hashlib.sha256()
        self.body = target.spool.body_buffer(self.env.id) if self.where == "queue" else None
        if self.body is None:  # maildrop: the file `pillarbox sendmail` would have written
            self.tmp = target.spool.tmp / f"drop-{self.env.id}"
            self.f = open(self.tmp, "wb")  # noqa: SIM115 (closed in close)
            self.f.write(self.env.to_json() + b"\n")

    def write(self, chunk: bytes) -> None:
        self.h.update(chunk)
        if self.body is not None:
            self.body.write(chunk)
        else:
            self.f.write(chunk)

    def close(self, trailer: dict) -> None:
        if self.h.hexdigest() != trailer["sha256"]:
            raise QueueError(f"queue {self.env.id}: the bytes differ from the digest in the "
                             "export (file changed since it was checked)")
        spool = self.target.spool
        if self.body is None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.rename(self.tmp, spool.maildrop / self.env.id)
            fsync_dir(spool.maildrop)
        else:
            self.env.rcpts = list(trailer["rcpts"])
            self.env.body_file = None
            if self.body.error is not None:
                raise QueueError(f"queue {self.env.id}: cannot write it: {self.body.error}")
            try:
                asyncio.run(spool.append(self.env, [], self.body))
            except SpoolFull:
                raise QueueError(f"queue {self.env.id}: not enough free disk for the "
                                 "queue") from None
            if trailer.get("state"):
                spool.write_state(self.env.id, State.from_json(json.dumps(trailer["state"])))
        self.target.written[self.env.id] = trailer
        self.target.size += trailer["size"]
        progress = self.target.progress
        if progress is not None:
            progress(f"queue: {len(self.target.written)}/{self.target.total} messages, "
                     f"{self.target.size} bytes")


class Target:
    """The queue of a config, for an import. `running`: its server answers (then
    the import is refused: the spool has one writer)."""

    kind = KIND

    def __init__(self, root: Path, min_free_space: int, running: Callable[[], bool],
                 progress: Progress | None = None) -> None:
        self.root = root
        self.min_free_space = min_free_space
        self.running = running
        self.progress = progress
        self.same = False
        self.heads: dict[str, dict] = {}  # id -> trailer, from the first reading
        self.written: dict[str, dict] = {}
        self.total = self.size = 0
        self._spool: Spool | None = None

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            self._spool = Spool(self.root, self.min_free_space)
            self._spool.load()
        return self._spool

    def check(self, header: dict, blobs: list[Any]) -> None:
        for b in blobs:
            env = b.head.get("envelope")
            try:
                Envelope(**env)
                if b.trailer.get("state"):
                    State.from_json(json.dumps(b.trailer["state"]))
            except (TypeError, ValueError, KeyError):
                raise QueueError("a queued message in the export has an envelope or state "
                                 "that is not one") from None
            if b.head.get("where") not in ("queue", "maildrop") \
                    or not isinstance(b.trailer.get("rcpts", []), list) \
                    or not isinstance(env.get("id"), str) or not env["id"].isalnum():
                raise QueueError(f"a queued message in the export is not one: {env.get('id')!r}")
        self.same = header.get("queue_root") == str(self.root.resolve())
        todo = [b for b in blobs if not b.trailer.get("finished")
                and (b.head["where"] == "maildrop" or b.trailer.get("rcpts"))]
        self.heads = {b.head["envelope"]["id"]: b.trailer for b in todo}
        self.total = len(self.heads)
        if self.same or not todo:
            return
        if self.running():
            raise QueueError("the target's server is running; stop it before an import that "
                             f"carries a queue ({self.total} messages)")
        have = {e.env.id for e in offline_entries(self.root)} if self.root.exists() else set()
        twice = sorted(have & set(self.heads))
        if twice:
            raise QueueError(f"the target's queue already holds {len(twice)} of the messages "
                             f"in the export (e.g. {twice[0]}): imported before?")

    def open(self, head: dict) -> _Append | None:
        if self.same or head["envelope"]["id"] not in self.heads:
            return None
        return _Append(self, head)

    def verify(self, progress: Progress) -> dict[str, int]:
        if self.same:
            progress(f"queue: the export's queue is this config's ({self.root}): "
                     "nothing copied")
            return {}
        if not self.heads:
            return {}
        found = {e.env.id: e for e in offline_entries(self.root)}
        for msg_id, trailer in self.written.items():
            e = found.get(msg_id)
            if e is None:
                raise QueueError(f"verify: queue {msg_id} is not in the target's queue")
            state = e.state
            with _reader(self.root, e) as f:
                h = hashlib.sha256()
                for chunk in _chunks(f):
                    h.update(chunk)
            if h.hexdigest() != trailer["sha256"] or (
                    e.where == "queue" and (e.env.rcpts != trailer["rcpts"] or (
                        (json.loads(state.to_json()) if state else None)
                        != (trailer.get("state") or None)))):
                raise QueueError(f"verify: queue {msg_id} in the target's queue is not the "
                                 "message in the export")
        progress(f"queue: {len(self.written)} messages verified, {self.size} bytes")
        return {"queue messages": len(self.written), "queue bytes": self.size}
