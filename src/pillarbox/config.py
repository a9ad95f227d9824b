"""Load, validate and write the TOML config.

Every key has a safe default; `load` returns a fully resolved `Config` or
raises `ConfigError` naming the key at fault, so `check` and `serve` can print
one clear line and exit 1.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pillarbox import pipelines
from pillarbox.address import AddressError, normalize_domain


class ConfigError(Exception):
    """A config problem, with the dotted key it concerns."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.I)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$", re.I)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_size(value: object, key: str = "") -> int:
    """'25M' -> bytes; plain integers are bytes."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a size like '25M', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(key, "must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise ConfigError(key, f"expected a size like '25M' or '512K', got {value!r}")


def parse_duration(value: object, key: str = "") -> float:
    """'5m' -> 300.0 seconds; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration like '5m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(key, "must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(m.group(1)) * _DURATION_UNITS[unit]
    raise ConfigError(key, f"expected a duration like '30s', '5m', '4h' or '5d', got {value!r}")


def parse_hostport(value: object, key: str) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(key, f"expected \"host:port\", got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"expected \"host:port\" with a port 1-65535, got {value!r}")
    return host, int(port)


LISTEN_KINDS = ("smtp", "submission", "submissions", "imap", "imaps", "lmtp", "http", "https",
                "metrics")


def _overlaps(a: str, b: str) -> bool:
    """Whether two listen hosts (on one port) take the same connections.

    The wildcard of a family covers every address of that family; IPv6 sockets
    are bound IPv6-only (server.py), so `::` and `0.0.0.0` are apart. Names are
    compared as written; the bind at `serve` catches the rest."""
    try:
        ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()
    if ia.version != ib.version:
        return False
    return ia == ib or ia.is_unspecified or ib.is_unspecified


def _check_listen_overlap(listen: dict[str, list[tuple[str, int]]]) -> None:
    """Two endpoints on one address: the kernel would give every session to one."""
    seen: list[tuple[str, str, int]] = []
    for kind, addrs in listen.items():
        for host, port in addrs:
            for other_kind, other_host, other_port in seen:
                if port == other_port and _overlaps(host, other_host):
                    where = ("also" if other_kind == kind
                             else f"also in {_listen_key(other_kind)} as")
                    raise ConfigError(_listen_key(kind), f"{_hp(host, port)} is {where} "
                                      f"{_hp(other_host, other_port)}; each endpoint needs "
                                      "an address of its own")
            seen.append((kind, host, port))


def _listen_key(kind: str) -> str:
    return kind if "." in kind else f"listen.{kind}"  # postfix.policy is no [listen] key


def _hp(host: str, port: int) -> str:
    if port == 0:  # a Unix socket path (listen.lmtp)
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Limits:
    max_message_size: int = 25 * 1024**2
    max_recipients: int = 100
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    command_timeout: float = 300.0
    min_data_rate: int = 500  # bytes per second, as Postfix's smtpd_min_data_rate
    login_cache: float = 600.0
    # failed logins (SMTP AUTH, IMAP): see check/ratelimit.py
    auth_max_failures: int = 10
    auth_account_max_failures: int = 30
    auth_failure_window: float = 900.0
    auth_lockout: float = 900.0
    auth_failure_delay: float = 2.0
    min_password_length: int = 12


@dataclass
class IMAPSettings:
    max_line_length: int = 64 * 1024
    max_literal_size: int = 50 * 1024**2
    max_literal_memory: int = 200 * 1024**2
    max_literal_memory_per_session: int = 1024**2
    max_connections_per_user: int = 20
    max_connections_per_ip: int = 50
    idle_timeout: float = 1800.0
    max_bad_commands: int = 10
    metadata_max_size: int = 64 * 1024  # one METADATA value (RFC 5464)
    metadata_max_entries: int = 200  # METADATA entries per user, server and mailboxes
    # LOGIN/AUTHENTICATE PLAIN without TLS on listen.imap from these (test tools,
    # a webmail on the same host); empty: never
    cleartext_login_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list)


@dataclass
class QueueSettings:
    min_free_space: int = 100 * 1024**2
    retry_schedule: list[float] = field(
        default_factory=lambda: [60.0, 300.0, 900.0, 3600.0, 14400.0]
    )
    max_lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0  # 0: no delay warnings
    workers: int = 64
    lease: float = 30.0  # seconds a node holds a shared spool without renewing (shared_dir)


@dataclass
class RemoteSettings:
    port: int = 25
    helo: str = ""
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    max_per_destination: int = 10
    mta_sts: bool = True


DETAIL_FOLDER_MODES = ("off", "existing", "create")


@dataclass
class DeliverySettings:
    recipient_delimiter: str = "+"  # characters that start an address's detail; "" = off
    detail_folder: str = "off"  # off | existing | create
    srs: bool = True  # rewrite the sender of mail forwarded to other domains (SRS0)
    srs_domain: str = ""  # one of `domains`; "" = the first
    arc_seal: bool = True  # ARC-seal mail forwarded to other domains (needs an RSA DKIM key)


@dataclass
class PostfixSettings:
    """Listeners for Postfix beside pillarbox (docs/POSTFIX.md): tcp_table(5)
    maps and the SMTP access policy service; [] = off."""

    recipient_access: list[tuple[str, int]] = field(default_factory=list)
    virtual_alias: list[tuple[str, int]] = field(default_factory=list)
    policy: list[tuple[str, int]] = field(default_factory=list)
    # A connection must complete a request within this of its start or the
    # previous answer (Postfix closes idle ones itself after 300 s).
    idle_timeout: float = 600.0


POSTFIX_LISTENERS = ("recipient_access", "virtual_alias", "policy")


SCRUB_DELAY_MAX = 30


@dataclass
class EncryptionSettings:
    """[encryption]: OpenPGP encryption at rest (docs/ENCRYPTION.md)."""

    domains: list[str] = field(default_factory=list)  # every mailbox in these domains
    users: list[str] = field(default_factory=list)  # and these mailboxes
    protect_subject: bool = False  # outer Subject "...", the real one inside
    no_key: str = "clear"  # clear | defer (450 at RCPT) | hold (stays queued)
    learn_autocrypt: list[str] = field(default_factory=list)  # domains; "*" = all
    scrub_delay: float = 15.0  # seconds from delivery to zeroing its queue record (0..30)


TLS_MODES = ("none", "opportunistic", "required", "verify")


@dataclass
class Route:
    """A static route: recipients in `domains` go to `host` instead of the MX."""

    domains: list[str]
    senders: list[str] = field(default_factory=list)
    host: str = ""
    port: int = 25
    tls: str = "opportunistic"
    auth_user: str = ""
    auth_password: str = ""

    def matches(self, rcpt_domain: str, sender: str) -> bool:
        if "*" not in self.domains and rcpt_domain not in self.domains:
            return False
        if not self.senders:
            return True
        sender = sender.lower()
        return any(sender == s or (s.startswith("@") and sender.endswith(s))
                   for s in self.senders)


