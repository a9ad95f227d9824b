"""Open the user directory (users and aliases) on the configured store.

Kept apart from server.py so that CLI commands open the directory without
importing the server and every endpoint (a CLI call is a process of its own).
"""

from __future__ import annotations

from pillarbox.config import Config
from pillarbox.directory.aliases import Aliases
from pillarbox.directory.cache import DirectoryCache
from pillarbox.directory.users import Users
from pillarbox.store import backend


def open_directory(config: Config, cached: bool = False) -> tuple[object, Users, Aliases]:
    """(database, users, aliases); `cached`: the server's in-memory copy, loaded now
    (and on PostgreSQL listening for other nodes' changes)."""
    db = backend.open_database(config.storage_url, config.data_dir)
    users = Users(db, DirectoryCache(db) if cached else None, config.limits.login_cache)
    if users.cache is not None:
        users.cache.fresh()
    return db, users, Aliases(db, users, config.domains,
                              config.delivery.recipient_delimiter)
