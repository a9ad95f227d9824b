"""METADATA (RFC 5464) against a real server: the RFC's examples, server and
mailbox entries, /private and /shared, MAXSIZE and DEPTH, the limits
(imap.metadata_max_size, imap.metadata_max_entries), entries kept per user,
across RENAME and restarts, gone with DELETE; malformed commands get BAD."""

from __future__ import annotations

import pytest

from .imap_raw import RawIMAP
from .pg_server import BACKENDS, sharing_mail
from .support import ALICE, BOB

pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)


@pytest.fixture
def make_server(make_server, storage, tmp_path):
    """On PostgreSQL with a shared_dir: the IMAP index in PostgreSQL."""
    return sharing_mail(make_server, storage, tmp_path)


def raw(server, user: str = ALICE) -> RawIMAP:
    return RawIMAP(server.imaps_port, user)


def test_capability_and_rfc_examples(server):
    with raw(server) as c:
        assert b"METADATA" in c.ok("CAPABILITY")[0][0].split()
        # 4.3 examples: set a server and a mailbox comment, a multi-line value.
        c.ok('SETMETADATA "" (/private/comment "My own comment")')
        untagged, _ = c.ok('GETMETADATA "" /private/comment')
        assert untagged == [b'METADATA "" (/private/comment "My own comment")']
        value = b"My new comment across\r\ntwo lines."
        c.ok(b"SETMETADATA INBOX (/private/comment {%d+}\r\n" % len(value) + value + b")")
        untagged, _ = c.ok("GETMETADATA INBOX /private/comment")
        assert untagged == [b'METADATA "INBOX" (/private/comment {%d}\r\n' % len(value)
                            + value + b")"]
        # 4.2.2 example: several entries at once; an entry with no value is NIL.
        c.ok('SETMETADATA INBOX (/shared/comment "Its sunny outside!")')
        untagged, _ = c.ok("GETMETADATA INBOX (/shared/comment /private/none)")
        assert untagged == [b'METADATA "INBOX" (/shared/comment "Its sunny outside!" '
                            b"/private/none NIL)"]
        # Entry names are case-insensitive.
        assert c.ok("GETMETADATA inbox /SHARED/Comment")[0] == [
            b'METADATA "INBOX" (/shared/comment "Its sunny outside!")']
        # 4.3.2 removing an entry with NIL.
        c.ok("SETMETADATA INBOX (/private/comment NIL)")
        assert c.ok("GETMETADATA INBOX /private/comment")[0] == [
            b'METADATA "INBOX" (/private/comment NIL)']
        # Mailbox entries are not server entries.
        assert c.ok('GETMETADATA "" /shared/comment')[0] == [
            b'METADATA "" (/shared/comment NIL)']


def test_maxsize_and_depth(server):
    with raw(server) as c:
        c.ok('SETMETADATA INBOX (/private/filters/values/small "x" '
             '/private/filters/values/big "' + "y" * 2000 + '" '
             '/private/filters/values/deep/er "z" /private/filtersother "no")')
        # 4.2.1 MAXSIZE: a larger value is held back, LONGENTRIES says its size.
        untagged, tagged = c.ok("GETMETADATA (MAXSIZE 1024) INBOX /private/filters/values/big")
        assert untagged == [] and tagged.startswith(b"OK [METADATA LONGENTRIES 2000]")
        # 4.2.2 DEPTH 1: the entry and its children, not grandchildren.
        untagged, tagged = c.ok("GETMETADATA (DEPTH 1 MAXSIZE 100) INBOX /private/filters/values")
        assert untagged == [b'METADATA "INBOX" (/private/filters/values/small "x")']
        assert b"LONGENTRIES 2000" in tagged
        untagged, _ = c.ok("GETMETADATA (DEPTH infinity) INBOX /private/filters")
        line = untagged[0]
        assert b"/private/filters/values/deep/er" in line and b"/private/filtersother" not in line
        assert b"/private/filters/values/big" in line
        # DEPTH 0 (the default) for a name with children only: NIL.
        assert c.ok("GETMETADATA INBOX /private/filters")[0] == [
            b'METADATA "INBOX" (/private/filters NIL)']


def test_binary_value_and_literal8(server):
    value = b"\x00\x01token\xff"
    with raw(server) as c:
        c.ok(b'SETMETADATA "" (/private/vendor/x/push ~{%d+}\r\n' % len(value) + value + b")")
        untagged, _ = c.ok('GETMETADATA "" /private/vendor/x/push')
        assert untagged == [b'METADATA "" (/private/vendor/x/push ~{%d}\r\n' % len(value)
                            + value + b")"]


