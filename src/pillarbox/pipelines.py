"""The module part of the config: `[module.NAME]` instances, `[pipeline.ENDPOINT]`
checks and modifiers, `[[rule]]` delivery rules.

Parsed into plain data (ModuleSpec, Pipeline, Rule) that `config.Config`
holds; the server makes the instances from it. Without any of these tables
the result is the default: today's pipelines and no rules, and the registry
is not even consulted (no plugin is imported for a config that names none).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from pillarbox.check import Reply

ENDPOINTS = ("smtp", "submission", "submissions", "sendmail", "lmtp", "policy")
# What each endpoint does today, in module terms. The SMTP session runs these
# by direct calls (the fast path) whenever an endpoint's pipeline equals this.
DEFAULT_PIPELINES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "smtp": (("relay", "recipient"), ("received",)),
    "submission": (("sender", "relay", "recipient"),
                   ("received", "submission_headers", "dkim_sign")),
    "submissions": (("sender", "relay", "recipient"),
                    ("received", "submission_headers", "dkim_sign")),
    # `pillarbox sendmail` checks local recipients and writes its own Received
    # and From fields; a configured pipeline runs at pickup (queue/sendmail_pipeline.py).
    "sendmail": (("recipient",), ()),
    # LMTP (from Postfix or another MTA, which did its own checks): local
    # recipients only. The policy service (Postfix's check_policy_service)
    # answers with its checks' verdicts; it has none by default, and no modifiers.
    "lmtp": (("relay", "recipient"), ("received",)),
    "policy": ((), ()),
}
RULE_SOURCES = (*ENDPOINTS, "bounce")
_MATCH_KEYS = ("rcpt", "rcpt_domain", "sender", "source", "auth", "client_ip")
_RULE_KEYS = {*_MATCH_KEYS, "targets", "reply"}
_REPLY_RE = re.compile(r"([45])(\d\d) (\1\.\d{1,3}\.\d{1,3}) (\S.*)")


class PipelineError(Exception):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key


@dataclass(frozen=True)
class ModuleSpec:
    """One instance as configured: its kind and its validated options."""

    name: str
    kind: str
    role: str
    options: dict[str, Any]
    given: dict[str, Any]  # the options as written (for `config show`)


@dataclass
class Pipeline:
    checks: list[str]
    modifiers: list[str]

    def is_default(self, endpoint: str) -> bool:
        checks, modifiers = DEFAULT_PIPELINES[endpoint]
        return tuple(self.checks) == checks and tuple(self.modifiers) == modifiers


@dataclass
class Rule:
    """A delivery rule: every match key given must match (a list: any of its
    values); then the recipient goes to `targets`, or is refused with `reply`."""

    rcpt: list[str] = field(default_factory=list)  # addresses or globs
    rcpt_domain: list[str] = field(default_factory=list)
    sender: list[str] = field(default_factory=list)  # addresses or globs; "" = null sender
    source: list[str] = field(default_factory=list)
    auth: bool | list[str] | None = None  # True/False: any/no login; list: these users
    client_ip: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    reply: str = ""

    def __post_init__(self) -> None:
        self._nets = [ipaddress.ip_network(n, strict=False) for n in self.client_ip]

    @property
    def catch_all(self) -> bool:
        return not (self.rcpt or self.rcpt_domain or self.sender or self.source
                    or self.auth is not None or self.client_ip)

    @property
    def refusal(self) -> Reply | None:
        if not self.reply:
            return None
        return Reply(int(self.reply[:3]), self.reply[4:])

    def matches(self, rcpt: str, sender: str, source: str, auth: str | None,
                client_ip: str) -> bool:
        rcpt, sender = rcpt.lower(), sender.lower()
        if self.rcpt and not any(fnmatch.fnmatchcase(rcpt, p) for p in self.rcpt):
            return False
        if self.rcpt_domain and rcpt.rpartition("@")[2] not in self.rcpt_domain:
            return False
        if self.sender and not any(
                sender == p if not p else fnmatch.fnmatchcase(sender, p) for p in self.sender):
            return False
        if self.source and source not in self.source:
            return False
        if self.auth is not None:
            if isinstance(self.auth, bool):
                if bool(auth) != self.auth:
                    return False
            elif (auth or "").lower() not in self.auth:
                return False
        if self._nets:
            try:
                ip = ipaddress.ip_address(client_ip)
            except ValueError:
                return False
            if not any(ip.version == n.version and ip in n for n in self._nets):
                return False
        return True


def first_match(rules: list[Rule], rcpt: str, sender: str, source: str, auth: str | None,
                client_ip: str) -> Rule | None:
    for r in rules:
        if r.matches(rcpt, sender, source, auth, client_ip):
            return r
    return None


@dataclass
class Modules:
    """The module part of an effective config."""

    instances: dict[str, ModuleSpec] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=lambda: {
        e: Pipeline(list(c), list(m)) for e, (c, m) in DEFAULT_PIPELINES.items()})
    rules: list[Rule] = field(default_factory=list)

    def all_default(self) -> bool:
        return not self.rules and all(p.is_default(e) for e, p in self.pipelines.items())


# -- parsing ----------------------------------------------------------------------

def _strings(value: object, key: str, lower: bool = True) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PipelineError(key, f"expected a string or a list of strings, got {value!r}")
    return [v.strip().lower() if lower else v for v in value]


def parse(data: dict) -> Modules:
    """The [module.*], [pipeline.*] and [[rule]] tables of a config (already
    TOML-decoded); PipelineError names the table and key at fault."""
    raw_modules = data.get("module", {})
    raw_pipelines = data.get("pipeline", {})
    raw_rules = data.get("rule", [])
    out = Modules()
    if not (raw_modules or raw_pipelines or raw_rules):
        return out
    from pillarbox import registry  # only a config with module tables needs the kinds

    kinds = registry.kinds()
    if not isinstance(raw_modules, dict):
        raise PipelineError("module", "expected [module.NAME] tables")
    for name, table in raw_modules.items():
        if not isinstance(table, dict):
            raise PipelineError(f"module.{name}", "expected a table")
        if name in kinds:
            raise PipelineError(f"module.{name}", f"{name} is the name of a built-in kind; "
                                "give the instance another name")
    for name in raw_modules:
        out.instances[name] = _resolve(name, raw_modules, kinds, [])

    def ref(value: str, key: str, role: str) -> str:
        if value in out.instances:
            got = out.instances[value].role
        elif value in kinds:
            got = kinds[value].role
            required = [o.name for o in kinds[value].options if o.required]
            if required:
                raise PipelineError(key, f"kind {value} needs options ({', '.join(required)}): "
                                    f"define a [module.NAME] with kind = \"{value}\"")
        else:
            raise PipelineError(key, f"{value!r} is no [module.*] instance and no module kind")
        if got != role:
            raise PipelineError(key, f"{value} is a {got}, not a {role}")
        return value

    if not isinstance(raw_pipelines, dict):
        raise PipelineError("pipeline", "expected [pipeline.ENDPOINT] tables")
    for endpoint, table in raw_pipelines.items():
        key = f"pipeline.{endpoint}"
        if endpoint not in ENDPOINTS:
            raise PipelineError(key, f"unknown endpoint; expected one of {', '.join(ENDPOINTS)}")
        if not isinstance(table, dict):
            raise PipelineError(key, "expected a table")
        for k in table:
            if k not in ("checks", "modifiers"):
                raise PipelineError(f"{key}.{k}", "unknown key")
        p = out.pipelines[endpoint]
        if "checks" in table:
            p.checks = [ref(v, f"{key}.checks", "check")
                        for v in _strings(table["checks"], f"{key}.checks", lower=False)]
        if "modifiers" in table:
            p.modifiers = [ref(v, f"{key}.modifiers", "modifier")
                           for v in _strings(table["modifiers"], f"{key}.modifiers", False)]
            if endpoint == "policy" and p.modifiers:
                raise PipelineError(f"{key}.modifiers", "the policy service changes no "
                                    "message; give it checks only")

    if not isinstance(raw_rules, list):
        raise PipelineError("rule", "expected [[rule]] tables")
    for i, r in enumerate(raw_rules):
        out.rules.append(_rule(r, f"rule[{i}]", ref))
    return out


def _resolve(name: str, tables: dict, kinds: dict, seen: list[str]) -> ModuleSpec:
    """An instance's kind and options; `kind` may name another instance, whose
    options it starts from."""
    from pillarbox import registry

    key = f"module.{name}"
    if name in seen:
        raise PipelineError(f"{key}.kind", "reference cycle: " + " -> ".join([*seen, name]))
    table = dict(tables[name])
    kind_name = table.pop("kind", None)
    if not isinstance(kind_name, str) or not kind_name:
        raise PipelineError(f"{key}.kind", "required: the module kind (or another instance)")
    given: dict[str, Any] = {}
    if kind_name in kinds:
        kind = kinds[kind_name]
    elif kind_name in tables:
        base = _resolve(kind_name, tables, kinds, [*seen, name])
        kind, given = kinds[base.kind], dict(base.given)
    else:
        raise PipelineError(f"{key}.kind", f"unknown module kind {kind_name!r}")
    given.update(table)
    try:
        options = registry.validate_options(kind, key, given)
        if kind.validate is not None:
            kind.validate(options)
    except registry.OptionError as e:
        raise PipelineError(e.key, str(e)[len(e.key) + 2:]) from None
    except ValueError as e:  # "OPTION: why" from the kind's own check
        option, _, why = str(e).partition(": ")
        if not why or option not in options:
            option, why = "", str(e)
        raise PipelineError(f"{key}.{option}" if option else key, why) from None
    return ModuleSpec(name=name, kind=kind.name, role=kind.role, options=options, given=given)


def _rule(r: object, key: str, ref) -> Rule:
    if not isinstance(r, dict):
        raise PipelineError(key, "expected a table")
    for k in r:
        if k not in _RULE_KEYS:
            raise PipelineError(f"{key}.{k}", "unknown key")
    rule = Rule()
    for k in ("rcpt", "rcpt_domain", "sender"):
        if k in r:
            setattr(rule, k, _strings(r[k], f"{key}.{k}"))
    if "source" in r:
        rule.source = _strings(r["source"], f"{key}.source")
        for s in rule.source:
            if s not in RULE_SOURCES:
                raise PipelineError(f"{key}.source",
                                    f"unknown source {s!r}; expected {', '.join(RULE_SOURCES)}")
    if "auth" in r:
        rule.auth = r["auth"] if isinstance(r["auth"], bool) else _strings(r["auth"],
                                                                            f"{key}.auth")
    if "client_ip" in r:
        rule.client_ip = _strings(r["client_ip"], f"{key}.client_ip")
        for n in rule.client_ip:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise PipelineError(f"{key}.client_ip",
                                    f"not an IP address or network: {n!r}") from None
    if ("targets" in r) == ("reply" in r):
        raise PipelineError(key, "give either targets or reply")
    if "targets" in r:
        rule.targets = [ref(t, f"{key}.targets", "target")
                        for t in _strings(r["targets"], f"{key}.targets", lower=False)]
        if not rule.targets:
            raise PipelineError(f"{key}.targets", "expected at least one target")
    else:
        reply = r["reply"]
        if not isinstance(reply, str) or not _REPLY_RE.fullmatch(reply) or any(
                c in reply for c in "\r\n"):
            raise PipelineError(f"{key}.reply", 'expected an SMTP reply like '
                                f'"550 5.7.1 not here", got {reply!r}')
        rule.reply = reply
    rule.__post_init__()
    return rule


def warnings(mods: Modules) -> list[str]:
    out = []
    for i, r in enumerate(mods.rules):
        if r.catch_all and i + 1 < len(mods.rules):
            out.append(f"rule[{i + 1}]: can never match: rule[{i}] before it matches "
                       "every recipient")
            break
    return out
