"""chatmail mode: addresses are replaced in log lines at the default level."""

from __future__ import annotations

import io
import logging

from pillarbox import log_privacy, logs


def test_addresses_are_hidden_at_warning_not_at_info():
    stream = io.StringIO()
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    try:
        logs.setup("warning")
        root.handlers[0].stream = stream
        log_privacy.install("chatmail")
        log = logging.getLogger("pillarbox.test")
        logs.event(log, logging.WARNING, "delivery failed", rcpts=["bob@example.org"],
                   sender="<alice@example.org>")
        log.warning("imap login user=%s failed", "carol@example.net")
        text = stream.getvalue()
        assert "example.org" not in text and "carol@" not in text
        assert text.count("<address>") == 3
        logs.set_level("info")
        log.info("user=%s", "dave@example.net")
        assert "dave@example.net" in stream.getvalue()
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)