MTA_STS_MODES = ("", "enforce", "testing", "none")
CLIENT_PORTS = ("standard", "listen")


@dataclass
class HTTPSettings:
    """[http]: the web endpoint (docs/HTTP.md)."""

    metrics_token: str = ""  # "": /metrics only on listen.metrics
    client_ports: str = "standard"  # what autoconfig and SRV records tell clients
    mta_sts_mode: str = ""  # "": enforce with tls.cert or ACME, else testing
    mta_sts_max_age: int = 604800
    max_request_size: int = 64 * 1024
    request_timeout: float = 30.0  # a request's header, and again its body, must arrive within
    max_connections_per_ip: int = 20  # concurrent connections from one address


@dataclass
class ACMESettings:
    """[acme]: certificates from an ACME CA (docs/HTTP.md); directory "" is off."""

    directory: str = ""
    email: str = ""
    names: list[str] = field(default_factory=list)  # []: the hostname
    renew_before: float = 30 * 86400.0
    ca_file: Path | None = None  # trust for the CA's own HTTPS (a private CA, Pebble)


@dataclass
class ChatmailSettings:
    """[chatmail]: what `mode = "chatmail"` does (docs/CHATMAIL.md)."""

    username_min_length: int = 9
    username_max_length: int = 9
    password_min_length: int = 9
    min_free_disk: int = 1024**3  # no new account below this much free space in data_dir
    min_free_memory: int = 200 * 1024**2  # ... or below this much available memory
    strict_dkim: bool = True
    notify_url: str = "https://notifications.delta.chat/notify"
    notify_retry_base: float = 8.0  # first retry after this, then 8 times longer each
    expire_every: float = 86400.0  # the server's expiry runs this often
    iroh_relay: str = ""
    max_user_send_per_minute: int = 60
    max_user_send_burst: int = 10
    max_mailbox_size: int = 500 * 1024**2
    delete_inactive_users_after: int = 90  # days
    delete_mails_after: int = 20  # days
    delete_large_after: int = 7  # days
    large_message_size: int = 200 * 1024


@dataclass
class Config:
    path: Path
    hostname: str
    domains: list[str]
    data_dir: Path
    maildrop_dir: Path | None = None  # None: only root and the server's user can use sendmail
    user: str = ""  # the service user a root-started `serve` becomes; "": stay as started
    mode: str = "standard"
    log_level: str = "warning"
    log_format: str = "text"
    listen: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    storage_url: str = ""
    shared_dir: Path | None = None  # mail and queue spools several nodes share (docs/POSTGRESQL.md)
    node: str = ""  # this node's name among those sharing shared_dir; "": the host name
    nameservers: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    queue: QueueSettings = field(default_factory=QueueSettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    imap: IMAPSettings = field(default_factory=IMAPSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    postfix: PostfixSettings = field(default_factory=PostfixSettings)
    routes: list[Route] = field(default_factory=list)
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)
    modules: pipelines.Modules = field(default_factory=pipelines.Modules)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    acme: ACMESettings = field(default_factory=ACMESettings)
    chatmail: ChatmailSettings = field(default_factory=ChatmailSettings)

    @property
    def cert_path(self) -> Path:
        return self.tls_cert or self.data_dir / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.tls_key or self.data_dir / "tls" / "key.pem"

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname().split(".")[0]

    @property
    def mail_root(self) -> Path:
        """Where the Maildirs are: shared by all nodes when storage.shared_dir is set."""
        return (self.shared_dir or self.data_dir) / "mail"

    @property
    def queue_root(self) -> Path:
        """This node's spool; under storage.shared_dir each node has its own."""
        if self.shared_dir is None:
            return self.data_dir / "queue"
        return self.shared_dir / "queue" / self.node_name

    @property
    def dkim_dir(self) -> Path:
        """The DKIM keys: one set for all nodes when storage.shared_dir is set, so
        every node signs with the keys DNS publishes."""
        return (self.shared_dir or self.data_dir) / "dkim"

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains


_TOP_KEYS = {"hostname", "domains", "data_dir", "maildrop_dir", "user", "mode", "log_level",
             "log_format", "listen", "tls", "storage", "dns", "limits", "queue", "remote",
             "route", "imap", "delivery", "module", "pipeline", "rule", "http", "acme", "postfix",
             "chatmail", "encryption"}
_SECTION_KEYS = {
    "chatmail": {"username_min_length", "username_max_length", "password_min_length",
                 "min_free_disk", "min_free_memory", "strict_dkim", "notify_url", "iroh_relay",
                 "notify_retry_base", "expire_every",
                 "max_user_send_per_minute", "max_user_send_burst", "max_mailbox_size",
                 "delete_inactive_users_after", "delete_mails_after", "delete_large_after",
                 "large_message_size"},
    "listen": set(LISTEN_KINDS),
    "tls": {"cert", "key"},
    "storage": {"url", "shared_dir", "node"},
    "dns": {"nameservers"},
    "limits": {"max_message_size", "max_recipients", "max_connections",
               "max_connections_per_ip", "command_timeout", "min_data_rate", "login_cache",
               "auth_max_failures", "auth_account_max_failures",
               "auth_failure_window", "auth_lockout", "auth_failure_delay",
               "min_password_length"},
    "queue": {"min_free_space", "retry_schedule", "max_lifetime", "delay_warning", "workers",
              "lease"},
    "remote": {"port", "helo", "connect_timeout", "command_timeout", "max_per_destination",
               "mta_sts"},
    "imap": {"max_line_length", "max_literal_size", "max_literal_memory",
             "max_literal_memory_per_session", "max_connections_per_user",
             "max_connections_per_ip", "idle_timeout", "max_bad_commands",
             "cleartext_login_networks", "metadata_max_size", "metadata_max_entries"},
    "delivery": {"recipient_delimiter", "detail_folder", "srs", "srs_domain", "arc_seal"},
    "http": {"metrics_token", "client_ports", "mta_sts_mode", "mta_sts_max_age",
             "max_request_size", "request_timeout", "max_connections_per_ip"},
    "acme": {"directory", "email", "names", "renew_before", "ca_file"},
    "postfix": {*POSTFIX_LISTENERS, "idle_timeout"},
    "encryption": {"domains", "users", "protect_subject", "no_key", "learn_autocrypt",
                   "scrub_delay"},
}
_ROUTE_KEYS = {"domains", "senders", "host", "tls", "auth_user", "auth_password"}


def find_config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("PILLARBOX_CONFIG")
    if env:
        return Path(env)
    return Path("pillarbox.toml")


def load(path: Path, check_files: bool = True) -> Config:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "", f"config file {path} not found; create one with "
            "`pillarbox init --dir DIR --domain DOMAIN` or pass -c FILE"
        ) from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("", f"{path} is not valid TOML: {e}") from None
    return from_dict(data, path, check_files)


