"""Fuzz target: address-list fields read for ENVELOPE and SEARCH.

Property: any text gives a list of address structures, never an exception;
group markers come in pairs, never nested; only a group marker has no host; a
group start and every address have a mailbox (a NIL mailbox and host would be
read as a group end); and the parse is linear enough for a 100 KB field.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from pillarbox.endpoint.imap.addrlist import GROUP_END, parse

_PIECES = st.sampled_from([
    "<", ">", "@", ",", ";", ":", '"', "\\", "(", ")", "[", "]", " ", "\t", "\r\n ", ".",
    "alice", "example.org", "Bob Example", "=?utf-8?q?Bj=C3=B6rn?=", "group:", "@route,",
    "\udcff", "\x00", "é",
])
_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=6)), max_size=20).map("".join)


@given(_TEXT)
@example("(" * 50_000)
@example("<@" * 20_000)
@example('"' + "\\" * 50_001)
@example("a:" * 30_000)
def test_any_text_gives_well_formed_address_structures(text: str) -> None:
    open_group = False
    for a in parse(text):
        if a == GROUP_END:
            assert open_group, text
            open_group = False
        elif a.host is None:
            assert not open_group and a.mailbox is not None, text
            open_group = True
        else:
            assert a.mailbox is not None and a.host, text
    assert not open_group, text
