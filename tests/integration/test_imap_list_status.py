"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), STATUS=SIZE (RFC 8438)
and STATUS APPENDLIMIT (RFC 7889) against a real server, with the RFCs'
examples on pillarbox's hierarchy (delimiter ".", Maildir++)."""

from __future__ import annotations

import re

import pytest

from .imap_raw import RawIMAP
from .pg_server import BACKENDS, sharing_mail
from .support import ALICE, BOB, make_message, wait_until

pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)


@pytest.fixture
def make_server(make_server, storage, tmp_path):
    """On PostgreSQL with a shared_dir: the IMAP index in PostgreSQL."""
    return sharing_mail(make_server, storage, tmp_path)


def raw(server) -> RawIMAP:
    return RawIMAP(server.imaps_port, ALICE)


def listed(untagged: list[bytes]) -> dict[str, tuple[set[str], bytes]]:
    """{name: (attributes, extended data)} of LIST lines."""
    out = {}
    for line in untagged:
        m = re.fullmatch(rb'LIST \(([^)]*)\) "\." "([^"]*)"(.*)', line)
        if m:
            out[m.group(2).decode()] = (set(m.group(1).decode().split()), m.group(3))
    return out


def statuses(untagged: list[bytes]) -> dict[str, dict[str, bytes]]:
    out = {}
    for line in untagged:
        m = re.fullmatch(rb'STATUS "([^"]*)" \((.*)\)', line)
        if m:
            items = re.findall(rb"([A-Z]+) (\([^)]*\)|\S+)", m.group(2))
            out[m.group(1).decode()] = {k.decode(): v for k, v in items}
    return out


def setup_tree(c: RawIMAP) -> None:
    """RFC 5258 section 5's tree in our delimiter: Fruit.{Apple,Banana,Peach},
    Tofu, Vegetable.{Broccoli,Corn}, with some subscriptions (Fruit.Banana
    and Vegetable are subscribed; Peach is subscribed and then deleted)."""
    for name in ("Fruit", "Fruit.Apple", "Fruit.Banana", "Fruit.Peach", "Tofu",
                 "Vegetable", "Vegetable.Broccoli", "Vegetable.Corn"):
        c.ok(f"CREATE {name}")
    for name in ("Fruit.Banana", "Fruit.Peach", "Vegetable", "Vegetable.Broccoli"):
        c.ok(f"SUBSCRIBE {name}")
    c.ok("DELETE Fruit.Peach")


