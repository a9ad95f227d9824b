"""The durable queue on disk.

One file per message, `queue/<id>`: a JSON envelope line, then the raw
message. It is written into `queue/tmp/`, fsync'd, renamed into place and the
directory fsync'd before the caller may say 250. Delivery progress lives in a
small `queue/<id>.state` file replaced atomically; a message's files are
removed only after every delivery of it is done, so a crash can repeat a
delivery but never lose one.

`queue/maildrop/` takes messages from `pillarbox sendmail`, in the same
format, for the server to pick up.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path


class SpoolFull(Exception):
    """Not enough free disk to accept a message safely."""


@dataclass
class Envelope:
    id: str
    mail_from: str
    rcpts: list[str]
    received: float
    size: int = 0
    auth: str | None = None  # authenticated user that submitted it
    source: str = "smtp"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> Envelope:
        return cls(**json.loads(line))


@dataclass
class Delivery:
    """One final destination of a message, after alias expansion."""

    kind: str  # local | remote | pipe
    to: str  # user address, remote address or command
    rcpt: str  # the envelope recipient it came from
    state: str = "pending"  # pending | deferred | done | failed
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""


@dataclass
class State:
    deliveries: list[Delivery] = field(default_factory=list)
    expanded: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> State:
        d = json.loads(raw)
        return cls(deliveries=[Delivery(**x) for x in d["deliveries"]], expanded=d["expanded"])


def new_id() -> str:
    # Sortable by arrival time, unique across processes.
    return f"{time.time_ns():x}{secrets.token_hex(4)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path, min_free_space: int = 0) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.maildrop = root / "maildrop"
        self.min_free_space = min_free_space
        for d in (root, self.tmp, self.maildrop):
            d.mkdir(parents=True, exist_ok=True)

    def free_space(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def has_room(self, size: int = 0) -> bool:
        return self.free_space() >= self.min_free_space + size

    def path(self, msg_id: str) -> Path:
        return self.root / msg_id

    def write(self, env: Envelope, chunks: Iterable[bytes], into: Path | None = None) -> None:
        """Store a message durably. Blocking: call from a worker thread.

        Raises SpoolFull (nothing stored) when the disk is too full.
        """
        if not self.has_room(env.size):
            raise SpoolFull()
        target_dir = into or self.root
        tmp = self.tmp / env.id
        try:
            with open(tmp, "wb") as f:
                f.write(env.to_json())
                for c in chunks:
                    f.write(c)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, target_dir / env.id)
            _fsync_dir(target_dir)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (28, 122):  # ENOSPC, EDQUOT
                raise SpoolFull() from e
            raise

    def read_envelope(self, msg_id: str) -> Envelope:
        with open(self.path(msg_id), "rb") as f:
            return Envelope.from_json(f.readline())

    def open_message(self, msg_id: str):
        """A binary file positioned at the start of the message."""
        f = open(self.path(msg_id), "rb")
        f.readline()
        return f

    def read_state(self, msg_id: str) -> State | None:
        try:
            return State.from_json((self.root / f"{msg_id}.state").read_bytes())
        except FileNotFoundError:
            return None

    def write_state(self, msg_id: str, state: State) -> None:
        tmp = self.tmp / f"{msg_id}.state"
        with open(tmp, "wb") as f:
            f.write(state.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.root / f"{msg_id}.state")

    def remove(self, msg_id: str) -> None:
        (self.root / f"{msg_id}.state").unlink(missing_ok=True)
        self.path(msg_id).unlink(missing_ok=True)
        _fsync_dir(self.root)

    def ids(self) -> list[str]:
        """Every queued message, oldest first."""
        return sorted(
            e.name for e in os.scandir(self.root) if e.is_file() and "." not in e.name
        )

    def pickup(self) -> list[str]:
        """Move messages from maildrop into the queue; return their ids."""
        moved = []
        for e in sorted(os.scandir(self.maildrop), key=lambda e: e.name):
            if e.is_file() and "." not in e.name:
                os.rename(e.path, self.root / e.name)
                moved.append(e.name)
        if moved:
            _fsync_dir(self.root)
        return moved

    def clean_tmp(self) -> None:
        """Partial writes from a crash were never acknowledged: drop them."""
        for e in os.scandir(self.tmp):
            os.unlink(e.path)
