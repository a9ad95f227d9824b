"""Move the directory between backends: `pillarbox export` and `pillarbox import`.

The directory is every table that store/sqlite.py's MIGRATIONS create
(users with their password hashes, aliases, sender rights, lists, chatmail
accounts, OpenPGP keys), so a table added there travels without a change
here. The file is JSON lines, readable and diffable:

    {"format": "pillarbox-directory", "version": 1, "schema": 6, "source": "sqlite"}
    {"table": "users", "columns": [...], "rows": 2, "sha256": "..."}
    ["alice@example.org", "$argon2id$...", 1, 0, 0, 1700000000.0]
    ...
    {"blob": "maildir", "owner": "alice@example.org", "path": "cur/1700000000.M1P2.host:2,S"}
    "UmV0dXJuLVBhdGg6IDw..."
    {"size": 1234, "chunks": 1, "sha256": "..."}
    ...
    {"end": true, "tables": 9, "blobs": 12}

Values are JSON's own, bytes as {"b64": "..."}. Rows come sorted by their
encoded line, except where their order means something (an alias's targets
in the order they were added), so the same directory gives the same file
from SQLite and from PostgreSQL. Each table's digest covers its row lines:
`import` checks the file against it before writing, writes everything in one
transaction, then reads the tables back and checks them again (the verify step).

After the tables come blobs (store/blob_lines.py): the Maildir files
(store/maildir_transfer.py) and the queued messages (queue/queue_transfer.py),
each streamed in chunks with its SHA-256. An import reads the whole file once
to check every digest before it writes anything, then a second time to write.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

from pillarbox.store import blob_lines, index_transfer
from pillarbox.store.sqlite import MIGRATIONS

FORMAT = "pillarbox-directory"
VERSION = 2  # 2: blobs (Maildir files, the queue) after the tables
READS = (1, 2)
# Tables whose rows keep their insertion order (SQLite's rowid; PostgreSQL's
# `rowid` column, PG_AFTER in store/postgresql.py).
ORDERED = {"aliases"}
PG_ONLY_COLUMNS = {"rowid"}
PROGRESS_EVERY = 1000  # rows between progress lines
BATCH = 500  # rows per INSERT batch

Progress = Callable[[str], None]
# Where the IMAP index is (index_transfer.py): each address's Maildir, and whether
# the index is the shared one in PostgreSQL. None: the directory only.
Index = tuple[index_transfer.Maildir, bool]


class Blob:
    """A blob as the first reading of a file found it: its head and trailer."""

    def __init__(self, head: dict, trailer: dict) -> None:
        self.head = head
        self.trailer = trailer


class Source(Protocol):
    """What writes blobs of one kind into an export."""

    def header(self) -> dict[str, Any]: ...

    def write(self, out: IO[str], progress: Progress, db: Any) -> dict[str, int]: ...


class Writer(Protocol):
    def write(self, chunk: bytes) -> None: ...

    def close(self, trailer: dict) -> None: ...


class Target(Protocol):
    """Where the blobs of one kind go in an import: `check` before anything is
    written (raising TransferError), `open` per blob in the second reading (None:
    skip it), `verify` once all are written; returns counts for the summary."""

    kind: str

    def check(self, header: dict, blobs: list[Blob]) -> None: ...

    def open(self, head: dict) -> Writer | None: ...

    def verify(self, progress: Progress) -> dict[str, int]: ...


class TransferError(Exception):
    """The file or the target is not fit for an import (said in plain words)."""


def tables(schema: int = len(MIGRATIONS)) -> list[str]:
    """The directory's tables as of schema version `schema`, in creation order."""
    out: list[str] = []
    for sql in MIGRATIONS[:schema]:
        out += re.findall(r"\bCREATE\s+TABLE\s+(\w+)", sql, re.I)
    return out


def _columns(kind: str, q: Any, table: str) -> list[str]:
    """The table's columns as the database has them (`q` runs queries: the
    database or one of its transactions)."""
    if kind == "sqlite":
        cols = [r[1] for r in q.execute(f"PRAGMA table_info({table})")]
    else:
        cols = [r[0] for r in q.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))]
    return [c for c in cols if c not in PG_ONLY_COLUMNS]


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"], validate=True)
    return value


def _line(row: tuple) -> str:
    return json.dumps([_encode(v) for v in row], separators=(",", ":"))


def _lines(q: Any, table: str, cols: list[str]) -> list[str]:
    order = " ORDER BY rowid" if table in ORDERED else ""
    lines = [_line(tuple(r)) for r in
             q.execute(f"SELECT {', '.join(cols)} FROM {table}{order}").fetchall()]
    return lines if table in ORDERED else sorted(lines)


