"""The segment spool: no append completes before its fdatasync, group commit,
torn tails, done marks and large bodies, driven directly through Spool."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pytest

from pillarbox.queue import spool as spool_mod
from pillarbox.queue.spool import SPILL_AT, Envelope, Spool, new_id

WAIT = 5.0  # seconds; generous bound on anything the tests wait for


def envelope(size: int = 0) -> Envelope:
    return Envelope(id=new_id(), mail_from="sender@remote.test", rcpts=["rcpt@example.test"],
                    received=time.time(), size=size)


def segment_files(root: Path) -> list[Path]:
    return sorted((root / "segments").glob("*.seg"))


def read_message(spool: Spool, msg_id: str, size: int = 1 << 20) -> bytes:
    """The whole message, read as the delivery targets do: in pieces up to b""."""
    with spool.open_message(msg_id) as r:
        return b"".join(iter(lambda: r.read(size), b""))


class GatedFdatasync:
    """Stands in for os.fdatasync: counts calls and, while closed, blocks each
    call (in the spool's worker thread) until the test opens the gate."""

    def __init__(self, closed: bool) -> None:
        self.calls = 0
        self.sizes_seen: list[int] = []  # file size at each call: what it covers
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not closed:
            self.gate.set()
        self._real = os.fdatasync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.sizes_seen.append(os.fstat(fd).st_size)
        self.entered.set()
        if not self.gate.wait(WAIT):
            raise AssertionError("the test never opened the fdatasync gate")
        self._real(fd)

    async def wait_entered(self) -> None:
        """Wait (without blocking the event loop) for a call to start, then re-arm."""
        assert await asyncio.to_thread(self.entered.wait, WAIT), "fdatasync was never called"
        self.entered.clear()


@pytest.fixture
def fdatasync(monkeypatch):
    """Install a GatedFdatasync (closed) as os.fdatasync for the spool."""
    gated = GatedFdatasync(closed=True)
    monkeypatch.setattr(spool_mod.os, "fdatasync", gated)
    yield gated
    gated.gate.set()  # never leave a worker thread blocked


def test_append_completes_only_after_its_fdatasync_returns(tmp_path, fdatasync):
    root = tmp_path / "queue"
    env = envelope()

    async def main() -> None:
        spool = Spool(root)
        task = asyncio.create_task(spool.append(env, [b"Subject: x\r\n\r\nbody\r\n"]))
        await fdatasync.wait_entered()
        # The record was written before the fdatasync began...
        assert fdatasync.sizes_seen == [segment_files(root)[0].stat().st_size]
        assert fdatasync.sizes_seen[0] > 0
        # ...and while the fdatasync is blocked, the append does not complete.
        await asyncio.sleep(0.2)
        assert not task.done(), "append returned while its fdatasync was still running"
        assert env.id not in spool.index
        fdatasync.gate.set()
        await asyncio.wait_for(task, WAIT)
        assert fdatasync.calls == 1
        assert read_message(spool, env.id) == b"Subject: x\r\n\r\nbody\r\n"

    asyncio.run(main())


def test_a_failed_fdatasync_fails_the_append_and_leaves_no_record(tmp_path, monkeypatch):
    root = tmp_path / "queue"

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    async def main() -> None:
        spool = Spool(root)
        good = envelope()
        await spool.append(good, [b"kept\r\n"])
        size = segment_files(root)[0].stat().st_size
        monkeypatch.setattr(spool_mod.os, "fdatasync", broken)
        with pytest.raises(OSError):
            await asyncio.wait_for(spool.append(envelope(), [b"lost\r\n"]), WAIT)
        assert segment_files(root)[0].stat().st_size == size  # cut off again
        monkeypatch.undo()
        assert [e.id for e in Spool(root).load()] == [good.id]

    asyncio.run(main())


def test_concurrent_appends_share_fdatasyncs(tmp_path, fdatasync):
    """Messages arriving while a write is in flight go out together in the next one."""
    root = tmp_path / "queue"
    n = 50
    envs = [envelope() for _ in range(n)]

    async def main() -> None:
        spool = Spool(root)
        first = asyncio.create_task(spool.append(envs[0], [b"message 0\r\n"]))
        await fdatasync.wait_entered()  # the first batch is being synced...
        rest = [asyncio.create_task(spool.append(e, [f"message {i}\r\n".encode()]))
                for i, e in enumerate(envs[1:], 1)]
        await asyncio.sleep(0.1)  # ...while the others queue up behind it
        assert not any(t.done() for t in [first, *rest])
        fdatasync.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), WAIT)
        assert fdatasync.calls < n, f"{fdatasync.calls} fdatasyncs for {n} appends"
        assert fdatasync.calls == 2  # one for the first, one for the 49 that waited
        for i, e in enumerate(envs):
            assert read_message(spool, e.id) == f"message {i}\r\n".encode()

    asyncio.run(main())
    assert [e.id for e in Spool(root).load()] == sorted(e.id for e in envs)


