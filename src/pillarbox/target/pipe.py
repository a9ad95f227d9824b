"""Delivery to a `|command` alias: the message on the command's stdin.

Exit 0 is a delivery, whether or not the command read all of its input. A
non-zero exit is a temporary failure (the queue retries), as is a command
that runs longer than the timeout. A server running as root runs no command
at all: that is a temporary failure too, so the message waits in the queue
until the server runs as its service user (`user` in the config).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from typing import BinaryIO

log = logging.getLogger("pillarbox.target.pipe")

TIMEOUT = 300.0
AS_ROOT = "not run: the server runs as root; set `user` in the config"


class PipeFailed(Exception):
    pass


async def _write(stdin: asyncio.StreamWriter, data: bytes) -> bool:
    """Write to the command's stdin; False once the command has closed it.

    A command may exit without reading its input (exit 0 still means it
    took the message). The pipe then fails as BrokenPipeError or
    ConnectionResetError, or, under uvloop, as RuntimeError on the closed
    handle; none of them is a failed delivery.
    """
    if stdin.is_closing():
        return False
    try:
        stdin.write(data)
        await stdin.drain()
    except (OSError, RuntimeError):
        stdin.close()
        return False
    return True


async def deliver(command: str, prefix: bytes, message: BinaryIO, sender: str, rcpt: str) -> None:
    if os.geteuid() == 0:  # an alias must never be a way to run anything as root
        log.warning("pipe refused rcpt=%s reason=%r", rcpt, AS_ROOT)
        raise PipeFailed(AS_ROOT)
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
        chunk = prefix
        while chunk:
            if not await _write(proc.stdin, chunk):
                return  # the command stopped reading; its exit code decides
            chunk = message.read(1 << 16)  # a spool read error is ours: it propagates
        proc.stdin.close()

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


# -- as a module (kind "pipe") -------------------------------------------------------

from pillarbox import module  # noqa: E402
from pillarbox.check import Reply  # noqa: E402


class _Delivery(module.BaseDelivery):
    def __init__(self, command: str, envelope: module.Envelope) -> None:
        super().__init__(envelope)
        self.command = command

    async def commit(self) -> dict[str, module.DeliveryError | None]:
        """The command runs once per recipient, as for a `|command` alias."""
        assert self.message is not None
        message = self.message
        if len(self.rcpts) > 1:  # each command reads it from the start
            data = await asyncio.to_thread(message.read)
        out: dict[str, module.DeliveryError | None] = {}
        for rcpt in self.rcpts:
            if len(self.rcpts) > 1:
                message = io.BytesIO(data)
            prefix = f"Return-Path: <{self.envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n"
            try:
                await deliver(self.command, prefix.encode(), message,
                              self.envelope.mail_from, rcpt)
                out[rcpt] = None
            except PipeFailed as e:
                out[rcpt] = module.DeliveryError(Reply(451, f"4.3.0 {e}"))
        return out


class PipeTarget:
    def __init__(self, name: str, options: dict, env) -> None:
        self.name, self.command = name, options["command"]

    async def start(self, envelope: module.Envelope) -> _Delivery:
        return _Delivery(self.command, envelope)


KIND = module.Kind(
    name="pipe", role="target",
    options=(module.Option("command", str, required=True,
                           help="a shell command given the message on stdin, with SENDER and "
                                "RECIPIENT in its environment; exit 0 = delivered, else retried"),),
    make=PipeTarget,
    help="Runs a command for each recipient (never as root).")
