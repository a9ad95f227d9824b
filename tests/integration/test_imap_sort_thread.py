"""SORT, SORT=DISPLAY (RFC 5256, 5957), THREAD=ORDEREDSUBJECT/REFERENCES, ESEARCH
(RFC 4731) and SEARCHRES (RFC 5182), with raw commands and exact responses."""

from __future__ import annotations

from .imap_raw import RawIMAP
from .support import ALICE


def mail(subject: str, hour: int, frm: str = "Bob <bob@example.org>",
         to: str = "alice@example.org", mid: str = "", refs: str = "", cc: str = "",
         pad: int = 0) -> bytes:
    lines = [f"From: {frm}", f"To: {to}", f"Subject: {subject}",
             f"Date: Mon, 01 Jan 2024 {hour:02d}:00:00 +0000"]
    if cc:
        lines.append(f"Cc: {cc}")
    if mid:
        lines.append(f"Message-ID: {mid}")
    if refs:
        lines.append(f"References: {refs}")
    return ("\r\n".join(lines) + "\r\n\r\n" + "x" * pad + "body\r\n").encode()


def session(server, messages: list[bytes], arrival: list[int] | None = None) -> RawIMAP:
    """A session with the messages appended (at these hours of 2 Jan 2024 if given)."""
    c = RawIMAP(server.imaps_port, ALICE)
    for i, m in enumerate(messages):
        if arrival is None:
            c.append("INBOX", m)
        else:
            c.ok(f'APPEND INBOX "02-Jan-2024 {arrival[i]:02d}:00:00 +0000" {{{len(m)}+}}\r\n'
                 .encode() + m)
    c.ok("SELECT INBOX")
    return c


FIVE = [mail("b", 10, frm="Zed <zed@example.org>", pad=50),
        mail("Re: b", 9, frm="amy@example.org", cc="Cy <cy@example.org>", pad=10),
        mail("a", 12, frm="\"Kim\" <kim@example.org>", to="Al <zz@example.org>", pad=40),
        mail("[x] A", 11, frm="=?utf-8?q?Bea?= <yy@example.org>"),
        mail("Fwd: a", 13, frm="<ann@example.org>", pad=20)]


def test_capabilities(server):
    with RawIMAP(server.imaps_port, ALICE) as c:
        caps = c.ok("CAPABILITY")[0][0].split()
    for cap in (b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES",
                b"ESEARCH", b"SEARCHRES"):
        assert cap in caps


def test_sort_rfc_5256_examples_and_every_key(server):
    with session(server, FIVE, arrival=[5, 3, 4, 1, 2]) as c:
        assert c.ok("SORT (SUBJECT) UTF-8 SINCE 1-Feb-1994")[0] == [b"SORT 3 4 5 1 2"]
        assert c.ok("SORT (SUBJECT REVERSE DATE) UTF-8 ALL")[0] == [b"SORT 5 3 4 1 2"]
        untagged, tagged = c.ok('SORT (SUBJECT) US-ASCII TEXT "not in mailbox"')
        assert untagged == [b"SORT"] and tagged == b"OK SORT completed"
        assert c.ok("SORT (DATE) UTF-8 ALL")[0] == [b"SORT 2 1 4 3 5"]
        assert c.ok("SORT (ARRIVAL) UTF-8 ALL")[0] == [b"SORT 4 5 2 3 1"]
        assert c.ok("SORT (REVERSE ARRIVAL) UTF-8 ALL")[0] == [b"SORT 1 3 2 5 4"]
        by_size = sorted(range(1, 6), key=lambda s: len(FIVE[s - 1]))
        assert by_size == [4, 5, 2, 3, 1]  # RFC822.SIZE
        assert c.ok("SORT (SIZE) UTF-8 ALL")[0] == [b"SORT 4 5 2 3 1"]
        assert c.ok("SORT (FROM) UTF-8 ALL")[0] == [b"SORT 2 5 3 4 1"]  # amy ann kim yy zed
        assert c.ok("SORT (TO SIZE) UTF-8 ALL")[0] == [b"SORT 4 5 2 1 3"]  # alice x4, zz
        assert c.ok("SORT (CC) UTF-8 ALL")[0] == [b"SORT 1 3 4 5 2"]  # none first
        # RFC 5957: display names (decoded), else the address: ann@..., amy@..., Bea,
        # Kim, Zed.
        assert c.ok("SORT (DISPLAYFROM) UTF-8 ALL")[0] == [b"SORT 2 5 4 3 1"]
        assert c.ok("SORT (DISPLAYTO REVERSE DATE) UTF-8 ALL")[0] == [b"SORT 3 5 4 1 2"]
        assert c.ok("SORT (SUBJECT) UTF-8 NOT 3")[0] == [b"SORT 4 5 1 2"]
        # UID SORT answers UIDs; the search keys are SEARCH's.
        uids = [int(x) for x in c.ok("UID SEARCH ALL")[0][0].split()[1:]]
        want = " ".join(str(uids[i - 1]) for i in (5, 3, 4, 1, 2))
        assert c.ok("UID SORT (SUBJECT REVERSE DATE) utf-8 ALL")[0] == [f"SORT {want}".encode()]
        assert c.ok('UID SORT (DATE) UTF-8 FROM "kim"')[0] == [f"SORT {uids[2]}".encode()]