def _section(data: dict, name: str) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table ([" + name + "])")
    unknown = set(value) - _SECTION_KEYS[name]
    if unknown:
        raise ConfigError(f"{name}.{sorted(unknown)[0]}", "unknown key")
    return value


def _str(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _networks(value: object, key: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A list of addresses and CIDR networks ("127.0.0.1", "10.0.0.0/8", "::1")."""
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list like [\"127.0.0.1\", \"10.0.0.0/8\"], "
                               f"got {value!r}")
    out = []
    for item in value:
        try:
            out.append(ipaddress.ip_network(_str(item, key)))
        except ValueError as e:  # a host name, or host bits set ("10.0.0.1/8")
            raise ConfigError(key, f"{item!r} is not an address or network: {e}") from None
    return out


def _int(value: object, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"expected an integer >= {minimum}, got {value!r}")
    return value


def from_dict(data: dict, path: Path, check_files: bool = True) -> Config:
    """`check_files=False`: no check that the TLS files are readable (sendmail,
    run by users who may not read them, needs neither)."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown key")
    hostname = _str(data.get("hostname", ""), "hostname").strip().lower()
    if not hostname or not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", hostname):
        raise ConfigError("hostname", f"expected a host name like mx.example.org, got {hostname!r}")
    domains_raw = data.get("domains", [])
    if not isinstance(domains_raw, list) or not domains_raw:
        raise ConfigError("domains", "expected a non-empty list of domains")
    domains = []
    for d in domains_raw:
        try:
            domains.append(normalize_domain(_str(d, "domains")))
        except AddressError as e:
            raise ConfigError("domains", str(e)) from None
    base = path.resolve().parent
    data_dir = base / _str(data.get("data_dir", "var"), "data_dir")
    maildrop = _str(data.get("maildrop_dir", "maildrop"), "maildrop_dir")
    maildrop_dir = base / maildrop if maildrop else None
    user = _str(data.get("user", ""), "user").strip()
    if user and not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?", user, re.I):
        raise ConfigError("user", f"expected a user name like pillarbox, got {user!r}")
    mode = _str(data.get("mode", "standard"), "mode")
    if mode not in ("standard", "chatmail"):
        raise ConfigError("mode", f"expected \"standard\" or \"chatmail\", got {mode!r}")
    log_level = _str(data.get("log_level", "warning"), "log_level").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level", f"expected debug, info, warning or error, got {log_level!r}")
    log_format = _str(data.get("log_format", "text"), "log_format").lower()
    if log_format not in ("text", "json"):
        raise ConfigError("log_format", f"expected \"text\" or \"json\", got {log_format!r}")

    listen: dict[str, list[tuple[str, int]]] = {}
    for kind, addrs in _section(data, "listen").items():
        key = f"listen.{kind}"
        if not isinstance(addrs, list):
            raise ConfigError(key, "expected a list of \"host:port\" strings")
        listen[kind] = [_unix_path(a, base) if kind == "lmtp" and _is_path(a)
                        else parse_hostport(a, key) for a in addrs]
    for kind in LISTEN_KINDS:
        listen.setdefault(kind, [])
    postfix = _postfix(_section(data, "postfix"))
    _check_listen_overlap({**listen, **{f"postfix.{k}": getattr(postfix, k)
                                        for k in POSTFIX_LISTENERS}})

    tls = _section(data, "tls")
    cert = _str(tls.get("cert", ""), "tls.cert")
    key = _str(tls.get("key", ""), "tls.key")
    if bool(cert) != bool(key):
        raise ConfigError("tls.cert" if not cert else "tls.key",
                          "set both tls.cert and tls.key, or neither for a self-signed pair")
    cfg_cert = base / cert if cert else None
    cfg_key = base / key if key else None
    for k, p in (("tls.cert", cfg_cert), ("tls.key", cfg_key)):
        if check_files and p is not None and not os.access(p, os.R_OK):
            raise ConfigError(k, f"cannot read {p}")

    storage = _section(data, "storage")
    url = _str(storage.get("url", ""), "storage.url")
    if url and not url.startswith(("postgresql://", "sqlite:")):
        raise ConfigError("storage.url", "expected empty (SQLite in data_dir) or postgresql://...")
    if url.startswith("postgresql://") and not url[len("postgresql://"):].strip("/"):
        raise ConfigError("storage.url", "postgresql:// needs a host and database, e.g. "
                          "postgresql://pillarbox@db.example.org/pillarbox")
    shared = _str(storage.get("shared_dir", ""), "storage.shared_dir")
    shared_dir = (base / shared) if shared else None
    if shared_dir is not None and not url.startswith("postgresql://"):
        raise ConfigError("storage.shared_dir", "needs storage.url = \"postgresql://...\": "
                          "the nodes sharing the directory coordinate through PostgreSQL")
    node = _str(storage.get("node", ""), "storage.node")
    if node and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", node):
        raise ConfigError("storage.node", "expected a name of letters, digits, '.', '_', '-'")

    dns = _section(data, "dns")
    ns = dns.get("nameservers", [])
    if not isinstance(ns, list) or not all(isinstance(n, str) for n in ns):
        raise ConfigError("dns.nameservers", "expected a list of \"host\" or \"host:port\"")

    lim = _section(data, "limits")
    limits = Limits()
    if "max_message_size" in lim:
        limits.max_message_size = parse_size(lim["max_message_size"], "limits.max_message_size")
    if "max_recipients" in lim:
        limits.max_recipients = _int(lim["max_recipients"], "limits.max_recipients", 1)
    for k in ("max_connections", "max_connections_per_ip"):
        if k in lim:
            setattr(limits, k, _int(lim[k], f"limits.{k}", 1))
    if "command_timeout" in lim:
        limits.command_timeout = parse_duration(lim["command_timeout"], "limits.command_timeout")
        if limits.command_timeout <= 0:
            raise ConfigError("limits.command_timeout", "must be more than 0")
    if "min_data_rate" in lim:
        limits.min_data_rate = parse_size(lim["min_data_rate"], "limits.min_data_rate")
        if limits.min_data_rate < 1:
            raise ConfigError("limits.min_data_rate", "must be at least 1 (bytes per second)")
    if "login_cache" in lim:
        limits.login_cache = parse_duration(lim["login_cache"], "limits.login_cache")
    for key in ("auth_max_failures", "auth_account_max_failures"):
        if key in lim:
            setattr(limits, key, _int(lim[key], f"limits.{key}", 1))
    for key in ("auth_failure_window", "auth_lockout", "auth_failure_delay"):
        if key in lim:
            setattr(limits, key, parse_duration(lim[key], f"limits.{key}"))
    if limits.auth_failure_delay > 60:
        raise ConfigError("limits.auth_failure_delay", "must be at most 1m")
    if limits.auth_lockout > 86400:
        raise ConfigError("limits.auth_lockout", "must be at most 1d")
    if "min_password_length" in lim:
        limits.min_password_length = _int(lim["min_password_length"],
                                          "limits.min_password_length", 1)

    q = _section(data, "queue")
    queue = QueueSettings()
    if "min_free_space" in q:
        queue.min_free_space = parse_size(q["min_free_space"], "queue.min_free_space")
    if "retry_schedule" in q:
        sched = q["retry_schedule"]
        if not isinstance(sched, list) or not sched:
            raise ConfigError("queue.retry_schedule",
                              "expected a non-empty list like [\"1m\", \"5m\"]")
        queue.retry_schedule = [parse_duration(s, "queue.retry_schedule") for s in sched]
    if "max_lifetime" in q:
        queue.max_lifetime = parse_duration(q["max_lifetime"], "queue.max_lifetime")
    if "delay_warning" in q:
        queue.delay_warning = parse_duration(q["delay_warning"], "queue.delay_warning")
    if "workers" in q:
        queue.workers = _int(q["workers"], "queue.workers", 1)
    if "lease" in q:
        queue.lease = parse_duration(q["lease"], "queue.lease")
        if queue.lease < 1:
            raise ConfigError("queue.lease", "must be at least 1s")

    rem = _section(data, "remote")
    remote = RemoteSettings()
    if "port" in rem:
        remote.port = _int(rem["port"], "remote.port", 1)
        if remote.port > 65535:
            raise ConfigError("remote.port", "expected a port 1-65535")
    if "helo" in rem:
        remote.helo = _str(rem["helo"], "remote.helo")
    for k in ("connect_timeout", "command_timeout"):
        if k in rem:
            setattr(remote, k, parse_duration(rem[k], f"remote.{k}"))
    if "max_per_destination" in rem:
        remote.max_per_destination = _int(rem["max_per_destination"],
                                          "remote.max_per_destination", 1)
    if "mta_sts" in rem:
        if not isinstance(rem["mta_sts"], bool):
            raise ConfigError("remote.mta_sts", "expected true or false")
        remote.mta_sts = rem["mta_sts"]

    im = _section(data, "imap")
    imap = IMAPSettings()
    for k in ("max_line_length", "max_literal_size", "max_literal_memory",
              "max_literal_memory_per_session"):
        if k in im:
            setattr(imap, k, parse_size(im[k], f"imap.{k}"))
    if imap.max_literal_memory < imap.max_literal_size:
        raise ConfigError("imap.max_literal_memory", "must be at least imap.max_literal_size")
    if "max_literal_memory_per_session" not in im:
        imap.max_literal_memory_per_session = min(imap.max_literal_memory_per_session,
                                                  imap.max_literal_memory)
    elif imap.max_literal_memory_per_session > imap.max_literal_memory:
        raise ConfigError("imap.max_literal_memory_per_session",
                          "must be at most imap.max_literal_memory")
    if "metadata_max_size" in im:
        imap.metadata_max_size = parse_size(im["metadata_max_size"], "imap.metadata_max_size")
        if not 1 <= imap.metadata_max_size <= imap.max_literal_memory_per_session:
            raise ConfigError("imap.metadata_max_size",
                              "must be 1 to imap.max_literal_memory_per_session")
    if imap.max_line_length < 1024:
        raise ConfigError("imap.max_line_length", "must be at least 1K")
    for k in ("max_connections_per_user", "max_connections_per_ip", "max_bad_commands",
              "metadata_max_entries"):
        if k in im:
            setattr(imap, k, _int(im[k], f"imap.{k}", 1))
    if "idle_timeout" in im:
        imap.idle_timeout = parse_duration(im["idle_timeout"], "imap.idle_timeout")
    if "cleartext_login_networks" in im:
        imap.cleartext_login_networks = _networks(im["cleartext_login_networks"],
                                                  "imap.cleartext_login_networks")

    delivery = _delivery(_section(data, "delivery"), domains)
    encryption = _encryption(_section(data, "encryption"), domains)

    raw_routes = data.get("route", [])
    if not isinstance(raw_routes, list):
        raise ConfigError("route", "expected [[route]] tables")
    routes = [_route(r, i) for i, r in enumerate(raw_routes)]
    try:
        modules = pipelines.parse(data)
    except pipelines.PipelineError as e:
        raise ConfigError(e.key, str(e)[len(e.key) + 2:]) from None
    chatmail = _chatmail(_section(data, "chatmail"))
    if mode == "chatmail":
        from pillarbox import chatmail_profile

        chatmail_profile.apply(modules, data, chatmail)

    http = _http(_section(data, "http"))
    acme = _acme(_section(data, "acme"), base, hostname, check_files)
    if acme.directory and cfg_cert is not None:
        raise ConfigError("acme.directory", "set either [acme] directory or tls.cert/tls.key: "
                          "ACME writes the pair in data_dir/tls/")

    return Config(
        path=path.resolve(), hostname=hostname, domains=domains, data_dir=data_dir,
        maildrop_dir=maildrop_dir, user=user, mode=mode,
        log_level=log_level, log_format=log_format, listen=listen, tls_cert=cfg_cert,
        tls_key=cfg_key,
        storage_url=url, shared_dir=shared_dir, node=node, nameservers=list(ns), limits=limits,
        queue=queue,
        remote=remote, imap=imap, delivery=delivery, postfix=postfix, routes=routes,
        modules=modules, http=http, acme=acme, chatmail=chatmail, encryption=encryption,
    )


def _http(h: dict) -> HTTPSettings:
    out = HTTPSettings()
    if "metrics_token" in h:
        out.metrics_token = _str(h["metrics_token"], "http.metrics_token")
        if out.metrics_token and len(out.metrics_token) < 16:
            raise ConfigError("http.metrics_token", "must be at least 16 characters (or \"\")")
    if "client_ports" in h:
        out.client_ports = _str(h["client_ports"], "http.client_ports")
        if out.client_ports not in CLIENT_PORTS:
            raise ConfigError("http.client_ports",
                              f"expected \"standard\" or \"listen\", got {out.client_ports!r}")
    if "mta_sts_mode" in h:
        out.mta_sts_mode = _str(h["mta_sts_mode"], "http.mta_sts_mode")
        if out.mta_sts_mode not in MTA_STS_MODES:
            raise ConfigError("http.mta_sts_mode", "expected \"\", \"enforce\", \"testing\" "
                              f"or \"none\", got {out.mta_sts_mode!r}")
    if "mta_sts_max_age" in h:
        out.mta_sts_max_age = int(parse_duration(h["mta_sts_max_age"], "http.mta_sts_max_age"))
        if not 86400 <= out.mta_sts_max_age <= 31557600:  # RFC 8461 3.2: at most a year
            raise ConfigError("http.mta_sts_max_age", "must be 1d to 365d")
    if "max_request_size" in h:
        out.max_request_size = parse_size(h["max_request_size"], "http.max_request_size")
        if not 1024 <= out.max_request_size <= 10 * 1024**2:
            raise ConfigError("http.max_request_size", "must be 1K to 10M")
    if "request_timeout" in h:
        out.request_timeout = parse_duration(h["request_timeout"], "http.request_timeout")
        if not 0.1 <= out.request_timeout <= 3600:
            raise ConfigError("http.request_timeout", "must be 0.1s to 1h")
    if "max_connections_per_ip" in h:
        out.max_connections_per_ip = _int(h["max_connections_per_ip"],
                                          "http.max_connections_per_ip")
        if out.max_connections_per_ip < 1:
            raise ConfigError("http.max_connections_per_ip", "must be 1 or more")
    return out


def _acme(a: dict, base: Path, hostname: str, check_files: bool) -> ACMESettings:
    out = ACMESettings()
    out.directory = _str(a.get("directory", ""), "acme.directory")
    if out.directory and not out.directory.startswith("https://"):
        raise ConfigError("acme.directory", "expected an https:// URL (the CA's directory)")
    out.email = _str(a.get("email", ""), "acme.email")
    names = a.get("names", [])
    if not isinstance(names, list):
        raise ConfigError("acme.names", "expected a list of host names")
    for n in names:
        n = _str(n, "acme.names").strip().lower()
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", n) or "." not in n:
            raise ConfigError("acme.names", f"expected host names like mx.example.org, got {n!r}")
        out.names.append(n)
    out.names = out.names or [hostname]
    if "renew_before" in a:
        out.renew_before = parse_duration(a["renew_before"], "acme.renew_before")
    ca = _str(a.get("ca_file", ""), "acme.ca_file")
    out.ca_file = base / ca if ca else None
    if check_files and out.ca_file is not None and not os.access(out.ca_file, os.R_OK):
        raise ConfigError("acme.ca_file", f"cannot read {out.ca_file}")
    return out


def restart_needed(old: Config, new: Config) -> str | None:
    """The first setting a reload cannot change that differs between two
    configs: the listening sockets (bound before privileges are dropped), where
    mail and state live, and the number of queue workers."""
    values = {
        "data_dir": lambda c: c.data_dir, "maildrop_dir": lambda c: c.maildrop_dir,
        "storage.url": lambda c: c.storage_url, "queue.workers": lambda c: c.queue.workers,
        "queue.lease": lambda c: c.queue.lease,  # the spool keeper's, set at the start
        "user": lambda c: c.user,  # root is given up at the start, for good
        "mode": lambda c: c.mode,  # chatmail's services start with the server
    }
    for kind in LISTEN_KINDS:
        values[f"listen.{kind}"] = lambda c, kind=kind: sorted(c.listen.get(kind, []))
    for key in POSTFIX_LISTENERS:
        values[f"postfix.{key}"] = lambda c, key=key: sorted(getattr(c.postfix, key))
    for key, value in values.items():
        if value(old) != value(new):
            return key
    return None


def _is_path(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("/", "./"))


def _unix_path(value: str, base: Path) -> tuple[str, int]:
    """listen.lmtp's Unix socket: (absolute path, port 0); relative to the config file."""
    return str((base / value).resolve()), 0


def _postfix(d: dict) -> PostfixSettings:
    out = PostfixSettings()
    for key in POSTFIX_LISTENERS:
        if key in d:
            if not isinstance(d[key], list):
                raise ConfigError(f"postfix.{key}", "expected a list of \"host:port\" strings")
            setattr(out, key, [parse_hostport(a, f"postfix.{key}") for a in d[key]])
    if "idle_timeout" in d:
        out.idle_timeout = parse_duration(d["idle_timeout"], "postfix.idle_timeout")
        if not 0.1 <= out.idle_timeout <= 86400:
            raise ConfigError("postfix.idle_timeout", "must be 0.1s to 1d")
    return out


_DELIMITER_CHARS = frozenset("!#$%&'*+-/=?^_`{|}~")


def _chatmail(c: dict) -> ChatmailSettings:
    out = ChatmailSettings()
    for k in ("username_min_length", "username_max_length", "password_min_length",
              "max_user_send_per_minute", "max_user_send_burst", "delete_inactive_users_after",
              "delete_mails_after", "delete_large_after"):
        if k in c:
            setattr(out, k, _int(c[k], f"chatmail.{k}", 1))
    for k in ("min_free_disk", "min_free_memory", "max_mailbox_size", "large_message_size"):
        if k in c:
            setattr(out, k, parse_size(c[k], f"chatmail.{k}"))
    if "notify_retry_base" in c:
        out.notify_retry_base = parse_duration(c["notify_retry_base"], "chatmail.notify_retry_base")
        if not 0.01 <= out.notify_retry_base <= 3600:
            raise ConfigError("chatmail.notify_retry_base", "must be from 0.01s to 1h")
    if "expire_every" in c:
        out.expire_every = parse_duration(c["expire_every"], "chatmail.expire_every")
        if not 1 <= out.expire_every <= 366 * 86400:
            raise ConfigError("chatmail.expire_every", "must be from 1s to 366d")
    if "strict_dkim" in c:
        if not isinstance(c["strict_dkim"], bool):
            raise ConfigError("chatmail.strict_dkim",
                              f"expected true or false, got {c['strict_dkim']!r}")
        out.strict_dkim = c["strict_dkim"]
    for k in ("notify_url", "iroh_relay"):
        if k in c:
            value = _str(c[k], f"chatmail.{k}").strip()
            if value and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
                raise ConfigError(f"chatmail.{k}",
                                  f"expected an http(s) URL or \"\", got {value!r}")
            setattr(out, k, value)
    if out.username_min_length > out.username_max_length:
        raise ConfigError("chatmail.username_min_length", "must be at most username_max_length")
    if out.username_max_length > 64:
        raise ConfigError("chatmail.username_max_length", "must be at most 64")
    return out


def _delivery(d: dict, domains: list[str]) -> DeliverySettings:
    out = DeliverySettings()
    if "recipient_delimiter" in d:
        delim = _str(d["recipient_delimiter"], "delivery.recipient_delimiter")
        if len(delim) > 8 or not set(delim) <= _DELIMITER_CHARS:
            raise ConfigError("delivery.recipient_delimiter",
                              "expected \"\" or a few of the characters "
                              f"{''.join(sorted(_DELIMITER_CHARS))}, got {delim!r}")
        out.recipient_delimiter = delim
    if "detail_folder" in d:
        out.detail_folder = _str(d["detail_folder"], "delivery.detail_folder")
        if out.detail_folder not in DETAIL_FOLDER_MODES:
            raise ConfigError("delivery.detail_folder",
                              f"expected off, existing or create, got {out.detail_folder!r}")
    if "srs" in d:
        if not isinstance(d["srs"], bool):
            raise ConfigError("delivery.srs", "expected true or false")
        out.srs = d["srs"]
    if "arc_seal" in d:
        if not isinstance(d["arc_seal"], bool):
            raise ConfigError("delivery.arc_seal", "expected true or false")
        out.arc_seal = d["arc_seal"]
    if "srs_domain" in d:
        dom = _str(d["srs_domain"], "delivery.srs_domain")
        try:
            dom = normalize_domain(dom) if dom else ""
        except AddressError as e:
            raise ConfigError("delivery.srs_domain", str(e)) from None
        if dom and dom not in domains:
            raise ConfigError("delivery.srs_domain",
                              f"{dom} is not one of domains; bounces must come back here")
        out.srs_domain = dom
    out.srs_domain = out.srs_domain or domains[0]
    return out


def _encryption(d: dict, domains: list[str]) -> EncryptionSettings:
    out = EncryptionSettings()

    def names(key: str, what: str) -> list[str]:
        v = d.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"encryption.{key}", f"expected a list of {what}, got {v!r}")
        return [x.strip().lower() for x in v]

    out.domains = names("domains", "domains")
    for dom in out.domains:
        if dom not in domains:
            raise ConfigError("encryption.domains", f"{dom} is not one of domains")
    out.users = names("users", "addresses")
    for u in out.users:
        if "@" not in u or u.rpartition("@")[2] not in domains:
            raise ConfigError("encryption.users", f"{u} is not an address in one of domains")
    out.learn_autocrypt = names("learn_autocrypt", "domains (or \"*\")")
    for dom in out.learn_autocrypt:
        if dom != "*" and dom not in domains:
            raise ConfigError("encryption.learn_autocrypt", f"{dom} is not one of domains")
    if "protect_subject" in d:
        if not isinstance(d["protect_subject"], bool):
            raise ConfigError("encryption.protect_subject", "expected true or false")
        out.protect_subject = d["protect_subject"]
    if "no_key" in d:
        out.no_key = _str(d["no_key"], "encryption.no_key")
        if out.no_key not in ("clear", "defer", "hold"):
            raise ConfigError("encryption.no_key",
                              f"expected \"clear\", \"defer\" or \"hold\", got {out.no_key!r}")
    if "scrub_delay" in d:
        v = d["scrub_delay"]
        # At most 30: with the kernel's 30 s write-back the zeros reach the
        # disk within the 60 s of delivery.
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= SCRUB_DELAY_MAX:
            raise ConfigError("encryption.scrub_delay",
                              f"expected seconds from 0 to {SCRUB_DELAY_MAX}, got {v!r}")
        out.scrub_delay = float(v)
    return out


