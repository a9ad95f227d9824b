"""Which module kinds exist: the built-in ones and the plugins installed as
Python packages (entry-point group `pillarbox.modules`), and the validation of
a module's options against its kind's Option list.

Kinds are found once, on first use, so loading the config of a server that
names no module costs nothing more than before.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pillarbox.module import Kind

log = logging.getLogger("pillarbox.registry")

ENTRY_POINT_GROUP = "pillarbox.modules"
ROLES = ("check", "modifier", "target")

# Python modules that export `KIND` (one Kind) or `KINDS` (several).
BUILTIN_MODULES = (
    "pillarbox.check.recipient",
    "pillarbox.check.relay",
    "pillarbox.check.sender",
    "pillarbox.check.quarantine",
    "pillarbox.check.dnsbl",
    "pillarbox.check.helo",
    "pillarbox.check.message_rate",
    "pillarbox.check.greylist",
    "pillarbox.check.authentication",
    "pillarbox.check.rspamd",
    "pillarbox.modify.received",
    "pillarbox.modify.submission",
    "pillarbox.modify.dkim_sign",
    "pillarbox.target.mailbox",
    "pillarbox.target.pipe",
    "pillarbox.target.remote",
    "pillarbox.target.webhook",
    "pillarbox.target.sink",
    "pillarbox.modify.rewrite",
    "pillarbox.modify.headers",
    "pillarbox.target.mailing_list",
    "pillarbox.check.e2ee",
    "pillarbox.modify.minimal_metadata",
)


class OptionError(Exception):
    """An option of one module is wrong; `key` is the dotted config key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key


def _kinds_of(mod: object) -> list[Kind]:
    found = getattr(mod, "KINDS", None)
    if found is None:
        one = getattr(mod, "KIND", None)
        found = [] if one is None else [one]
    return [k for k in found if isinstance(k, Kind)]


def builtin_kinds() -> dict[str, Kind]:
    out: dict[str, Kind] = {}
    for path in BUILTIN_MODULES:
        mod = importlib.import_module(path)
        for kind in _kinds_of(mod):
            out[kind.name] = kind
    return out


def plugin_kinds() -> dict[str, Kind]:
    """Kinds from installed packages. A plugin that fails to load is logged and
    left out: `check` then names its kind as unknown."""
    out: dict[str, Kind] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            kind = ep.load()
        except Exception as e:
            log.error("module plugin %s (%s) failed to load: %r", ep.name, ep.value, e)
            continue
        if not isinstance(kind, Kind) or kind.role not in ROLES:
            log.error("module plugin %s (%s) is not a pillarbox.module.Kind", ep.name, ep.value)
            continue
        out[kind.name] = kind
    return out


_cache: dict[str, Kind] | None = None


def kinds() -> dict[str, Kind]:
    """Every kind by name; a built-in kind's name cannot be taken by a plugin."""
    global _cache
    if _cache is None:
        found = plugin_kinds()
        builtin = builtin_kinds()
        for name in set(found) & set(builtin):
            log.warning("module plugin kind %s ignored: a built-in kind has that name", name)
        found.update(builtin)
        _cache = found
    return _cache


def forget() -> None:
    """Look again on the next `kinds()` (after installing a plugin, in tests)."""
    global _cache
    _cache = None


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def _fits(value: object, t: type | tuple[type, ...]) -> bool:
    ts = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool):  # TOML true is no integer
        return bool in ts
    if isinstance(value, int) and float in ts:
        return True
    return isinstance(value, ts)


def validate_options(kind: Kind, table: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of one instance with defaults filled in; OptionError names
    `table.key` for an unknown option, a missing required one, a wrong type."""
    known = {o.name: o for o in kind.options}
    for key in given:
        if key not in known:
            raise OptionError(f"{table}.{key}", f"unknown option of kind {kind.name}")
    out: dict[str, Any] = {}
    for opt in kind.options:
        if opt.name not in given:
            if opt.required:
                raise OptionError(f"{table}.{opt.name}", "required option missing")
            out[opt.name] = opt.default
            continue
        value = given[opt.name]
        if not _fits(value, opt.type):
            raise OptionError(f"{table}.{opt.name}",
                              f"expected {_type_name(opt.type)}, got {value!r}")
        out[opt.name] = value
    return out


@dataclass
class Env:
    """The server's shared services a module may use when it is made. A
    module takes what it needs by attribute and nothing else."""

    config: Any
    users: Any = None
    aliases: Any = None
    srs: Any = None
    signing: Any = None
    maildir: Any = None  # target.mailbox.MaildirWriter
    mail_root: Any = None
    remote: Any = None  # target.remote.RemoteTarget
    resolver: Any = None  # resolver.make_resolver: the shared DNS resolver and cache
    queue: Any = None  # queue.scheduler.Queue: enqueue(), sealer (the mailing_list target)
    encryption: Any = None  # modify.encryption_policy.Encryption: encryption at rest


def make_instances(mods: Any, env: Env) -> dict[str, Any]:
    """Every instance a config's modules (pipelines.Modules) name: the
    [module.*] ones, and built-in kinds named directly (default options).
    Nothing when every pipeline is the default and there are no rules: the
    endpoints then call today's functions directly."""
    if mods.all_default():
        return {}
    ks = kinds()
    out: dict[str, Any] = {}
    for name, spec in mods.instances.items():
        out[name] = ks[spec.kind].make(name, dict(spec.options), env)
    used = {n for p in mods.pipelines.values() for n in (*p.checks, *p.modifiers)}
    used |= {t for r in mods.rules for t in r.targets}
    for name in sorted(used - set(out)):
        kind = ks[name]
        out[name] = kind.make(name, validate_options(kind, name, {}), env)
    return out


async def close_instances(instances: dict[str, Any]) -> None:
    from pillarbox.module import Closable

    for inst in instances.values():
        if isinstance(inst, Closable):
            try:
                await inst.close()
            except Exception as e:  # one module's failure must not keep the others open
                log.warning("module close failed error=%r", e)
