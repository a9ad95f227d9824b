"""IMAP4rev2 (RFC 9051) against a real server: advertised beside IMAP4rev1,
switched on per session with ENABLE IMAP4rev2, and the rules that change then
(UTF-8 mailbox names, no \\Recent, ESEARCH for SEARCH, LIST in SELECT, STATUS
DELETED); an IMAP4rev1 session on the same mailbox keeps the old rules."""

from __future__ import annotations

import re

from .imap_raw import RawIMAP
from .support import ALICE, BOB, PASSWORD, make_message


def raw(server) -> RawIMAP:
    return RawIMAP(server.imaps_port, ALICE)


def rev2(server) -> RawIMAP:
    c = raw(server)
    assert c.ok("ENABLE IMAP4rev2")[0] == [b"ENABLED IMAP4rev2"]
    return c


def test_advertised_and_enabled(server):
    with raw(server) as c:
        caps = c.greeting.split(b"]")[0].split()
        assert b"IMAP4rev1" in caps and b"IMAP4rev2" in caps
        caps = c.ok("CAPABILITY")[0][0].split()
        # RFC 9051 folds these in: a server that says IMAP4rev2 has them all.
        for cap in (b"IMAP4rev2", b"NAMESPACE", b"UNSELECT", b"UIDPLUS", b"ESEARCH",
                    b"SEARCHRES", b"ENABLE", b"IDLE", b"SASL-IR", b"LIST-EXTENDED",
                    b"LIST-STATUS", b"MOVE", b"LITERAL+", b"BINARY", b"SPECIAL-USE",
                    b"STATUS=SIZE", b"CHILDREN"):
            assert cap in caps, cap
        assert c.ok("ENABLE IMAP4rev2")[0] == [b"ENABLED IMAP4rev2"]
        assert c.ok("ENABLE IMAP4rev2")[0] == [b"ENABLED"]  # once is enough
        # UNAUTHENTICATE ends it with the login: SELECT shows RECENT again.
        c.ok("UNAUTHENTICATE")
        c.ok(f'LOGIN "{ALICE}" "{PASSWORD}"')
        assert any(line.endswith(b" RECENT") for line in c.ok("SELECT INBOX")[0])


def test_select_no_recent_no_unseen_and_a_list_response(server):
    with raw(server) as c:
        c.append("INBOX", make_message(BOB, ALICE, "one"))
        c.append("INBOX", make_message(BOB, ALICE, "two"), r"\Seen")
    with rev2(server) as c:
        untagged, tagged = c.ok("SELECT INBOX")
        assert b"2 EXISTS" in untagged
        assert not any(b"RECENT" in line or b"UNSEEN" in line for line in untagged), untagged
        assert rb'LIST (\HasNoChildren) "." "INBOX"' in untagged
        assert any(line.startswith(b"OK [UIDVALIDITY ") for line in untagged)
        assert any(line.startswith(b"OK [UIDNEXT 3]") for line in untagged)
        assert tagged.startswith(b"OK [READ-WRITE]")
        # FETCH FLAGS: the messages are recent for this session, but rev2 has no \Recent.
        lines = c.ok("FETCH 1:* FLAGS")[0]
        assert lines == [b"1 FETCH (FLAGS ())", rb"2 FETCH (FLAGS (\Seen))"]
        # A new message: EXISTS, no RECENT; a second SELECT closes the first one.
        with raw(server) as other:
            other.append("INBOX", make_message(BOB, ALICE, "three"))
        untagged, _ = c.ok("NOOP")
        assert untagged == [b"3 EXISTS"]
        untagged, _ = c.ok("EXAMINE INBOX")
        assert untagged[0] == b"OK [CLOSED] Previous mailbox closed"
        assert not any(b"RECENT" in line for line in untagged)
    with raw(server) as c:  # an IMAP4rev1 session still gets RECENT and UNSEEN
        c.append("INBOX", make_message(BOB, ALICE, "four"))
        untagged, _ = c.ok("EXAMINE INBOX")  # the rev2 SELECT took the first three
        assert b"1 RECENT" in untagged and b"OK [UNSEEN 1] First unseen message" in untagged
        assert not any(line.startswith(b"LIST") for line in untagged)
        assert rb"\Recent" in c.ok("FETCH 4 FLAGS")[0][0]


