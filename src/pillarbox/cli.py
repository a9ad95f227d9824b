"""The `pillarbox` command line. Every error prints `error: ...` and exits 1
(`sendmail` with too little disk space: 75, EX_TEMPFAIL, as sendmail does)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import pwd
import sys
import time
from email.utils import formatdate, getaddresses, make_msgid
from pathlib import Path

from pillarbox import address as addr
from pillarbox import cli_chatmail, control
from pillarbox import config as configmod
from pillarbox.check import recipient
from pillarbox.config import Config, ConfigError
from pillarbox.directory import password_policy
from pillarbox.directory.users import DirectoryError
from pillarbox.printable import escape
from pillarbox.store.backend import SchemaTooNew, StoreUnavailable


class CLIError(Exception):
    pass


EX_TEMPFAIL = 75  # sysexits.h: try again later (sendmail on a full disk)


def _load(args: argparse.Namespace) -> Config:
    return configmod.load(configmod.find_config_path(args.config))


def _human(n: int) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _read_password(args: argparse.Namespace, cfg: Config, address: str) -> str:
    """A new password for `address`, from the terminal or stdin, refused if weak."""
    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CLIError("no terminal to ask for a password; use --password-stdin")
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != pw:
            raise CLIError("the passwords differ")
    if not pw:
        raise CLIError("the password must not be empty")
    problem = password_policy.weakness(pw, address, cfg.limits.min_password_length)
    if problem:
        raise CLIError(problem)
    return pw


# -- init / check / serve ---------------------------------------------------

PRODUCTION_LISTEN = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143,
                     "imaps": 993}
PRODUCTION_DATA_DIR = "/var/lib/pillarbox"
PRODUCTION_MAILDROP_DIR = "/var/spool/pillarbox/maildrop"
PRODUCTION_USER = "pillarbox"


def _ask(question: str, given: str | None, default: str) -> str:
    """A value from the command line, else from the terminal (the default on
    an empty answer), else the default."""
    if given is not None:
        return given
    if not sys.stdin.isatty():
        return default
    answer = input(f"{question} [{default}]: ").strip()
    return answer or default


def _set(text: str, key: str, value: str) -> str:
    """The template with `key = ...` (one line, at the start) set to value."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.split("=", 1)[0].strip() == key and not line.startswith("#"):
            comment = line[line.index("#"):] if "#" in line.split("=", 1)[1] else ""
            lines[i] = f"{line.split('=', 1)[0]}= {value}" + (f"   {comment}" if comment
                                                            else "\n")
            return "".join(lines)
    raise AssertionError(f"{key} is not in the template")


def _production_text(text: str, data_dir: str, maildrop_dir: str, user: str) -> str:
    for kind, port in PRODUCTION_LISTEN.items():
        text = _set(text, kind, f'["0.0.0.0:{port}", "[::]:{port}"]')
    text = _set(text, "data_dir", json.dumps(data_dir))
    text = _set(text, "maildrop_dir", json.dumps(maildrop_dir))
    return _set(text, "user", json.dumps(user))


def cmd_init(args: argparse.Namespace) -> int:
    from pillarbox import tls

    try:
        domain = addr.normalize_domain(args.domain)
    except addr.AddressError as e:
        raise CLIError(f"--domain: {e}") from None
    chatmail = getattr(args, "mode", "standard") == "chatmail"
    # A chatmail relay's hostname is its domain (Delta Chat connects to the domain).
    hostname = (args.hostname or (domain if chatmail else f"mx.{domain}")).lower()
    d = Path(args.dir)
    cfg_path = d / "pillarbox.toml"
    if cfg_path.exists():
        raise CLIError(f"{cfg_path} already exists; remove it or choose another --dir")
    text = configmod.TEMPLATE.format(hostname=hostname, domain=domain)
    if chatmail:
        text = cli_chatmail.init_text(text)
    if args.production:
        data_dir = _ask("data directory", args.data_dir, PRODUCTION_DATA_DIR)
        maildrop_dir = args.maildrop_dir or PRODUCTION_MAILDROP_DIR
        user = _ask("service user", args.user, PRODUCTION_USER)
        if not user:
            raise CLIError("--production needs a service user (--user NAME)")
        text = _production_text(text, data_dir, maildrop_dir, user)
    else:
        if args.data_dir is not None:
            text = _set(text, "data_dir", json.dumps(args.data_dir))
        if args.maildrop_dir is not None:
            text = _set(text, "maildrop_dir", json.dumps(args.maildrop_dir))
        if args.user is not None:
            text = _set(text, "user", json.dumps(args.user))
    configmod.from_dict(__import__("tomllib").loads(text), cfg_path)  # still valid
    d.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(text)
    if args.production:  # the service user and `sendmail` callers read it; no secret in it
        cfg_path.chmod(0o644)
    cfg = configmod.load(cfg_path)
    from pillarbox.store import datadir

    datadir.prepare(cfg.data_dir)
    tls.make_self_signed(cfg.cert_path, cfg.key_path, hostname)
    from pillarbox.modify import dkim_sign

    selectors = dkim_sign.generate_keys(cfg.dkim_dir, domain)
    from pillarbox.directory.connect import open_directory

    open_directory(cfg)
    print(f"wrote {cfg_path} (hostname {hostname}, domain {domain})")
    print(f"data directory {cfg.data_dir}, self-signed TLS pair in {cfg.cert_path.parent}")
    print(f"DKIM keys for {domain}: selectors {', '.join(selectors) or '(already there)'} "
          f"in {cfg.dkim_dir / domain}")
    if args.production:
        return _init_service(cfg, d)
    print(f"next: pillarbox -c {cfg_path} user add postmaster@{domain}")
    print(f"      pillarbox -c {cfg_path} dns      # the DNS records to publish")
    print(f"      pillarbox -c {cfg_path} serve")
    return 0


