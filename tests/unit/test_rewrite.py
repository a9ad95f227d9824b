"""The `replace_sender` and `replace_rcpt` modifiers (pillarbox.modify.rewrite)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pillarbox import module
from pillarbox.modify import rewrite

KINDS = {k.name: k for k in rewrite.KINDS}
ENVELOPE = module.Envelope("MSGID1", "a@old-domain.test", ["b@old-domain.test"],
                           module.Source("smtp"))


def rcpt(options: dict, addr: str) -> list[str]:
    state = KINDS["replace_rcpt"].make("rw", options, None).state(ENVELOPE)
    return asyncio.run(state.rcpt(addr))


def sender(options: dict, addr: str) -> str:
    state = KINDS["replace_sender"].make("rw", options, None).state(ENVELOPE)
    return asyncio.run(state.sender(addr))


def test_kinds_are_modifiers_with_table_and_regex():
    assert set(KINDS) == {"replace_sender", "replace_rcpt"}
    for kind in KINDS.values():
        assert kind.role == "modifier"
        assert {o.name: o.default for o in kind.options} == {"table": {}, "regex": []}


DOMAIN = {"table": {"@old-domain.test": "@example.test"}}


@pytest.mark.parametrize("given,want", [
    ("ann@old-domain.test", "ann@example.test"),
    ("Ann.Smith@OLD-Domain.TEST", "Ann.Smith@example.test"),  # domain case-insensitive
    ("ann@other.test", "ann@other.test"),
    ("ann@sub.old-domain.test", "ann@sub.old-domain.test"),  # only that domain
])
def test_domain_rewrite(given, want):
    assert rcpt(DOMAIN, given) == [want]
    assert sender(DOMAIN, given) == want


def test_the_whole_address_wins_over_the_domain():
    table = {"table": {"@old-domain.test": "@example.test",
                       "Info@Old-Domain.test": "helpdesk@example.test",
                       "@catchall.test": "postmaster@example.test",
                       "bob@example.test": "@example.net"}}
    assert rcpt(table, "info@old-domain.test") == ["helpdesk@example.test"]
    assert rcpt(table, "INFO@OLD-DOMAIN.TEST") == ["helpdesk@example.test"]
    assert rcpt(table, "other@old-domain.test") == ["other@example.test"]
    assert rcpt(table, "x@catchall.test") == ["postmaster@example.test"]
    assert rcpt(table, "bob@example.test") == ["bob@example.net"]


def test_regexes_apply_in_order_after_the_table():
    options = {
        "table": {"@old-domain.test": "@example.test"},
        "regex": [[r"(?P<user>[^+@]+)\+[^@]*@example\.test", r"\g<user>@example.test"],
                  [r"(.+)@example\.test", r"\1.archive@example.test"]],
    }
    assert rcpt(options, "ann+tag@OLD-domain.test") == ["ann.archive@example.test"]
    assert rcpt(options, "ann@elsewhere.test") == ["ann@elsewhere.test"]
    # full match only: a pattern matching a part does not rewrite
    assert rcpt({"regex": [["ann", "bob"]]}, "ann@example.test") == ["ann@example.test"]


def test_an_invalid_result_is_dropped_and_logged(caplog):
    options = {"regex": [["(.+)@example\\.test", "\\1@bad domain"]]}
    with caplog.at_level(logging.WARNING, logger="pillarbox.modify.rewrite"):
        assert rcpt(options, "ann@example.test") == ["ann@example.test"]
        assert sender(options, "ann@example.test") == "ann@example.test"
    assert len(caplog.records) == 2
    assert "id=MSGID1" in caplog.records[0].getMessage()
    assert "'ann@bad domain'" in caplog.records[0].getMessage()


def test_null_sender_is_never_rewritten():
    assert sender({"regex": [[".*", "x@example.test"]]}, "") == ""
    assert sender({"regex": [[".*", "x@example.test"]]}, "a@b.test") == "x@example.test"


def test_sender_modifier_leaves_recipients_and_the_reverse():
    s = KINDS["replace_sender"].make("rw", DOMAIN, None).state(ENVELOPE)
    r = KINDS["replace_rcpt"].make("rw", DOMAIN, None).state(ENVELOPE)
    assert asyncio.run(s.rcpt("a@old-domain.test")) == ["a@old-domain.test"]
    assert asyncio.run(r.sender("a@old-domain.test")) == "a@old-domain.test"


@pytest.mark.parametrize("options,key", [
    ({"regex": [["(unclosed", "x@example.test"]]}, "regex"),
    ({"regex": [["(a)@b", "\\2@b"]]}, "regex"),
    ({"regex": [["(a)@b", "\\g<nope>@b"]]}, "regex"),
    ({"regex": [["only-one"]]}, "regex"),
    ({"regex": "not a list"}, "regex"),
    ({"table": {"not an address": "@example.test"}}, "table"),
    ({"table": {"@old.test": "@bad domain"}}, "table"),
    ({"table": {"@old.test": 5}}, "table"),
    ({"table": ["x"]}, "table"),
])
def test_bad_options_are_one_line_config_errors(options, key):
    for kind in KINDS.values():
        with pytest.raises(ValueError) as e:
            kind.make("rw", options, None)
        assert str(e.value).startswith(f"{key}: ") and "\n" not in str(e.value)