def test_capabilities(server):
    with raw(server) as c:
        caps = c.ok("CAPABILITY")[0][0].split()
        for cap in (b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE", b"SPECIAL-USE"):
            assert cap in caps


def test_rfc5258_examples(server):
    with raw(server) as c:
        setup_tree(c)
        # 5.1 / plain LIST is unchanged: no \Subscribed, the gap-free tree.
        got = listed(c.ok('LIST "" "Fruit*"')[0])
        assert set(got) == {"Fruit", "Fruit.Apple", "Fruit.Banana"}
        assert "\\Subscribed" not in got["Fruit.Banana"][0]
        # 5.2: LIST (SUBSCRIBED): subscribed names, a deleted one \NonExistent.
        got = listed(c.ok('LIST (SUBSCRIBED) "" "*"')[0])
        assert {"Fruit.Banana", "Fruit.Peach", "Vegetable", "Vegetable.Broccoli"} <= set(got)
        assert "Fruit" not in got and "Tofu" not in got
        assert got["Fruit.Banana"][0] >= {"\\Subscribed", "\\HasNoChildren"}
        assert got["Fruit.Peach"][0] >= {"\\Subscribed", "\\NonExistent"}
        assert got["Vegetable"][0] >= {"\\Subscribed", "\\HasChildren"}
        # 5.3: RETURN (CHILDREN) on a plain selection.
        got = listed(c.ok('LIST "" "%" RETURN (CHILDREN)')[0])
        assert "\\HasChildren" in got["Fruit"][0] and "\\HasNoChildren" in got["Tofu"][0]
        # 5.4: RETURN (SUBSCRIBED) marks, does not select.
        got = listed(c.ok('LIST "" "%" RETURN (SUBSCRIBED)')[0])
        assert "Tofu" in got and "\\Subscribed" not in got["Tofu"][0]
        assert "\\Subscribed" in got["Vegetable"][0]
        # 5.5: (SUBSCRIBED RECURSIVEMATCH) "%": Fruit is not subscribed but its
        # child is, and the child does not match "%": CHILDINFO says why.
        got = listed(c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)')[0])
        assert "Fruit" in got and "\\Subscribed" not in got["Fruit"][0]
        assert got["Fruit"][1] == b' ("CHILDINFO" ("SUBSCRIBED"))'
        assert "Tofu" not in got
        assert "\\Subscribed" in got["Vegetable"][0]
        assert got["Vegetable"][1] == b' ("CHILDINFO" ("SUBSCRIBED"))'  # Broccoli
        # With "*" the subscribed children match themselves: no stand-in parents.
        got = listed(c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"')[0])
        assert "Fruit" not in got and got["Vegetable"][1] == b""
        # 5.6: multiple patterns; a name matching two is listed once.
        untagged = c.ok('LIST "" ("Fruit.%" "Tofu" "Fruit.A*")')[0]
        got = listed(untagged)
        assert set(got) == {"Fruit.Apple", "Fruit.Banana", "Tofu"}
        assert len(untagged) == 3
        # REMOTE: no remote mailboxes here, the same list.
        assert set(listed(c.ok('LIST (REMOTE) "" "%"')[0])) == set(
            listed(c.ok('LIST "" "%"')[0]))


def test_special_use_selection(server):
    with raw(server) as c:
        c.ok("CREATE Plain")
        got = listed(c.ok('LIST (SPECIAL-USE) "" "*"')[0])
        assert set(got) == {"Sent", "Drafts", "Trash", "Junk", "Archive"}
        assert "\\Sent" in got["Sent"][0]
        got = listed(c.ok('LIST "" "*" RETURN (SPECIAL-USE)')[0])
        assert "Plain" in got and "\\Junk" in got["Junk"][0]


def test_list_status_rfc5819(server):
    with raw(server) as c:
        c.append("INBOX", make_message(BOB, ALICE, "one"))
        c.append("INBOX", make_message(BOB, ALICE, "two"), "\\Seen")
        c.ok("CREATE Lists.pillarbox")
        c.ok("DELETE Lists")  # it has a child: the name stays, as a level (\Noselect)
        untagged = c.ok('LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN SIZE))')[0]
        got, st = listed(untagged), statuses(untagged)
        assert st["INBOX"]["MESSAGES"] == b"2" and st["INBOX"]["UNSEEN"] == b"1"
        assert int(st["INBOX"]["SIZE"]) > 0
        assert st["Lists.pillarbox"] == {"MESSAGES": b"0", "UNSEEN": b"0", "SIZE": b"0"}
        # No STATUS for a name that is no mailbox (\Noselect), each right after its LIST.
        assert "\\Noselect" in got["Lists"][0] and "Lists" not in st
        i = untagged.index(next(x for x in untagged if x.startswith(b'LIST') and
                                x.endswith(b'"INBOX"')))
        assert untagged[i + 1].startswith(b'STATUS "INBOX"')
        # With selection options too, and the selected mailbox counts its view.
        c.ok("SELECT INBOX")
        untagged = c.ok('LIST (SUBSCRIBED) "" "INBOX" RETURN (STATUS (MESSAGES UIDNEXT))')[0]
        assert statuses(untagged)["INBOX"]["MESSAGES"] == b"2"


def test_status_size_and_appendlimit(server):
    msg = make_message(BOB, ALICE, "sized")
    with raw(server) as c:
        untagged = c.ok("STATUS INBOX (SIZE MESSAGES APPENDLIMIT)")[0]
        st = statuses(untagged)["INBOX"]
        assert st["SIZE"] == b"0" and st["MESSAGES"] == b"0"
        caps = c.ok("CAPABILITY")[0][0].decode()
        limit = re.search(r"APPENDLIMIT=(\d+)", caps).group(1)
        assert st["APPENDLIMIT"] == limit.encode()  # RFC 7889 4
        c.append("INBOX", msg)
        c.append("Sent", msg + b"more\r\n")
        assert statuses(c.ok("STATUS INBOX (SIZE)")[0])["INBOX"]["SIZE"] == b"%d" % len(msg)
        assert statuses(c.ok("STATUS Sent (SIZE)")[0])["Sent"]["SIZE"] == b"%d" % (len(msg) + 6)


BAD_COMMANDS = [
    'LIST (BOGUS) "" "*"', 'LIST (RECURSIVEMATCH) "" "*"', 'LIST "" "*" RETURN (BOGUS)',
    'LIST "" "*" RETURN (STATUS ())', 'LIST "" "*" RETURN (STATUS (MESSAGES) STATUS (UNSEEN))',
    'LIST "" ("a" ', 'LIST "" ()', 'LIST "" "*" RETURN', 'LIST "" "*" RETURN (STATUS (BOGUS))',
    "STATUS INBOX (SIZE BOGUS)", 'LIST (SUBSCRIBED "" "*"',
    "LIST (" + "SUBSCRIBED " * 5000 + ') "" *',
    'LIST "" ({})'.format(" ".join(f'"p{i}"' for i in range(101))),
]


def test_malformed_list_and_status(server):
    # Two sessions: imap.max_bad_commands (10) closes one after ten BADs.
    for part in (BAD_COMMANDS[:7], BAD_COMMANDS[7:]):
        with raw(server) as c:
            for bad in part:
                _, tagged = c.cmd(bad)
                assert tagged.startswith(b"BAD"), (bad, tagged)
            c.ok("NOOP")  # the session lives on


def test_status_size_counts_a_delivery_not_yet_taken_in(server):
    """MESSAGES counts the files waiting in new/; SIZE must count them too."""
    with raw(server) as c:
        c.ok("STATUS INBOX (SIZE)")  # the store is open, the delivery stays in new/
        with server.smtp() as s:
            s.sendmail(BOB, [ALICE], make_message(BOB, ALICE, "delivered"))
        new = server.maildir(ALICE) / "new"
        wait_until(lambda: any(new.iterdir()), 10, "the delivery in new/")
        size = next(new.iterdir()).stat().st_size
        st = statuses(c.ok("STATUS INBOX (MESSAGES SIZE)")[0])["INBOX"]
        assert st == {"MESSAGES": b"1", "SIZE": b"%d" % size}