def test_per_user_rename_delete_and_restart(make_server):
    srv = make_server()
    with raw(srv) as c:
        c.ok("CREATE Project")
        c.ok('SETMETADATA Project (/private/comment "kept")')
        c.ok('SETMETADATA "" (/private/vendor/deltachat/token "abc")')
        c.ok("RENAME Project Work")
        assert c.ok("GETMETADATA Work /private/comment")[0] == [
            b'METADATA "Work" (/private/comment "kept")']
        _, tagged = c.cmd("GETMETADATA Project /private/comment")
        assert tagged.startswith(b"NO [NONEXISTENT]")
        _, tagged = c.cmd('SETMETADATA Nope (/private/comment "x")')
        assert tagged.startswith(b"NO [NONEXISTENT]")
    with raw(srv, BOB) as c:  # another user sees none of it
        assert c.ok('GETMETADATA "" /private/vendor/deltachat/token')[0] == [
            b'METADATA "" (/private/vendor/deltachat/token NIL)']
    srv.stop()
    srv.start()
    with raw(srv) as c:
        assert c.ok('GETMETADATA "" /private/vendor/deltachat/token')[0] == [
            b'METADATA "" (/private/vendor/deltachat/token "abc")']
        assert c.ok("GETMETADATA Work /private/comment")[0] == [
            b'METADATA "Work" (/private/comment "kept")']
        c.ok("DELETE Work")
        c.ok("CREATE Work")  # a new mailbox of the same name starts empty
        assert c.ok("GETMETADATA Work /private/comment")[0] == [
            b'METADATA "Work" (/private/comment NIL)']


def test_limits(make_server):
    srv = make_server(imap__metadata_max_size="100", imap__metadata_max_entries=3)
    with raw(srv) as c:
        _, tagged = c.cmd('SETMETADATA "" (/private/a "' + "x" * 101 + '")')
        assert tagged.startswith(b"NO [METADATA MAXSIZE 100]")
        c.ok('SETMETADATA "" (/private/a "' + "x" * 100 + '")')
        c.ok('SETMETADATA INBOX (/private/b "1" /shared/c "2")')
        # A fourth entry: refused, and nothing of that command is kept.
        _, tagged = c.cmd('SETMETADATA INBOX (/private/b "changed" /private/d "3")')
        assert tagged.startswith(b"NO [METADATA TOOMANY]")
        assert c.ok("GETMETADATA INBOX (/private/b /private/d)")[0] == [
            b'METADATA "INBOX" (/private/b "1" /private/d NIL)']
        # Replacing and removing stay possible at the limit.
        c.ok('SETMETADATA INBOX (/private/b "changed")')
        c.ok("SETMETADATA INBOX (/private/b NIL)")
        c.ok('SETMETADATA INBOX (/private/d "3")')


BAD_COMMANDS = [
    'GETMETADATA "" comment', 'GETMETADATA "" /other/comment', 'GETMETADATA "" /private/*',
    'GETMETADATA "" /private//x', 'GETMETADATA "" /private/x/', 'GETMETADATA "" "/private/a b"',
    'GETMETADATA (DEPTH 2) "" /private/x', 'GETMETADATA (BOGUS 1) "" /private/x',
    'GETMETADATA (MAXSIZE x) "" /private/x', 'GETMETADATA ""',
    'SETMETADATA "" /private/x "v"', 'SETMETADATA "" (/private/x)', 'SETMETADATA "" ()',
    'SETMETADATA "" (/private/%x "v")', 'SETMETADATA "" (/private/x "v"',
    'GETMETADATA "" /private/' + "x" * 1100,
    'GETMETADATA "" ({})'.format(" ".join(f"/private/e{i}" for i in range(101))),
]


def test_malformed_commands(server):
    for i in range(0, len(BAD_COMMANDS), 8):  # imap.max_bad_commands closes at 10
        with raw(server) as c:
            for bad in BAD_COMMANDS[i:i + 8]:
                _, tagged = c.cmd(bad)
                assert tagged.startswith(b"BAD"), (bad, tagged)
            c.ok("NOOP")
    with RawIMAP(server.imaps_port) as c:  # not before login
        assert c.cmd('GETMETADATA "" /private/comment')[1].startswith(b"BAD")
