"""ESEARCH (RFC 4731) replies and SEARCHRES (RFC 5182), the saved search result `$`.

The saved result is kept as UIDs, so that it follows expunges: a message gone
from the session's view is gone from `$` too, and sequence numbers are those of
the view when the command that uses `$` runs.
"""

from __future__ import annotations

import bisect

from pillarbox.endpoint.imap.parser import Command, SeqSet, seqset_from


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
    stack = [key]
    while stack:
        k = stack.pop()
        if k[0] in ("SEQ", "UID") and k[1].saved:
            return True
        if k[0] == "AND":
            stack.extend(k[1])
        elif k[0] == "NOT":
            stack.append(k[1])
        elif k[0] == "OR":
            stack.extend(k[1:])
    return False


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


def to_save(ret: list[str], hits: list[int]) -> list[int]:
    """RFC 5182 2.4: the UIDs SAVE keeps: the MIN and/or MAX only when asked with
    them and without ALL or COUNT, else all the hits (UIDs, ascending)."""
    if not hits or not {"MIN", "MAX"} & set(ret) or {"ALL", "COUNT"} & set(ret):
        return list(hits)
    out = []
    if "MIN" in ret:
        out.append(hits[0])
    if "MAX" in ret and hits[-1] not in out:
        out.append(hits[-1])
    return out


def response(tag: str, uid: bool, ret: list[str], nums: list[int],
             modseq: int | None) -> str | None:
    """The ESEARCH reply for SEARCH RETURN (...), or None when SAVE was the only
    option (RFC 5182: then there is none). `nums` ascending."""
    if ret == ["SAVE"]:
        return None
    parts = [f'ESEARCH (TAG "{tag}")']
    if uid:
        parts.append("UID")
    if nums and "MIN" in ret:
        parts.append(f"MIN {nums[0]}")
    if nums and "MAX" in ret:
        parts.append(f"MAX {nums[-1]}")
    if nums and "ALL" in ret:
        parts.append(f"ALL {seqset_from(nums)}")
    if "COUNT" in ret:
        parts.append(f"COUNT {len(nums)}")
    if modseq is not None:
        parts.append(f"MODSEQ {modseq}")
    return " ".join(parts)