def _route(r: object, i: int) -> Route:
    key = f"route[{i}]"
    if not isinstance(r, dict):
        raise ConfigError(key, "expected a table")
    unknown = set(r) - _ROUTE_KEYS
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown key")
    domains = r.get("domains")
    if not isinstance(domains, list) or not domains:
        raise ConfigError(f"{key}.domains", "expected a non-empty list of domains (or [\"*\"])")
    doms = []
    for d in domains:
        d = _str(d, f"{key}.domains")
        try:
            doms.append(d if d == "*" else normalize_domain(d))
        except AddressError as e:
            raise ConfigError(f"{key}.domains", str(e)) from None
    senders = r.get("senders", [])
    if not isinstance(senders, list):
        raise ConfigError(f"{key}.senders", "expected a list of addresses or \"@domain\"s")
    route = Route(domains=doms, senders=[_str(x, f"{key}.senders").lower() for x in senders])
    host = _str(r.get("host", ""), f"{key}.host")
    if host:
        if ":" in host:
            route.host, route.port = parse_hostport(host, f"{key}.host")
        else:
            route.host = host
    route.tls = _str(r.get("tls", "opportunistic"), f"{key}.tls")
    if route.tls not in TLS_MODES:
        raise ConfigError(f"{key}.tls", f"expected one of {', '.join(TLS_MODES)}, "
                                        f"got {route.tls!r}")
    route.auth_user = _str(r.get("auth_user", ""), f"{key}.auth_user")
    route.auth_password = _str(r.get("auth_password", ""), f"{key}.auth_password")
    if bool(route.auth_user) != bool(route.auth_password):
        raise ConfigError(f"{key}.auth_user", "set both auth_user and auth_password, or neither")
    return route


