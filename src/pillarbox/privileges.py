"""Who the server runs as: a root-started server gives up root for `user`.

The order matters: the listening sockets are bound first (ports below 1024
need root), then data_dir and maildrop_dir are made the service user's, then
the process takes that user's groups, gid and uid, in that order (setuid
last: after it nothing can be changed back). Only then is anything opened
that the service user will later write (database, spool, keys).
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("pillarbox.privileges")


class PrivilegeError(Exception):
    """The configured user cannot be used; the message is the reason."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


def lookup(name: str) -> Account:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"no such user {name!r} on this system; create it (useradd "
                             f"--system --home-dir /var/lib/pillarbox --shell "
                             f"/usr/sbin/nologin {name})") from None
    if pw.pw_uid == 0:
        raise PrivilegeError(f"{name!r} is root; name an unprivileged user")
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def is_root() -> bool:
    return os.geteuid() == 0


def give_tree(root: Path, account: Account) -> int:
    """chown root and everything under it to the account, unless root is
    already its own (the usual case: no walk). Symbolic links themselves,
    never their targets. Returns the number of entries changed."""
    st = os.lstat(root)
    if st.st_uid == account.uid and st.st_gid == account.gid:
        return 0
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), account.uid, account.gid)
            changed += 1
    os.lchown(root, account.uid, account.gid)
    return changed + 1


def drop_to(account: Account) -> None:
    """Become the account for good: supplementary groups, gid, then uid."""
    os.setgroups(os.getgrouplist(account.name, account.gid))
    os.setgid(account.gid)
    os.setuid(account.uid)
    os.environ.update(USER=account.name, LOGNAME=account.name, HOME=account.home)
    if os.geteuid() != account.uid or os.getegid() != account.gid:
        raise PrivilegeError(f"could not become user {account.name}")
