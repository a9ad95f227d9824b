"""RFC 3501 details the compliance run of issue 13 found wrong: ENVELOPE address
structures (groups, an empty Sender/Reply-To, source routes), SEARCH on
addresses written with comments, LSUB of a child whose parent is not
subscribed, ATOM-CHARs such as `~` in mailbox names, and cleartext LOGIN from
networks listed in imap.cleartext_login_networks. Raw commands over a real
socket (imap_raw.RawIMAP), since the exact bytes are what clients parse."""

from __future__ import annotations

from .imap_raw import RawIMAP
from .support import ALICE, PASSWORD, client_ssl_context

GROUPS = (
    b"From: Bob Sender <bob@example.test>\r\n"
    b"Sender:\r\n"
    b"Reply-To: \r\n"
    b"To: group: a@b.example, c@d.example;, group2: e@f.example;\r\n"
    b"Cc: Undisclosed recipients:;\r\n"
    b"Bcc: Routed <@route1,@route2:user@domain.example>\r\n"
    b"Subject: groups\r\n"
    b"Date: Wed, 10 Jan 2024 12:00:00 +0000\r\n"
    b"Message-ID: <groups@example.test>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)

COMMENTS = (
    b"From: Carol Commenter <carol (the boss)@ (our) domain.org>\r\n"
    b"To: (leading) dave (d) . (dot) smith @ (host) example . (tld) org (Dave Smith)\r\n"
    b"Cc: Group (g): <erin (x)@ (y) example.net>;\r\n"
    b"Subject: comments\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def _envelope(c: RawIMAP, seq: int) -> bytes:
    untagged, _ = c.ok(f"FETCH {seq} (ENVELOPE)")
    line = next(u for u in untagged if b"ENVELOPE" in u)
    return line.split(b"ENVELOPE ", 1)[1][:-1]


def test_envelope_groups_empty_sender_reply_to_and_source_route(server):
    with RawIMAP(server.imaps_port, ALICE) as c:
        c.append("INBOX", GROUPS)
        c.ok("SELECT INBOX")
        env = _envelope(c, 1)
    frm = b'(("Bob Sender" NIL "bob" "example.test"))'
    assert env == (
        b'("Wed, 10 Jan 2024 12:00:00 +0000" "groups" '
        + frm + b" " + frm + b" " + frm + b" "  # From, and Sender and Reply-To from it
        + b'((NIL NIL "group" NIL)(NIL NIL "a" "b.example")(NIL NIL "c" "d.example")'
          b'(NIL NIL NIL NIL)'
          b'(NIL NIL "group2" NIL)(NIL NIL "e" "f.example")(NIL NIL NIL NIL)) '
        + b'((NIL NIL "Undisclosed recipients" NIL)(NIL NIL NIL NIL)) '
        + b'(("Routed" "@route1,@route2" "user" "domain.example")) '
        + b'NIL "<groups@example.test>")'
    ), env


def test_envelope_of_addresses_with_comments(server):
    with RawIMAP(server.imaps_port, ALICE) as c:
        c.append("INBOX", COMMENTS)
        c.ok("SELECT INBOX")
        env = _envelope(c, 1)
    assert b'(("Carol Commenter" NIL "carol" "domain.org"))' in env, env
    assert b'(("Dave Smith" NIL "dave.smith" "example.org"))' in env, env
    assert b'((NIL NIL "Group" NIL)(NIL NIL "erin" "example.net")(NIL NIL NIL NIL))' in env


def _search(c: RawIMAP, *keys: str) -> list[int]:
    untagged, _ = c.ok("SEARCH " + " ".join(keys))
    line = next(u for u in untagged if u.startswith(b"SEARCH"))
    return [int(x) for x in line.split()[1:]]


def test_search_finds_addresses_written_with_comments(server):
    with RawIMAP(server.imaps_port, ALICE) as c:
        c.append("INBOX", COMMENTS)
        c.append("INBOX", GROUPS)
        c.ok("SELECT INBOX")
        assert _search(c, "FROM", "carol@domain.org") == [1]
        assert _search(c, "FROM", '"Carol Commenter"') == [1]
        assert _search(c, "FROM", "the") == [], "a comment is not what the user searches"
        assert _search(c, "TO", "dave.smith@example.org") == [1]
        assert _search(c, "TO", '"Dave Smith"') == [1]
        assert _search(c, "CC", "erin@example.net") == [1]
        assert _search(c, "TO", "c@d.example") == [2]
        assert _search(c, "BCC", "user@domain.example") == [2]
        assert _search(c, "FROM", "bob@example.test") == [2]
        assert _search(c, "FROM", "nobody@domain.org") == []


def _names(lines: list[bytes]) -> dict[bytes, bytes]:
    """{mailbox name: attributes} of LIST/LSUB lines."""
    out = {}
    for line in lines:
        attrs, _, rest = line.partition(b") ")
        out[rest.split(b" ", 1)[1].strip(b'"')] = attrs.split(b"(", 1)[1]
    return out


def test_lsub_lists_an_unsubscribed_parent_as_noselect(server):
    with RawIMAP(server.imaps_port, ALICE) as c:
        c.ok("CREATE Work")
        c.ok("CREATE Work.Projects")
        c.ok("CREATE Lone")
        c.ok("SUBSCRIBE Work.Projects")
        c.ok("UNSUBSCRIBE Work")
        untagged, _ = c.ok('LSUB "" %')
        got = _names(untagged)
        assert b"Lone" not in got and b"Work.Projects" not in got, got
        assert b"\\Noselect" in got[b"Work"], got
        untagged, _ = c.ok('LSUB "" *')
        got = _names(untagged)
        assert b"Work.Projects" in got and b"\\Noselect" not in got[b"Work.Projects"], got
        assert b"Work" not in got, "with * the child itself matches; no stand-in parent"
        untagged, _ = c.ok('LSUB "Work." %')
        assert b"Work.Projects" in _names(untagged)
        c.ok("SUBSCRIBE Work")
        untagged, _ = c.ok('LSUB "" %')
        assert b"\\Noselect" not in _names(untagged)[b"Work"]


def test_atom_chars_are_astrings(server):
    """Every ATOM-CHAR may start an atom: `~foo` is a mailbox name, not a broken literal."""
    with RawIMAP(server.imaps_port, ALICE) as c:
        _, tagged = c.cmd("SELECT ~foo")
        assert tagged.startswith(b"NO"), tagged
        _, tagged = c.cmd('LIST "" ~foo')
        assert tagged.startswith(b"OK"), tagged
        c.ok("CREATE ~foo")
        untagged, _ = c.ok('LIST "" ~f*')
        assert list(_names(untagged)) == [b"~foo"], untagged
        c.ok("SELECT ~foo")
        for name in ("a!b", "a#b", "a$b", "a&-b", "a'b", "a+b", "a-b", "a/b", "a:b", "a;b",
                     "a<b", "a=b", "a>b", "a?b", "a@b", "a[b", "a^b", "a_b", "a`b", "a|b",
                     "a}b", "~"):
            _, tagged = c.cmd(f"STATUS {name} (MESSAGES)")
            assert tagged.startswith(b"NO"), (name, tagged)


def test_cleartext_login_from_a_listed_network(make_server):
    srv = make_server(imap__cleartext_login_networks=["10.0.0.0/8", "127.0.0.1"])
    c = srv.imap(starttls=False)
    assert "LOGINDISABLED" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
    assert "STARTTLS" in c.capabilities
    assert c.login(ALICE, PASSWORD)[0] == "OK"
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    c = srv.imap(starttls=False)
    typ, _ = c.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{PASSWORD}".encode())
    assert typ == "OK"
    c.logout()


def test_cleartext_login_refused_from_other_networks(make_server):
    srv = make_server(imap__cleartext_login_networks=["10.0.0.0/8", "::1/128"])
    c = srv.imap(starttls=False)
    assert "LOGINDISABLED" in c.capabilities
    typ, data = c._simple_command("LOGIN", ALICE, PASSWORD)
    assert typ == "NO" and b"PRIVACYREQUIRED" in data[0]
    c.starttls(ssl_context=client_ssl_context())
    assert c.login(ALICE, PASSWORD)[0] == "OK"
    c.logout()


def test_create_makes_the_superior_names_it_needs(server):
    """RFC 3501 6.3.3 / RFC 9051 6.3.4: CREATE of `a.b.c` when `a` and `a.b` do not
    exist also creates them, so the client can select, list and delete them as
    any other mailbox."""
    with RawIMAP(server.imaps_port, ALICE) as c:
        c.ok("CREATE Clients.Acme.2026")
        untagged, _ = c.ok('LIST "" "Clients*"')
        got = _names(untagged)
        assert set(got) == {b"Clients", b"Clients.Acme", b"Clients.Acme.2026"}, got
        assert not any(b"\\Noselect" in a or b"\\NonExistent" in a for a in got.values()), got
        c.ok("SELECT Clients.Acme")
        c.ok("CREATE Clients.Beta")  # a parent that exists is left as it is
        c.ok("UNSELECT")
        untagged, _ = c.ok('LIST "" "Clients*"')
        assert len(_names(untagged)) == 4
        _, tagged = c.cmd("CREATE Clients.Acme")  # made above: it exists now
        assert tagged.startswith(b"NO [ALREADYEXISTS]"), tagged
        c.ok("RENAME Clients.Beta Archive2.Old.Beta")  # RENAME makes them too (6.3.5)
        untagged, _ = c.ok('LIST "" "Archive2*"')
        got = _names(untagged)
        assert set(got) == {b"Archive2", b"Archive2.Old", b"Archive2.Old.Beta"}, got
        assert not any(b"\\Noselect" in a for a in got.values()), got