@pytest.mark.parametrize("cut", ["in the body", "in the record header", "in the envelope"])
def test_a_torn_tail_is_dropped_and_the_records_before_it_survive(tmp_path, cut):
    root = tmp_path / "queue"
    envs = [envelope() for _ in range(3)]
    bodies = [f"body {i}\r\n".encode() * 100 for i in range(3)]

    async def write() -> list[int]:
        spool = Spool(root)
        ends = []
        for e, b in zip(envs, bodies, strict=True):
            await spool.append(e, [b])
            ends.append(segment_files(root)[0].stat().st_size)
        return ends

    ends = asyncio.run(write())
    seg = segment_files(root)[0]
    last_start = ends[1]
    # A crash mid-write of the third record: the file ends somewhere inside it.
    at = {"in the record header": last_start + 7,
          "in the envelope": last_start + spool_mod._REC.size + 10,
          "in the body": ends[2] - 50}[cut]
    os.truncate(seg, at)

    spool = Spool(root)
    loaded = spool.load()
    assert [e.id for e in loaded] == [envs[0].id, envs[1].id]
    for e, b in zip(envs[:2], bodies[:2], strict=True):
        assert read_message(spool, e.id) == b
    assert seg.stat().st_size == ends[1], "the torn tail was not cut off"

    # The queue goes on: a new message after the repair survives another restart.
    later = envelope()
    asyncio.run(spool.append(later, [b"after the crash\r\n"]))
    again = Spool(root)
    assert [e.id for e in again.load()] == [envs[0].id, envs[1].id, later.id]
    assert read_message(again, later.id) == b"after the crash\r\n"


def test_a_corrupt_last_record_is_dropped(tmp_path):
    root = tmp_path / "queue"
    envs = [envelope() for _ in range(2)]

    async def write() -> None:
        spool = Spool(root)
        for e in envs:
            await spool.append(e, [b"x" * 1000])

    asyncio.run(write())
    seg = segment_files(root)[0]
    data = bytearray(seg.read_bytes())
    data[-10] ^= 0xFF  # a flipped byte in the last body: its CRC no longer matches
    seg.write_bytes(bytes(data))
    assert [e.id for e in Spool(root).load()] == [envs[0].id]


def test_done_messages_do_not_come_back_after_load(tmp_path):
    root = tmp_path / "queue"
    envs = [envelope() for _ in range(4)]

    async def main() -> None:
        spool = Spool(root)
        for i, e in enumerate(envs):
            await spool.append(e, [f"message {i}\r\n".encode()])
        spool.done(envs[1].id)
        spool.done(envs[3].id)
        spool.flush_done()  # else written at the end of this loop turn

    asyncio.run(main())
    spool = Spool(root)
    assert [e.id for e in spool.load()] == [envs[0].id, envs[2].id]
    with pytest.raises(FileNotFoundError):
        spool.open_message(envs[1].id)
    assert read_message(spool, envs[2].id) == b"message 2\r\n"

    # Still gone after a second restart, and once all are done nothing is left.
    spool.done(envs[0].id)
    spool.done(envs[2].id)
    assert Spool(root).load() == []


