"""SORT (RFC 5256, RFC 5957): base subjects, sent dates and the orders of every key."""

from __future__ import annotations

import pytest

from pillarbox.endpoint.imap import sort
from pillarbox.endpoint.imap.parser import ParseError, parse_command


def msg(seq: int, header: str, arrival: float = 0.0, size: int = 100) -> sort.Facts:
    return sort.facts(seq, seq * 10, arrival, size, header.encode() + b"\r\n")


@pytest.mark.parametrize(("subject", "base", "refwd"), [
    ("Hello", "Hello", False),
    ("Re: Hello", "Hello", True),
    ("RE:  re: Hello", "Hello", True),
    ("Fwd: Hello", "Hello", True),
    ("fw: Hello", "Hello", True),
    ("Re [2]: Hello", "Hello", True),  # subj-refwd with a blob before the colon
    ("[list] Re: Hello", "Hello", True),  # blobs before a subj-refwd
    ("[list] Hello", "Hello", False),  # step 4: a leading blob with text after it
    ("[list]", "[list]", False),  # ...but not when nothing would be left
    ("Hello (fwd)", "Hello", True),  # step 2: trailers
    ("Hello (fwd)  (FWD) ", "Hello", True),
    ("[fwd: Re: Hello]", "Hello", True),  # step 6, then again from step 2
    ("[Fwd: [fwd: Hello]]", "Hello", True),
    ("  Hello \t  world  ", "Hello world", False),  # step 1: runs of space to one
    ("Re: [list] Re: Hello", "Hello", True),  # steps 3 and 4 repeated
    ("Rex: Hello", "Rex: Hello", False),  # not a subj-refwd
    ("", "", False),
    ("Re:", "", True),
])
def test_base_subject(subject, base, refwd):
    assert sort.base_subject(subject) == (base, refwd)


def test_encoded_words_are_decoded_before_extraction():
    f = msg(1, "Subject: =?utf-8?q?Re=3A_Gr=C3=BC=C3=9Fe?=")
    assert sort.base_subject(f.subject) == ("Grüße", True)


def test_sent_date_is_utc_and_falls_back_to_the_internal_date():
    a = msg(1, "Date: Mon, 1 Jan 2024 10:00:00 +0200")
    b = msg(2, "Date: Mon, 1 Jan 2024 09:00:00 +0000")
    assert a.sent < b.sent  # 08:00 UTC before 09:00 UTC
    assert msg(3, "Date: not a date", arrival=1234.0).sent == 1234.0
    assert msg(4, "Subject: x", arrival=99.0).sent == 99.0


def order(messages, *criteria):
    keys = [(c.removeprefix("-"), c.startswith("-")) for c in criteria]
    return [f.seq for f in sort.sort(messages, keys)]


def test_rfc_5256_subject_then_reverse_date():
    # RFC 5256 section 4: SORT (SUBJECT REVERSE DATE) gives 5 3 4 1 2.
    ms = [msg(1, "Subject: b\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000"),
          msg(2, "Subject: Re: b\r\nDate: Mon, 1 Jan 2024 09:00:00 +0000"),
          msg(3, "Subject: a\r\nDate: Mon, 1 Jan 2024 12:00:00 +0000"),
          msg(4, "Subject: [x] A\r\nDate: Mon, 1 Jan 2024 11:00:00 +0000"),
          msg(5, "Subject: Fwd: a\r\nDate: Mon, 1 Jan 2024 13:00:00 +0000")]
    assert order(ms, "SUBJECT", "-DATE") == [5, 3, 4, 1, 2]
    assert order(ms, "DATE") == [2, 1, 4, 3, 5]
    assert order(ms, "-SUBJECT", "DATE") == [2, 1, 4, 3, 5]


def test_ties_keep_sequence_order_even_reversed():
    ms = [msg(i, "Subject: same", size=10) for i in (1, 2, 3)]
    assert order(ms, "SUBJECT") == [1, 2, 3]
    assert order(ms, "-SIZE") == [1, 2, 3]
    assert order(ms, "-ARRIVAL", "-SUBJECT") == [1, 2, 3]


