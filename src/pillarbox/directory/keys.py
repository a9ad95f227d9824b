"""Users' OpenPGP public keys (certificates), for encryption at rest.

The API other parts use (encryption at delivery, WKD, a Postfix table
answering "no key"):

    keys = Keys(db)
    keys.get("alice@example.org")   # -> bytes (binary certificate) or None
    keys.info("alice@example.org")  # -> KeyRecord (fingerprint, source, dates) or None
    keys.put(address, cert_bytes)   # checks the key (openpgp.inspect), stores it binary
    keys.delete(address)            # -> True if there was one

`get` is one indexed SQLite read and safe from any thread. `put` refuses
(KeyRefused) a key that is unusable: expired, revoked, without a valid
encryption-capable subkey, or without a user ID for the address unless
`any_uid`. Addresses are stored lowercased.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pillarbox.directory import openpgp
from pillarbox.store.sqlite import Database

KeyRefused = openpgp.KeyRefused


@dataclass
class KeyRecord:
    address: str
    fingerprint: str
    source: str  # "import" (the CLI) | "autocrypt" (learned from the user's own mail)
    effective: int  # Autocrypt effective date (unix time) of a learned key; import time
    updated: int


class Keys:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, address: str) -> bytes | None:
        """The user's certificate in binary form, or None."""
        row = self.db.execute("SELECT cert FROM openpgp_keys WHERE address = ?",
                              (address.lower(),)).fetchone()
        return bytes(row[0]) if row else None

    def info(self, address: str) -> KeyRecord | None:
        row = self.db.execute(
            "SELECT address, fingerprint, source, effective, updated FROM openpgp_keys "
            "WHERE address = ?", (address.lower(),)).fetchone()
        return KeyRecord(*row) if row else None

    def put(self, address: str, data: bytes, any_uid: bool = False, source: str = "import",
            effective: int | None = None) -> openpgp.KeyInfo:
        """Check and store (replacing any key the user had); KeyRefused if unusable.
        `effective`: the Autocrypt effective date it counts from (default: now),
        so only a later Autocrypt header replaces it."""
        cert, info = openpgp.inspect(data, address, any_uid)
        effective = int(time.time()) if effective is None else effective
        self.db.execute(
            "INSERT INTO openpgp_keys (address, cert, fingerprint, source, effective, updated) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(address) DO UPDATE SET cert = excluded.cert, "
            "fingerprint = excluded.fingerprint, source = excluded.source, "
            "effective = excluded.effective, updated = excluded.updated",
            (address.lower(), bytes(cert), info.fingerprint, source, effective,
             int(time.time())))
        return info

    def addresses(self, domain: str) -> list[str]:
        """The addresses of `domain` that have a key (for WKD lookups by hash)."""
        suffix = "@" + domain.lower()
        rows = self.db.execute("SELECT address FROM openpgp_keys WHERE address LIKE ?",
                               ("%" + suffix,)).fetchall()
        return [r[0] for r in rows if r[0].endswith(suffix)]  # LIKE's _ matches any one

    def delete(self, address: str) -> bool:
        cur = self.db.execute("DELETE FROM openpgp_keys WHERE address = ?", (address.lower(),))
        return cur.rowcount > 0
