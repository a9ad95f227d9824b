"""APPEND extensions: MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), and the
literals they ride on (LITERAL+, RFC 7888; literal8, RFC 3516)."""

from __future__ import annotations

import re

import pytest

from .imap_raw import RawIMAP
from .pg_server import BACKENDS, sharing_mail
from .support import ALICE, BOB, make_message

pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)


@pytest.fixture
def make_server(make_server, storage, tmp_path):
    """On PostgreSQL with a shared_dir: the IMAP index in PostgreSQL."""
    return sharing_mail(make_server, storage, tmp_path)

BOUNDARY = "------------030308070208000400050907"
DRAFT = (
    "From: Alice <alice@example.test>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: the draft\r\n"
    "MIME-Version: 1.0\r\n"
    f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"\r\n'
    "\r\n"
    f"--{BOUNDARY}\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "The text of the draft.\r\n"
    f"--{BOUNDARY}--\r\n"
).encode()


def _lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def _count(c: RawIMAP, box: str) -> int:
    untagged, _ = c.ok(f"STATUS {box} (MESSAGES)")
    return int(re.search(rb"MESSAGES (\d+)", b" ".join(untagged)).group(1))


def _body(c: RawIMAP, box: str, uid: int) -> bytes:
    c.ok(f"EXAMINE {box}")
    untagged, _ = c.ok(f"UID FETCH {uid} BODY.PEEK[]")
    line = next(x for x in untagged if b"BODY[]" in x)
    return line.split(b"}\r\n", 1)[1][:-1]  # up to the closing parenthesis


def test_capabilities_name_the_extensions(server):
    with RawIMAP(server.imaps_port) as c:
        untagged, _ = c.ok("CAPABILITY")
        caps = untagged[0].split()
        for cap in (b"MULTIAPPEND", b"CATENATE", b"LITERAL+", b"BINARY"):
            assert cap in caps
        # LITERAL+ takes non-synchronizing literals of any size, so LITERAL- is not said
        assert b"LITERAL-" not in caps


