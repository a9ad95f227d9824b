"""A local control socket so CLI commands reach a running server.

`queue retry`, `queue delete` and `sendmail` (pickup) use it; when no server
runs they work on the spool files directly. Only the server's own user (or
root) may talk to it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from pathlib import Path

Handler = Callable[[str, str], Awaitable[str]]


@contextmanager
def _short_path(path: Path):
    """AF_UNIX paths are limited to ~107 bytes; reach deep ones through /proc."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def socket_path(data_dir: Path) -> Path:
    return data_dir / "control.sock"


async def serve(data_dir: Path, handler: Handler) -> asyncio.AbstractServer:
    path = socket_path(data_dir)
    path.unlink(missing_ok=True)
    my_uid = os.getuid()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            if uid not in (0, my_uid):
                writer.write(b"error permission denied\n")
                return
            line = (await reader.readline()).decode(errors="replace").strip()
            cmd, _, arg = line.partition(" ")
            writer.write((await handler(cmd, arg.strip())).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    with _short_path(path) as p:
        server = await asyncio.start_unix_server(on_client, p)
    os.chmod(path, 0o600)
    return server


def request(data_dir: Path, command: str, timeout: float = 60.0) -> str | None:
    """Send one command to a running server; None when none is running."""
    path = socket_path(data_dir)
    if not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with _short_path(path) as p:
            s.connect(p)
        s.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace").strip()
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except PermissionError:
        raise PermissionError(
            f"cannot reach the running server through {path}: permission denied; "
            "run this command as the user that runs `pillarbox serve`") from None
    finally:
        s.close()
