"""`pillarbox migrate`: bring the database named by `[storage] url` to this
version's schema (SQLite in data_dir, or PostgreSQL)."""

from __future__ import annotations

import argparse

from pillarbox.config import find_config_path, load
from pillarbox.store import backend


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
    finally:
        db.close()
    return 0