def spilled_message(root: Path) -> tuple[Spool, Envelope, bytes]:
    """A spool holding one message whose body (> SPILL_AT) was spilled; its bytes."""
    block = bytes(range(256)) * 256  # 64 KB, every byte value
    blocks = [bytes([i]) + block[1:] for i in range(SPILL_AT // len(block) + 4)]
    body = b"".join(blocks)
    assert len(body) > SPILL_AT
    head = b"Received: from test; Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    env = envelope(len(head) + len(body))

    async def main() -> Spool:
        spool = Spool(root)
        buf = spool.body_buffer(env.id)
        for b in blocks:
            buf.write(b)
        assert buf.spilled
        await spool.append(env, [head], buf)
        return spool

    return asyncio.run(main()), env, head + body


def test_a_body_larger_than_spill_at_goes_to_bodies_and_reads_back(tmp_path):
    root = tmp_path / "queue"
    spool, env, message = spilled_message(root)
    assert env.body_file == env.id
    body_path = root / "bodies" / env.id
    assert body_path.is_file()
    assert segment_files(root)[0].stat().st_size < SPILL_AT  # the bulk is not in the segment
    assert read_message(spool, env.id) == message
    assert list((root / "tmp").iterdir()) == []  # the spill file was moved, not copied

    again = Spool(root)  # and after a restart, in small pieces across the two files
    assert [e.id for e in again.load()] == [env.id]
    assert read_message(again, env.id, size=10_000) == message
    again.done(env.id)
    assert not body_path.exists()


def test_read_without_a_size_returns_the_whole_spilled_message(tmp_path):
    spool, env, message = spilled_message(tmp_path / "queue")
    with spool.open_message(env.id) as r:
        assert len(r.read()) == len(message)


def test_compaction_moves_waiting_messages_and_frees_old_segments(tmp_path, monkeypatch):
    root = tmp_path / "queue"
    sp = Spool(root)
    body = b"Subject: c\r\n\r\n" + b"z" * 3000 + b"\r\n"

    async def fill() -> list[str]:
        envs = [Envelope(new_id(), "a@x.test", ["b@y.test"], 0.0, len(body)) for _ in range(10)]
        await asyncio.gather(*(sp.append(e, [body]) for e in envs))
        return [e.id for e in envs]

    ids = asyncio.run(fill())
    first_segment = sp.index[ids[0]].segment
    for i in ids[1:]:
        sp.done(i)  # nine delivered, one still waiting
    sp.flush_done()
    monkeypatch.setattr(spool_mod, "COMPACT_AFTER", 0.0)
    sp._seg_opened = -1e9  # the next write rotates: the old segment is no longer current

    async def compact() -> int:
        await sp._rotate_if_due()
        return await sp.compact(set())

    assert asyncio.run(compact()) == 1
    assert not (sp.segments / f"{first_segment:012d}.seg").exists()
    with sp.open_message(ids[0]) as r:
        assert r.read() == body
    again = Spool(root)
    assert [e.id for e in again.load()] == [ids[0]]
    with again.open_message(ids[0]) as r:
        assert r.read() == body


def test_the_seekable_view_of_a_message_reads_like_the_stream(tmp_path) -> None:
    """Module targets get a file they may seek, tell and readline on (a
    webhook reads the header, then the whole message again)."""
    import asyncio as _asyncio
    import time as _time

    from pillarbox.queue.spool import SPILL_AT, Envelope, Spool

    spool = Spool(tmp_path / "queue", 0)
    spool.load()
    small = b"Subject: a\r\n\r\nsmall body\r\n"
    big = b"Subject: b\r\n\r\n" + b"x" * (SPILL_AT + 10) + b"\r\n"
    for i, (head, rest) in enumerate([(b"Received: r\r\n", small), (b"Received: r\r\n", big)]):
        buf = spool.body_buffer(f"m{i}")
        for at in range(0, len(rest), 65536):  # as the session writes it
            buf.write(rest[at:at + 65536])
        env = Envelope(id=f"m{i}", mail_from="", rcpts=["a@b.test"], received=_time.time(),
                       size=len(head) + len(rest))
        _asyncio.run(spool.append(env, [head], buf))
        whole = head + rest
        assert bool(spool.index[f"m{i}"].env.body_file) == (i == 1)  # the big one spilled
        with spool.open_message(f"m{i}") as stream:
            assert stream.read() == whole
        f = spool.open_message_seekable(f"m{i}")
        assert f.readline() == b"Received: r\r\n"
        assert f.read(5) == b"Subje"
        f.seek(0, 2)
        assert f.tell() == len(whole)
        f.seek(0)
        assert f.read() == whole
        f.seek(len(whole) - 3)
        assert f.read() == whole[-3:]
        f.close()


def test_scrub_of_back_to_back_records_is_one_write_and_the_segment_still_loads(
        tmp_path, monkeypatch):
    """Encryption at rest: the messages delivered in one loop turn are scrubbed
    together; records that lie back to back take one pwrite, a lone one its
    two (body, then record header); live neighbours are untouched."""
    root = tmp_path / "queue"
    envs = [envelope() for _ in range(6)]
    bodies = [f"SECRET-{i}-{e.id}\r\n".encode() * 50 for i, e in enumerate(envs)]
    writes: list[int] = []
    real_pwrite = os.pwrite

    def counting_pwrite(fd: int, data, offset: int) -> int:
        writes.append(len(data))
        return real_pwrite(fd, data, offset)

    async def main() -> None:
        spool = Spool(root)
        for e, b in zip(envs, bodies, strict=True):
            await spool.append(e, [b])
        monkeypatch.setattr(os, "pwrite", counting_pwrite)
        for i in (0, 1, 2, 4):  # 0-2 back to back, 4 alone; 3 and 5 stay queued
            spool.done(envs[i].id, scrub=True)
        spool.flush_done()
        await asyncio.sleep(0)  # the scrub is handed to a worker thread at the turn's end
        await asyncio.get_running_loop().shutdown_default_executor()

    asyncio.run(main())
    assert len(writes) == 3
    data = b"".join(p.read_bytes() for p in segment_files(root))
    for i in (0, 1, 2, 4):
        assert b"SECRET-%d-" % i not in data
    spool = Spool(root)
    assert [e.id for e in spool.load()] == [envs[3].id, envs[5].id]
    assert read_message(spool, envs[3].id) == bodies[3]
    assert read_message(spool, envs[5].id) == bodies[5]


def test_delayed_scrub_zeroes_later_and_skips_a_segment_deleted_meanwhile(tmp_path):
    """scrub_delay: delivered records are zeroed once due, all due ones in one
    go; a segment retired before then was deleted, so nothing is written."""
    root = tmp_path / "queue"
    envs = [envelope() for _ in range(3)]
    bodies = [f"SECRET-{i}-{e.id}\r\n".encode() * 50 for i, e in enumerate(envs)]

    async def main() -> tuple[bool, bool, list[str]]:
        spool = Spool(root)
        spool.scrub_delay = 0.3
        for e, b in zip(envs, bodies, strict=True):
            await spool.append(e, [b])
        old = segment_files(root)[0]
        spool.done(envs[0].id, scrub=True)
        await asyncio.sleep(0.1)  # less than the delay: a scrub at once would be done
        early = spool.scrubs_pending() == 1 and b"SECRET-0-" in old.read_bytes()
        spool.max_age = 0.0  # the next append rotates; done() then retires the old one
        await spool.append(envelope(), [b"next"])
        for e in envs[1:]:
            spool.done(e.id, scrub=True)
        gone = not old.exists()
        deadline = time.monotonic() + WAIT
        while spool.scrubs_pending() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return early, gone, [p.name for p in segment_files(root)]

    early, gone, left = asyncio.run(main())
    assert early and gone and len(left) == 1


def test_load_hands_back_finished_records_not_yet_zeroed(tmp_path):
    """A kill before a delayed scrub: load() lists the finished records still
    in a kept segment, and scrubbing them again writes nothing."""
    root = tmp_path / "queue"
    envs = [envelope() for _ in range(3)]
    bodies = [f"SECRET-{i}-{e.id}\r\n".encode() * 50 for i, e in enumerate(envs)]

    async def fill() -> None:
        spool = Spool(root)
        for e, b in zip(envs, bodies, strict=True):
            await spool.append(e, [b])
        spool.done(envs[0].id)  # no scrub: as if killed before it was due
        spool.done(envs[2].id)
        spool.flush_done()

    asyncio.run(fill())
    spool = Spool(root)
    assert [e.id for e in spool.load()] == [envs[1].id]
    assert sorted(e.env.id for e in spool.unscrubbed) == sorted([envs[0].id, envs[2].id])
    spool.scrub_now(spool.unscrubbed)
    data = segment_files(root)[0].read_bytes()
    assert b"SECRET-0-" not in data and b"SECRET-2-" not in data and b"SECRET-1-" in data
    before = segment_files(root)[0].stat().st_mtime_ns
    again = Spool(root)
    assert [e.id for e in again.load()] == [envs[1].id]
    again.scrub_now(again.unscrubbed)
    assert segment_files(root)[0].stat().st_mtime_ns == before  # already zero: no write
    assert read_message(again, envs[1].id) == bodies[1]
