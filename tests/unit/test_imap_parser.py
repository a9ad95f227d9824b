"""The IMAP command grammar: what parses, to what, and what gets a clear BAD."""

import datetime

import pytest

from pillarbox.endpoint.imap.parser import (
    STAR,
    Command,
    ParseError,
    SeqSet,
    parse_command,
    parse_tag,
    seqset_from,
)


def cmd(line: bytes | str, *literals: bytes) -> Command:
    if isinstance(line, str):
        line = line.encode()
    parts = line.split(b"\r\n")
    return parse_command(parts, list(literals))


def bad(line: str, *literals: bytes) -> str:
    with pytest.raises(ParseError) as e:
        cmd(line, *literals)
    return str(e.value)


def test_simple_commands():
    c = cmd("a1 NOOP")
    assert (c.tag, c.name, c.args) == ("a1", "NOOP", {})
    assert cmd("x capability").name == "CAPABILITY"
    assert "extra" in bad("a NOOP now")
    assert "tag" in bad("")
    assert "tag" in bad(" NOOP")
    assert "space" in bad("a  NOOP")
    assert "unknown command" in bad("a FROBNICATE")


def test_login_atoms_quoted_literals():
    c = cmd('a LOGIN alice@example.test "pa ss\\"w\\\\d"')
    assert c.args == {"user": "alice@example.test", "password": 'pa ss"w\\d'}
    c = cmd("a LOGIN {5}\r\n {3+}\r\n", b"alice", b"p w")
    assert c.args == {"user": "alice", "password": "p w"}
    assert "quoted" in bad('a LOGIN "alice secret')
    assert "escaped" in bad('a LOGIN "al\\ice" x')
    assert "missing" in bad("a LOGIN alice")


def test_literal_length_must_match():
    assert "mismatch" in bad("a LOGIN {5}\r\n x", b"abc")


def test_tag_recovery():
    assert parse_tag(b"A001 FOO") == "A001"
    assert parse_tag(b"+ x") is None
    assert parse_tag(b"") is None
    with pytest.raises(ParseError) as e:
        cmd("t9 LOGIN")
    assert e.value.tag == "t9"


def test_sequence_sets():
    c = cmd("a FETCH 1:3,5,7:*,* FLAGS")
    s = c.args["set"]
    assert s.ranges == ((1, 3), (5, 5), (7, STAR), (STAR, STAR))
    assert s.select([1, 2, 3, 4, 5, 6, 7, 8]) == [1, 2, 3, 5, 7, 8]
    assert SeqSet(((5, STAR),)).select([1, 2, 3]) == [3]  # n:* includes the largest
    assert SeqSet(((4, 2),)).resolve(10) == [(2, 4)]
    assert str(s) == "1:3,5,7:*,*"
    assert seqset_from([5, 1, 2, 3, 9]) == "1:3,5,9"
    assert "non-zero" in bad("a FETCH 0 FLAGS") or "sequence" in bad("a FETCH 0 FLAGS")
    assert "sequence" in bad("a FETCH x FLAGS")
    assert "FETCH item" in bad("a FETCH 1:2, FLAGS") or "sequence" in bad("a FETCH 1:2, FLAGS")


def test_uid_commands():
    c = cmd("a UID FETCH 10:* (UID FLAGS)")
    assert c.name == "UID FETCH" and c.uid
    assert [a.name for a in c.args["atts"]] == ["UID", "FLAGS"]
    c = cmd("a uid expunge 3:5")
    assert c.name == "UID EXPUNGE" and str(c.args["set"]) == "3:5"
    assert "not a UID command" in bad("a UID LOGIN x y")
    assert "extra" in bad("a EXPUNGE 1")


