"""The Maildir writer's prepare stage (encryption at rest makes a batch's
bodies at once before they are written), driven directly."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from pillarbox.target.mailbox import MaildirWriter


class Body:
    """An opener the prepare step may fill in, as encryption at rest's Sealing."""

    def __init__(self, text: bytes) -> None:
        self.text, self.ready = text, b""

    def __call__(self) -> io.BytesIO:
        return io.BytesIO(self.ready or self.text)


def deliver_all(tmp_path: Path, prepare) -> list[bytes]:
    async def main() -> list[int]:
        writer = MaildirWriter()
        writer.prepare = prepare
        bodies = [Body(b"body %d\r\n" % i) for i in range(5)]
        return await asyncio.gather(*(writer.deliver(tmp_path / "m", b"P: x\r\n", b)
                                      for b in bodies))

    sizes = asyncio.run(main())
    assert len(sizes) == 5
    return sorted(p.read_bytes() for p in (tmp_path / "m" / "new").iterdir())


def test_prepared_bodies_are_written(tmp_path):
    seen: list[int] = []

    def prepare(openers) -> None:
        seen.append(len(openers))
        for o in openers:
            o.ready = b"SEALED " + o.text

    stored = deliver_all(tmp_path, prepare)
    assert stored == sorted(b"P: x\r\nSEALED body %d\r\n" % i for i in range(5))
    assert sum(seen) == 5


def test_a_failing_prepare_leaves_each_body_to_its_opener(tmp_path):
    def prepare(openers) -> None:
        raise OSError("the encryption child is gone")

    stored = deliver_all(tmp_path, prepare)
    assert stored == sorted(b"P: x\r\nbody %d\r\n" % i for i in range(5))
