"""ESORT (RFC 5267 3) and the PARTIAL return option (RFC 5267 4.4, RFC 9394's
negative ranges) for SEARCH and SORT, with raw commands and exact responses."""

from __future__ import annotations

import re

from .imap_raw import RawIMAP
from .test_imap_sort_thread import FIVE, session


def es(c: RawIMAP, command: str) -> list[bytes]:
    """The untagged replies of a command, an ESEARCH's TAG checked and left out."""
    tag = f"t{c.n + 1}".encode()
    untagged, _ = c.ok(command)
    out = []
    for line in untagged:
        m = re.match(rb'ESEARCH \(TAG "([^"]*)"\)', line)
        assert m is None or m.group(1) == tag, (tag, line)
        out.append(b"ESEARCH" + line[m.end():] if m else line)
    return out


def test_esort_rfc5267_examples(server):
    with session(server, FIVE) as c:
        assert b"ESORT" in c.ok("CAPABILITY")[0][0].split()
        assert c.ok("SORT (DATE) UTF-8 ALL")[0] == [b"SORT 2 1 4 3 5"]
        # 3.1's examples: MIN and MAX are the first and last in sort order, ALL keeps it.
        assert es(c, "SORT RETURN (MIN) (DATE) UTF-8 ALL") == [b'ESEARCH MIN 2']
        assert es(c, "SORT RETURN (MAX) (DATE) UTF-8 ALL") == [b'ESEARCH MAX 5']
        assert es(c, "SORT RETURN (ALL) (DATE) UTF-8 ALL") == [b'ESEARCH ALL 2,1,4,3,5']
        assert es(c, "SORT RETURN (COUNT) (DATE) UTF-8 NOT 3") == [b'ESEARCH COUNT 4']
        # A range only for ascending neighbours (3:4 is 3 then 4).
        assert es(c, "SORT RETURN () (REVERSE DATE) UTF-8 ALL") == [b"ESEARCH ALL 5,3:4,1:2"]
        assert es(c, "SORT RETURN (ALL) (ARRIVAL) UTF-8 ALL") == [b'ESEARCH ALL 1:5']
        untagged = es(c, "UID SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL")
        uids = [int(x) for x in c.ok("UID SORT (DATE) UTF-8 ALL")[0][0].split()[1:]]
        assert untagged == [f"ESEARCH UID MIN {uids[0]} MAX {uids[-1]} COUNT 5".encode()]
        # No match: only COUNT 0 if asked.
        assert es(c, 'SORT RETURN (MIN ALL COUNT) (DATE) UTF-8 SUBJECT "nope"') == [
            b'ESEARCH COUNT 0']
        # SAVE keeps the result for `$`; alone it answers nothing.
        assert c.ok("SORT RETURN (SAVE) (DATE) UTF-8 NOT 1")[0] == []
        assert [line.split()[0] for line in c.ok("FETCH $ UID")[0]] == [b"2", b"3", b"4", b"5"]
        assert es(c, "SORT RETURN (SAVE MIN) (DATE) UTF-8 ALL") == [b'ESEARCH MIN 2']
        assert [line.split()[0] for line in c.ok("FETCH $ UID")[0]] == [b"2"]
        # A SORT with SAVE that fails empties `$` (RFC 5182 2.1), BAD or NO.
        assert c.cmd("SORT RETURN (SAVE) (BOGUS) UTF-8 ALL")[1].startswith(b"BAD")
        assert c.ok("FETCH $ UID")[0] == []
        c.ok("SORT RETURN (SAVE) (DATE) UTF-8 ALL")
        assert c.cmd("SORT RETURN (SAVE) (DATE) KOI8-R ALL")[1].startswith(b"NO [BADCHARSET")
        assert c.ok("FETCH $ UID")[0] == []


def test_partial_search_and_sort(server):
    with session(server, FIVE) as c:
        # RFC 5267 4.4: positions in the result; ranges past the end are no error.
        assert es(c, "SEARCH RETURN (PARTIAL 2:3) ALL") == [b'ESEARCH PARTIAL (2:3 2:3)']
        assert es(c, "SEARCH RETURN (PARTIAL 4:100) ALL") == [b'ESEARCH PARTIAL (4:100 4:5)']
        assert es(c, "SEARCH RETURN (PARTIAL 6:10) ALL") == [b'ESEARCH PARTIAL (6:10 NIL)']
        assert es(c, "SEARCH RETURN (PARTIAL 3:1 COUNT) NOT 2") == [
            b'ESEARCH COUNT 4 PARTIAL (1:3 1,3:4)']
        # RFC 9394: negative ranges count from the end.
        assert es(c, "SEARCH RETURN (PARTIAL -1:-2) ALL") == [b'ESEARCH PARTIAL (-1:-2 4:5)']
        assert es(c, "SORT RETURN (PARTIAL 1:3) (DATE) UTF-8 ALL") == [
            b'ESEARCH PARTIAL (1:3 2,1,4)']
        assert es(c, "SORT RETURN (PARTIAL -2:-1) (DATE) UTF-8 ALL") == [
            b'ESEARCH PARTIAL (-1:-2 3,5)']
        assert es(c, "SEARCH RETURN (SAVE PARTIAL 1:2) ALL") == [b'ESEARCH PARTIAL (1:2 1:2)']
        assert [line.split()[0] for line in c.ok("FETCH $ UID")[0]] == [b"1", b"2"]


HOSTILE = ["SORT RETURN (BOGUS) (DATE) UTF-8 ALL", "SORT RETURN (DATE) UTF-8 ALL",
           "SORT RETURN (ALL) UTF-8 ALL", "SORT RETURN (PARTIAL) (DATE) UTF-8 ALL",
           "SEARCH RETURN (PARTIAL 0:5) ALL", "SEARCH RETURN (PARTIAL 1:-5) ALL",
           "SEARCH RETURN (PARTIAL 1:5 ALL) ALL", "SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL",
           "SEARCH RETURN (PARTIAL 1:99999999999) ALL", "SORT RETURN (MIN (DATE) UTF-8 ALL",
           "SEARCH RETURN (PARTIAL 1:) ALL"]


def test_hostile_return_options(server):
    for i in range(0, len(HOSTILE), 5):  # a session ends after 10 bad commands
        with session(server, FIVE[:1] if not i else []) as c:
            for bad in HOSTILE[i:i + 5]:
                _, tagged = c.cmd(bad)
                assert tagged.startswith(b"BAD"), (bad, tagged)
            c.ok("NOOP")


def test_rev2_partial(server):
    with session(server, FIVE) as c:
        c.ok("ENABLE IMAP4rev2")
        uid = c.ok("UID FETCH 1 UID")[0][0].split()[-1].rstrip(b")")
        assert es(c, "UID SEARCH RETURN (PARTIAL 1:1) ALL") == [
            b"ESEARCH UID PARTIAL (1:1 " + uid + b")"]
