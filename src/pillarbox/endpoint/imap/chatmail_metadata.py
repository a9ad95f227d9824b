"""METADATA in chatmail mode: the two entries Delta Chat uses, over the
ordinary per-user entries (store/metadata.py).

- `/private/devicetoken` (server entry): each SETMETADATA adds a push token
  (several devices per user); GETMETADATA gives them space-separated; NIL
  removes them all. Tokens live in the directory (chatmail_tokens) so the
  push notifier finds them without opening the user's mailbox index.
- `/shared/vendor/deltachat/irohrelay` (server entry): read-only, the
  configured [chatmail] iroh_relay (absent when that is "").
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from pillarbox.directory import chatmail_accounts as accounts
from pillarbox.store.metadata import SERVER, Metadata, MetadataError
from pillarbox.store.sqlite import Database

DEVICETOKEN = "/private/devicetoken"
IROHRELAY = "/shared/vendor/deltachat/irohrelay"


class ChatmailMetadata:
    def __init__(self, inner: Metadata, db: Database, user: str, iroh_relay: str) -> None:
        self.inner, self.db, self.user, self.iroh_relay = inner, db, user, iroh_relay

    def _special(self, name: str) -> bytes | None:
        if name == DEVICETOKEN:
            found = accounts.tokens(self.db, self.user, time.time())
            return " ".join(found).encode() if found else None
        return self.iroh_relay.encode() if self.iroh_relay else None

    def get(self, mailbox: str, entries: list[str], depth: int | None
            ) -> Iterator[tuple[str, bytes | None]]:
        special = (DEVICETOKEN, IROHRELAY) if mailbox == SERVER else ()
        rest = [e for e in entries if e.lower() not in special]
        for e in entries:
            if e.lower() in special:
                yield e.lower(), self._special(e.lower())
        if rest:
            yield from self.inner.get(mailbox, rest, depth)

    def set(self, mailbox: str, changes: list[tuple[str, bytes | None]]) -> None:
        if mailbox != SERVER:
            self.inner.set(mailbox, changes)
            return
        rest = []
        for name, value in changes:
            key = name.lower()
            if key == IROHRELAY:
                raise MetadataError(f"{IROHRELAY} is set by the server", "NOPRIVATE")
            if key != DEVICETOKEN:
                rest.append((name, value))
                continue
            if value is None:
                accounts.remove_token(self.db, self.user)
                continue
            token = value.decode("utf-8", "replace").strip()
            if not token or len(value) > accounts.MAX_TOKEN or any(c in token for c in "\r\n\0"):
                raise MetadataError("not a device token", f"MAXSIZE {accounts.MAX_TOKEN}")
            accounts.add_token(self.db, self.user, token, time.time())
        if rest:
            self.inner.set(mailbox, rest)