def test_search_answers_esearch(server):
    with raw(server) as c:
        for i in range(4):
            c.append("INBOX", make_message(BOB, ALICE, f"m{i}"), r"\Seen" if i % 2 else "")
    with rev2(server) as c:
        c.ok("SELECT INBOX")
        untagged, _ = c.ok("SEARCH UNSEEN")
        assert untagged == [b'ESEARCH (TAG "t4") ALL 1,3']
        untagged, _ = c.ok("UID SEARCH SEEN")
        assert untagged == [b'ESEARCH (TAG "t5") UID ALL 2,4']
        untagged, _ = c.ok("SEARCH SUBJECT nothing-matches")  # no ALL when nothing matched
        assert untagged == [b'ESEARCH (TAG "t6")']
        untagged, _ = c.ok("SEARCH RETURN (COUNT) ALL")
        assert untagged == [b'ESEARCH (TAG "t7") COUNT 4']
        untagged, _ = c.ok("SEARCH RETURN (SAVE) UNSEEN")  # SAVE alone: no ESEARCH
        assert untagged == []
        assert len(c.ok("FETCH $ FLAGS")[0]) == 2
        # \Recent is gone from IMAP4rev2's grammar: its search keys are BAD.
        for key in ("RECENT", "NEW", "OLD", "NOT (SEEN OR NEW DRAFT)"):
            _, tagged = c.cmd(f"SEARCH {key}")
            assert tagged.startswith(b"BAD") and b"IMAP4rev2" in tagged, (key, tagged)
        # SORT and THREAD keep their own responses.
        assert c.ok("SORT (ARRIVAL) UTF-8 ALL")[0] == [b"SORT 1 2 3 4"]
    with raw(server) as c:  # an IMAP4rev1 session keeps SEARCH
        c.ok("SELECT INBOX")
        assert c.ok("SEARCH UNSEEN")[0] == [b"SEARCH 1 3"]
        assert c.ok("SEARCH NEW")[1].startswith(b"OK")


def test_status_deleted_size_and_no_recent(server):
    with raw(server) as c:
        c.append("INBOX", make_message(BOB, ALICE, "a"), r"\Deleted")
        c.append("INBOX", make_message(BOB, ALICE, "b"), r"\Deleted \Seen")
        c.append("INBOX", make_message(BOB, ALICE, "c"))
        untagged, _ = c.ok("STATUS INBOX (MESSAGES DELETED RECENT)")
        assert untagged == [b'STATUS "INBOX" (MESSAGES 3 DELETED 2 RECENT 3)']
    with rev2(server) as c:
        untagged, _ = c.ok("STATUS INBOX (MESSAGES DELETED SIZE UNSEEN)")
        m = re.fullmatch(rb'STATUS "INBOX" \(MESSAGES 3 DELETED 2 SIZE (\d+) UNSEEN 2\)',
                         untagged[0])
        assert m and int(m.group(1)) > 100, untagged
        _, tagged = c.cmd("STATUS INBOX (MESSAGES RECENT)")
        assert tagged.startswith(b"BAD"), tagged
        _, tagged = c.cmd('LIST "" "*" RETURN (STATUS (RECENT))')
        assert tagged.startswith(b"BAD"), tagged
        untagged, _ = c.ok('LIST "" "INBOX" RETURN (STATUS (DELETED))')
        assert untagged[-1] == b'STATUS "INBOX" (DELETED 2)'
        # Expunging in rev2 without QRESYNC: EXPUNGE responses as before.
        c.ok("SELECT INBOX")
        untagged, _ = c.ok("EXPUNGE")
        assert untagged == [b"2 EXPUNGE", b"1 EXPUNGE"]
        assert c.ok("STATUS INBOX (DELETED)")[0] == [b'STATUS "INBOX" (DELETED 0)']