def test_multiappend_rfc3502_example_adds_all_with_one_appenduid(server):
    m1 = make_message(BOB, ALICE, "first")
    m2 = make_message(BOB, ALICE, "second")
    with RawIMAP(server.imaps_port, ALICE) as c:
        c.ok("CREATE saved-messages")
        _, tagged = c.ok(b"APPEND saved-messages (\\Seen) " + _lit(m1) + b" "
                         + _lit(m2))
        m = re.search(rb"\[APPENDUID (\d+) (\d+):(\d+)\]", tagged)
        assert m, tagged
        assert int(m.group(3)) == int(m.group(2)) + 1
        c.ok("EXAMINE saved-messages")
        untagged, _ = c.ok("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        text = b" ".join(untagged)
        assert b"Subject: first" in text and b"Subject: second" in text
        # flags belong to the message they precede: the first is \Seen, the second not
        first = next(x for x in untagged if b"first" in x)
        second = next(x for x in untagged if b"second" in x)
        assert b"\\Seen" in first and b"\\Seen" not in second
        assert _count(c, "saved-messages") == 2


def test_multiappend_with_synchronizing_literals(server):
    m1 = make_message(BOB, ALICE, "sync one")
    m2 = make_message(BOB, ALICE, "sync two")
    with RawIMAP(server.imaps_port, ALICE) as c:
        c.sock.sendall(b"a1 APPEND INBOX {%d}\r\n" % len(m1))
        assert c.line().startswith(b"+")
        c.sock.sendall(m1 + b' (\\Flagged) "01-Feb-2024 10:00:00 +0000" {%d}\r\n' % len(m2))
        assert c.line().startswith(b"+")
        c.sock.sendall(m2 + b"\r\n")
        reply = c.line()
        assert reply.startswith(b"a1 OK [APPENDUID"), reply
        c.ok("EXAMINE INBOX")
        untagged, _ = c.ok("FETCH 2 (FLAGS INTERNALDATE)")
        assert b"\\Flagged" in untagged[0] and b"01-Feb-2024 10:00:00" in untagged[0]


def test_multiappend_is_all_or_nothing(server):
    good = make_message(BOB, ALICE, "good")
    with RawIMAP(server.imaps_port, ALICE) as c:
        before = _count(c, "INBOX")
        _, tagged = c.cmd(b"APPEND INBOX " + _lit(good) + b" " + _lit(b""))
        assert tagged.startswith(b"NO"), tagged
        assert _count(c, "INBOX") == before
        _, tagged = c.cmd(b"APPEND Nowhere " + _lit(good) + b" " + _lit(good))
        assert tagged.startswith(b"NO [TRYCREATE]"), tagged
        # a bad URL in the second message's CATENATE: the first is not kept either
        _, tagged = c.cmd(b"APPEND INBOX " + _lit(good)
                          + b' CATENATE (URL "/INBOX/;UID=999")')
        assert tagged.startswith(b"NO [BADURL /INBOX/;UID=999]"), tagged
        assert _count(c, "INBOX") == before


def test_literal_plus_takes_large_non_synchronizing_literals(server):
    """LITERAL- would stop at 4096 octets; this server does LITERAL+ (any size up
    to APPENDLIMIT), which is what it says."""
    big = make_message(BOB, ALICE, "big", body="y" * 10_000 + "\r\n")
    with RawIMAP(server.imaps_port, ALICE) as c:
        _, tagged = c.ok(b"APPEND INBOX " + _lit(big))
        assert b"APPENDUID" in tagged


def test_catenate_rfc4469_example_builds_the_message_from_urls_and_text(server):
    attachment = make_message(BOB, ALICE, "forwarded")
    with RawIMAP(server.imaps_port, ALICE) as c:
        _, tagged = c.ok(b"APPEND Drafts (\\Draft) " + _lit(DRAFT))
        m = re.search(rb"APPENDUID (\d+) (\d+)", tagged)
        validity, draft_uid = int(m.group(1)), int(m.group(2))
        _, tagged = c.ok(b"APPEND INBOX " + _lit(attachment))
        att_uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        sep = f"\r\n--{BOUNDARY}\r\n".encode()
        end = f"\r\n--{BOUNDARY}--\r\n".encode()
        base = f"/Drafts;UIDVALIDITY={validity}/;UID={draft_uid}"
        att_url = f"imap://{ALICE.replace('@', '%40')}@mx.example.test/INBOX/;UID={att_uid}"
        cmd = b"".join([
            f'APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "{base}/;section=HEADER" '
            "TEXT ".encode(), _lit(sep),
            f' URL "{base}/;section=1.MIME" URL "{base}/;section=1" TEXT '.encode(),
            _lit(sep + b"Content-Type: message/rfc822\r\n\r\n"),
            f' URL "{att_url}" TEXT '.encode(), _lit(end), b")"])
        _, tagged = c.ok(cmd)
        new_uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        header, _, _ = DRAFT.partition(b"\r\n\r\n")
        expected = (header + b"\r\n\r\n" + sep
                    + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
                    + b"The text of the draft." + sep
                    + b"Content-Type: message/rfc822\r\n\r\n" + attachment + end)
        assert _body(c, "Drafts", new_uid) == expected
        untagged, _ = c.ok(f"UID FETCH {new_uid} (FLAGS BODYSTRUCTURE)")
        assert b"$MDNSent" in untagged[0] and b'"MESSAGE" "RFC822"' in untagged[0]


def test_catenate_partial_and_section_urls(server):
    msg = make_message(BOB, ALICE, "parts", body="0123456789\r\n")
    with RawIMAP(server.imaps_port, ALICE) as c:
        _, tagged = c.ok(b"APPEND INBOX " + _lit(msg))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        head = b"Subject: built\r\n\r\n"
        _, tagged = c.ok(b"APPEND INBOX CATENATE (TEXT " + _lit(head)
                         + f' URL "/INBOX/;UID={uid}/;SECTION=TEXT/;PARTIAL=2.5")'.encode())
        new = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        assert _body(c, "INBOX", new) == head + b"23456"


def test_catenate_bad_urls_say_badurl_and_add_nothing(server):
    with RawIMAP(server.imaps_port, BOB) as b:
        _, tagged = b.ok(b"APPEND INBOX " + _lit(make_message(ALICE, BOB, "bob's own")))
    with RawIMAP(server.imaps_port, ALICE) as c:
        _, tagged = c.ok(b"APPEND INBOX " + _lit(make_message(BOB, ALICE, "mine")))
        validity, uid = map(int, re.search(rb"APPENDUID (\d+) (\d+)", tagged).groups())
        before = _count(c, "INBOX")
        bad = [
            f"/INBOX;UIDVALIDITY={validity + 1}/;UID={uid}",  # another UIDVALIDITY
            f"/INBOX/;UID={uid + 100}",  # no such message
            "/Nowhere/;UID=1",  # no such mailbox
            f"imap://{BOB.replace('@', '%40')}@mx.example.test/INBOX/;UID=1",  # bob's
            f"/INBOX/;UID={uid}/;URLAUTH=anonymous:internal:0123",  # URLAUTH
            f"/INBOX/;UID={uid}/;SECTION=9",  # no such part
            "http://example.test/",
            "garbage",
        ]
        for url in bad:
            _, tagged = c.cmd(f'APPEND INBOX CATENATE (TEXT {{2+}}\r\nx\n URL "{url}")')
            assert tagged.startswith(b"NO [BADURL "), (url, tagged)
        assert _count(c, "INBOX") == before


def test_catenate_result_is_bounded_by_the_append_limit(make_server):
    srv = make_server(imap__max_literal_size="3K")
    msg = make_message(BOB, ALICE, "half", body="z" * 1500 + "\r\n")
    with RawIMAP(srv.imaps_port, ALICE) as c:
        _, tagged = c.ok(b"APPEND INBOX " + _lit(msg))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        url = f'URL "/INBOX/;UID={uid}"'
        _, tagged = c.cmd(f"APPEND INBOX CATENATE ({url} {url})")
        assert tagged.startswith(b"NO [TOOBIG]"), tagged
        assert _count(c, "INBOX") == 1


def test_append_extensions_hostile_input_gets_bad(server):
    with RawIMAP(server.imaps_port, ALICE) as c:
        many = " ".join(['URL "/INBOX/;UID=1"'] * 101)
        for text in [
            f"APPEND INBOX CATENATE ({many})",  # more parts than allowed
            "APPEND INBOX CATENATE ()",
            "APPEND INBOX CATENATE (URL)",
            "APPEND INBOX CATENATE (FOO bar)",
            "APPEND INBOX CATENATE (TEXT \"quoted is not a literal\")",
            "APPEND INBOX CATENATE URL \"/INBOX/;UID=1\"",
            "APPEND INBOX (\\Seen) {3+}\r\nabc (\\Seen)",  # a second message without data
            "APPEND INBOX {3+}\r\nabc  {3+}\r\nabc",  # two spaces
        ]:
            _, tagged = c.cmd(text)
            assert tagged.startswith(b"BAD"), (text[:60], tagged)
        c.ok("NOOP")  # the session goes on


def test_literal8_append_is_kept_octet_for_octet(server):
    """RFC 3516: a literal8 message may hold any octet; bare LFs are content."""
    msg = (b"Subject: binary\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\n\x02\r\n")
    with RawIMAP(server.imaps_port, ALICE) as c:
        _, tagged = c.ok(b"APPEND INBOX ~{%d+}\r\n" % len(msg) + msg)
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        c.ok("EXAMINE INBOX")
        untagged, _ = c.ok(f"UID FETCH {uid} (RFC822.SIZE BINARY.PEEK[1])")
        assert b"RFC822.SIZE %d" % len(msg) in untagged[0]
        assert untagged[0].endswith(b"BINARY[1] ~{6}\r\n\x00\x01\n\x02\r\n)")


def test_catenate_total_of_a_multiappend_is_bounded(make_server):
    """Each message under the limit, together over it: refused, nothing added
    (else 1,000 messages of URLs could make 1,000 times the limit in memory)."""
    srv = make_server(imap__max_literal_size="3K")
    msg = make_message(BOB, ALICE, "part", body="w" * 1000 + "\r\n")
    with RawIMAP(srv.imaps_port, ALICE) as c:
        _, tagged = c.ok(b"APPEND INBOX " + _lit(msg))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        one = f'CATENATE (URL "/INBOX/;UID={uid}")'
        c.ok(f"APPEND INBOX {one} {one}")  # two copies fit
        _, tagged = c.cmd(f"APPEND INBOX {one} {one} {one}")
        assert tagged.startswith(b"NO [TOOBIG]"), tagged
        assert _count(c, "INBOX") == 3
        url = f'URL "/INBOX/;UID={uid}"'
        many = " ".join(["CATENATE (" + " ".join([url] * 100) + ")"] * 11)
        _, tagged = c.cmd(f"APPEND INBOX {many}")
        assert tagged.startswith(b"BAD"), tagged


def test_catenate_urls_read_at_most_four_times_the_limit(make_server):
    """A small partial of a large message, many times: the reading is bounded
    too, not only what is built."""
    srv = make_server(imap__max_literal_size="20K")
    msg = make_message(BOB, ALICE, "large", body="v" * 15_000 + "\r\n")
    with RawIMAP(srv.imaps_port, ALICE) as c:
        _, tagged = c.ok(b"APPEND INBOX " + _lit(msg))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        url = f'URL "/INBOX/;UID={uid}/;PARTIAL=0.10"'
        c.ok(f"APPEND INBOX CATENATE ({' '.join([url] * 5)})")  # 5 x 15K read: fits
        _, tagged = c.cmd(f"APPEND INBOX CATENATE ({' '.join([url] * 6)})")
        assert tagged.startswith(b"NO [TOOBIG]"), tagged
