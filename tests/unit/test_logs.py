"""The log line formats: quoting in text lines, one JSON object per line."""

from __future__ import annotations

import json
import logging
import shlex

from pillarbox import logs


def _record(name: str, **fields) -> logging.LogRecord:
    rec = logging.LogRecord("pillarbox.test", logging.INFO, __file__, 1, name, (), None)
    rec.pillarbox_fields = fields
    return rec


def test_text_values_are_quoted_so_that_a_line_splits_back_into_its_fields():
    fields = {"plain": "a@b.example", "space": "a b", "quote": 'say "hi"', "single": "o'neil",
              "eq": "k=v", "backslash": "c:\\x", "empty": "", "ctrl": "x\r\ny\x1b",
              "n": 3, "delay": 0.12345, "zero": 0.0, "rcpts": ["a@x", "b@y"], "none": None}
    line = logs.TextFormatter().format(_record("accepted", **fields))
    assert "\n" not in line and "\x1b" not in line
    head, rest = line.split(" accepted ", 1)
    assert head.endswith("level=info mod=pillarbox.test")
    parsed = dict(tok.split("=", 1) for tok in shlex.split(rest))
    assert parsed == {"plain": "a@b.example", "space": "a b", "quote": 'say "hi"',
                      "single": "o'neil", "eq": "k=v", "backslash": "c:\\x", "empty": "",
                      "ctrl": "x\\x0d\\x0ay\\x1b", "n": "3", "delay": "0.123", "zero": "0",
                      "rcpts": "a@x,b@y"}
    assert " plain=a@b.example " in line, "a plain value stays bare"


def test_json_lines_carry_the_same_fields():
    line = logs.JSONFormatter().format(_record("delivered", to="<a@b>", delay=0.12345,
                                               rcpts=["a", "b"], ctrl="x\ny", none=None))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == "delivered" and obj["level"] == "info" and obj["mod"] == "pillarbox.test"
    assert obj["to"] == "<a@b>" and obj["delay"] == 0.123 and obj["rcpts"] == ["a", "b"]
    assert obj["ctrl"] == "x\ny" and "none" not in obj


def test_an_event_below_the_level_is_not_formatted(caplog):
    class Boom:
        def __str__(self):
            raise AssertionError("formatted although not written")

    log = logging.getLogger("pillarbox.test.quiet")
    log.setLevel(logging.WARNING)
    logs.event(log, logging.INFO, "accepted", x=Boom())
    assert not caplog.records
