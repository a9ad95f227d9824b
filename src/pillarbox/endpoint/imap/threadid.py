"""THREADID (RFC 8474 5.2) from a message's own header, so that it never changes.

The thread is named by its root's Message-ID as the message knows it: the
first ID in References (RFC 5322 3.6.4 keeps the thread's first message there),
else the first in In-Reply-To, else the message's own Message-ID. A first
message and the replies that keep References share the root's ID and so the
THREADID; a reply with only In-Reply-To to another reply lands in its own
thread. A message with none of these fields is a thread of its own. This is
less than THREAD=REFERENCES, which links a whole mailbox, but it needs no
other message and no stored state.
"""

from __future__ import annotations

import hashlib

from pillarbox.endpoint.imap import mime, thread

_FIELDS = ("references", "in-reply-to", "message-id")


def of(header: bytes, emailid: str) -> str:
    """The THREADID of a message: `T` and 24 hex digits (an RFC 8474 objectid)."""
    values: dict[str, str] = {}
    for name, block in mime.fields(header):
        if name in _FIELDS and name not in values:
            values[name] = mime.field_value(block).decode("utf-8", "replace")
    for name in _FIELDS:
        ids = thread.message_ids(values.get(name, ""))
        if ids:
            return "T" + hashlib.sha256(ids[0].encode()).hexdigest()[:24]
    return "T" + emailid[1:]  # no IDs: alone in its thread
