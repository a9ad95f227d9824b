"""Structured, quiet-by-default logging: one key=value line per event on stderr."""

from __future__ import annotations

import logging
import sys

from pillarbox.printable import escape


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        # Addresses and names in a message come from the network: escaped, so
        # that no control character can forge a line or drive a terminal.
        msg = escape(record.getMessage())
        line = f"{ts} level={record.levelname.lower()} mod={record.name} {msg}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """log_level, at the start and at a reload."""
    logging.getLogger().setLevel(level.upper())
    logging.getLogger("asyncio").setLevel(logging.CRITICAL if level != "debug" else logging.DEBUG)