def _init_service(cfg: Config, d: Path) -> int:
    """--production: the maildrop, ownership, and the systemd unit beside the config."""
    from pillarbox import privileges, systemd_unit
    from pillarbox.queue import public_drop

    assert cfg.maildrop_dir is not None
    cfg.maildrop_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.maildrop_dir, public_drop.DIR_MODE)
    unit_path = d / "pillarbox.service"
    unit_path.write_text(systemd_unit.render(cfg, systemd_unit.executable()))
    unit_path.chmod(0o644)
    print(f"wrote {unit_path} (runs `serve` as {cfg.user}; see docs/OPERATING.md)")
    steps = []
    try:
        account = privileges.lookup(cfg.user)
    except privileges.PrivilegeError:
        account = None
        steps.append(f"useradd --system --home-dir {cfg.data_dir} --shell /usr/sbin/nologin "
                     f"{cfg.user}")
    if account is not None and privileges.is_root():
        privileges.give_tree(cfg.data_dir, account)
        os.chown(cfg.maildrop_dir, account.uid, account.gid)
    else:
        steps.append(f"chown -R {cfg.user}: {cfg.data_dir} {cfg.maildrop_dir}")
    if steps:
        print("first, as root:")
        for step in steps:
            print(f"  {step}")
    print("install and start the service (as root):")
    print(f"  install -m 0644 {unit_path} /etc/systemd/system/pillarbox.service")
    print("  systemctl enable --now pillarbox")
    print(f"then: sudo -u {cfg.user} pillarbox -c {cfg.path} user add "
          f"postmaster@{cfg.domains[0]}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg, errors = configmod.validate(configmod.find_config_path(args.config))
    if cfg is None:
        for e in errors[:-1]:
            print(f"error: {e}", file=sys.stderr)
        raise errors[-1]  # printed by main(), which exits 1
    for w in configmod.warnings(cfg):
        print(f"warning: {w}", file=sys.stderr)
    print(f"config ok: {cfg.path} (hostname {cfg.hostname}, domains {', '.join(cfg.domains)})")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from pillarbox.config_show import effective_toml

    sys.stdout.write(effective_toml(_load(args)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pillarbox import log_privacy, logs
    from pillarbox.server import ServeError, serve

    cfg = _load(args)
    logs.setup(cfg.log_level, cfg.log_format)
    log_privacy.install(cfg.mode)
    try:
        serve(cfg)
    except ServeError as e:
        raise CLIError(str(e)) from None
    except KeyboardInterrupt:
        pass
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    reply = control.request(cfg.data_dir, "status")
    if reply is None:
        raise CLIError(f"no server is running for {cfg.path}")
    if not reply.startswith("ok "):
        raise CLIError(reply.removeprefix("error "))
    counts = dict(item.split("=", 1) for item in reply.split()[1:])
    print(f"running; live connections: SMTP {counts.get('smtp', '?')}, "
          f"IMAP {counts.get('imap', '?')}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running server to read its config again; it checks the new one
    in full and keeps the old one if anything is wrong."""
    cfg = _load(args)
    reply = control.request(cfg.data_dir, "reload")
    if reply is None:
        raise CLIError(f"no server is running for {cfg.path}")
    if reply != "ok":
        raise CLIError(f"reload refused, the old config stays in effect: "
                       f"{reply.removeprefix('error ')}")
    print("ok")
    return 0


def cmd_dns(args: argparse.Namespace) -> int:
    from pillarbox import dnsrecords

    cfg = _load(args)
    for domain, selectors in dnsrecords.ensure_dkim_keys(cfg).items():
        print(f"created DKIM keys {', '.join(selectors)} for {domain}", file=sys.stderr)
    print(dnsrecords.records(cfg) + cli_chatmail.dns_text(cfg), end="")
    return 0


def cmd_expire(args: argparse.Namespace) -> int:
    cfg, users, _ = _directory(args)
    try:
        return cli_chatmail.cmd_expire(cfg, users, args)
    finally:
        _tell_server(cfg)


# -- users and aliases --------------------------------------------------------

def _directory(args: argparse.Namespace):
    from pillarbox.directory.connect import open_directory

    cfg = _load(args)
    _, users, aliases = open_directory(cfg)
    return cfg, users, aliases


def _local_address(cfg: Config, address: str) -> str:
    a = addr.normalize(address)
    if not cfg.is_local_domain(addr.domain_of(a)):
        raise CLIError(f"{a} is not in a local domain ({', '.join(cfg.domains)}); "
                       "add the domain to `domains` in the config first")
    return a


def _tell_server(cfg: Config) -> None:
    """A running server keeps a copy of the directory: make it reload now."""
    control.request(cfg.data_dir, "reload-directory")


def cmd_user(args: argparse.Namespace) -> int:
    if args.action == "key":
        from pillarbox import cli_keys
        from pillarbox.directory.connect import open_directory

        cfg = _load(args)
        try:
            return cli_keys.run(args, cfg, open_directory(cfg)[0], _local_address)
        except cli_keys.KeyCommandError as e:
            raise CLIError(str(e)) from None
    cfg, users, _ = _directory(args)
    if args.action == "list":
        for u in users.list():
            quota = _human(u.quota) if u.quota else "unlimited"
            state = "enabled" if u.enabled else "disabled"
            print(f"{escape(u.address)}\t{state}\t{_human(u.used)}/{quota}")
        return 0
    try:
        _change_user(args, cfg, users)
    finally:
        _tell_server(cfg)
    return 0


def _change_user(args: argparse.Namespace, cfg: Config, users) -> None:
    if args.action == "add":
        a = _local_address(cfg, args.address)
        quota = configmod.parse_size(args.quota, "--quota") if args.quota else 0
        if users.get(a):
            raise CLIError(f"user {a} already exists")
        users.add(a, _read_password(args, cfg, a), quota)
        print(f"added {a}")
    elif args.action == "del":
        users.delete(args.address)
        print(f"deleted {addr.normalize(args.address)} (its Maildir is kept)")
    elif args.action == "passwd":
        a = addr.normalize(args.address)
        if not users.get(a):
            raise CLIError(f"no such user {a}; see `pillarbox user list`")
        users.set_password(a, _read_password(args, cfg, a))
        print(f"password changed for {a}")
    elif args.action == "set":
        try:
            print(cli_chatmail.user_set(cfg, users, args.address, args.rest))
        except cli_chatmail.UsageError as e:
            raise CLIError(str(e)) from None
    elif args.action in ("disable", "enable"):
        users.set_enabled(args.address, args.action == "enable")
        print(f"{args.action}d {addr.normalize(args.address)}")
    elif args.action == "from":
        for pattern in args.allow or []:
            print(f"{users.allow_sender(args.address, pattern)} allowed")
        for pattern in args.disallow or []:
            print(f"{users.disallow_sender(args.address, pattern)} no longer allowed")
        a = addr.normalize(args.address)
        rights = users.sender_rights(a)
        print(f"{a} may send as itself, its aliases"
              + "".join(f", {escape(r)}" for r in rights))
    elif args.action == "quota":
        users.set_quota(args.address, configmod.parse_size(args.quota, "--quota"))
        print(f"quota set for {addr.normalize(args.address)}")


def cmd_alias(args: argparse.Namespace) -> int:
    cfg, _, aliases = _directory(args)
    if args.action == "list":
        for alias, targets in aliases.list().items():
            print(f"{escape(alias)}\t{escape(', '.join(targets))}")
        return 0
    if args.action == "import":
        return _import_aliases(cfg, aliases, Path(args.alias))
    if args.action == "add":
        if not args.targets:
            raise CLIError("alias add needs at least one TARGET")
        alias = args.alias.strip()
        if not addr.is_bare_name(alias):  # a bare name is a local alias, for sendmail
            dom = alias[1:] if alias.startswith("@") else addr.domain_of(addr.normalize(alias))
            if not cfg.is_local_domain(addr.normalize_domain(dom)):
                raise CLIError(f"{alias} is not in a local domain ({', '.join(cfg.domains)})")
        aliases.add(alias, args.targets)
        _tell_server(cfg)
        print(f"alias {alias} -> {', '.join(args.targets)}")
    elif args.action == "del":
        aliases.delete(args.alias)
        _tell_server(cfg)
        print(f"deleted alias {args.alias}")
    return 0


def _import_aliases(cfg: Config, aliases, path: Path) -> int:
    """`alias import /etc/aliases`: its names become local aliases (added to any there)."""
    from pillarbox.directory import aliases_file

    try:
        parsed = aliases_file.parse(path.read_text(errors="replace"))
    except FileNotFoundError:
        raise CLIError(f"no such file {path}") from None
    for name, targets in parsed.aliases.items():
        aliases.add(name, targets)
    if parsed.aliases:
        _tell_server(cfg)
    for line in parsed.skipped:
        print(f"not imported: {line}")
    print(f"imported {len(parsed.aliases)} local aliases from {path}")
    return 0


# -- queue --------------------------------------------------------------------

def _spool_root(cfg: Config) -> Path:
    return cfg.queue_root


def _entries(cfg: Config, finished: bool = False) -> list[dict]:
    """Queue entries; like Postfix's mailq, only recipients still to do unless `finished`."""
    from pillarbox.queue.spool import offline_entries

    out = []
    now = time.time()
    progress = None
    if sys.stderr.isatty():  # a long queue takes seconds to read: show how far

        def progress(done: int, total: int) -> None:
            if total >= 10_000:
                end = "\n" if done == total else ""
                print(f"\rreading the queue: {done:,} of {total:,}", end=end, file=sys.stderr,
                      flush=True)

    for e in offline_entries(_spool_root(cfg), progress):
        env, state = e.env, e.state
        if state and state.deliveries:
            rcpts = [{"addr": d.to, "rcpt": d.rcpt, "kind": d.kind, "state": d.state,
                      "attempts": d.attempts, "next_attempt": d.next_attempt,
                      "last_error": d.last_error} for d in state.deliveries
                     if finished or d.state not in ("done", "failed")]
        else:
            rcpts = [{"addr": r, "rcpt": r, "kind": "", "state": "pending", "attempts": 0,
                      "next_attempt": 0.0, "last_error": ""} for r in env.rcpts]
        out.append({"id": env.id, "mail_from": env.mail_from, "rcpts": rcpts,
                    "size": env.size, "age": round(now - env.received, 1),
                    "received": env.received, "where": e.where, "_entry": e})
    return out


def _age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{int(seconds // n)}{unit}"
    return f"{int(seconds)}s"


def cmd_queue(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.action == "list":
        entries = _entries(cfg)
        for e in entries:
            e.pop("_entry")
        if args.json:
            print(json.dumps(entries, indent=1))
            return 0
        now = time.time()
        out = []
        for e in entries:
            out.append(f"{e['id']}  {_age(e['age']):>4}  {_human(e['size']):>6}  "
                       f"<{escape(e['mail_from'])}>")
            for r in e["rcpts"]:
                extra = ""
                if r["state"] == "deferred":
                    extra = f"  next in {_age(max(0, r['next_attempt'] - now))}"
                err = f"  ({escape(r['last_error'])})" if r["last_error"] else ""
                out.append(f"    {r['state']:<8} {escape(r['addr'])}{extra}{err}")
        total = sum(e["size"] for e in entries)
        deferred = sum(1 for e in entries if any(r["state"] == "deferred" for r in e["rcpts"]))
        out.append(f"{len(entries)} message(s) in the queue ({deferred} deferred), "
                   f"{_human(total)} in all")
        sys.stdout.write("\n".join(out) + "\n")
        return 0
    if args.action in ("show", "delete") and not args.id:
        raise CLIError(f"queue {args.action} needs a message ID; see `pillarbox queue list`")
    if args.action == "show":
        match = [e for e in _entries(cfg, finished=True) if e["id"] == args.id]
        if not match:
            raise CLIError(f"no such message {args.id} in the queue")
        entry = match[0].pop("_entry")
        print(json.dumps(match[0], indent=1))
        with open(entry.path, "rb") as f:
            f.seek(entry.offset)
            head = f.read(min(64 * 1024, entry.env.size or 64 * 1024))
        text = head.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        print("\n".join(escape(line) for line in text.split("\r\n")))
        return 0
    if args.action == "retry":
        reply = control.request(cfg.data_dir, f"retry {args.id or ''}".strip())
        if reply is None:
            n = _retry_offline(cfg, args.id)
            print(f"{n} message(s) due now; they go out when the server starts")
        elif reply.startswith("ok"):
            n = int(reply.split()[1])
            if args.id and n == 0:
                raise CLIError(f"no such message {args.id} in the queue")
            print(f"{n} message(s) scheduled for immediate delivery")
        else:
            raise CLIError(reply.removeprefix("error "))
        return 0
    if args.action == "delete":
        reply = control.request(cfg.data_dir, f"delete {args.id}{' bounce' if args.bounce else ''}")
        if reply is None:
            bounced = _delete_offline(cfg, args.id, args.bounce)
        elif reply.startswith("ok"):
            bounced = reply.split()[-1] != "-"
        else:
            raise CLIError(reply.removeprefix("error "))
        print(f"deleted {args.id}")
        if args.bounce and not bounced:
            print("no DSN sent: nothing undelivered, or the message is itself a bounce")
        return 0
    return 0


def _delete_offline(cfg: Config, msg_id: str, bounce: bool) -> bool:
    """`queue delete` without a running server: the same log line, on stderr, and
    the DSN through queue/maildrop (sent at the next start). True if one was made."""
    from pillarbox.queue import bounce as dsn
    from pillarbox.queue.spool import Envelope, Spool, SpoolFull, mark_done_offline, new_id

    match = [e["_entry"] for e in _entries(cfg) if e["id"] == msg_id]
    if not match:
        raise CLIError(f"no such message {msg_id} in the queue")
    entry = match[0]
    env = entry.env
    left = dsn.undelivered(env, entry.state)
    dsn_id = None
    if bounce and left and env.mail_from and env.source != "bounce":
        with open(entry.path, "rb") as f:
            f.seek(entry.offset)
            head = dsn.original_header(f.read(min(256 * 1024, env.size or 256 * 1024)))
        data = dsn.build(cfg.hostname, env, left, head,
                         retry_until=env.received + cfg.queue.max_lifetime)
        dsn_id = new_id()
        try:  # no min_free_space: the DSN replaces the message it reports
            Spool(_spool_root(cfg), 0).drop(
                Envelope(id=dsn_id, mail_from="", rcpts=[env.mail_from], received=time.time(),
                         size=len(data), source="bounce"), data)
        except (SpoolFull, OSError) as e:
            raise CLIError(f"cannot queue the DSN ({e!r}); {msg_id} was not deleted") from None
    # Rather a DSN for a message still queued than a deleted one never reported.
    mark_done_offline(entry)
    print(escape(f"pillarbox: queue delete id={msg_id} from=<{env.mail_from}> "
                 f"to={','.join(env.rcpts)} undelivered={','.join(d.to for d in left)} "
                 f"bounce={f'yes dsn={dsn_id}' if dsn_id else 'no'} (server not running)"),
          file=sys.stderr)
    return dsn_id is not None


def _retry_offline(cfg: Config, msg_id: str | None) -> int:
    from pillarbox.queue.spool import State

    entries = [e["_entry"] for e in _entries(cfg) if not msg_id or e["id"] == msg_id]
    if msg_id and not entries:
        raise CLIError(f"no such message {msg_id} in the queue")
    for e in entries:
        if e.state:
            for d in e.state.deliveries:
                if d.state == "deferred":
                    d.next_attempt = 0.0
            path = _spool_root(cfg) / "state" / e.env.id
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(State.to_json(e.state))
            os.replace(tmp, path)
    return len(entries)


# -- sendmail -----------------------------------------------------------------

def cmd_sendmail(args: argparse.Namespace) -> int:
    # The TLS files are none of sendmail's business, and other users may not read them.
    cfg = configmod.load(configmod.find_config_path(args.config), check_files=False)
    raw = sys.stdin.buffer.read()
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if not args.ignore_dots:
        for i, line in enumerate(lines):
            if line == b".":
                lines = lines[:i]
                break
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"\r\n".join(lines) + b"\r\n"
    head_end = body.find(b"\r\n\r\n")
    head = body[: head_end + 2] if head_end >= 0 else body
    rest = body[head_end + 2:] if head_end >= 0 else b""

    import email.parser
    import email.policy

    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    rcpts = [r.strip() for r in args.recipients]
    if args.t:
        for field in ("To", "Cc", "Bcc"):
            rcpts += [a for _, a in getaddresses(headers.get_all(field, [])) if a]
        if headers.get("Bcc") is not None:
            head = b"".join(
                ln + b"\r\n" for ln in _drop_header(head.split(b"\r\n"), b"bcc") if ln
            )
    if not rcpts:
        raise CLIError("no recipients: name them as arguments or use -t to read To/Cc/Bcc")
    extra = b""
    if headers.get("Message-ID") is None:
        extra += f"Message-ID: {make_msgid(domain=cfg.hostname)}\r\n".encode()
    if headers.get("Date") is None:
        extra += f"Date: {formatdate(localtime=False, usegmt=True)}\r\n".encode()
    if _owns_queue(cfg):
        return _sendmail_queue(cfg, args, rcpts, headers, extra + head + rest)
    return _sendmail_public(cfg, args, rcpts, extra + head + rest)


def _tempfail(cfg: Config) -> int:
    """Too little disk: sendmail's convention, the caller keeps the message and tries again."""
    print(f"error: not enough free disk space for the queue (less than "
          f"queue.min_free_space = {_human(cfg.queue.min_free_space)} would be left); "
          "nothing was sent, try again later", file=sys.stderr)
    return EX_TEMPFAIL


def _owns_queue(cfg: Config) -> bool:
    """Root and the server's user write the queue; anyone else the public maildrop."""
    try:
        owner = cfg.data_dir.stat().st_uid
    except FileNotFoundError:
        return True  # nothing there yet: whoever makes it owns it
    except PermissionError:
        return False
    if os.geteuid() == owner:
        return True
    # Root would leave root-owned files in the server's data_dir: through the
    # public maildrop when there is one (root's drops are trusted there).
    public = cfg.maildrop_dir
    return os.geteuid() == 0 and not (public is not None and public.is_dir())


def _bare_or_address(name: str) -> str:
    """A recipient or sender as given: a bare local name, or a valid address."""
    return name.lower() if addr.is_bare_name(name) else addr.normalize(name)


def _sendmail_queue(cfg: Config, args: argparse.Namespace, rcpts: list[str], headers,
                    data: bytes) -> int:
    """Root or the server's user: resolved and checked now, into queue/maildrop."""
    from pillarbox.directory.connect import open_directory
    from pillarbox.queue.spool import Envelope, Spool, SpoolFull, disk_full, new_id

    _, _, aliases = open_directory(cfg)
    domain = cfg.domains[0]
    login = pwd.getpwuid(os.getuid()).pw_name
    try:
        name = args.f if args.f is not None else login
        sender = "" if name.strip() in ("", "<>") else aliases.resolve_local(name, domain)[0]
        norm_rcpts = list(dict.fromkeys(a for r in rcpts for a in aliases.resolve_local(r, domain)))
    except addr.AddressError as e:
        raise CLIError(str(e)) from None
    for r in norm_rcpts:
        if cfg.is_local_domain(addr.domain_of(r)):
            refused = recipient.check(aliases, r)
            if refused and refused.code >= 500:
                bare = [n for n in rcpts if addr.is_bare_name(n.strip())
                        and r in aliases.resolve_local(n.strip(), domain)]
                hint = (f"; to have mail for {bare[0].strip()!r} reach you: "
                        f"pillarbox alias add {bare[0].strip()} YOU@{domain}") if bare else ""
                raise CLIError(f"{refused.text[6:]}{hint}")
    if headers.get("From") is None:
        data = f"From: <{sender or aliases.resolve_local(login, domain)[0]}>\r\n".encode() + data
    msg_id = new_id()
    received = (f"Received: by {cfg.hostname} (pillarbox sendmail, uid {os.getuid()})"
                f" id {msg_id}; {formatdate(localtime=False, usegmt=True)}\r\n").encode()
    data = received + data
    env = Envelope(id=msg_id, mail_from=sender, rcpts=norm_rcpts, received=time.time(),
                   size=len(data), auth=None, source="sendmail")
    try:
        spool = Spool(_spool_root(cfg), cfg.queue.min_free_space)
        spool.drop(env, data)
    except (SpoolFull, OSError) as e:
        if not (isinstance(e, SpoolFull) or disk_full(e)):
            raise
        return _tempfail(cfg)
    control.request(cfg.data_dir, "pickup")
    return 0


def _sendmail_public(cfg: Config, args: argparse.Namespace, rcpts: list[str],
                     data: bytes) -> int:
    """Any other user: into maildrop_dir; the server makes the envelope (public_pickup)."""
    import shutil

    from pillarbox.queue import public_drop
    from pillarbox.queue.spool import disk_full

    public = cfg.maildrop_dir
    if public is None:
        raise CLIError(f"cannot write to the queue in {cfg.data_dir} and maildrop_dir is off; "
                       "run this command as root or as the user that runs `pillarbox serve`")
    try:
        norm = list(dict.fromkeys(_bare_or_address(r) for r in rcpts))
        sender = None
        if args.f is not None:
            sender = "" if args.f.strip() in ("", "<>") else _bare_or_address(args.f.strip())
    except addr.AddressError as e:
        raise CLIError(str(e)) from None
    if len(data) > cfg.limits.max_message_size:
        raise CLIError(f"the message is larger than limits.max_message_size "
                       f"({cfg.limits.max_message_size} bytes); nothing was sent")
    try:
        free = shutil.disk_usage(public).free
    except FileNotFoundError:
        raise CLIError(f"maildrop_dir {public} does not exist; `pillarbox serve` makes it "
                       "at start") from None
    if free < cfg.queue.min_free_space + len(data):
        return _tempfail(cfg)
    try:
        public_drop.write(public, norm, sender, data)
    except OSError as e:
        if not disk_full(e):
            raise
        return _tempfail(cfg)
    return 0


def _drop_header(lines: list[bytes], name: bytes) -> list[bytes]:
    out, skipping = [], False
    for ln in lines:
        if ln[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(ln)
            continue
        skipping = ln.split(b":", 1)[0].strip().lower() == name
        if not skipping:
            out.append(ln)
    return out


# -- backup, restore, import ------------------------------------------------------

def _server_running(cfg: Config) -> bool:
    return control.request(cfg.data_dir, "status", timeout=10) is not None


def cmd_backup(args: argparse.Namespace) -> int:
    from pillarbox.store import backup

    cfg = _load(args)
    try:
        done = backup.backup(cfg.data_dir, Path(args.dest), backup.Progress(sys.stderr.isatty()),
                             cfg.hostname, _backup_places(cfg))
    except backup.BackupError as e:
        raise CLIError(str(e)) from None
    print(f"backup of {cfg.data_dir} in {args.dest}: {done.files} files, "
          f"{_human(done.bytes)}")
    if cfg.storage_url:
        print("note: users, aliases, keys, lists and greylisting (and with shared_dir the IMAP "
              "index) are in PostgreSQL ([storage] url), not in this backup: back that "
              "database up with pg_dump", file=sys.stderr)
    return 0


def _backup_places(cfg: Config) -> dict[str, Path]:
    """This node's spool, the Maildirs and the DKIM keys, wherever the config keeps them."""
    return {"queue": cfg.queue_root, "mail": cfg.mail_root, "dkim": cfg.dkim_dir}


def cmd_restore(args: argparse.Namespace) -> int:
    from pillarbox.store import backup

    cfg = _load(args)
    if _server_running(cfg):
        raise CLIError(f"the server for {cfg.path} is running; stop it before a restore")
    try:
        done = backup.restore(Path(args.src), cfg.data_dir, backup.Progress(sys.stderr.isatty()),
                              _backup_places(cfg))
    except backup.BackupError as e:
        raise CLIError(str(e)) from None
    print(f"restored {args.src} into {cfg.data_dir}: {done.files} files, {_human(done.bytes)}")
    return 0


def cmd_import_maildir(args: argparse.Namespace) -> int:
    from pillarbox.store import import_maildir
    from pillarbox.target import mailbox

    cfg, users, _ = _directory(args)
    address = _local_address(cfg, args.address)
    if users.get(address) is None:
        raise CLIError(f"no user {address}; add it first (pillarbox user add {address})")
    if _server_running(cfg):
        raise CLIError(f"the server for {cfg.path} is running; stop it before an import "
                       "(it keeps open mailboxes in memory)")
    target = mailbox.maildir_path(cfg.mail_root, address)
    try:
        boxes = import_maildir.import_maildir(Path(args.src), target)
    except import_maildir.MaildirImportError as e:
        raise CLIError(str(e)) from None
    for box in boxes:
        kept = "kept" if box.had_uidlist else "new"
        n = len(box.messages)
        print(f"{escape(box.name)}\t{n} message{'' if n == 1 else 's'}\t"
              f"UIDVALIDITY {box.uidvalidity} ({kept})\tUIDNEXT {box.uidnext}")
    print(f"imported {args.src} into {target} for {address}")
    return 0


# -- parser ---------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit 1 with our prefix, not argparse's 2
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    from pillarbox import __version__

    p = _Parser(prog="pillarbox", description="pillarbox mail server")
    p.add_argument("--version", action="version", version=f"pillarbox {__version__}",
                   help="print the version and exit")
    p.add_argument("-c", "--config", help="config file (default: $PILLARBOX_CONFIG, "
                                          "else ./pillarbox.toml)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser,
                           metavar="COMMAND", help="one of these (`pillarbox COMMAND --help` "
                                                   "for its own options):")

    s = sub.add_parser("init", help="write a commented config, TLS pair and data directory")
    s.add_argument("--dir", required=True, help="where to write pillarbox.toml (and, "
                   "unless --data-dir or --production says otherwise, the data directory var/)")
    s.add_argument("--domain", required=True, help="the first domain to receive mail for")
    s.add_argument("--hostname", help="the server's own name (default: mx.DOMAIN)")
    s.add_argument("--production", action="store_true",
                   help="public listeners on 25, 587, 465, 143 and 993, data in "
                        f"{PRODUCTION_DATA_DIR}, a service user, and a systemd unit "
                        "pillarbox.service beside the config; asks for the data directory "
                        "and user on a terminal when not given")
    s.add_argument("--data-dir", help="data_dir to write into the config (with --production "
                   f"default {PRODUCTION_DATA_DIR})")
    s.add_argument("--maildrop-dir", help="maildrop_dir to write into the config (with "
                   f"--production default {PRODUCTION_MAILDROP_DIR})")
    s.add_argument("--user", help="the service user (`user` in the config; with --production "
                   f"default {PRODUCTION_USER})")
    s.add_argument("--mode", choices=["standard", "chatmail"], default="standard",
                   help="chatmail: a config for an end-to-end-encryption-only relay for "
                        "Delta Chat (docs/CHATMAIL.md); the hostname defaults to the domain")
    s.set_defaults(func=cmd_init)

    sub.add_parser("serve", help="run all configured endpoints").set_defaults(func=cmd_serve)
    from pillarbox.cli_store import cmd_migrate
    sub.add_parser("migrate", help="bring the database ([storage] url) to this version's "
                   "schema").set_defaults(func=cmd_migrate)
    from pillarbox.cli_store import cmd_export, cmd_import
    s = sub.add_parser("export", help="write the directory (users, aliases, rights, lists, "
                       "keys), IMAP index, Maildir files and queue to a file, to import "
                       "elsewhere (SQLite <-> PostgreSQL)")
    s.add_argument("file", help="the file to write (replaced when done and verified)")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("import", help="load what `export` wrote into this config's empty "
                       "database, Maildirs and (server stopped) queue, then verify it")
    s.add_argument("file", help="the file `pillarbox export` wrote")
    s.set_defaults(func=cmd_import)
    sub.add_parser("check", help="validate the config: every error, and warnings"
                   ).set_defaults(func=cmd_check)
    s = sub.add_parser("config", help="show the effective configuration")
    s.add_argument("action", choices=["show"],
                   help="show: every setting in effect, default pipelines and modules "
                        "spelled out, as TOML that loads again to the same configuration")
    s.set_defaults(func=cmd_config)
    sub.add_parser("dns", help="print the DNS records to publish").set_defaults(func=cmd_dns)
    from pillarbox.cli_postfix import cmd_postfix
    sub.add_parser("postfix", help="print the main.cf lines for Postfix beside pillarbox"
                   ).set_defaults(func=cmd_postfix)
    sub.add_parser("reload", help="make the running server read its config, TLS pair, "
                   "users and aliases again").set_defaults(func=cmd_reload)
    sub.add_parser("status", help="is the server running, and its live connections"
                   ).set_defaults(func=cmd_status)

    s = sub.add_parser("user", help="manage users")
    s.add_argument("action", choices=["add", "del", "list", "passwd", "disable", "enable",
                                      "quota", "from", "set", "key"],
                   help="add a user, delete one (its Maildir is kept), list them, set a "
                        "password, disable or enable logins and delivery, set a quota, or "
                        "show and change the addresses a user may send as, or set a "
                        "per-user setting (user set ADDRESS allow-cleartext on|off)")
    s.add_argument("address", nargs="?", help="the user's address (all actions but list)")
    s.add_argument("rest", nargs="*", metavar="ARG",
                   help="user set ADDRESS SETTING VALUE; user key import ADDRESS FILE | "
                        "key show ADDRESS | key del ADDRESS")
    s.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin")
    s.add_argument("--quota", help="mailbox size limit, e.g. 1G (default: unlimited)")
    s.add_argument("--allow", action="append", metavar="SENDER",
                   help="user from: may also send as SENDER (an address, @domain or *)")
    s.add_argument("--disallow", action="append", metavar="SENDER",
                   help="user from: take back a right given with --allow")
    s.add_argument("--any-uid", action="store_true",
                   help="user key import: accept a key without a user ID for the address")
    s.set_defaults(func=cmd_user)

    cli_chatmail.add_parser(sub, cmd_expire)

    s = sub.add_parser("alias", help="manage aliases")
    s.add_argument("action", choices=["add", "del", "list", "import"],
                   help="add targets to an alias, delete it, list them all, or import "
                        "/etc/aliases")
    s.add_argument("alias", nargs="?", help="ALIAS (an address, @domain or a bare name such "
                                             "as root), or for import an /etc/aliases FILE")
    s.add_argument("targets", nargs="*", metavar="TARGET",
                   help="alias add: an address, a local user name, or |command")
    s.set_defaults(func=cmd_alias)

    from pillarbox import cli_lists

    cli_lists.register(sub)

    s = sub.add_parser("queue", help="inspect and steer the mail queue")
    s.add_argument("action", choices=["list", "show", "retry", "delete"],
                   help="list the messages waiting, show one, retry now (one or all), or "
                        "delete one")
    s.add_argument("id", nargs="?", help="a message ID from `queue list` (retry without it: "
                                         "all)")
    s.add_argument("--json", action="store_true", help="machine-readable list")
    s.add_argument("--bounce", action="store_true",
                   help="delete: first send the sender a DSN for the undelivered recipients")
    s.set_defaults(func=cmd_queue)

    s = sub.add_parser("backup", help="copy the data directory (also while serving)")
    s.add_argument("dest", help="a directory that does not exist or is empty")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", help="copy a backup into an empty data directory")
    s.add_argument("src", help="a directory made by `pillarbox backup`")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("import-maildir", help="take over a user's Maildir (Dovecot's or "
                       "plain), keeping UIDs, UIDVALIDITY and flags")
    s.add_argument("src", help="the user's Maildir (INBOX at its root, .NAME folders)")
    s.add_argument("address", help="the pillarbox user it becomes (must exist, no mail yet)")
    s.set_defaults(func=cmd_import_maildir)

    s = sub.add_parser("sendmail", help="sendmail-compatible submission from stdin")
    s.add_argument("-t", action="store_true", help="take recipients from To/Cc/Bcc")
    s.add_argument("-i", "-oi", dest="ignore_dots", action="store_true",
                   help="a line with a single dot does not end the message")
    s.add_argument("-f", "-r", dest="f", help="envelope sender")
    s.add_argument("-F", dest="fullname", help="ignored (full name)")
    s.add_argument("recipients", nargs="*", metavar="RCPT",
                   help="recipient addresses or local names (with -t: in addition to the "
                        "headers')")
    s.set_defaults(func=cmd_sendmail)
    for choice in sub._choices_actions:  # `pillarbox COMMAND --help` says what it does
        sub.choices[choice.dest].description = choice.help
    return p


_NEEDS_ADDRESS = {("user", a) for a in ("add", "del", "passwd", "disable", "enable", "quota",
                                          "from")}


def check_args(args: argparse.Namespace) -> None:
    """What argparse cannot say: the arguments an action needs (CLIError if missing)."""
    if (args.command, getattr(args, "action", None)) in _NEEDS_ADDRESS and not args.address:
        raise CLIError(f"{args.command} {args.action} needs an ADDRESS")
    if args.command == "user" and getattr(args, "rest", None) and args.action not in (
            "key", "set"):
        raise CLIError(f"user {args.action}: unexpected argument {args.rest[0]!r}")
    if args.command == "user" and args.action == "quota" and args.quota is None:
        raise CLIError("user quota needs --quota SIZE (e.g. 1G, or 0 for unlimited)")
    if args.command == "alias" and args.action in ("add", "del") and not args.alias:
        raise CLIError(f"alias {args.action} needs an ALIAS")
    if args.command == "alias" and args.action == "import" and not args.alias:
        raise CLIError("alias import needs a FILE in /etc/aliases format")


def main(argv: list[str] | None = None) -> int:
    from pillarbox.store import datadir

    # Everything the CLI and the server write (database, keys, mail, queue)
    # is for the service user alone.
    datadir.set_umask()
    argv = sys.argv[1:] if argv is None else argv
    if Path(sys.argv[0]).name == "sendmail" and (not argv or argv[0] != "sendmail"):
        argv = ["sendmail", *argv]
    argv = _sendmail_compat(argv)
    bad = next((a for a in argv if not a.replace("\t", " ").isprintable()), None)
    if bad is not None:  # a newline in an address or alias would forge listing lines
        print(f"error: control character in argument {escape(bad)!r}", file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return args.func(args)
    except (CLIError, ConfigError, DirectoryError, addr.AddressError, SchemaTooNew,
            StoreUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except PermissionError as e:
        msg = (f"permission denied: {e.filename}; run this command as the user that runs "
               "`pillarbox serve`") if e.filename else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


# sendmail options that take a value, as the next word when not attached (-B8BITMIME)
_SENDMAIL_VALUE_FLAGS = ("-B", "-N", "-R", "-V", "-X", "-O", "-L", "-h")


def _sendmail_compat(argv: list[str]) -> list[str]:
    """Accept sendmail's habits: -oi, -odi, -oem, -B 8BITMIME and friends are harmless."""
    if "sendmail" not in argv:
        return argv
    i = argv.index("sendmail")
    rest: list[str] = []
    words = iter(argv[i + 1:])
    for a in words:
        if a == "--":
            rest += ["--", *words]
        elif a == "-oi":
            rest.append("-i")
        elif a in _SENDMAIL_VALUE_FLAGS:
            next(words, None)
        elif (a.startswith("-o") or a in ("-bm", "-U", "-v", "-n", "-m")
              or a.startswith(_SENDMAIL_VALUE_FLAGS)):
            continue
        else:
            rest.append(a)
    return argv[: i + 1] + rest