def test_utf8_mailbox_names(server):
    with rev2(server) as c:
        _, tagged = c.ok('CREATE "Entwürfe"')
        assert b"MAILBOXID" in tagged
        c.ok('CREATE "a&b"')
        c.ok('CREATE "äö"')
        c.ok('CREATE "äö.日本語"')
        c.ok('SUBSCRIBE "äö.日本語"')
        c.append('"Entwürfe"', make_message(BOB, ALICE, "draft"))
        untagged, _ = c.ok('LIST "" "*"')
        names = [re.fullmatch(rb'LIST \([^)]*\) "\." "(.*)"', line).group(1).decode()
                 for line in untagged]
        special = {"Archive", "Drafts", "Junk", "Sent", "Trash"}  # made at the first login
        assert [n for n in names if n not in special] == ["INBOX", "Entwürfe", "a&b", "äö",
                                                           "äö.日本語"]
        # Patterns match the UTF-8 names: "ä*" must match "äö" (as modified
        # UTF-7 "&AOQ-*" would not match "&AOQA9g-").
        untagged, _ = c.ok('LIST "" "ä%"')
        assert untagged == ['LIST (\\HasChildren) "." "äö"'.encode()]
        untagged, _ = c.ok('LIST "" "%" RETURN (STATUS (MESSAGES))')
        assert 'STATUS "Entwürfe" (MESSAGES 1)'.encode() in untagged
        assert c.ok('LSUB "" "ä*"')[0] == ['LSUB (\\HasNoChildren) "." "äö.日本語"'.encode()]
        untagged, _ = c.ok('SELECT "Entwürfe"')
        assert 'LIST (\\HasNoChildren) "." "Entwürfe"'.encode() in untagged
        assert b"1 EXISTS" in untagged
        assert c.ok('STATUS "Entwürfe" (MESSAGES)')[0] == ['STATUS "Entwürfe" (MESSAGES 1)'
                                                             .encode()]
        c.ok('COPY 1 "äö"')
        c.ok('RENAME "äö" "Ölfässer"')
        assert c.ok('GETQUOTAROOT "Ölfässer"')[0][0].startswith(
            'QUOTAROOT "Ölfässer"'.encode())
        # A name in modified UTF-7 form is taken as the UTF-8 text it is.
        c.ok('CREATE "&AOQ-"')
    with raw(server) as c:  # IMAP4rev1 sees the same mailboxes in modified UTF-7
        untagged, _ = c.ok('LIST "" "*"')
        names = {re.fullmatch(rb'LIST \([^)]*\) "\." "(.*)"', line).group(1).decode()
                 for line in untagged}
        assert names - {"Archive", "Drafts", "Junk", "Sent", "Trash"} == {
            "INBOX", "a&-b", "Entw&APw-rfe", "&ANY-lf&AOQ-sser", "&ANY-lf&AOQ-sser.&ZeVnLIqe-",
            "&-AOQ-"}
        assert c.ok("STATUS &ANY-lf&AOQ-sser (MESSAGES)")[0] == [
            b'STATUS "&ANY-lf&AOQ-sser" (MESSAGES 1)']
        c.ok("CREATE Gel&APY-scht")
    with rev2(server) as c:
        assert c.ok('STATUS "Gelöscht" (MESSAGES)')[0] == [
            'STATUS "Gelöscht" (MESSAGES 0)'.encode()]
        assert c.ok('DELETE "Gelöscht"')[1].startswith(b"OK")


def test_delete_a_level_with_children(server):
    """RFC 9051 7.1: HASCHILDREN for a \\Noselect name that has mailboxes below it."""
    with rev2(server) as c:
        c.ok('CREATE "Bücher.Krimis"')  # makes "Bücher" too (RFC 9051 6.3.4)
        c.ok('DELETE "Bücher"')  # a mailbox with children: it goes, the level stays
        assert c.ok('LIST "" "Bücher"')[0] == [
            'LIST (\\Noselect \\HasChildren) "." "Bücher"'.encode()]
        _, tagged = c.cmd('DELETE "Bücher"')
        assert tagged.startswith(b"NO [HASCHILDREN]"), tagged
        c.ok('DELETE "Bücher.Krimis"')
        _, tagged = c.cmd('DELETE "Bücher"')  # nothing left: no such mailbox
        assert tagged.startswith(b"NO [NONEXISTENT]"), tagged
        # A mailbox with children is deleted and stays a level (RFC 3501 6.3.4).
        c.ok('CREATE "A.B"')
        c.ok('DELETE "A"')
        assert c.ok('LIST "" "A"')[0] == [rb'LIST (\Noselect \HasChildren) "." "A"']


