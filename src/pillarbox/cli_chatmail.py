"""The CLI parts of chatmail mode: `user set ADDRESS allow-cleartext on|off`
and `expire [--dry-run] [--now TIME]` (docs/CHATMAIL.md)."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from pillarbox import address as addr

SETTINGS = ("allow-cleartext",)


class UsageError(Exception):
    pass


def user_set(cfg: Any, users: Any, address: str | None, words: list[str]) -> str:
    from pillarbox.directory import chatmail_accounts

    if not address or len(words) != 2 or words[0] not in SETTINGS \
            or words[1] not in ("on", "off"):
        raise UsageError("usage: pillarbox user set ADDRESS allow-cleartext on|off")
    a = addr.normalize(address)
    if not users.get(a):
        raise UsageError(f"no such user {a}; see `pillarbox user list`")
    chatmail_accounts.set_allow_cleartext(users.db, a, words[1] == "on")
    return f"{a}: allow-cleartext {words[1]}"


def parse_now(value: str) -> float:
    """--now: seconds since the epoch, or an ISO date/time (UTC unless it says)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds since the epoch or an ISO date, got {value!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def cmd_expire(cfg: Any, users: Any, args: argparse.Namespace) -> int:
    from pillarbox import expire

    report = expire.run(cfg, users, now=args.now, dry_run=args.dry_run)
    for line in report.lines():
        print(line)
    return 0


def add_parser(sub: Any, func: Any) -> None:
    s = sub.add_parser("expire", help="chatmail: delete inactive accounts and old messages")
    s.add_argument("--dry-run", action="store_true",
                   help="only report what would be removed")
    s.add_argument("--now", type=parse_now, default=None, metavar="TIME",
                   help="count ages from TIME (epoch seconds or ISO date) instead of now")
    s.set_defaults(func=func)


def init_text(text: str) -> str:
    """The `init` template turned into a chatmail relay's config: mode set,
    and the MX pipeline left to the chatmail profile."""
    text = text.replace('\nmode = "standard"\n', '\nmode = "chatmail"\n', 1)
    head, sep, tail = text.partition("\n[pipeline.smtp]\n")
    if sep:
        tail = "\n".join(f"# {line}" if line else line for line in tail.splitlines())
        text = (head + "\n# In chatmail mode the endpoints get the chatmail pipelines "
                "(docs/CHATMAIL.md);\n# a [pipeline.*] table written here replaces one.\n"
                "# [pipeline.smtp]\n" + tail + "\n")
    return text


def dns_text(cfg: Any) -> str:
    """What a chatmail relay publishes beyond the usual records."""
    if cfg.mode != "chatmail":
        return ""
    lines = [";", "; ---- chatmail relay ----"]
    for domain in cfg.domains:
        lines += [
            f"; {domain}: a strict DMARC policy (chatmail relays publish this instead of the",
            "; _dmarc record above; the MX itself refuses mail without a DKIM signature of",
            "; the From domain):",
            f";   _dmarc.{domain}. 3600 IN TXT \"v=DMARC1;p=reject;adkim=s;aspf=s\"",
        ]
    lines += [
        f"; Delta Chat finds this relay by its domain: publish A/AAAA records for {cfg.hostname}",
        "; and give it a certificate from a public CA ([tls] cert and key).",
        f"; Account QR code content: DCACCOUNT:https://{cfg.hostname}/new (served by the HTTP",
        "; endpoint's POST /new), or dcaccount: with the same URL.",
    ]
    if cfg.chatmail.iroh_relay:
        lines.append(f"; iroh relay given to clients: {cfg.chatmail.iroh_relay}")
    return "\n".join(lines) + "\n"