# -- `check`: every error at once, and warnings ---------------------------------

# What a required key that is wrong is replaced by, to go on looking for errors.
_STAND_INS = {"hostname": "stand-in.invalid", "domains": ["stand-in.invalid"]}


def _set_aside(data: dict, key: str) -> bool:
    """Take the key at fault out of data (a required one: a stand-in), so
    validation can go on; False when there is nothing to take out."""
    if re.match(r"(module|pipeline|rule)\b", key):
        # They refer to each other: one mistake there is reported alone.
        return any([data.pop(k, None) is not None for k in ("module", "pipeline", "rule")])
    m = re.fullmatch(r"route\[(\d+)\](?:\..*)?", key)
    if m:
        routes = data.get("route")
        i = int(m.group(1))
        if not isinstance(routes, list) or i >= len(routes):
            return False
        if routes[i] == {"domains": ["stand-in.invalid"]}:
            return False
        routes[i] = {"domains": ["stand-in.invalid"]}  # same index for later errors
        return True
    section, _, name = key.partition(".")
    if name and isinstance(data.get(section), dict) and name in data[section]:
        del data[section][name]
        return True
    if section in _STAND_INS and data.get(section) != _STAND_INS[section]:
        data[section] = _STAND_INS[section]
        return True
    if section in data:
        del data[section]
        return True
    return False


