"""QRESYNC (RFC 7162 section 3.2): which UIDs a client must be told vanished.

The index keeps each expunged UID with the MODSEQ of its expunge
(`MailStore.expunged_since`), so a client that reconnects with the MODSEQ it
last saw is told exactly the UIDs expunged since. Those records are pruned
past a bound; a client asking from before the pruning is told, as RFC 7162
allows, every UID it may know (its known-uids, else 1 to UIDNEXT-1) that is
not in the mailbox, narrowed by its seq-match-data. Flag changes need no such
record: every message keeps its own MODSEQ.

Everything here works on ranges: a known-uids set of `1:4294967295` costs no
more than `1:10`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from pillarbox.endpoint.imap.parser import QresyncParam, SeqSet, seqset_from
from pillarbox.store.mailbox_index import MailStore, Message

Span = tuple[int, int]  # an inclusive range of numbers, low <= high


def select_replies(store: MailStore, name: str, view: list[int], param: QresyncParam,
                   flags: Callable[[Message], bytes]) -> list[bytes]:
    """The untagged replies (without "* ") a SELECT/EXAMINE with QRESYNC adds
    after the usual ones (RFC 7162 3.2.5.1): VANISHED (EARLIER) for the UIDs
    expunged since the client's MODSEQ, then a FETCH (UID FLAGS MODSEQ) of each
    message changed since, both limited to its known UIDs if it gave them.
    Nothing if its UIDVALIDITY is not the mailbox's (its cache is void)."""
    box = store.box(name)
    if param.uidvalidity != box.uidvalidity:
        return []
    top = box.uidnext - 1
    wanted = _upto(spans(param.known_uids, top) if param.known_uids else [(1, top)], top)
    exact = store.expunged_since(name, param.modseq)
    matched = matched_uid(*param.seq_match, view) if param.seq_match and exact is None else 0
    gone = vanished(exact, wanted, view, matched)
    out = [b"VANISHED (EARLIER) " + gone.encode()] if gone else []
    for seq, uid in enumerate(view, 1):
        msg = box.msgs.get(uid)
        if msg is not None and msg.modseq > param.modseq and _within(wanted, uid):
            out.append(b"%d FETCH (UID %d FLAGS %s MODSEQ (%d))"
                       % (seq, uid, flags(msg), msg.modseq))
    return out


def fetch_vanished(store: MailStore, name: str, uids: SeqSet, since: int,
                   view: list[int]) -> bytes | None:
    """UID FETCH set ... (CHANGEDSINCE since VANISHED): the VANISHED (EARLIER)
    reply for the UIDs of the set expunged since, sent before the FETCHes."""
    top = store.box(name).uidnext - 1
    gone = vanished(store.expunged_since(name, since), _upto(spans(uids, top), top), view)
    return b"VANISHED (EARLIER) " + gone.encode() if gone else None


def _upto(wanted: list[Span], top: int) -> list[Span]:
    """Only UIDs ever given out (1 to UIDNEXT-1) can have vanished."""
    return [(lo, min(hi, top)) for lo, hi in wanted if lo <= top]


def vanished(exact: list[int] | None, wanted: Sequence[Span], view: list[int],
             matched: int = 0) -> str:
    """The VANISHED (EARLIER) set: UIDs in `wanted` gone from the session's
    `view` (ascending UIDs). `exact` is the index's record of the UIDs expunged
    since the client's MODSEQ, None if pruned; then every UID of `wanted` above
    `matched` (the highest UID seq-match-data proved unchanged) that is not in
    the view counts. "" when there are none."""
    spans = _clip(wanted, matched + 1)
    if exact is not None:
        shown = set(view)  # still shown here: its VANISHED comes when the view moves
        return seqset_from([u for u in exact if u not in shown and _within(spans, u)])
    out: list[str] = []
    for lo, hi in spans:
        i = bisect.bisect_left(view, lo)
        while lo <= hi:
            nxt = view[i] if i < len(view) else hi + 1
            if nxt > lo:
                end = min(nxt - 1, hi)
                out.append(str(lo) if lo == end else f"{lo}:{end}")
            lo = max(lo, nxt + 1)
            i += 1
    return ",".join(out)


def spans(s: SeqSet, largest: int) -> list[Span]:
    """A set as ascending, merged spans (`*` as `largest`)."""
    r = s.merged(largest)
    return list(zip(r.lows, r.highs, strict=True))


def _clip(wanted: Sequence[Span], low: int) -> list[Span]:
    return [(max(lo, low), hi) for lo, hi in wanted if hi >= low]


def _within(wanted: list[Span], n: int) -> bool:
    i = bisect.bisect_right(wanted, (n, 2**64)) - 1
    return i >= 0 and wanted[i][0] <= n <= wanted[i][1]


def matched_uid(seqs: SeqSet, uids: SeqSet, view: list[int]) -> int:
    """RFC 7162 3.2.5.2: the highest UID of the client's (sequence number, UID)
    pairs that still holds here; no UID up to it can have been expunged (the
    same count of messages has UIDs up to it, and none can be added below it).
    0 if none holds. (The parser made sure both sets are of one size.)"""
    a, b = _in_order(seqs), _in_order(uids)
    best = 0
    i = j = 0
    ao = bo = 0  # offsets into a[i], b[j]
    while i < len(a) and j < len(b):
        s0, u0 = a[i][0] + ao, b[j][0] + bo
        k = min(a[i][1] - s0, b[j][1] - u0) + 1  # pairs on which both run by one
        # In this run the pair t is (s0 + t, u0 + t); view[s0 + t - 1] - (u0 + t)
        # never falls as t grows (UIDs ascend), so the last t where it is 0
        # is found by bisection.
        last = min(k - 1, len(view) - s0)
        if last >= 0:
            lo, hi = 0, last
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if view[s0 + mid - 1] - (u0 + mid) <= 0:
                    lo = mid
                else:
                    hi = mid - 1
            if view[s0 + lo - 1] == u0 + lo:
                best = max(best, u0 + lo)
        ao, bo = ao + k, bo + k
        if a[i][0] + ao > a[i][1]:
            i, ao = i + 1, 0
        if b[j][0] + bo > b[j][1]:
            j, bo = j + 1, 0
    return best


def _in_order(s: SeqSet) -> list[Span]:
    """The ranges as the client wrote them (pairs go by position), each low..high."""
    return [(x, y) if x <= y else (y, x) for x, y in s.ranges]