def _digest(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


@contextlib.contextmanager
def _snapshot(db: Any) -> Iterator[Any]:
    """A read transaction: every table as of one moment, writers not held up."""
    if db.kind == "sqlite":
        c = db.conn()
        c.execute("BEGIN")  # deferred: a WAL read snapshot from the first SELECT on
        try:
            yield c
        finally:
            c.execute("COMMIT")
    else:
        with db.transaction() as tx:  # one snapshot for every table, not one per statement
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield tx


def export(db: Any, out: IO[str], progress: Progress, index: Index | None = None,
           sources: tuple[Source, ...] = ()) -> dict[str, int]:
    """Write the directory of `db` to `out`, every table as of one moment (one
    read transaction, while the server may be writing), and with `index` every
    user's IMAP index after it, then the blobs of `sources`; rows per table."""
    schema = db.schema_version()
    head = {"format": FORMAT, "version": VERSION, "schema": schema, "source": db.kind}
    for source in sources:
        head.update(source.header())
    out.write(json.dumps(head) + "\n")
    counts: dict[str, int] = {}
    read_: dict[str, tuple[list[str], list[str]]] = {}
    with _snapshot(db) as q:
        for t in tables(schema):
            cols = _columns(db.kind, q, t)
            read_[t] = (cols, _lines(q, t, cols))
        if index is not None:
            for t, rows in index_transfer.read(q, *index).items():
                read_[t] = (index_transfer.columns(t), sorted(_line(r) for r in rows))
    for table in read_:
        cols, lines = read_[table]
        out.write(json.dumps({"table": table, "columns": cols, "rows": len(lines),
                              "sha256": _digest(lines)}) + "\n")
        for i, line in enumerate(lines, start=1):
            out.write(line + "\n")
            if i % PROGRESS_EVERY == 0:
                progress(f"{table}: {i}/{len(lines)} rows")
        progress(f"{table}: {len(lines)} rows")
        counts[table] = len(lines)
    tables_ = len(counts)
    blobs = 0
    for source in sources:
        done = source.write(out, progress, db)
        blobs += sum(v for k, v in done.items() if not k.endswith(" bytes"))
        counts.update(done)
    out.write(json.dumps({"end": True, "tables": tables_, "blobs": blobs}) + "\n")
    return counts


class Section:
    def __init__(self, table: str, columns: list[str], lines: list[str], digest: str) -> None:
        self.table = table
        self.columns = columns
        self.lines = lines
        self.digest = digest


def read(src: IO[str], open_blob: Callable[[dict], Writer | None] | None = None
         ) -> tuple[dict, list[Section], list[Blob]]:
    """The file's header, tables and blobs, each checked against its row count
    and digest; with `open_blob`, each blob's bytes go to the writer it gives."""
    try:
        return _read(src, open_blob)
    except blob_lines.BlobError as e:
        raise TransferError(str(e)) from None
    except (ValueError, KeyError, TypeError) as e:  # JSON, base64, missing fields
        raise TransferError(f"not a pillarbox directory export: {e}") from None


def _read(src: IO[str], open_blob: Callable[[dict], Writer | None] | None
          ) -> tuple[dict, list[Section], list[Blob]]:
    header = json.loads(src.readline() or "null")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TransferError("not a pillarbox directory export (no header line)")
    if header.get("version") not in READS:
        raise TransferError(f"export format version {header.get('version')}, "
                            f"this pillarbox reads {VERSION}")
    if not isinstance(header.get("schema"), int) or header["schema"] > len(MIGRATIONS):
        raise TransferError(f"the export has schema version {header.get('schema')}, this "
                            f"pillarbox knows up to {len(MIGRATIONS)}: import it with a newer "
                            "pillarbox")
    known = set(tables(header["schema"])) | set(index_transfer.TABLES)
    sections: list[Section] = []
    blobs: list[Blob] = []
    while True:
        raw = src.readline()
        if not raw:
            raise TransferError("the export is cut short (no end line)")
        head = json.loads(raw)
        if head.get("end"):
            if head.get("tables") != len(sections) or head.get("blobs", 0) != len(blobs):
                raise TransferError("the export's end line does not match its tables")
            return header, sections, blobs
        if "blob" in head:
            if not isinstance(head["blob"], str):
                raise TransferError("a file in the export has no kind")
            writer = open_blob(head) if open_blob is not None else None
            trailer = blob_lines.read(src, writer.write if writer is not None else None)
            if writer is not None:
                writer.close(trailer)
            blobs.append(Blob(head, trailer))
            continue
        table, cols = head["table"], head["columns"]
        if (table not in known or not all(re.fullmatch(r"\w+", c) for c in cols)
                or (table in index_transfer.TABLES and cols != index_transfer.columns(table))):
            raise TransferError(f"the export names an unknown table or column: {table}")
        lines = []
        for _ in range(head["rows"]):
            line = src.readline().rstrip("\n")
            row = json.loads(line)
            if not isinstance(row, list) or len(row) != len(cols):
                raise TransferError(f"{table}: a row does not match the columns")
            for v in row:
                if not isinstance(_decode(v), (type(None), int, float, str, bytes)):
                    raise TransferError(f"{table}: a value that is not a column's")
            lines.append(line)
        if _digest(lines) != head["sha256"]:
            raise TransferError(f"{table}: the rows do not match the digest in the export "
                                "(file changed or damaged)")
        sections.append(Section(table, cols, lines, head["sha256"]))


def _not_empty(db: Any, names: list[str]) -> list[str]:
    return [f"{t} ({n})" for t in names
            if (n := db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])]


