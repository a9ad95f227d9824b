"""ESEARCH (RFC 4731) replies and SEARCHRES (RFC 5182), the saved search result `$`.

The saved result is kept as UIDs, so that it follows expunges: a message gone
from the session's view is gone from `$` too, and sequence numbers are those of
the view when the command that uses `$` runs.
"""

from __future__ import annotations

import bisect

from pillarbox.endpoint.imap.parser import Command, SeqSet, runs_text, search_keys, seqset_from


def seqset_of(numbers: list[int]) -> SeqSet:
    """Ascending, distinct numbers as a SeqSet of ranges (empty when there are none)."""
    ranges: list[tuple[int, int]] = []
    for n in numbers:
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], n)
        else:
            ranges.append((n, n))
    return SeqSet(tuple(ranges))


def uses_saved(cmd: Command) -> bool:
    """Whether a command names `$` (its message set or a search key)."""
    s = cmd.args.get("set")
    if isinstance(s, SeqSet) and s.saved:
        return True
    keys = cmd.args.get("keys")
    return keys is not None and _key_uses_saved(keys)


def _key_uses_saved(key: tuple) -> bool:
    return any(k[0] in ("SEQ", "UID") and k[1].saved for k in search_keys(key))


def resolve(cmd: Command, saved: list[int], view: list[int]) -> None:
    """Replace `$` in the command by the saved UIDs still in the session's view
    (`view`: its UIDs in sequence order): UIDs for a UID command and in search
    keys, sequence numbers for the message set of any other command."""
    present = []
    seqs = []
    for u in sorted(saved):
        i = bisect.bisect_left(view, u)
        if i < len(view) and view[i] == u:
            present.append(u)
            seqs.append(i + 1)
    s = cmd.args.get("set")
    if isinstance(s, SeqSet) and s.saved:
        cmd.args["set"] = seqset_of(present if cmd.uid else seqs)
    keys = cmd.args.get("keys")
    if keys is not None:
        cmd.args["keys"] = _resolve_key(keys, seqset_of(present))


def _resolve_key(key: tuple, uids: SeqSet) -> tuple:
    k = key[0]
    if k in ("SEQ", "UID") and key[1].saved:
        return ("UID", uids)  # the same messages whether named as $ or UID $
    if k == "AND":
        return (k, [_resolve_key(x, uids) for x in key[1]])
    if k == "NOT":
        return (k, _resolve_key(key[1], uids))
    if k == "OR":
        return (k, _resolve_key(key[1], uids), _resolve_key(key[2], uids))
    return key


def partial_slice(nums: list[int], partial: tuple[int, int]) -> list[int]:
    """The results at the PARTIAL positions: `1:10` the first ten, `-10:-1`
    (RFC 9394) the last ten; positions past the end are no error."""
    low, high = partial
    if low > 0:
        return nums[low - 1:high]
    n = len(nums)
    return nums[max(0, n + low):max(0, n + high + 1)]


def ordered_set(nums: list[int]) -> str:
    """Numbers in their given order (ESORT's ALL, RFC 5267 3.1): a range only
    for a run of ascending neighbours, since `5:3` would mean 3,4,5."""
    return runs_text(nums)


def to_save(ret: list[str], hits: list[int], partial: tuple[int, int] | None = None) -> list[int]:
    """RFC 5182 2.4: the UIDs SAVE keeps: the MIN and/or MAX only when asked with
    them and without ALL or COUNT, the PARTIAL ones when asked (RFC 9394), else
    all the hits (UIDs, in result order)."""
    if partial is not None:
        return partial_slice(hits, partial)
    if not hits or not {"MIN", "MAX"} & set(ret) or {"ALL", "COUNT"} & set(ret):
        return list(hits)
    out = []
    if "MIN" in ret:
        out.append(hits[0])
    if "MAX" in ret and hits[-1] not in out:
        out.append(hits[-1])
    return out


def response(tag: str, uid: bool, ret: list[str], nums: list[int],
             modseq: int | None, partial: tuple[int, int] | None = None,
             ordered: bool = False) -> str | None:
    """The ESEARCH reply for SEARCH or SORT RETURN (...), or None when SAVE was
    the only option (RFC 5182: then there is none). `nums` in result order:
    ascending for SEARCH, sorted for SORT (`ordered`: ALL and PARTIAL keep
    that order, MIN and MAX are the first and last, RFC 5267 3.1)."""
    if ret == ["SAVE"]:
        return None
    as_set = ordered_set if ordered else seqset_from
    parts = [f'ESEARCH (TAG "{tag}")']
    if uid:
        parts.append("UID")
    if nums and "MIN" in ret:
        parts.append(f"MIN {nums[0]}")
    if nums and "MAX" in ret:
        parts.append(f"MAX {nums[-1]}")
    if nums and "ALL" in ret:
        parts.append(f"ALL {as_set(nums)}")
    if "COUNT" in ret:
        parts.append(f"COUNT {len(nums)}")
    if partial is not None:
        low, high = partial
        shown = f"{low}:{high}" if low > 0 else f"{high}:{low}"
        part = partial_slice(nums, partial)
        parts.append(f"PARTIAL ({shown} {as_set(part) if part else 'NIL'})")
    if modseq is not None:
        parts.append(f"MODSEQ {modseq}")
    return " ".join(parts)
