"""IMAP4rev2 (RFC 9051) rules for a session that sent ENABLE IMAP4rev2.

A session starts as IMAP4rev1; ENABLE IMAP4rev2 switches it for the rest of
its login. The session asks here what differs:

- mailbox names are UTF-8 (5.1): names the client sends are turned into the
  store's modified UTF-7 (`inbound`), names sent back are shown in UTF-8
  (`shown`, `quote`), and LIST matches its patterns against the UTF-8 names;
- \\Recent is gone: no RECENT response, no \\Recent in FLAGS, and the grammar
  has no STATUS RECENT nor SEARCH NEW/OLD/RECENT (`refusal` answers BAD);
- SEARCH answers with ESEARCH, RETURN (ALL) when no RETURN is given (6.4.4);
- SELECT/EXAMINE send a LIST response for the mailbox and no UNSEEN code.
"""

from __future__ import annotations

import re

from pillarbox.endpoint.imap import mutf7
from pillarbox.endpoint.imap.parser import Command, search_keys

NAME_ARGS = ("mailbox", "old", "new")  # the arguments that name a mailbox of the store
REMOVED_SEARCH_KEYS = frozenset({"NEW", "OLD", "RECENT"})


def refusal(cmd: Command) -> str | None:
    """Why a command is not IMAP4rev2 (the BAD text), or None."""
    items = cmd.args.get("items") or cmd.args.get("status") or ()
    if cmd.name in ("STATUS", "LIST") and "RECENT" in items:
        return "RECENT is no STATUS item in IMAP4rev2 (RFC 9051 removed \\Recent)"
    keys = cmd.args.get("keys")
    if keys is not None and _uses(keys, REMOVED_SEARCH_KEYS):
        return "NEW, OLD and RECENT are no search keys in IMAP4rev2 (RFC 9051 removed \\Recent)"
    return None


def _uses(key: tuple, names: frozenset[str]) -> bool:
    return any(k[0] in names for k in search_keys(key))


def inbound(cmd: Command) -> None:
    """The command's mailbox names (UTF-8) as the store's modified UTF-7. LIST
    and LSUB keep their reference and patterns: they match UTF-8 names."""
    for key in NAME_ARGS:
        name = cmd.args.get(key)
        if isinstance(name, str):
            cmd.args[key] = mutf7.encode(name)


def shown(name: str) -> str:
    """A store name as an IMAP4rev2 client sees it."""
    return mutf7.decode(name)


_QUOTABLE = re.compile(rb"[^\x00-\x1f\x7f]{0,1000}\Z")


def quote(name: str) -> bytes:
    """A store name as an IMAP4rev2 string."""
    return quote_text(shown(name))


def quote_text(text: str) -> bytes:
    """UTF-8 text as an IMAP4rev2 string: UTF-8 may stand in a quoted string
    (RFC 9051 4.3); text with bytes a quoted string cannot hold goes as a
    literal."""
    raw = text.encode("utf-8", "surrogateescape")
    if _QUOTABLE.match(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw
