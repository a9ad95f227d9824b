"""`pillarbox config show`: the effective configuration as TOML.

Every setting with its value in effect (defaults spelled out), the default
pipelines written as [pipeline.*] tables, module instances with all their
options. Loading the output again gives the same effective config (sizes in
bytes and durations in seconds, paths absolute)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re

from pillarbox import pipelines
from pillarbox.config import LISTEN_KINDS, POSTFIX_LISTENERS, Config, _hp


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _value(k)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # "5m" loads as 300, 300.0 or 300: one spelling
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, ipaddress.IPv4Network | ipaddress.IPv6Network):
        v = str(v)
    if isinstance(v, str):
        # JSON's escapes are TOML's; DEL is allowed in JSON strings, not in TOML.
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()
                                if x is not None) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _table(name: str, values: dict) -> list[str]:
    lines = [f"[{name}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items() if v is not None]
    return [*lines, ""]


def effective_toml(cfg: Config) -> str:
    out = [f"# pillarbox effective configuration of {cfg.path}", ""]
    top = {
        "hostname": cfg.hostname, "domains": cfg.domains, "data_dir": str(cfg.data_dir),
        "maildrop_dir": str(cfg.maildrop_dir) if cfg.maildrop_dir is not None else "",
        "user": cfg.user, "mode": cfg.mode, "log_level": cfg.log_level,
        "log_format": cfg.log_format,
    }
    out += [f"{k} = {_value(v)}" for k, v in top.items()] + [""]
    out += _table("listen", {k: [_hp(h, p) for h, p in cfg.listen.get(k, [])]
                             for k in LISTEN_KINDS})
    out += _table("postfix", {k: [_hp(h, p) for h, p in getattr(cfg.postfix, k)]
                              for k in POSTFIX_LISTENERS})
    out += _table("tls", {"cert": str(cfg.tls_cert or ""), "key": str(cfg.tls_key or "")})
    out += _table("storage", {"url": cfg.storage_url})
    out += _table("dns", {"nameservers": cfg.nameservers})
    for name, settings in (("limits", cfg.limits), ("queue", cfg.queue),
                           ("remote", cfg.remote), ("imap", cfg.imap),
                           ("delivery", cfg.delivery), ("chatmail", cfg.chatmail)):
        out += _table(name, dataclasses.asdict(settings))
    out += _table("http", dataclasses.asdict(cfg.http))
    out += _table("acme", {**dataclasses.asdict(cfg.acme),
                           "ca_file": str(cfg.acme.ca_file or "")})
    for r in cfg.routes:
        values = {"domains": r.domains, "senders": r.senders,
                  "host": _hp(r.host, r.port) if r.host else "", "tls": r.tls,
                  "auth_user": r.auth_user, "auth_password": r.auth_password}
        out += ["[[route]]", *_table("x", values)[1:]]
    mods = cfg.modules
    for name, spec in mods.instances.items():
        out += _table(f"module.{_key(name)}", {"kind": spec.kind, **spec.options})
    for endpoint in pipelines.ENDPOINTS:
        p = mods.pipelines[endpoint]
        out += _table(f"pipeline.{endpoint}", {"checks": p.checks, "modifiers": p.modifiers})
    for r in mods.rules:
        values = {k: getattr(r, k) for k in ("rcpt", "rcpt_domain", "sender", "source",
                                              "client_ip") if getattr(r, k)}
        if r.auth is not None:
            values["auth"] = r.auth
        values.update({"targets": r.targets} if r.targets else {"reply": r.reply})
        out += ["[[rule]]", *_table("x", values)[1:]]
    out += ["# A recipient no [[rule]] matches goes the default way: aliases, then local",
            "# mailboxes; other domains by a matching [[route]] or the MX hosts (remote)."]
    return "\n".join(out) + "\n"
