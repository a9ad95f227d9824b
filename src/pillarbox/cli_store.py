"""`pillarbox migrate`: bring the database named by `[storage] url` to this
version's schema (SQLite in data_dir, or PostgreSQL). `pillarbox export` and
`pillarbox import`: the directory, the Maildir files and the queue to a file
and back, to move an installation between SQLite and PostgreSQL
(store/transfer.py, store/maildir_transfer.py, queue/queue_transfer.py)."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from pillarbox.config import Config, find_config_path, load
from pillarbox.store import backend, transfer


def cmd_migrate(args: argparse.Namespace) -> int:
    cfg = load(find_config_path(args.config))
    db = backend.open_database(cfg.storage_url, cfg.data_dir, migrate=False)
    try:
        before = db.schema_version()
        applied = db.migrate()
        where = "PostgreSQL" if backend.is_postgresql(cfg.storage_url) else str(db.path)
        if applied:
            print(f"{where}: schema version {before} -> {before + applied}")
        else:
            print(f"{where}: schema version {before}, up to date")
        if _index(cfg)[1]:  # the shared IMAP index (store/pg_mailbox_index.py)
            from pillarbox.store import pg_mailbox_index

            n = pg_mailbox_index.prepare(db)
            top = len(pg_mailbox_index.MIGRATIONS)
            print(f"{where}: IMAP index schema version "
                  + (f"{top - n} -> {top}" if n else f"{top}, up to date"))
        for name, part in _components(cfg):  # tables of their own on PostgreSQL
            n = db.migrate_component(part.COMPONENT, part.MIGRATIONS)
            top = len(part.MIGRATIONS)
            print(f"{where}: {name} schema version "
                  + (f"{top - n} -> {top}" if n else f"{top}, up to date"))
    finally:
        db.close()
    return 0


def _components(cfg: Config) -> list[tuple[str, Any]]:
    """The modules with tables of their own that this config uses on PostgreSQL, so
    that `serve`'s database user needs no right to create tables."""
    if not backend.is_postgresql(cfg.storage_url):
        return []
    out: list[tuple[str, Any]] = []
    if cfg.shared_dir is not None:
        from pillarbox.queue import spool_lease  # which node delivers which spool

        out.append(("queue lease", spool_lease))
    if _uses_greylist(cfg):
        from pillarbox.check import greylist

        out.append(("greylist", greylist))
    return out


def _uses_greylist(cfg: Config) -> bool:
    """The config makes a `greylist` check (an instance, or the kind named in a pipeline)."""
    mods = cfg.modules
    named = {c for p in mods.pipelines.values() for c in p.checks}
    return (any(spec.kind == "greylist" for spec in mods.instances.values())
            or ("greylist" in named and "greylist" not in mods.instances))


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_export(args: argparse.Namespace) -> int:
    cfg = load(find_config_path(args.config))
    db = backend.open_database(cfg.storage_url, cfg.data_dir, migrate=False)
    target = Path(args.file)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            counts = transfer.export(db, out, _progress, _index(cfg), _sources(cfg))
        with tmp.open(encoding="utf-8") as back:  # what reached the disk reads back whole
            transfer.read(back)
        tmp.replace(target)
    except transfer.TransferError as e:
        tmp.unlink(missing_ok=True)
        from pillarbox.cli import CLIError

        raise CLIError(f"verify: {e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        db.close()
    print(f"exported {_summary(counts)} from {_where(cfg, db)} to {target}; verified")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    cfg = load(find_config_path(args.config))
    db = backend.open_database(cfg.storage_url, cfg.data_dir)
    from pillarbox.cli import CLIError  # cli imports this module

    try:
        src = open(args.file, encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as e:
        db.close()
        raise CLIError(f"cannot read {args.file}: {e.strerror}") from None
    try:
        with src:
            counts = transfer.import_(db, src, _progress, _index(cfg), _targets(cfg))
    except transfer.TransferError as e:
        raise CLIError(str(e)) from None
    except OSError as e:  # reading the file, or writing a Maildir file or the queue
        where = f" ({e.filename})" if e.filename else ""
        raise CLIError(f"import stopped: {e.strerror or e}{where}; what was written "
                       "before stays: start again into a fresh target") from None
    finally:
        db.close()
    print(f"imported {_summary(counts)} into {_where(cfg, db)}; verified")
    return 0


def _index(cfg) -> transfer.Index:
    """Where this config keeps the IMAP index (store/index_transfer.py)."""
    from pillarbox.target.mailbox import maildir_path

    shared = backend.is_postgresql(cfg.storage_url) and cfg.shared_dir is not None
    return functools.partial(maildir_path, cfg.mail_root), shared


def _sources(cfg) -> tuple[transfer.Source, ...]:
    """What travels after the tables: the Maildir files, then the queue."""
    from pillarbox.queue import queue_transfer
    from pillarbox.store import maildir_transfer

    return (maildir_transfer.Source(_index(cfg)[0], cfg.mail_root),
            queue_transfer.Source(cfg.queue_root))


def _targets(cfg) -> tuple[transfer.Target, ...]:
    from pillarbox import control
    from pillarbox.queue import queue_transfer
    from pillarbox.store import maildir_transfer

    def running() -> bool:
        return control.request(cfg.data_dir, "status", timeout=10) is not None

    return (maildir_transfer.Target(_index(cfg)[0], cfg.mail_root, _progress),
            queue_transfer.Target(cfg.queue_root, cfg.queue.min_free_space, running, _progress))


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{t} {n}" for t, n in counts.items() if n) or "an empty directory"


def _where(cfg, db) -> str:
    return "PostgreSQL" if backend.is_postgresql(cfg.storage_url) else str(db.path)
