"""Learning a user's key from their own Autocrypt header (Autocrypt Level 1).

When an authenticated user sends through submission a message whose From is
their own address and which carries one Autocrypt header for that address,
its key becomes their key if they have none, or replaces theirs when the
message is newer than the key they have (the Level 1 rule: a message's
effective date is its Date, or now if that is in the future or missing;
only a newer effective date updates the stored key). Only the header is read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.parser
import email.policy
import email.utils
import logging
import time

from pillarbox import logs
from pillarbox.directory.keys import KeyRefused

log = logging.getLogger("pillarbox.autocrypt")


def parse_header(value: str) -> tuple[str, bytes] | None:
    """(addr, keydata) of one Autocrypt header value; None when malformed or
    it has a critical attribute we do not know (Level 1: then ignore it)."""
    attrs: dict[str, str] = {}
    for part in value.split(";"):
        name, eq, val = part.strip().partition("=")
        if not eq:
            return None
        name = name.strip().lower()
        if name in attrs:
            return None
        attrs[name] = val.strip()
    for name in attrs:
        if name not in ("addr", "keydata", "prefer-encrypt") and not name.startswith("_"):
            return None
    if "addr" not in attrs or "keydata" not in attrs:
        return None
    try:
        key = base64.b64decode("".join(attrs["keydata"].split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return attrs["addr"].lower(), key


def learn(encryption, user: str, header: bytes, now: float | None = None) -> str | None:
    """Blocking: store the key of `user`'s own Autocrypt header when it is
    theirs and newer. Returns what happened ("learned", "replaced",
    "unchanged", "older", a refusal reason) or None when there was nothing to learn."""
    if encryption is None or not encryption.learns(user):
        return None
    end = header.find(b"\r\n\r\n")
    head = header if end < 0 else header[: end + 2]
    try:
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        found = msg.get_all("Autocrypt") or []
        sender = email.utils.parseaddr(str(msg.get("From", "")))[1].lower()
        date = email.utils.parsedate_to_datetime(str(msg["Date"])) if msg["Date"] else None
    except Exception:
        return None
    user = user.lower()
    mine = [p for p in (parse_header(str(v)) for v in found) if p is not None]
    if sender != user or len(mine) != 1 or mine[0][0] != user:
        log.debug("autocrypt nothing to learn user=%s from=%s headers=%d valid=%d",
                  user, sender, len(found), len(mine))
        return None  # Level 1: more than one valid header counts as none
    now = time.time() if now is None else now
    effective = int(min(now, date.timestamp()) if date is not None else now)
    keys = encryption.keys
    record = keys.info(user)
    if record is not None and effective <= record.effective:
        return "older"
    try:
        info = keys.put(user, mine[0][1], source="autocrypt", effective=effective)
    except KeyRefused as e:
        logs.event(log, logging.INFO, "autocrypt key refused", user=user, reason=str(e))
        return str(e)
    except Exception as e:  # hostile keydata must not end in an unretrieved task error
        logs.event(log, logging.WARNING, "autocrypt key not stored", user=user, error=repr(e))
        return repr(e)
    if record is not None and record.fingerprint == info.fingerprint:
        return "unchanged"
    what = "learned" if record is None else "replaced"
    logs.event(log, logging.INFO, f"autocrypt key {what}", user=user,
               fingerprint=info.fingerprint.upper())
    return what


_running: set = set()


def learn_soon(encryption, user: str, header: bytes) -> None:
    """`learn` in a worker thread, after the reply (the key check takes a few ms)."""
    if not encryption.learns(user) or b"autocrypt:" not in header.lower():
        return
    task = asyncio.get_running_loop().create_task(
        asyncio.to_thread(learn, encryption, user, header))
    _running.add(task)
    task.add_done_callback(_running.discard)