def test_sort_modseq(server):
    # RFC 7162 3.1.5: a SORT on MODSEQ ends in the highest MODSEQ of the hits.
    with session(server, FIVE[:3]) as c:
        c.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
        untagged, _ = c.ok("FETCH 1:3 (MODSEQ)")
        modseqs = [int(line.split(b"MODSEQ (")[1].split(b")")[0]) for line in untagged
                   if b"FETCH" in line]
        untagged, _ = c.ok(f"SORT (DATE) UTF-8 MODSEQ {min(modseqs)}")
        assert untagged[-1] == f"SORT 2 1 3 (MODSEQ {max(modseqs)})".encode()
        untagged, _ = c.ok(f"SORT (DATE) UTF-8 MODSEQ {max(modseqs) + 1}")
        assert untagged[-1] == b"SORT"


def test_sort_charset_and_malformed_arguments(server):
    with session(server, FIVE[:2]) as c:
        untagged, tagged = c.cmd("SORT (DATE) KOI8-R ALL")
        assert untagged == [] and tagged == b"NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset"
        assert c.ok("SORT (DATE) US-ASCII ALL")[0] == [b"SORT 2 1"]
    bad = ["SORT", "SORT () UTF-8 ALL", "SORT (DATE)", "SORT (DATE) UTF-8",
           "SORT (BOGUS) UTF-8 ALL", "SORT DATE UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL",
           "SORT (DATE) UTF-8 NOSUCHKEY", "THREAD", "THREAD FOO UTF-8 ALL",
           "THREAD REFERENCES UTF-8", "UID THREAD (REFERENCES) UTF-8 ALL",
           "SEARCH RETURN (FOO) ALL", "SEARCH RETURN MIN ALL", "FETCH $: FLAGS",
           "SORT (DATE) UTF-8 ((((ALL", "SORT (DATE) UTF-8 \xff", "THREAD REFERENCES UTF-8 ALL)"]
    for i in range(0, len(bad), 6):  # a new session before too many BADs close it
        with RawIMAP(server.imaps_port, ALICE) as c:
            c.ok("SELECT INBOX")
            for line in bad[i:i + 6]:
                untagged, tagged = c.cmd(line)
                assert tagged.startswith(b"BAD "), (line, tagged)
            assert c.ok("NOOP")[1] == b"OK NOOP completed"  # the session goes on
    with RawIMAP(server.imaps_port, ALICE) as c:  # not selected: BAD
        assert c.cmd("SORT (DATE) UTF-8 ALL")[1] == b"BAD No mailbox selected"
        assert c.cmd("THREAD REFERENCES UTF-8 ALL")[1] == b"BAD No mailbox selected"


