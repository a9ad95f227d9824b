"""Aliases: an address maps to users, remote addresses, other aliases or `|command`.

`expand` follows aliases recursively (cascading) with loop detection, and
falls back to the domain's catch-all (`@domain`) for unknown local addresses.

Plus-addressing: a local address that no user or alias has, whose local
part holds one of the `delimiter` characters (`alice+shopping@`), stands for
the part before it (`alice@`), tried before the catch-all. The user reached
that way is noted in `Expansion.via` with the full address, for the
Delivered-To field and the detail folder.

A bare name (`root`, `postmaster`, `MAILER-DAEMON`) is a *local alias*, as in
/etc/aliases: only `pillarbox sendmail` names mail that way. It maps to
addresses or other bare names; `resolve_local` turns a bare name into
addresses, and a name without an alias becomes NAME@ the first domain. Local
aliases share the table with the others (an address always has an `@`, so
the two never meet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pillarbox.address import AddressError, domain_of, is_bare_name, normalize, normalize_domain
from pillarbox.directory.users import DirectoryError, Users

if TYPE_CHECKING:
    from pillarbox.store.postgresql import PgDatabase
    from pillarbox.store.sqlite import Database

MAX_DEPTH = 20


@dataclass
class Expansion:
    local: list[str] = field(default_factory=list)  # canonical user addresses
    remote: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # local addresses with no user/alias
    disabled: list[str] = field(default_factory=list)
    loop: bool = False
    # user address -> the plus address (alice+shopping@) it was reached through
    via: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.local or self.remote or self.commands)


def normalize_alias(alias: str) -> str:
    alias = alias.strip()
    if alias.startswith("@"):
        return "@" + normalize_domain(alias[1:])
    if is_bare_name(alias):
        return alias.lower()
    return normalize(alias)


def normalize_target(target: str, local: bool = False) -> str:
    """A target as stored; a local alias's targets are addresses or bare names."""
    target = target.strip()
    if local:
        if is_bare_name(target):
            return target.lower()
        if target.startswith("|"):
            raise DirectoryError(f"{target}: a local name's targets are addresses or names")
    if target.startswith("|"):
        if not target[1:].strip():
            raise DirectoryError("a |command target needs a command after the |")
        if not target.replace("\t", " ").isprintable():
            raise DirectoryError("a |command target must not hold control characters")
        return target
    return normalize(target)


class Aliases:
    def __init__(self, db: Database | PgDatabase, users: Users, local_domains: list[str],
                 delimiter: str = "+") -> None:
        self.db = db
        self.users = users
        self.local_domains = set(local_domains)
        self.delimiter = delimiter  # [delivery] recipient_delimiter; "" = off

    def base_address(self, address: str) -> str | None:
        """`alice@d` for `alice+detail@d` (first delimiter character), else None."""
        local, _, domain = address.rpartition("@")
        if not self.delimiter or local.startswith('"'):
            return None
        cut = min((i for i in (local.find(c) for c in self.delimiter) if i >= 0), default=-1)
        if cut <= 0:
            return None
        return f"{local[:cut]}@{domain}"

    def targets(self, alias: str) -> list[str]:
        if self.users.cache is not None:
            return self.users.cache.fresh().aliases.get(alias.lower(), [])
        rows = self.db.execute(
            "SELECT target FROM aliases WHERE alias = ? ORDER BY rowid", (alias.lower(),)
        ).fetchall()
        return [r[0] for r in rows]

    def add(self, alias: str, targets: list[str]) -> None:
        try:
            alias = normalize_alias(alias)
            norm = [normalize_target(t, local="@" not in alias) for t in targets]
        except AddressError as e:
            raise DirectoryError(str(e)) from None
        if not norm:
            raise DirectoryError("an alias needs at least one target")
        for t in norm:
            self.db.execute("INSERT INTO aliases (alias, target) VALUES (?, ?) "
                            "ON CONFLICT DO NOTHING", (alias, t))

    def delete(self, alias: str) -> None:
        try:
            alias = normalize_alias(alias)
        except AddressError as e:
            raise DirectoryError(str(e)) from None
        cur = self.db.execute("DELETE FROM aliases WHERE alias = ?", (alias,))
        if cur.rowcount == 0:
            raise DirectoryError(f"no such alias {alias}; see `pillarbox alias list`")

    def list(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for alias, target in self.db.execute(
            "SELECT alias, target FROM aliases ORDER BY alias, rowid"
        ):
            out.setdefault(alias, []).append(target)
        return out

    def resolve_local(self, name: str, domain: str) -> list[str]:
        """The addresses a name given to sendmail stands for (an address: itself)."""
        out: list[str] = []
        self._resolve(name.strip(), domain, out, ())
        return list(dict.fromkeys(out))

    def _resolve(self, name: str, domain: str, out: list[str], path: tuple[str, ...]) -> None:
        if not is_bare_name(name):
            out.append(normalize(name))
            return
        key = name.lower()
        targets = self.targets(key) if key not in path and len(path) <= MAX_DEPTH else []
        if not targets or key in targets:  # no alias, a loop, or "root: root, ..."
            out.append(f"{key}@{domain}")
            targets = [t for t in targets if t != key]
        for t in targets:
            self._resolve(t, domain, out, path + (key,))

    def owners(self, alias: str) -> set[str]:
        """Local users an alias delivers to (used to let them send as the alias)."""
        return set(self.expand(alias).local)

    def expand(self, address: str) -> Expansion:
        result = Expansion()
        self._expand(address.lower(), result, (), 0)
        # One user reached through several paths gets one copy.
        result.local = list(dict.fromkeys(result.local))
        result.remote = list(dict.fromkeys(result.remote))
        result.commands = list(dict.fromkeys(result.commands))
        return result

    def _expand(self, addr: str, out: Expansion, path: tuple[str, ...], depth: int) -> None:
        if addr in path or depth > MAX_DEPTH:
            out.loop = True
            return
        path = path + (addr,)
        targets = self.targets(addr)
        domain = domain_of(addr)
        if not targets and domain in self.local_domains:
            user = self.users.get(addr)
            if user:
                (out.local if user.enabled else out.disabled).append(user.address)
                return
            base = self.base_address(addr)
            if base is not None and base not in path:
                user = self.users.get(base)
                if user is not None:
                    if user.enabled and user.address not in out.local:
                        out.via.setdefault(user.address, addr)
                    (out.local if user.enabled else out.disabled).append(user.address)
                    return
                if self.targets(base):
                    self._expand(base, out, path, depth + 1)
                    return
            targets = self.targets("@" + domain)  # catch-all
            if not targets:
                out.unknown.append(addr)
                return
            if ("@" + domain) in path:
                out.loop = True
                return
            path = path + ("@" + domain,)
        elif not targets:
            out.remote.append(addr)
            return
        for t in targets:
            if t.startswith("|"):
                out.commands.append(t[1:].strip())
            elif t == addr:
                # An alias that includes itself means "keep a copy here".
                user = self.users.get(t)
                if user:
                    (out.local if user.enabled else out.disabled).append(user.address)
            else:
                self._expand(t, out, path, depth + 1)