def validate(path: Path) -> tuple[Config | None, list[ConfigError]]:
    """The config and no errors, or None and every error found (`check`)."""
    try:
        cfg = load(path)
        return cfg, []
    except ConfigError as e:
        errors = [e]
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None, errors  # not TOML at all: the one error says so
    while len(errors) < 100 and _set_aside(data, errors[-1].key):
        try:
            from_dict(data, path)
            break
        except ConfigError as e:
            errors.append(e)
    return None, errors


def warnings(cfg: Config) -> list[str]:
    """Things that are valid but almost certainly not meant (`check`)."""
    out = []
    if "." not in cfg.hostname:
        out.append(f"hostname: {cfg.hostname} is not a fully qualified name (like "
                   "mx.example.org); other servers look this name up to reach this one")
    for ns in cfg.nameservers:
        host = ns
        if ":" in ns:
            try:
                ipaddress.ip_address(ns.strip("[]"))
            except ValueError:
                host = ns.rpartition(":")[0].strip("[]")
            else:
                host = ns.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            out.append(f"dns.nameservers: {ns} is not an IP address; name the resolvers "
                       "by address (a name would need a resolver of its own)")
    for i, r in enumerate(cfg.routes):
        for d in r.domains:
            if cfg.is_local_domain(d):
                out.append(f"route[{i}].domains: {d} is a local domain; its mail is "
                           "delivered here, never through this route")
    out += pipelines.warnings(cfg.modules)
    if cfg.user:
        import pwd

        try:
            pwd.getpwnam(cfg.user)
        except KeyError:
            out.append(f"user: there is no user {cfg.user} on this system; `serve` started "
                       "as root will refuse to start")
    return out


