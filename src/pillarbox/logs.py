"""Structured, quiet-by-default logging: one line per event on stderr.

An event is a name and fields: `event(log, INFO, "accepted", id=..., size=...)`.
`log_format = "text"` writes it as

    2026-12-05T22:36:01 level=info mod=pillarbox.smtp accepted id=... size=427

(a value in double quotes when it is empty or holds a space, a quote, `=`, a
backslash or a control character, so that `shlex.split` splits a line right;
`\\` and `"` escaped inside), and
`log_format = "json"` as one JSON object per line with the same keys plus
`ts`, `level`, `mod` and `msg` (the event's name). Fields are formatted only
when the line is written: an event below `log_level` costs one level check.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from pillarbox.printable import escape

FORMATS = ("text", "json")

_FIELDS = "pillarbox_fields"  # the LogRecord attribute that carries an event's fields
_NEEDS_QUOTES = frozenset(' "\'=\\')


def event(logger: logging.Logger, level: int, name: str, /, **fields: Any) -> None:
    """Log event `name` with `fields`; a None field is left out."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: fields})


def enabled(logger: logging.Logger, level: int) -> bool:
    """Whether an event at `level` would be written: skip costly fields when not."""
    return logger.isEnabledFor(level)


def client(ip: str) -> str:
    """A client as `name[ip]`, as Postfix writes it. pillarbox does not look up
    the reverse DNS name (no query per connection): the name is "unknown"."""
    return f"unknown[{ip}]"


def seconds(s: float) -> str:
    """A duration as Postfix writes it: 0.123, 2.5, 0."""
    return f"{s:.3f}".rstrip("0").rstrip(".") if s > 0 else "0"


def quote(value: object) -> str:
    """One value for a text line: bare if that is unambiguous, else in double quotes."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    elif isinstance(value, float):
        return seconds(value) if value >= 0 else str(value)
    s = str(value)
    if s and s.isprintable() and _NEEDS_QUOTES.isdisjoint(s):
        return s
    # Values come from the network: escaped, so that no control character can
    # forge a line or drive a terminal, and no quote can end the value early.
    return '"' + escape(s.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _fields(record: logging.LogRecord) -> dict[str, Any] | None:
    return getattr(record, _FIELDS, None)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        fields = _fields(record)
        if fields is None:  # a plain message: its text, escaped
            msg = escape(record.getMessage())
        else:
            parts = [escape(str(record.msg))]
            parts += [f"{k}={quote(v)}" for k, v in fields.items() if v is not None]
            msg = " ".join(parts)
        line = f"{ts} level={record.levelname.lower()} mod={record.name} {msg}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "mod": record.name,
        }
        fields = _fields(record)
        if fields is None:
            obj["msg"] = record.getMessage()
        else:
            obj["msg"] = str(record.msg)
            for k, v in fields.items():
                if v is not None:
                    if isinstance(v, float):
                        v = round(v, 3)
                    obj[k] = v if isinstance(v, (int, float, str, list)) else str(v)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        # ensure_ascii: control and bidi characters become \u escapes, one line each.
        return json.dumps(obj, default=str)


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_format(fmt)
    set_level(level)


def set_format(fmt: str) -> None:
    """log_format, at the start and at a reload."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())


def set_level(level: str) -> None:
    """log_level, at the start and at a reload."""
    logging.getLogger().setLevel(level.upper())
    logging.getLogger("asyncio").setLevel(logging.CRITICAL if level != "debug" else logging.DEBUG)