def test_a_key_named_again_changes_nothing():
    ms = [msg(1, "Subject: b", size=1), msg(2, "Subject: a", size=1), msg(3, "Subject: a",
                                                                          size=2)]
    assert order(ms, "SUBJECT", "-SUBJECT", "-SIZE") == [3, 2, 1]
    assert order(ms, *(["SIZE", "-SIZE"] * 5000), "SUBJECT") == [2, 1, 3]


def test_arrival_size_and_address_keys():
    ms = [msg(1, "From: Zed <alice@b.example>\r\nTo: x@y\r\nCc: mm@c", arrival=3, size=5),
          msg(2, "From: \"Bob\" <zoe@a.example>\r\nTo: \"Amy\" <b@y>", arrival=1, size=7),
          msg(3, "From: carol@c.example\r\nCc: g: Ann <aa@c>;", arrival=2, size=6)]
    assert order(ms, "ARRIVAL") == [2, 3, 1]
    assert order(ms, "SIZE") == [1, 3, 2]
    assert order(ms, "-SIZE") == [2, 3, 1]
    assert order(ms, "FROM") == [1, 3, 2]  # alice, carol, zoe (the mailbox part)
    assert order(ms, "TO") == [3, 2, 1]  # none first, then b, x
    assert order(ms, "CC") == [2, 3, 1]  # none, aa (past the group's name), mm
    # RFC 5957: the display name, else the addr-spec: Bob, carol@c.example, Zed.
    assert order(ms, "DISPLAYFROM") == [2, 3, 1]
    assert order(ms, "DISPLAYTO") == [3, 2, 1]  # "", Amy, x@y


def test_casemap_is_ascii_upper():
    # i;ascii-casemap maps to upper case: "_" (0x5F) sorts after "A", "a" alike.
    ms = [msg(1, "Subject: _x"), msg(2, "Subject: b"), msg(3, "Subject: A")]
    assert order(ms, "SUBJECT") == [3, 2, 1]


def test_display_names_are_decoded():
    ms = [msg(1, "From: =?utf-8?q?Zoe?= <a@x>"), msg(2, "From: Yan <b@x>")]
    assert order(ms, "DISPLAYFROM") == [2, 1]


def test_header_is_read_without_the_body(tmp_path):
    p = tmp_path / "m"
    p.write_bytes(b"Subject: hi\r\n\r\n" + b"Subject: no\r\n" * 10000)
    assert sort.read_header(p) == b"Subject: hi\r\n\r\n"
    p.write_bytes(b"X: " + b"y" * 200_000 + b"\nSubject: late\n\nbody")
    assert sort.read_header(p).endswith(b"Subject: late\n\n")


@pytest.mark.parametrize("line", [
    b"a SORT () UTF-8 ALL", b"a SORT (REVERSE) UTF-8 ALL", b"a SORT (FOO) UTF-8 ALL",
    b"a SORT (DATE) ALL", b"a SORT DATE UTF-8 ALL", b"a SORT (DATE) UTF-8",
    b"a SORT (REVERSE REVERSE DATE) UTF-8 ALL", b"a THREAD FOO UTF-8 ALL",
    b"a THREAD REFERENCES", b"a SEARCH RETURN (BOGUS) ALL", b"a FETCH $1 FLAGS",
    b"a SELECT INBOX (QRESYNC (1 2 $))", b"a FETCH 1,$ FLAGS",
])
def test_malformed_arguments_are_parse_errors(line):
    with pytest.raises(ParseError):
        parse_command([line])


def test_sort_and_thread_parse():
    c = parse_command([b"a UID SORT (REVERSE date subject) utf-8 SEEN $"])
    assert c.name == "UID SORT"
    assert c.args["criteria"] == [("DATE", True), ("SUBJECT", False)]
    assert c.args["charset"] == "UTF-8"
    assert str(c.args["keys"][1][1][1]) == "$"
    c = parse_command([b"a THREAD references KOI8-R ALL"])
    assert c.args["algorithm"] == "REFERENCES" and c.args["charset"] == "KOI8-R"
    assert parse_command([b"a SEARCH RETURN () ALL"]).args["return"] == ["ALL"]
    assert parse_command([b"a FETCH $ FLAGS"]).args["set"].saved