def test_catenate_url_names_in_utf8(server):
    """RFC 5092 URLs carry mailbox names in UTF-8 (%-encoded), in either mode."""
    with rev2(server) as c:
        c.ok('CREATE "Entwürfe"')
        c.append('"Entwürfe"', make_message(BOB, ALICE, "draft"))
        v = re.search(rb"UIDVALIDITY (\d+)", c.ok('STATUS "Entwürfe" (UIDVALIDITY)')[0][0])
        url = f"/Entw%C3%BCrfe;UIDVALIDITY={v.group(1).decode()}/;UID=1"
        _, tagged = c.ok(f'APPEND INBOX CATENATE (URL "{url}")')
        assert tagged.startswith(b"OK [APPENDUID")
    with raw(server) as c:
        _, tagged = c.ok(f'APPEND INBOX CATENATE (URL "{url}")')
        assert c.ok("STATUS INBOX (MESSAGES)")[0] == [b'STATUS "INBOX" (MESSAGES 2)']


def test_hostile_names_and_arguments(server):
    with rev2(server) as c:
        for bad in (b'CREATE "\xff\xfe"', b'SELECT "\xed\xa0\x80"',  # not UTF-8, a surrogate
                    b"ENABLE", b"ENABLE (IMAP4rev2)", b"STATUS INBOX (BOGUS)",
                    b'LIST "" "\xc3"'):
            _, tagged = c.cmd(bad)
            assert tagged.startswith(b"BAD"), (bad, tagged)
        # A control character or a slash hidden in UTF-8 is still refused by name.
        for name in ('"a\x01ä"', '"ä/b"', '"ä*"'):
            _, tagged = c.cmd(f"CREATE {name}")
            assert tagged.startswith(b"NO"), (name, tagged)
        _, tagged = c.cmd(b"CREATE {5+}\r\n" + "ä\x7fö".encode())
        assert tagged.startswith(b"NO"), tagged
        # 200 non-ASCII characters are over 255 in modified UTF-7: refused, no crash.
        _, tagged = c.cmd(f'CREATE "{"ä" * 200}"')
        assert tagged.startswith(b"NO"), tagged
        assert c.ok("NOOP")[1].startswith(b"OK")


def test_enable_needs_login(server):
    c = RawIMAP(server.imaps_port)
    try:
        _, tagged = c.cmd("ENABLE IMAP4rev2")
        assert tagged.startswith(b"BAD") and b"Log in first" in tagged
    finally:
        c.close()


def test_rename_inbox_moves_its_messages(server):
    """RFC 3501 6.3.5 / RFC 9051 6.3.6: RENAME INBOX moves all of INBOX's messages
    to a new mailbox and leaves INBOX empty (its own children stay)."""
    with raw(server) as c:
        for i in range(3):
            c.append("INBOX", make_message(BOB, ALICE, f"m{i}"), r"\Flagged" if i else "")
        c.ok("CREATE INBOX.kept")
        c.ok("SELECT INBOX")
        ids = c.ok("FETCH 1:* (EMAILID FLAGS)")[0]
        with rev2(server) as other:  # a second session, IMAP4rev2, does the RENAME
            other.ok('RENAME INBOX "Alte Post ä"')
            untagged, _ = other.ok('STATUS "Alte Post ä" (MESSAGES)')
            assert untagged == ['STATUS "Alte Post ä" (MESSAGES 3)'.encode()]
            assert other.ok("STATUS INBOX (MESSAGES)")[0] == [b'STATUS "INBOX" (MESSAGES 0)']
            _, tagged = other.cmd('RENAME INBOX "Alte Post ä"')  # the name is taken now
            assert tagged.startswith(b"NO [ALREADYEXISTS]"), tagged
        untagged, _ = c.ok("NOOP")  # the session with INBOX selected sees them go
        assert untagged == [b"3 EXPUNGE", b"2 EXPUNGE", b"1 EXPUNGE"]
        c.ok('SELECT "Alte Post &AOQ-"')
        assert c.ok("FETCH 1:* (EMAILID FLAGS)")[0] == ids  # the same messages, flags kept
        untagged, _ = c.ok('LIST "" "INBOX*"')
        assert rb'LIST (\HasChildren) "." "INBOX"' in untagged
        assert rb'LIST (\HasNoChildren) "." "INBOX.kept"' in untagged
        c.append("INBOX", make_message(BOB, ALICE, "new"))  # INBOX still takes mail
        assert c.ok("STATUS INBOX (MESSAGES)")[0] == [b'STATUS "INBOX" (MESSAGES 1)']