def test_thread_orderedsubject_and_references(server):
    msgs = [mail("meeting", 1, mid="<1@x>"),
            mail("Re: meeting", 2, mid="<2@x>", refs="<1@x>"),
            mail("other", 3, mid="<3@x>"),
            mail("Re: meeting", 4, mid="<4@x>", refs="<1@x> <2@x>"),
            mail("Re: meeting", 5, mid="<5@x>", refs="<1@x>"),
            mail("Re: lost", 6, mid="<6@x>", refs="<gone@x>"),
            mail("Re: lost", 7, mid="<7@x>", refs="<gone@x>"),
            mail("Fwd: other", 0, mid="<8@x>")]
    with session(server, msgs) as c:
        assert c.ok("THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == [
            b"THREAD (8 3)(1 (2)(4)(5))(6 7)"]
        # Step 6: "Fwd: other" goes under "other" (a reply under the original),
        # though sent before it; the two replies to a lost message share a dummy.
        assert c.ok("THREAD REFERENCES UTF-8 ALL")[0] == [
            b"THREAD (1 (2 4)(5))(3 8)((6)(7))"]
        assert c.ok("THREAD REFERENCES UTF-8 NOT 2")[0] == [
            b"THREAD (1 (4)(5))(3 8)((6)(7))"]
        untagged, tagged = c.ok('THREAD REFERENCES US-ASCII TEXT "gewp"')
        assert untagged == [b"THREAD"] and tagged == b"OK THREAD completed"
        u = [int(x) for x in c.ok("UID SEARCH ALL")[0][0].split()[1:]]
        want = f"THREAD ({u[0]} ({u[1]} {u[3]})({u[4]}))({u[2]} {u[7]})(({u[5]})({u[6]}))"
        assert c.ok("UID THREAD REFERENCES UTF-8 ALL")[0] == [want.encode()]
        assert c.cmd("THREAD REFERENCES ISO-8859-1 ALL")[1].startswith(b"NO [BADCHARSET")


