"""chatmail mode keeps addresses out of the logs at the default level
(warning, and error): a filter on the log handlers replaces every address in
a line with `<address>`. At `log_level = "info"` or `"debug"` the operator
asked for detail, and lines stay as they are."""

from __future__ import annotations

import logging
import re

from pillarbox import logs

ADDRESS_RE = re.compile(r"[^\s<>\"'=,;:()\[\]]+@[A-Za-z0-9\[][^\s<>\"',;()]*")
HIDDEN = "<address>"


def redact(value: object) -> object:
    if isinstance(value, str):
        return ADDRESS_RE.sub(HIDDEN, value)
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


class AddressFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().getEffectiveLevel() <= logging.INFO:
            return True
        fields = getattr(record, logs._FIELDS, None)
        if fields is not None:
            setattr(record, logs._FIELDS, {k: redact(v) for k, v in fields.items()})
            record.msg = redact(str(record.msg))
        else:
            record.msg, record.args = redact(record.getMessage()), None
        return True


def install(mode: str) -> None:
    if mode != "chatmail":
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, AddressFilter) for f in handler.filters):
            handler.addFilter(AddressFilter())
