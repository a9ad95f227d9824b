"""Address-list fields read into ENVELOPE address structures (RFC 5322 3.4 and
4.4, RFC 3501 7.4.2), including the examples of RFC 5322 appendix A.1."""

import pytest

from pillarbox.endpoint.imap.addrlist import GROUP_END, MISSING_HOST, Address, parse

A = Address


def group(name: str) -> Address:
    return A(None, None, name, None)


@pytest.mark.parametrize("text, want", [
    ("John Doe <jdoe@machine.example>", [A("John Doe", None, "jdoe", "machine.example")]),
    ('"Joe Q. Public" <john.q.public@example.com>',
     [A("Joe Q. Public", None, "john.q.public", "example.com")]),
    ("Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>",
     [A("Mary Smith", None, "mary", "x.test"), A(None, None, "jdoe", "example.org"),
      A("Who?", None, "one", "y.test")]),
    ('<boss@nil.test>, "Giant; \\"Big\\" Box" <sysservices@example.net>',
     [A(None, None, "boss", "nil.test"),
      A('Giant; "Big" Box', None, "sysservices", "example.net")]),
    ("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
     [group("A Group"), A("Ed Jones", None, "c", "a.test"), A(None, None, "joe", "where.test"),
      A("John", None, "jdoe", "one.test"), GROUP_END]),
    ("Undisclosed recipients:;", [group("Undisclosed recipients"), GROUP_END]),
    ("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
     [A("Pete", None, "pete", "silly.test")]),
    ("A Group(Some people):Chris Jones <c@(Chris's host.)public.example>,"
     " joe@example.org, John <jdoe@one.test> (my dear friend); (the end of the group)",
     [group("A Group"), A("Chris Jones", None, "c", "public.example"),
      A(None, None, "joe", "example.org"), A("John", None, "jdoe", "one.test"), GROUP_END]),
    ("<@route1,@route2:user@domain>", [A(None, "@route1,@route2", "user", "domain")]),
    ("<@a.test, ,@b.test:u@c.test>", [A(None, "@a.test,@b.test", "u", "c.test")]),
    ("jdoe@example.org (John Doe)", [A("John Doe", None, "jdoe", "example.org")]),
    ('"odd local"@x.test', [A(None, None, '"odd local"', "x.test")]),
    ("user@[192.0.2.1]", [A(None, None, "user", "[192.0.2.1]")]),
    ("alice", [A(None, None, "alice", MISSING_HOST)]),
    ("g: a@b.test, g2: c@d.test;", [group("g"), A(None, None, "a", "b.test"), GROUP_END,
                                    group("g2"), A(None, None, "c", "d.test"), GROUP_END]),
    ("g: a@b.test", [group("g"), A(None, None, "a", "b.test"), GROUP_END]),
    ("<>", []),
    ("", []),
    (" , ,, ;", []),
])
def test_address_lists(text: str, want: list[Address]) -> None:
    assert parse(text) == want


@pytest.mark.parametrize("text", [
    "<<<", ">>>", "(((", ")))", '"', "[", "@@@", ":::", ";;;", "<@", "<@a", "<@a,", "<@a:",
    "a@", "@b", "\\", "a (b", 'a "b', "x:y:z;", "<a@b", "a <b@c> d <e@f>",
])
def test_broken_lists_give_markers_in_pairs_and_never_raise(text: str) -> None:
    open_group = False
    for a in parse(text):
        if a == GROUP_END:
            assert open_group
            open_group = False
        elif a.host is None:
            assert not open_group and a.mailbox is not None
            open_group = True
        else:
            assert a.mailbox is not None
    assert not open_group


def test_a_huge_address_field_is_read_up_to_the_bound_only():
    from pillarbox.endpoint.imap import mime

    field = b", ".join(b"User %d <u%d@example.test>" % (i, i) for i in range(60_000))
    assert len(field) > 20 * mime.MAX_ADDRESS_FIELD
    got = mime.addresses([field])  # not 60,000: the whole field would take a second
    assert 1000 < len(got) < 3000
    assert got[-1].mailbox == f"u{len(got) - 1}" and got[-1].host == "example.test"