def test_esearch_rfc_4731(server):
    msgs = [mail(f"m{i}", i) for i in range(1, 12)]
    with session(server, msgs) as c:
        c.ok("STORE 2,10:11 +FLAGS (\\Flagged)")
        t = c.n + 1
        assert c.ok("SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"")[0] \
            == [f'ESEARCH (TAG "t{t}") MIN 2 COUNT 3'.encode()]
        assert c.ok("SEARCH RETURN () FLAGGED")[0] == [f'ESEARCH (TAG "t{t + 1}") ALL 2,10:11'
                                                        .encode()]
        u = [int(x) for x in c.ok("UID SEARCH ALL")[0][0].split()[1:]]
        assert c.ok("UID SEARCH RETURN (MIN MAX) FLAGGED")[0] == [
            f'ESEARCH (TAG "t{t + 3}") UID MIN {u[1]} MAX {u[10]}'.encode()]
        assert c.ok("UID SEARCH RETURN (ALL) 1:3,5")[0] == [
            f'ESEARCH (TAG "t{t + 4}") UID ALL {u[0]}:{u[2]},{u[4]}'.encode()]
        # Nothing found: no MIN/MAX/ALL, COUNT 0.
        assert c.ok("SEARCH RETURN (MIN MAX ALL COUNT) DELETED")[0] == [
            f'ESEARCH (TAG "t{t + 5}") COUNT 0'.encode()]
        assert c.ok("UID SEARCH RETURN (ALL) DELETED")[0] == [
            f'ESEARCH (TAG "t{t + 6}") UID'.encode()]
        assert c.ok("SEARCH FLAGGED")[0] == [b"SEARCH 2 10 11"]  # plain SEARCH unchanged


def test_searchres_save_and_dollar(server):
    msgs = [mail(f"m{i}", i) for i in range(1, 7)]
    # Arrival times of their own: appended in one second they would tie, and a
    # tie sorts by sequence number even under REVERSE (RFC 5256).
    with session(server, msgs, arrival=list(range(1, 7))) as c:
        u = [int(x) for x in c.ok("UID SEARCH ALL")[0][0].split()[1:]]
        c.ok("STORE 2,4:5 +FLAGS.SILENT (\\Flagged)")
        # RFC 5182 example: SAVE alone gives no ESEARCH; $ then names the result.
        assert c.ok("SEARCH RETURN (SAVE) FLAGGED") == ([], b"OK SEARCH completed")
        assert c.ok("FETCH $ (UID)")[0] == [f"{s} FETCH (UID {u[s - 1]})".encode()
                                            for s in (2, 4, 5)]
        assert c.ok("UID FETCH $ (UID)")[0] == [
            f"{s} FETCH (UID {u[s - 1]})".encode() for s in (2, 4, 5)]
        assert c.ok("SEARCH $ NOT 4")[0] == [b"SEARCH 2 5"]
        assert c.ok("SEARCH UID $")[0] == [b"SEARCH 2 4 5"]
        assert c.ok("SORT (REVERSE ARRIVAL) UTF-8 $")[0] == [b"SORT 5 4 2"]
        c.ok("STORE $ +FLAGS.SILENT (\\Seen)")
        assert c.ok("SEARCH SEEN")[0] == [b"SEARCH 2 4 5"]
        # SAVE with others: their ESEARCH reply, all saved.
        t = c.n + 1
        assert c.ok("UID SEARCH RETURN (SAVE COUNT) 1:2")[0] == [
            f'ESEARCH (TAG "t{t}") UID COUNT 2'.encode()]
        assert c.ok("SEARCH $")[0] == [b"SEARCH 1 2"]
        # SAVE with MIN and MAX alone keeps only those.
        c.ok("SEARCH RETURN (SAVE MIN MAX) 2:5")
        assert c.ok("SEARCH $")[0] == [b"SEARCH 2 5"]
        c.ok("SEARCH RETURN (MIN SAVE) 3:5")
        assert c.ok("SEARCH $")[0] == [b"SEARCH 3"]
        # An expunge takes the message out of $; sequence numbers follow.
        c.ok("SEARCH RETURN (SAVE) 3,5")
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        assert c.ok("FETCH $ (UID)")[0] == [f"2 FETCH (UID {u[2]})".encode(),
                                            f"4 FETCH (UID {u[4]})".encode()]
        c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        assert c.ok("UID FETCH $ (UID)")[0] == [f"3 FETCH (UID {u[4]})".encode()]


def test_searchres_reset_rules(server):
    with session(server, [mail(f"m{i}", i) for i in range(1, 4)]) as c:
        c.ok("SEARCH RETURN (SAVE) 2")
        assert c.ok("SEARCH $")[0] == [b"SEARCH 2"]
        # A failing SEARCH with SAVE (NO or BAD) empties $.
        assert c.cmd("SEARCH RETURN (SAVE) CHARSET KOI8-R ALL")[1].startswith(b"NO [BADCHARSET")
        assert c.ok("SEARCH $")[0] == [b"SEARCH"]
        c.ok("SEARCH RETURN (SAVE) 2")
        assert c.cmd("SEARCH RETURN (SAVE) NOSUCHKEY")[1].startswith(b"BAD ")
        assert c.ok("FETCH $ (UID)") == ([], b"OK FETCH completed")  # empty: OK, nothing
        # A failing other command keeps it; a new SELECT empties it.
        c.ok("SEARCH RETURN (SAVE) 2")
        assert c.cmd("SEARCH NOSUCHKEY")[1].startswith(b"BAD ")
        assert c.ok("SEARCH $")[0] == [b"SEARCH 2"]
        c.ok("SELECT INBOX")
        assert c.ok("SEARCH $")[0] == [b"SEARCH"]
        c.ok("SEARCH RETURN (SAVE) ALL")
        c.ok("UNSELECT")
        c.ok("EXAMINE INBOX")
        assert c.ok("UID SEARCH UID $")[0] == [b"SEARCH"]
        assert c.ok("UID COPY $ INBOX")[1].startswith(b"OK")


def test_sort_many_messages(server):
    # 300 messages: SORT and THREAD read their headers off the event loop; another
    # session is served meanwhile and the order is right.
    msgs = [mail(f"s{(i * 7919) % 300:03d}", i % 24, mid=f"<{i}@x>",
                 refs=f"<{i - 1}@x>" if i % 3 else "") for i in range(300)]
    with session(server, msgs) as c, RawIMAP(server.imaps_port, ALICE) as other:
        got = c.ok("SORT (SUBJECT) UTF-8 ALL")[0][0].split()[1:]
        want = sorted(range(1, 301), key=lambda s: (s - 1) * 7919 % 300)
        assert [int(x) for x in got] == want
        text = c.ok("THREAD REFERENCES UTF-8 ALL")[0][0]
        assert text.count(b"(") == text.count(b")")
        assert other.ok("NOOP")[1] == b"OK NOOP completed"