def test_fetch_items_and_sections():
    c = cmd("a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100> BODY[1.2.MIME] "
            "BODY[] RFC822.SIZE BODY[TEXT] BODY[2] BODYSTRUCTURE)")
    atts = c.args["atts"]
    assert atts[0].peek and atts[0].section.fields == ["FROM", "SUBJECT"]
    assert atts[0].partial == (0, 100)
    assert atts[0].response_name() == "BODY[HEADER.FIELDS (FROM SUBJECT)]<0>"
    assert atts[1].section.part == (1, 2) and atts[1].section.text == "MIME"
    assert atts[2].response_name() == "BODY[]"
    assert atts[4].section.text == "TEXT"
    assert atts[5].section.part == (2,)
    assert [a.name for a in cmd("a FETCH 1:* ALL").args["atts"]] == [
        "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert cmd("a FETCH 1 body[]").args["atts"][0].section is not None
    assert "unknown FETCH item" in bad("a FETCH 1 (FLAGS BOGUS)")
    assert "section" in bad("a FETCH 1 BODY[FOO]")
    assert "MIME" in bad("a FETCH 1 BODY[MIME]") or "section" in bad("a FETCH 1 BODY[MIME]")
    assert bad("a FETCH 1 (FLAGS")
    assert bad("a FETCH 1 BODY[]<5>")


def test_store():
    c = cmd("a STORE 1:2 +FLAGS.SILENT (\\Seen \\deleted $Junk)")
    assert c.args["mode"] == "add" and c.args["silent"]
    assert c.args["flags"] == ["\\Seen", "\\Deleted", "$Junk"]
    c = cmd("a UID STORE 4 -FLAGS \\Flagged")
    assert c.args["mode"] == "remove" and c.args["flags"] == ["\\Flagged"]
    assert "cannot be stored" in bad("a STORE 1 FLAGS (\\Recent)")
    assert "unknown system flag" in bad("a STORE 1 FLAGS (\\Bogus)")
    assert "FLAGS" in bad("a STORE 1 LABELS (x)")


def test_append_with_flags_date_and_literal():
    msg = b"Subject: hi\r\n\r\nbody\r\n"
    c = cmd(f'a APPEND Sent (\\Seen) "05-Mar-2024 10:11:12 +0100" {{{len(msg)}}}\r\n', msg)
    assert c.args["mailbox"] == "Sent" and c.args["flags"] == ["\\Seen"]
    assert c.args["date"] == datetime.datetime(
        2024, 3, 5, 10, 11, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert c.args["message"] == msg
    c = cmd("a APPEND inbox {3+}\r\n", b"abc")
    assert c.args["mailbox"] == "INBOX" and c.args["flags"] == []
    assert "date-time" in bad('a APPEND x "yesterday" {1}\r\n', b"x")
    assert "literal" in bad("a APPEND x hello")
    assert "missing" in bad("a APPEND x")


def test_search_keys():
    c = cmd('a SEARCH CHARSET UTF-8 OR FROM "bob" NOT SEEN (SINCE 1-Feb-2024 LARGER 10) 1:5')
    assert c.args["charset"] == "UTF-8"
    keys = c.args["keys"]
    assert keys[0] == "AND"
    assert keys[1][0] == ("OR", ("FROM", "bob"), ("NOT", ("SEEN",)))
    assert keys[1][1] == ("AND", [("SINCE", datetime.date(2024, 2, 1)), ("LARGER", 10)])
    assert keys[1][2][0] == "SEQ"
    c = cmd("a UID SEARCH UID 3:* HEADER X-Foo bar")
    assert c.args["keys"][1][1] == ("HEADER", "X-Foo", "bar")
    c = cmd("a SEARCH TEXT {4}\r\n", "héy".encode())
    assert c.args["keys"][1][0] == ("TEXT", "héy")
    assert "search key" in bad("a SEARCH FROBNICATE")
    assert "date" in bad("a SEARCH SINCE 2024-02-01")
    assert "nested" in bad("a SEARCH " + "NOT " * 60 + "ALL")
    assert cmd("a SEARCH CHARSET KOI8-R FROM x").args["charset"] == "KOI8-R"


def test_list_status_select_misc():
    c = cmd('a LIST "" "*"')
    assert c.args["reference"] == "" and c.args["pattern"] == "*"
    c = cmd("a LIST (SUBSCRIBED) \"\" % RETURN (SPECIAL-USE CHILDREN)")
    assert c.args["select_opts"] == ["SUBSCRIBED"] and c.args["return"] == [
        "SPECIAL-USE", "CHILDREN"]
    c = cmd("a STATUS INBOX (MESSAGES UIDNEXT)")
    assert c.args["items"] == ["MESSAGES", "UIDNEXT"]
    assert "STATUS item" in bad("a STATUS INBOX (BOGUS)")
    assert cmd("a SELECT Inbox (CONDSTORE)").args == {"mailbox": "INBOX", "condstore": True,
                                                      "qresync": None}
    q = cmd("a SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 "
            "(1:3,7 41:43,50)))").args["qresync"]
    assert (q.uidvalidity, q.modseq, str(q.known_uids)) == (67890007, 90060115194045000,
                                                            "41:211,214:541")
    assert tuple(map(str, q.seq_match)) == ("1:3,7", "41:43,50")
    assert "differ in size" in bad("a SELECT INBOX (QRESYNC (1 2 (1:3 4)))")
    assert cmd("a RENAME a b").args == {"old": "a", "new": "b"}
    assert cmd('a CREATE Stuff (USE (\\Archive))').args["use"] == ["\\Archive"]
    assert cmd('a ID ("name" "mutt" "version" NIL)').args["params"] == {
        "name": "mutt", "version": None}
    assert cmd("a ID NIL").args["params"] == {}
    assert cmd("a ENABLE CONDSTORE UTF8=ACCEPT").args["capabilities"] == [
        "CONDSTORE", "UTF8=ACCEPT"]
    assert cmd("a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==").args["initial"] == (
        "AGFsaWNlAHNlY3JldA==")
    assert cmd("a DELETE {4}\r\n", b"Junk").args["mailbox"] == "Junk"
    assert "UTF-8" in bad("a SELECT {2}\r\n", b"\xff\xfe")


def test_condstore_modifiers_take_63_bit_mod_sequences():
    big = 2**63 - 1
    c = cmd(f"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE {big})")
    assert c.args["changedsince"] == big
    c = cmd(f"a STORE 1 (UNCHANGEDSINCE {2**40}) +FLAGS.SILENT (\\Seen)")
    assert c.args["unchangedsince"] == 2**40 and c.args["silent"]
    assert "mod-sequence" in bad(f"a STORE 1 (UNCHANGEDSINCE {2**63}) FLAGS (\\Seen)")
    assert "mod-sequence" in bad("a FETCH 1 FLAGS (CHANGEDSINCE -1)")
    assert cmd("a SEARCH MODSEQ 12").args["keys"] == ("AND", [("MODSEQ", 12)])
    c = cmd('a SEARCH MODSEQ "/flags/\\\\draft" all 620 UNSEEN')
    assert c.args["keys"] == ("AND", [("MODSEQ", 620), ("UNSEEN",)])
    assert "priv, shared or all" in bad('a SEARCH MODSEQ "/flags/\\\\draft" some 620')


def test_setquota_is_parsed_to_be_refused():
    assert cmd('a SETQUOTA "" (STORAGE 512)').args["root"] == ""
    assert cmd('a SETQUOTA "" ()').args["root"] == ""
    bad('a SETQUOTA ""')


# RFC 3501 section 9, written out here rather than taken from the parser:
# ATOM-CHAR is any CHAR except atom-specials; ASTRING-CHAR adds "]";
# list-char adds the list-wildcards "%" and "*".
_ATOM_SPECIALS = '(){ %*"\\]'
_ATOM_CHARS = [chr(c) for c in range(0x21, 0x7F) if chr(c) not in _ATOM_SPECIALS]


@pytest.mark.parametrize("c", _ATOM_CHARS)
def test_every_atom_char_starts_ends_and_fills_an_astring(c: str) -> None:
    for name in (f"{c}foo", f"foo{c}", c, c * 3):
        assert cmd(f"a SELECT {name}").args["mailbox"] == name
        assert cmd(f"a LOGIN {name} {name}").args["user"] == name
        args = cmd(f'a LIST {name} {name}').args
        assert (args["reference"], args["pattern"]) == (name, name)
        assert cmd(f"a STATUS {name} (MESSAGES)").args["mailbox"] == name


def test_astring_chars_and_list_wildcards() -> None:
    assert cmd("a SELECT foo]").args["mailbox"] == "foo]"
    assert cmd('a LIST "" ]%*~').args["pattern"] == "]%*~"
    assert cmd('a LIST "" ~{3}\r\n', b"a.b").args["pattern"] == "a.b"
    assert cmd("a SELECT ~{3}\r\n", b"abc").args["mailbox"] == "abc"
    for special in ("(", ")", "{", "%", "*", '"', "\\"):
        bad(f"a SELECT a{special}b")
    bad("a SELECT ~{3}x")
