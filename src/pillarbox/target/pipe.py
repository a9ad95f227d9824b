"""Delivery to a `|command` alias: the message on the command's stdin.

A non-zero exit is a temporary failure (the queue retries), as is a command
that runs longer than the timeout.
"""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

TIMEOUT = 300.0


class PipeFailed(Exception):
    pass


async def deliver(command: str, prefix: bytes, message: BinaryIO, sender: str, rcpt: str) -> None:
    env = dict(os.environ, SENDER=sender, RECIPIENT=rcpt)
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stderr is not None

    async def feed() -> None:
        try:
            proc.stdin.write(prefix)
            while chunk := message.read(1 << 16):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command did not read everything; its exit code decides

    try:
        _, err, _ = await asyncio.wait_for(
            asyncio.gather(feed(), proc.stderr.read(4096), proc.wait()), TIMEOUT
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PipeFailed(f"command timed out after {TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip().splitlines()
        detail = f": {text[-1][:200]}" if text else ""
        raise PipeFailed(f"command exited with status {proc.returncode}{detail}")
