"""The listeners for an MTA beside pillarbox (docs/POSTFIX.md): LMTP
(listen.lmtp), the tcp_table maps and the policy service ([postfix]).

Each connection finds the server's current SMTP context through `context`,
so a reload's config, modules and directory apply to new connections."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable

from pillarbox.config import Config
from pillarbox.endpoint import lmtp, policy, tcp_table
from pillarbox.endpoint.smtp import SMTPContext


class ListenError(Exception):
    """A listener could not be made; the message names its key and address."""


async def listen(config: Config,
                 context: Callable[[], SMTPContext]) -> list[asyncio.AbstractServer]:
    """Every configured listener, bound but not yet serving."""
    loop = asyncio.get_running_loop()
    out: list[asyncio.AbstractServer] = []

    async def bind(key: str, host: str, port: int, factory) -> None:
        try:
            if key == "listen.lmtp":
                out.extend(await lmtp.listen([(host, port)], factory))
            else:
                out.append(await loop.create_server(factory, host, port, backlog=1024,
                                                    start_serving=False))
        except OSError as e:
            for srv in out:
                srv.close()
            reason = ("address already in use" if e.errno == errno.EADDRINUSE
                      else e.strerror or str(e))
            where = host if port == 0 else f"{host}:{port}"
            raise ListenError(f"{key}: cannot listen on {where}: {reason}") from None

    for host, port in config.listen.get("lmtp", []):
        await bind("listen.lmtp", host, port, lambda: lmtp.LMTPProtocol(context()))
    for key, lookup in tcp_table.MAPS.items():
        for host, port in getattr(config.postfix, key):
            await bind(f"postfix.{key}", host, port,
                       lambda lookup=lookup: tcp_table.TableProtocol(lookup, context))
    for host, port in config.postfix.policy:
        await bind("postfix.policy", host, port, policy.protocol_factory(context))
    return out
