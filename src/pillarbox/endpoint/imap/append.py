"""APPEND of one or more messages (RFC 3502 MULTIAPPEND): all of them or none.

Each message is written durably to tmp/ in a thread; then all are moved into
cur/ and indexed in one turn of the event loop, so no other session sees
some without the others; the folder is made durable before the OK. Any
failure takes back what was done.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pillarbox.fileio import fsync_dir
from pillarbox.store.mailbox_index import MailStore, TmpMessage, Written


@dataclass
class NewMessage:
    data: bytes | TmpMessage
    flags: list[str]
    date: float | None  # INTERNALDATE as a timestamp, None for now
    binary: bool = False  # a literal8: kept octet for octet


def _write_all(folder, messages: list[NewMessage]) -> list[Written]:
    written: list[Written] = []
    try:
        for m in messages:
            written.append(MailStore.write_file(folder, m.data, m.flags, m.date, m.binary))
    except BaseException:
        for w in written:
            w.tmp.unlink(missing_ok=True)
        raise
    return written


async def append_all(store: MailStore, name: str, messages: list[NewMessage]) -> list[int] | None:
    """The UIDs of the new messages, in order; None if the mailbox was deleted
    meanwhile (nothing is added then)."""
    written = await asyncio.to_thread(_write_all, store.path(name), messages)
    if not store.exists(name):  # deleted while we wrote
        for w in written:
            w.tmp.unlink(missing_ok=True)
        return None
    uids: list[int] = []
    try:  # no await in here: others see all of them or none
        for w, m in zip(written, messages, strict=True):
            uids.append(store.add_file(name, w, m.flags).uid)
    except BaseException:
        for uid in uids:
            store.drop(name, uid)
        for w in written[len(uids):]:
            w.tmp.unlink(missing_ok=True)
        raise
    try:  # durable before the OK (others may see them already, as a delivery's)
        await asyncio.to_thread(fsync_dir, store.path(name) / "cur")
    except OSError:
        for uid in uids:
            store.drop(name, uid)
        raise
    return uids
