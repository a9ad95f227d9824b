"""`pillarbox postfix`: the lines to add to Postfix's main.cf so that Postfix
asks this pillarbox about recipients and aliases (tcp_table), its policy
service, and hands it the mail for its domains over LMTP (docs/POSTFIX.md)."""

from __future__ import annotations

import argparse
import sys

from pillarbox import config as configmod
from pillarbox.config import Config


def _reach(host: str, port: int) -> str:
    """host:port as Postfix connects to it: a wildcard listener by loopback."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main_cf(cfg: Config) -> tuple[str, list[str]]:
    """The main.cf lines, and what is missing from the config for a full set."""
    missing = []
    lines = ["# pillarbox beside Postfix: add to main.cf, then `postfix reload`.",
             f"# Made by `pillarbox postfix` from {cfg.path}; see docs/POSTFIX.md.",
             f"virtual_mailbox_domains = {', '.join(cfg.domains)}"]
    lmtp = cfg.listen.get("lmtp", [])
    if lmtp:
        host, port = lmtp[0]
        where = f"unix:{host}" if port == 0 else f"inet:{_reach(host, port)}"
        lines.append(f"virtual_transport = lmtp:{where}")
    else:
        missing.append("listen.lmtp")
    access = cfg.postfix.recipient_access
    if access:
        lines.append(f"virtual_mailbox_maps = tcp:{_reach(*access[0])}")
    else:
        missing.append("postfix.recipient_access")
    if cfg.postfix.virtual_alias:
        lines.append(f"virtual_alias_maps = tcp:{_reach(*cfg.postfix.virtual_alias[0])}")
    else:
        missing.append("postfix.virtual_alias")
    restrictions = ["reject_unlisted_recipient"]
    if cfg.postfix.policy:
        restrictions.append(f"check_policy_service inet:{_reach(*cfg.postfix.policy[0])}")
    else:
        missing.append("postfix.policy")
    if access:
        restrictions.append(f"check_recipient_access tcp:{_reach(*access[0])}")
    lines.append("smtpd_recipient_restrictions =\n    "
                 + ",\n    ".join(restrictions))
    return "\n".join(lines) + "\n", missing


def cmd_postfix(args: argparse.Namespace) -> int:
    cfg = configmod.load(configmod.find_config_path(args.config))
    text, missing = main_cf(cfg)
    print(text, end="")
    if missing:
        print(f"note: not configured, so left out: {', '.join(missing)} "
              "(see docs/POSTFIX.md)", file=sys.stderr)
    return 0