TEMPLATE = """\
# pillarbox configuration. Every key is optional except hostname and domains;
# the value shown is the default, except in [listen], where a missing key
# means the endpoint is off, and in [pipeline.smtp] at the end, which turns on
# more checks than a config without it has. Sizes take K/M/G, durations s/m/h/d.

# The name this server gives itself in the SMTP banner, EHLO and Received
# headers. Publish it as the MX host of your domains (`pillarbox dns`).
hostname = "{hostname}"

# The domains this server receives mail for. Mail to any other domain is
# relayed only for authenticated users.
domains = ["{domain}"]

# Where mailboxes, the queue, the database and the TLS pair live; relative
# paths are relative to this file.
data_dir = "var"

# Where `pillarbox sendmail` run by any other local user (a cron job, a web
# application) leaves mail for the server: outside data_dir, made by `serve`
# writable by all and listable by none (mode 1733). "" turns that off. See
# "The sendmail command" in docs/OPERATING.md.
maildrop_dir = "maildrop"

# The service user. `serve` started as root binds its ports, makes data_dir
# and maildrop_dir this user's, and then runs as this user (never as root:
# `|command` aliases are not run as root). "": run as whoever starts it.
user = ""

# "standard", or "chatmail": the end-to-end-encryption-only relay profile.
mode = "standard"

# debug | info | warning | error. Logs go to stderr, one line per event.
log_level = "warning"

# "text": key=value lines; "json": one JSON object per line, the same keys.
log_format = "text"

[listen]
# Each is a list of "host:port"; [] turns the endpoint off.
smtp        = ["127.0.0.1:2525"]   # MX: mail from the internet (25 in production)
submission  = ["127.0.0.1:5870"]   # STARTTLS + AUTH for your users (587 in production)
submissions = ["127.0.0.1:4650"]   # implicit TLS + AUTH (465 in production)
imap        = ["127.0.0.1:1430"]   # IMAP with STARTTLS; login only after it (143 in production)
imaps       = ["127.0.0.1:9930"]   # IMAP over implicit TLS (993 in production)
lmtp        = []                   # LMTP from Postfix: "host:port" or a socket path
http        = []                   # autoconfig, MTA-STS, ACME HTTP-01 (80 in production)
https       = []                   # the same over TLS, with the mail certificate (443)
metrics     = []                   # /metrics, /healthz, /readyz for your monitoring only

[tls]
# PEM certificate chain and private key. Empty: a self-signed pair is made in
# data_dir/tls/ (fine for testing; use a real certificate in production).
cert = ""
key  = ""

[storage]
# Empty: SQLite + files in data_dir. "postgresql://USER@HOST/DB": users, aliases
# and sender rights in PostgreSQL, shared by several nodes (docs/POSTGRESQL.md
# says what is there so far); run `pillarbox migrate` after upgrading.
url = ""
# With url on PostgreSQL: a directory every node mounts (NFS, CephFS, ...)
# holding the Maildirs, each node's queue spool and the DKIM keys. Empty: all
# in data_dir.
shared_dir = ""
# This node's name among the nodes sharing shared_dir (its spool is
# shared_dir/queue/NODE). Empty: the host name.
node = ""

[dns]
# Resolvers as "host" or "host:port"; empty: the system resolver.
nameservers = []

[limits]
max_message_size = "25M"   # larger messages get 552 5.3.4; advertised in SIZE
max_recipients   = 100     # recipients per message; more get 452 4.5.3
max_connections  = 1000    # concurrent SMTP connections (IMAP: as many again); more get 421
max_connections_per_ip = 50  # concurrent SMTP connections from one address; more get 421 4.7.0
# A client has this long to begin a command, and again to complete it from its
# first byte; also the limit for a TLS handshake and for answering a reply.
command_timeout  = "5m"
# Message data (DATA, IMAP literals) and large replies must move at least this
# many bytes per second; each byte buys 1/rate seconds, never more than
# command_timeout ahead.
min_data_rate    = 500
# How long a successful login (SMTP AUTH, IMAP) is remembered in memory, so a
# reconnecting client skips the argon2id check; "0s" checks every time.
login_cache      = "10m"
# Failed logins (SMTP AUTH, IMAP LOGIN/AUTHENTICATE), counted over all
# connections. After auth_max_failures from one address (IPv6: its /64) within
# auth_failure_window, logins from it are refused (454 4.7.0, NO [UNAVAILABLE])
# for auth_lockout, before the password is checked. After
# auth_account_max_failures for one account (from any addresses), that account
# refuses logins from addresses that have not logged into it in the last 7 days,
# also for auth_lockout. Each failure is answered after a delay that grows with
# the square of the failures, up to auth_failure_delay.
auth_max_failures         = 10
auth_account_max_failures = 30
auth_failure_window       = "15m"
auth_lockout              = "15m"
auth_failure_delay        = "2s"

# `user add` and `user passwd` refuse shorter passwords (and the commonest
# ones, and the address itself, whatever their length).
min_password_length = 12

[queue]
min_free_space = "100M"    # below this much free disk, new mail gets 452 4.3.1
# waits between delivery attempts; the last one repeats until max_lifetime
retry_schedule = ["1m", "5m", "15m", "1h", "4h"]
max_lifetime   = "5d"      # after this a message that still fails is bounced
# a sender whose mail is still deferred after this long is told so, once;
# "0s": never
delay_warning  = "4h"
workers        = 64        # messages delivered concurrently (local deliveries are batched)
# With storage.shared_dir: a node that has not renewed its spool's lease for
# this long (dead, or cut off from PostgreSQL) has its spool delivered by
# another node (docs/POSTGRESQL.md)
lease          = "30s"

[remote]
# Delivery to other domains: MX lookup, STARTTLS when offered, retries.
port                = 25     # port of the MX hosts
helo                = ""     # name given in EHLO; empty: hostname
connect_timeout     = "30s"
command_timeout     = "5m"
max_per_destination = 10     # concurrent connections to one host
mta_sts             = true   # fetch and enforce the recipient domain's MTA-STS policy

[imap]
max_line_length          = "64K"  # one command line; longer gets BAD
max_literal_size         = "50M"  # one literal, so the largest APPEND; larger gets NO [TOOBIG]
max_literal_memory       = "200M" # literals of all sessions held at once; more wait their turn
max_literal_memory_per_session = "1M" # one command's literals in memory; more: NO [TOOBIG]
max_connections_per_user = 20     # concurrent logins of one user; more get NO [LIMIT]
max_connections_per_ip   = 50     # concurrent connections from one address; more get BYE
idle_timeout             = "30m"  # silence (also in IDLE) before BYE; RFC 3501 asks for 30m+
max_bad_commands         = 10     # BAD replies before the connection is closed
# Addresses/networks allowed to LOGIN without TLS on listen.imap (e.g. ["127.0.0.1"]
# for a local webmail or test tool); [] : STARTTLS first, from everywhere
cleartext_login_networks = []
metadata_max_size        = "64K"  # one METADATA value; larger gets NO [METADATA MAXSIZE n]
metadata_max_entries     = 200    # METADATA entries per user; more get NO [METADATA TOOMANY]

[delivery]
# Plus-addressing: alice+shopping@ reaches alice when no user or alias has the
# whole name. Each of these characters starts the detail; "" turns it off.
recipient_delimiter = "+"
# "existing": file alice+shopping@ mail into alice's folder "shopping" when she
# has one (never Sent, Drafts, Trash, Junk, Archive); "create": make it if
# missing (senders then choose folder names); "off": always INBOX.
detail_folder = "off"
# Mail an alias forwards to another domain leaves with an SRS0 sender on
# srs_domain (empty: the first of domains), so SPF passes at the next hop and
# its bounces come back here to be passed on. The key is data_dir/srs.key
# (shared_dir/srs.key with [storage] shared_dir, one for all nodes).
srs        = true
srs_domain = ""
# ARC-seal such forwards (RFC 8617) with the alias domain's RSA DKIM key, so
# the next hop can trust the checks we made on arrival; no key: not sealed.
arc_seal   = true

[postfix]
# Beside Postfix (docs/POSTFIX.md; `pillarbox postfix` prints its main.cf lines).
# Each is a list of "host:port"; [] turns it off.
recipient_access = []   # tcp_table(5) map for check_recipient_access and virtual_mailbox_maps
virtual_alias    = []   # tcp_table(5) map for virtual_alias_maps
policy           = []   # SMTP access policy service for check_policy_service
# A tcp_table or policy connection must complete a request within this of its
# start or the previous answer, else it is closed (idle or too slow).
idle_timeout     = "10m"

[encryption]
# OpenPGP encryption at rest (docs/ENCRYPTION.md): mail for these domains and
# users is encrypted to the user's key (`pillarbox user key import`) before
# it reaches the mailbox.
domains         = []
users           = []
protect_subject = false    # true: the outer Subject is "...", the real one inside
# A user with no key: "clear" delivers as is, "defer" refuses at RCPT with
# 450 4.7.0, "hold" keeps the mail queued until a key is imported.
no_key          = "clear"
# Domains ("*": all) whose users' own Autocrypt header on submission sets their key.
learn_autocrypt = []
# Seconds (0 to 30) after delivery until an encrypted message's cleartext in the
# queue is overwritten; queue files whose messages are all delivered go before.
scrub_delay     = 15

# Static routes (first match wins; no match: MX lookup). Example: send all
# outgoing mail through a smarthost with a login.
# [[route]]
# domains       = ["*"]                # recipient domains, "*" = any other domain
# senders       = []                   # optional: only for these senders / "@domain"s
# host          = "smtp.provider.example:587"
# tls           = "required"           # none | opportunistic | required | verify
# auth_user     = "me@provider.example"
# auth_password = "secret"

[http]
# docs/HTTP.md. /metrics on listen.http/https too, for requests that carry
# "Authorization: Bearer <token>" (16+ characters); "": only on listen.metrics.
metrics_token    = ""
# The ports autoconfig, Autodiscover and the SRV records of `pillarbox dns`
# tell mail clients: "standard" (587, 465, 143, 993) or "listen" (the first
# port of each listen.* list).
client_ports     = "standard"
# MTA-STS policy mode: enforce | testing | none; "": enforce with tls.cert or
# [acme], else testing
mta_sts_mode     = ""
mta_sts_max_age  = "7d"
max_request_size = "64K"   # a larger request body gets 413
# A request's header must arrive within request_timeout of the connection or
# the previous response (at most 15s), its body within request_timeout of the
# header: else 408 or the connection is closed (slow clients hold no slots).
request_timeout  = "30s"
max_connections_per_ip = 20  # one more gets 503 and is closed

[acme]
# Certificates from an ACME CA for names (default: hostname), answered with
# HTTP-01 on listen.http (port 80 must reach it); written to data_dir/tls/ and
# reloaded into every endpoint. "" turns ACME off. Let's Encrypt:
# "https://acme-v02.api.letsencrypt.org/directory".
directory    = ""
email        = ""
names        = []
renew_before = "30d"
ca_file      = ""      # a CA bundle to trust the ACME server's HTTPS (private CAs)

[chatmail]
# Used only with mode = "chatmail" (docs/CHATMAIL.md).
username_min_length = 9        # an account is made on first login for a local part
username_max_length = 9        # of [a-z0-9._-] this long,
password_min_length = 9        # a password at least this long,
min_free_disk = "1G"           # and while the server has this much room
min_free_memory = "200M"
strict_dkim = true             # the MX requires DKIM d= the From domain
notify_url = "https://notifications.delta.chat/notify"  # push POSTs; "" = none
notify_retry_base = "8s"       # first retry of a failed push, then x8 each
iroh_relay = ""                # METADATA /shared/vendor/deltachat/irohrelay
max_user_send_per_minute = 60
max_user_send_burst = 10
max_mailbox_size = "500M"      # quota of accounts made on first login
delete_inactive_users_after = 90  # days; `pillarbox expire`, and in the server
expire_every = "24h"           # how often the server expires (first: at most 10 min in)
delete_mails_after = 20        # days
delete_large_after = 7         # days, for messages over large_message_size
large_message_size = "200K"

# What the MX (listen.smtp) asks of mail from other servers, in order:
# "relay" refuses other domains, "recipient" unknown local addresses, and
# "authentication" verifies DKIM, SPF, DMARC and ARC into one
# Authentication-Results field (a failing DMARC p=reject: 550 5.7.1;
# p=quarantine: the Junk folder). Without this table: relay and recipient only.
# More checks (helo, rate_limit, dnsbl, greylist, rspamd): docs/ABUSE.md,
# docs/SPAM.md; every kind and option: docs/MODULES.md.
[pipeline.smtp]
checks = ["relay", "recipient", "authentication"]
"""
