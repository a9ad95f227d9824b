"""Files in an export (store/transfer.py): one file's bytes as JSON lines.

A blob is a head line (a JSON object with "blob": its kind, and what the kind
needs), then its bytes as base64 JSON strings of at most CHUNK bytes each,
then a trailer object with the size, the chunk count and the SHA-256 of the
bytes (and what the kind adds: see queue/queue_transfer.py). So a file of any
size is written and read a chunk at a time, never whole in memory, and a
damaged chunk fails the digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import IO, Any

CHUNK = 1 << 20  # bytes per chunk line (1.4 MB of base64)

Sink = Callable[[bytes], None]


class BlobError(ValueError):
    """A blob that does not read back as it was written."""


def write(out: IO[str], head: dict[str, Any], chunks: Iterable[bytes],
          extra: Callable[[], dict[str, Any]] | None = None) -> tuple[int, str]:
    """Write one blob; `chunks` are split to CHUNK bytes at most. `extra()`, called
    once the bytes are out, adds fields to the trailer. Returns (size, sha256)."""
    out.write(json.dumps(head, separators=(",", ":")) + "\n")
    h, size, n = hashlib.sha256(), 0, 0
    for chunk in chunks:
        for at in range(0, len(chunk), CHUNK):
            part = chunk[at:at + CHUNK]
            h.update(part)
            size += len(part)
            n += 1
            out.write(json.dumps(base64.b64encode(part).decode()) + "\n")
    trailer = {"size": size, "chunks": n, "sha256": h.hexdigest()}
    if extra is not None:
        trailer.update(extra())
    out.write(json.dumps(trailer, separators=(",", ":")) + "\n")
    return size, trailer["sha256"]


def read(src: IO[str], sink: Sink | None = None) -> dict[str, Any]:
    """Read one blob's chunks (after its head) and its trailer, checking them;
    each chunk goes to `sink` as it is read. Returns the trailer."""
    h, size, n = hashlib.sha256(), 0, 0
    while True:
        raw = src.readline()
        if not raw:
            raise BlobError("the export is cut short (in a file's bytes)")
        item = json.loads(raw)
        if isinstance(item, dict):
            break
        if not isinstance(item, str):
            raise BlobError("a file's chunk is not base64 text")
        try:
            part = base64.b64decode(item, validate=True)
        except binascii.Error:
            raise BlobError("a file's chunk is not base64") from None
        if len(part) > CHUNK:
            raise BlobError("a file's chunk is too large")
        h.update(part)
        size += len(part)
        n += 1
        if sink is not None:
            sink(part)
    if item.get("size") != size or item.get("chunks") != n or item.get("sha256") != h.hexdigest():
        raise BlobError("a file's bytes do not match its digest in the export "
                        "(file changed or damaged)")
    return item


def sha256_of(path: Any, start: int = 0) -> str:
    """A file's SHA-256 (from byte `start`), read a chunk at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
