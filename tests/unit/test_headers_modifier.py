"""The `headers` modifier (pillarbox.modify.headers)."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy

import pytest

from pillarbox import module
from pillarbox.modify import headers

ENVELOPE = module.Envelope("MSGID1", "a@example.test", ["b@example.test"],
                           module.Source("submission", auth="a@example.test"))

FIELDS = [
    ("Received", " from laptop (192.0.2.1)\r\n\tby mx.example.test;"
                 "\r\n\tSat, 5 Dec 2026 10:00:00 +0000"),
    ("From", " Ann <a@example.test>"),
    ("received", " from somewhere else"),
    ("User-Agent", " Thunderbird/140"),
    ("Subject", " hello"),
    ("X-Spam", " one"),
    ("X-SPAM", " two"),
]


def run(options: dict, fields=FIELDS) -> list[tuple[str, str]]:
    modifier = headers.KIND.make("hdr", options, None)
    state = modifier.state(ENVELOPE)
    assert asyncio.run(state.sender("a@example.test")) == "a@example.test"
    assert asyncio.run(state.rcpt("b@example.test")) == ["b@example.test"]
    assert state.body(None) is None  # the body is never touched
    return asyncio.run(state.header(list(fields)))


def test_kind_declares_its_options():
    assert headers.KIND.name == "headers" and headers.KIND.role == "modifier"
    assert {o.name: o.default for o in headers.KIND.options} == \
        {"add": {}, "remove": [], "replace": {}}


def test_no_options_change_nothing():
    assert run({}) == FIELDS


def test_remove_strips_every_field_of_those_names_case_insensitively():
    got = run({"remove": ["RECEIVED", "user-agent"]})
    assert got == [FIELDS[1], FIELDS[4], FIELDS[5], FIELDS[6]]


def test_replace_takes_the_place_of_the_first_and_drops_the_others():
    got = run({"replace": {"X-Spam": "no", "X-New": "fresh"}})
    assert got == [*FIELDS[:5], ("X-Spam", " no"), ("X-New", " fresh")]


def test_add_appends_in_order():
    got = run({"add": {"X-Processed-By": "pillarbox", "X-Team": "ops"}})
    assert got == [*FIELDS, ("X-Processed-By", " pillarbox"), ("X-Team", " ops")]


def test_result_serializes_to_a_parsable_header():
    got = run({"remove": ["Received", "User-Agent"], "replace": {"Subject": "caf\u00e9 time"},
               "add": {"X-Processed-By": "pillarbox"}})
    block = "".join(f"{n}:{v}\r\n" for n, v in got) + "\r\nbody\r\n"
    msg = email.parser.Parser(policy=email.policy.default).parsestr(block)
    assert msg["Subject"] == "caf\u00e9 time"
    assert msg["X-Processed-By"] == "pillarbox"
    assert msg.get_all("Received") is None and msg["User-Agent"] is None


@pytest.mark.parametrize("options,key", [
    ({"add": {"X-A": "one\r\nBcc: victim@example.test"}}, "add"),
    ({"add": {"X-A": "one\ntwo"}}, "add"),
    ({"replace": {"X-A": "a\rb"}}, "replace"),
    ({"replace": {"X-A": "nul\0"}}, "replace"),
    ({"add": {"Bad Name": "x"}}, "add"),
    ({"add": {"X-A:": "x"}}, "add"),
    ({"add": {"X-A": 5}}, "add"),
    ({"add": {"X-A": "x" * 1000}}, "add"),
    ({"add": ["X-A"]}, "add"),
    ({"remove": "Received"}, "remove"),
    ({"remove": ["Rec eived"]}, "remove"),
])
def test_bad_options_are_one_line_config_errors(options, key):
    with pytest.raises(ValueError) as e:
        headers.KIND.make("hdr", options, None)
    assert str(e.value).startswith(f"{key}: ") and "\n" not in str(e.value)