def import_(db: Any, src: IO[str], progress: Progress, index: Index | None = None,
            targets: tuple[Target, ...] = ()) -> dict[str, int]:
    """Load an export into `db`, whose directory must be empty, in one
    transaction, then verify; rows per table. With `index`, the IMAP index's rows
    of the file go where the target keeps it (which must hold none of it). The
    blobs go to the `targets` of their kind (a kind without one is refused), in
    a second reading of `src`, once everything is checked and the tables are in."""
    header, sections, blobs = read(src)
    full = _not_empty(db, tables())
    if full:
        raise TransferError("the target directory is not empty: " + ", ".join(full)
                            + "; import into a fresh database")
    by_kind = {t.kind: t for t in targets}
    for b in blobs:
        if b.head["blob"] not in by_kind:
            raise TransferError(f"the export holds files of a kind this import does not "
                                f"take: {b.head['blob']}")
    for t in targets:
        t.check(header, [b for b in blobs if b.head["blob"] == t.kind])
    counts = _import_tables(db, sections, progress, index)
    if blobs:
        src.seek(0)
        read(src, lambda head: by_kind[head["blob"]].open(head))
    for t in targets:
        counts.update(t.verify(progress))
    return counts


def _import_tables(db: Any, sections: list[Section], progress: Progress,
                   index: Index | None) -> dict[str, int]:
    rows = [s for s in sections if s.table in index_transfer.TABLES]
    sections = [s for s in sections if s.table not in index_transfer.TABLES]
    for s in sections:
        unknown = set(s.columns) - set(_columns(db.kind, db, s.table))
        if unknown:
            raise TransferError(f"{s.table}: the target has no column "
                                f"{', '.join(sorted(unknown))}")
    if index is None or not rows:
        _load(db, sections, progress)
        verify(db, sections)
        return {s.table: len(s.lines) for s in sections}
    maildir, shared = index
    owners = sorted({json.loads(x)[0] for s in rows for x in s.lines})
    full = index_transfer.not_empty(db, maildir, shared, owners)
    if full:
        raise TransferError("the target's IMAP index is not empty: " + ", ".join(full))
    if shared:  # tables of the same database: one transaction for all of it
        from pillarbox.store import pg_mailbox_index

        pg_mailbox_index.prepare(db)
        _load(db, sections + rows, progress)
        verify(db, sections + rows)
    else:
        _load(db, sections, progress)
        verify(db, sections)
        index_transfer.write_sqlite(maildir, {s.table: [
            tuple(_decode(v) for v in json.loads(x)) for x in s.lines] for s in rows})
        got = index_transfer.read(db, maildir, shared)
        for s in rows:
            lines = sorted(_line(r) for r in got[s.table])
            if _digest(lines) != s.digest:
                raise TransferError(f"verify: {s.table} holds {len(lines)} rows that differ "
                                    f"from the export's {len(s.lines)}")
        progress(f"IMAP index: {len(owners)} users")
    return {s.table: len(s.lines) for s in sections + rows}


def _load(db: Any, sections: list[Section], progress: Progress) -> None:
    with db.transaction() as tx:
        for s in sections:
            sql = (f"INSERT INTO {s.table} ({', '.join(s.columns)}) "
                   f"VALUES ({', '.join('?' * len(s.columns))})")
            for start in range(0, len(s.lines), BATCH):
                batch = s.lines[start:start + BATCH]
                tx.executemany(sql, [tuple(_decode(v) for v in json.loads(x)) for x in batch])
                done = start + len(batch)
                if done % PROGRESS_EVERY == 0 and done < len(s.lines):
                    progress(f"{s.table}: {done}/{len(s.lines)} rows")
            progress(f"{s.table}: {len(s.lines)} rows")


def verify(db: Any, sections: list[Section]) -> None:
    """Each table as read back from `db` is the export's, row for row."""
    for s in sections:
        got = _lines(db, s.table, s.columns)
        if _digest(got) != s.digest:
            raise TransferError(f"verify: {s.table} holds {len(got)} rows that differ from "
                                f"the export's {len(s.lines)}")
