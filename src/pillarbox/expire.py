"""Expiry for chatmail mode (`pillarbox expire [--dry-run]`, and every
`[chatmail] expire_every` in the server): what a relay no longer needs goes.

- an account not logged in for `[chatmail] delete_inactive_users_after`
  days is deleted with its mail, tokens and last-login record;
- a message older than `delete_mails_after` days is removed, one larger than
  `large_message_size` after `delete_large_after` days.

Ages are counted from the file's modification time (its delivery) and the
last login's day; `now` is a parameter so tests set the clock. An account
without a last-login record (made before chatmail mode was on) gets today
as its last login, so it is never deleted on the first run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pillarbox.directory import chatmail_accounts as accounts
from pillarbox.target.mailbox import maildir_path

log = logging.getLogger("pillarbox.expire")

DAY = 86400


@dataclass
class Report:
    dry_run: bool
    accounts: list[str] = field(default_factory=list)  # deleted (or would be)
    messages: int = 0
    large: int = 0
    bytes: int = 0
    checked_accounts: int = 0

    def lines(self, with_addresses: bool = True) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} {len(self.accounts)} of {self.checked_accounts} accounts, "
               f"{self.messages} old messages and {self.large} large ones "
               f"({self.bytes} bytes)"]
        if with_addresses:
            out += [f"account {a}" for a in self.accounts]
        return out


def _message_files(root: Path) -> Iterator[Path]:
    """Message files of a user's Maildir: INBOX and its Maildir++ folders."""
    folders = [root] + ([p for p in root.glob(".*") if p.is_dir()] if root.is_dir() else [])
    for folder in folders:
        for sub in ("new", "cur"):
            try:
                names = os.listdir(folder / sub)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if not name.startswith("."):
                    yield folder / sub / name


def run(config: Any, users: Any, now: float | None = None, dry_run: bool = False) -> Report:
    """One expiry pass over every user (blocking: run it in a thread)."""
    now = time.time() if now is None else now
    s = config.chatmail
    db = users.db
    mail_root = config.mail_root
    report = Report(dry_run)
    logins = accounts.last_logins(db)
    inactive_before = now - s.delete_inactive_users_after * DAY
    old_before = now - s.delete_mails_after * DAY
    large_before = now - s.delete_large_after * DAY
    for user in users.list():
        report.checked_accounts += 1
        address = user.address
        root = maildir_path(mail_root, address)
        last = logins.get(address)
        if last is None:
            if not dry_run:
                accounts.set_last_login(db, address, accounts.day_of(now))
        elif last < inactive_before:
            report.accounts.append(address)
            if not dry_run:
                users.delete(address)
                accounts.forget(db, address)
                shutil.rmtree(root, ignore_errors=True)
            continue
        for path in _message_files(root):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime < old_before:
                report.messages += 1
            elif st.st_size > s.large_message_size and st.st_mtime < large_before:
                report.large += 1
            else:
                continue
            report.bytes += st.st_size
            if not dry_run:
                path.unlink(missing_ok=True)
    if users.cache is not None and report.accounts and not dry_run:
        users.cache.invalidate()
    return report
