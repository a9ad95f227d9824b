"""Helpers for the integration tests: a running pillarbox, raw SMTP, messages.

The `Server` class drives a real `python -m pillarbox -c CFG serve` process
on free ports of 127.0.0.1; tests reach it only over sockets and through the
command line, as a user would.
"""

from __future__ import annotations

import email
import email.message
import imaplib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import imapclient

HOSTNAME = "mx.example.test"
DOMAIN = "example.test"
CLIENT_NAME = "client.test"  # our EHLO name; avoids a slow getfqdn() in smtplib

# Users every seeded server starts with (password PASSWORD). They are made once
# per test session with the real `pillarbox user add` (argon2 hashing makes that
# the costliest step of a test), and the resulting data directory is copied
# into each new server before it starts.
ALICE = "alice@example.test"
BOB = "bob@example.test"
SEED_USERS = (ALICE, BOB)
PASSWORD = "secret-for-tests-only"  # long and rare enough for `user add`

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 60.0

# The service user of the tests that start a server as root with `user` set.
SERVICE_USER = "pbx-service-test"

# A log line that must never appear in the server's stderr.
BAD_LOG_LINE = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|(?i:level=(?:error|critical)\b)")


# --------------------------------------------------------------------------
# small utilities


def token() -> str:
    """A short unique marker to find one message among others."""
    return uuid.uuid4().hex[:16]


def service_account():
    """The passwd entry of SERVICE_USER, made (a system user, no home) if missing."""
    import pwd

    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    p = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", SERVICE_USER], capture_output=True, text=True)
    if p.returncode not in (0, 9):  # 9: made meanwhile by another xdist worker
        raise AssertionError(f"useradd {SERVICE_USER} failed: {p.stderr}")
    return pwd.getpwnam(SERVICE_USER)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def client_ssl_context() -> ssl.SSLContext:
    """TLS for clients: the server's pair is self-signed, so no verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def make_message(
    frm: str,
    to: str | list[str],
    subject: str,
    body: str = "Hello from the pillarbox integration tests.\r\n",
    headers: dict[str, str] | None = None,
    date_and_id: bool = True,
) -> bytes:
    """An RFC 5322 message with CRLF line ends, as bytes."""
    if isinstance(to, str):
        to = [to]
    lines = [f"From: <{frm}>", f"To: {', '.join(f'<{t}>' for t in to)}", f"Subject: {subject}"]
    if date_and_id:
        lines.append("Date: Mon, 01 Jan 2024 00:00:00 +0000")
        lines.append(f"Message-ID: <{token()}@{CLIENT_NAME}>")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    body = body.replace("\r\n", "\n").replace("\n", "\r\n")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def parse(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw)


def enhanced(msg: bytes | str) -> str:
    """The enhanced status code (RFC 3463) at the start of a reply text, or ''."""
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    m = re.match(r"\s*([245]\.\d{1,3}\.\d{1,3})\b", msg)
    return m.group(1) if m else ""


def assert_reply(resp, code: int, status: str | None = None, what: str = ""):
    """Check an smtplib-style (code, text) reply: the code, and the enhanced code."""
    got_code, text = resp[0], resp[1]
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    label = f"{what}: " if what else ""
    assert got_code == code, f"{label}expected {code} {status or ''}, got {got_code} {text!r}"
    if status is not None:
        assert enhanced(text) == status, (
            f"{label}expected enhanced code {status}, got {got_code} {text!r}"
        )


# --------------------------------------------------------------------------
# raw SMTP over a plain socket, for input no polite client would send


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def status(self) -> str:
        return enhanced(self.lines[0]) if self.lines else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RawSMTP:
    """A byte-exact SMTP client: send what we like, read replies one by one."""

    def __init__(self, port: int, host: str = "127.0.0.1", tls: bool = False, timeout=10.0):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            self.sock = client_ssl_context().wrap_socket(self.sock)
        self.buf = b""
        self.eof = False

    # -- io
    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete reply from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        except (TimeoutError, socket.timeout) as e:  # noqa: UP041 - socket.timeout alias
            raise TimeoutError("no complete reply from the server in time") from e
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_line(self, timeout: float | None = None) -> bytes | None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self, timeout: float | None = None) -> Reply:
        """Read one (possibly multi-line) reply; raises EOFError if the peer closed."""
        lines: list[str] = []
        while True:
            raw = self.read_line(timeout)
            if raw is None:
                raise EOFError(f"connection closed; partial reply {lines!r}")
            line = raw.decode("utf-8", "replace")
            m = re.match(r"(\d{3})([ -]?)(.*)", line)
            if not m:
                raise AssertionError(f"not an SMTP reply line: {line!r}")
            lines.append(m.group(3))
            if m.group(2) != "-":
                return Reply(int(m.group(1)), lines)

    def replies_until_close(self, timeout: float | None = None) -> list[Reply]:
        out = []
        while True:
            try:
                out.append(self.reply(timeout))
            except EOFError:
                return out

    def cmd(self, line: str | bytes, timeout: float | None = None) -> Reply:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def expect(self, line: str | bytes, code: int) -> Reply:
        r = self.cmd(line)
        assert r.code == code, f"{line!r}: expected {code}, got {r}"
        return r

    def starttls(self) -> None:
        r = self.cmd("STARTTLS")
        assert r.code == 220, f"STARTTLS refused: {r}"
        assert not self.buf, "server sent data after the STARTTLS reply"
        self.sock = client_ssl_context().wrap_socket(self.sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# the server under test


def default_config(smtp: int, submission: int, submissions: int, imap: int | None = None,
                   imaps: int | None = None) -> dict:
    """Every config key (see the TEMPLATE in config.py), with test-friendly values."""
    return {
        "hostname": HOSTNAME,
        "domains": [DOMAIN],
        "data_dir": "var",
        "mode": "standard",
        "log_level": "info",
        "listen": {
            "smtp": [f"127.0.0.1:{smtp}"],
            "submission": [f"127.0.0.1:{submission}"],
            "submissions": [f"127.0.0.1:{submissions}"],
            "imap": [f"127.0.0.1:{imap}"] if imap else [],
            "imaps": [f"127.0.0.1:{imaps}"] if imaps else [],
            "lmtp": [],
            "http": [],
        },
        "tls": {"cert": "", "key": ""},
        "storage": {"url": ""},
        "dns": {"nameservers": []},
        "limits": {
            "max_message_size": "25M",
            "max_recipients": 100,
            "max_connections": 1000,
            "command_timeout": "5m",
        },
        "queue": {
            "min_free_space": "1M",
            "retry_schedule": ["1m", "5m", "15m", "1h", "4h"],
            "max_lifetime": "5d",
            "workers": 4,
        },
    }


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(config: dict) -> str:
    out = []
    for k, v in config.items():
        if not isinstance(v, dict):
            out.append(f"{k} = {_toml_value(v)}")
    for k, v in config.items():
        if isinstance(v, dict):
            out.append("")
            out.append(f"[{k}]")
            for kk, vv in v.items():
                out.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(out) + "\n"


def apply_overrides(config: dict, overrides: dict) -> None:
    """Keys: "limits.max_recipients", "limits__max_recipients", or a section dict."""
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if "." in key:
            section, name = key.split(".", 1)
            config.setdefault(section, {})[name] = value
        elif isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value


def run_pillarbox(args, input=None, cwd=None, env_extra=None, timeout=CLI_TIMEOUT):
    """Run `python -m pillarbox ARGS`; stdout/stderr decoded to str."""
    env = {k: v for k, v in os.environ.items() if k != "PILLARBOX_CONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(env_extra or {})
    if isinstance(input, str):
        input = input.encode("utf-8")
    p = subprocess.run(
        [sys.executable, "-m", "pillarbox", *map(str, args)],
        input=input if input is not None else b"",
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        p.args,
        p.returncode,
        p.stdout.decode("utf-8", "replace"),
        p.stderr.decode("utf-8", "replace"),
    )


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """A pillarbox server under test.

    `wrapper` is a command to run the server under (e.g. ["strace", "-f", ...]):
    the server becomes `wrapper + [python, -m, pillarbox, ...]`, and must be the
    wrapper's only child process, so signals (stop, kill9) can go to it rather
    than to the wrapper. Without a wrapper nothing changes.
    """

    def __init__(self, root: Path, overrides: dict | None = None, extra_toml: str = "",
                 seed: Path | None = None, wrapper: list[str] | None = None):
        self.root = root
        self.wrapper = list(wrapper or [])
        root.mkdir(parents=True, exist_ok=True)
        self.cfg_path = root / "pillarbox.toml"
        self.data_dir = root / "var"
        if seed is not None:
            shutil.copytree(seed, self.data_dir)
        else:
            self.data_dir.mkdir(exist_ok=True)
        self.data_dir.chmod(0o700)  # as `init` makes it; an open one is closed with a warning
        (self.smtp_port, self.submission_port, self.submissions_port, self.imap_port,
         self.imaps_port) = free_ports(5)
        self.config = default_config(self.smtp_port, self.submission_port, self.submissions_port,
                                     self.imap_port, self.imaps_port)
        apply_overrides(self.config, overrides or {})
        # ports we picked ourselves may be re-picked if someone takes one first
        self._own_ports = not any(k.replace("__", ".").startswith("listen")
                                  for k in (overrides or {}))
        self.extra_toml = extra_toml
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []
        self.problems: list[str] = []
        self.write_config()

    @property
    def hostname(self) -> str:
        return self.config["hostname"]

    def write_config(self) -> None:
        text = to_toml(self.config)
        if self.extra_toml:
            text += "\n" + self.extra_toml + "\n"
        self.cfg_path.write_text(text)

    # -- process
    def listening_ports(self) -> list[int]:
        ports = []
        for kind in ("smtp", "submission", "submissions", "imap", "imaps", "http", "https",
                     "metrics"):
            for hp in self.config["listen"].get(kind, []):
                ports.append(int(hp.rsplit(":", 1)[1]))
        return ports

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def _repick_ports(self) -> None:
        ports = free_ports(5)
        (self.smtp_port, self.submission_port, self.submissions_port, self.imap_port,
         self.imaps_port) = ports
        kinds = ("smtp", "submission", "submissions", "imap", "imaps")
        for kind, port in zip(kinds, ports, strict=True):
            if self.config["listen"].get(kind):
                self.config["listen"][kind] = [f"127.0.0.1:{port}"]
        self.write_config()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start and wait until every listening port accepts connections.

        A free port found by binding port 0 can be taken by another process
        before the server binds it (xdist workers, clients' ephemeral ports):
        on a first start, "address already in use" makes us pick new ports and
        try again, a few times.
        """
        first = not self.logs
        for attempt in range(4):
            try:
                return self._start_once(timeout)
            except AssertionError as e:
                if not (first and self._own_ports and attempt < 3
                        and "already in use" in str(e)):
                    raise
                failed = self.logs.pop()
                failed.rename(failed.with_suffix(".port-taken"))
                self._repick_ports()

    def _start_once(self, timeout: float) -> None:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        log = self.root / f"serve-{len(self.logs) + 1}.stderr"
        self.logs.append(log)
        env = {k: v for k, v in os.environ.items() if k != "PILLARBOX_CONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        with open(log, "wb") as err, open(self.root / "serve.stdout", "ab") as out:
            self.proc = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "pillarbox", "-c", str(self.cfg_path),
                 "serve"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.root,
                env=env,
            )
        deadline = time.monotonic() + timeout
        pending = self.listening_ports()
        while pending:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"pillarbox serve exited with {self.proc.returncode} before listening;"
                    f" stderr:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"pillarbox serve did not listen on {pending} within {timeout:.0f}s;"
                    f" stderr:\n{self.log_tail()}"
                )
            pending = [p for p in pending if not port_open(p)]
            if pending:
                time.sleep(0.05)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The pillarbox process itself: with a wrapper, the wrapper's only child."""
        assert self.proc is not None, "server not started"
        if not self.wrapper:
            return self.proc.pid
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:  # the wrapper is gone
            children = ""
        pids = children.split()
        assert len(pids) == 1, f"wrapper {self.wrapper[0]} has children {pids}, expected one"
        return int(pids[0])

    def stop(self) -> None:
        """Graceful stop (SIGTERM); a server that does not stop in time is a problem."""
        if not self.running():
            return
        try:
            pid = self.pid
        except AssertionError:  # wrapped server already gone: just wait for the wrapper
            pid = None
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.problems.append(f"server did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM")
            self.proc.kill()
            self.proc.wait()

    def kill9(self) -> None:
        assert self.running(), "kill9: server is not running"
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def shutdown_and_check(self) -> list[str]:
        """Teardown: stop, then look for tracebacks and ERROR lines in stderr."""
        self.stop()
        problems = list(self.problems)
        bad = [line for line in self.log_text().splitlines() if BAD_LOG_LINE.search(line)]
        if bad:
            problems.append(
                f"server stderr ({self.root}) has {len(bad)} Traceback/ERROR line(s):\n  "
                + "\n  ".join(bad[:20])
            )
        return problems

    # -- command line
    def cli(self, *args, input=None, timeout=CLI_TIMEOUT) -> subprocess.CompletedProcess:
        return run_pillarbox(["-c", self.cfg_path, *args], input=input, cwd=self.root,
                             timeout=timeout)

    def cli_ok(self, *args, input=None) -> subprocess.CompletedProcess:
        p = self.cli(*args, input=input)
        assert p.returncode == 0, (
            f"pillarbox {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}{p.stdout}"
        )
        return p

    def add_user(self, addr: str, password: str = PASSWORD, quota: str | None = None) -> None:
        args = ["user", "add", addr, "--password-stdin"]
        if quota is not None:
            args += ["--quota", quota]
        self.cli_ok(*args, input=password + "\n")

    def add_alias(self, alias: str, *targets: str) -> None:
        self.cli_ok("alias", "add", alias, *targets)

    def queue_list(self) -> list[dict]:
        p = self.cli_ok("queue", "list", "--json")
        try:
            data = json.loads(p.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"queue list --json is not JSON: {p.stdout!r}") from e
        assert isinstance(data, list), f"queue list --json is not a list: {data!r}"
        return data

    @property
    def queue_dir(self) -> Path:
        """This server's spool: shared_dir/queue/NODE on a shared directory."""
        storage = self.config.get("storage", {})
        if storage.get("shared_dir"):
            return Path(storage["shared_dir"]) / "queue" / storage["node"]
        return self.data_dir / "queue"

    # -- mailboxes
    def maildir(self, addr: str) -> Path:
        local, domain = addr.rsplit("@", 1)
        shared = self.config.get("storage", {}).get("shared_dir")
        return (Path(shared) if shared else self.data_dir) / "mail" / domain / local

    def messages(self, addr: str) -> list[bytes]:
        new = self.maildir(addr) / "new"
        if not new.is_dir():
            return []
        out = []
        for f in sorted(new.iterdir()):
            try:
                out.append(f.read_bytes())
            except FileNotFoundError:  # moved to cur/ meanwhile
                pass
        return out

    def wait_for_messages(self, addr: str, n: int, timeout: float = 10) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages(addr)
            if len(msgs) >= n:
                return msgs
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{addr}: expected {n} message(s) in {self.maildir(addr)}/new within"
                    f" {timeout:.0f}s, found {len(msgs)}; queue: {self._queue_summary()};"
                    f" server stderr tail:\n{self.log_tail(30)}"
                )
            time.sleep(0.05)

    def _queue_summary(self) -> str:
        try:
            p = self.cli("queue", "list", "--json", timeout=15)
            return p.stdout.strip()[:2000] or p.stderr.strip()[:500]
        except Exception as e:  # diagnostics only
            return f"<queue list failed: {e}>"

    # -- clients
    def smtp(self, timeout: float = 10) -> smtplib.SMTP:
        """smtplib client on the MX port, after EHLO."""
        s = smtplib.SMTP("127.0.0.1", self.smtp_port, local_hostname=CLIENT_NAME, timeout=timeout)
        s.ehlo()
        return s

    def submission(self, user: str | None = None, password: str = PASSWORD,
                   timeout: float = 10) -> smtplib.SMTP:
        """smtplib client on the submission port, after STARTTLS (and AUTH if user)."""
        s = smtplib.SMTP("127.0.0.1", self.submission_port, local_hostname=CLIENT_NAME,
                         timeout=timeout)
        s.ehlo()
        s.starttls(context=client_ssl_context())
        s.ehlo()
        if user is not None:
            s.login(user, password)
        return s

    def submissions(self, user: str | None = None, password: str = PASSWORD,
                    timeout: float = 10) -> smtplib.SMTP_SSL:
        """smtplib client on the implicit-TLS submission port (and AUTH if user)."""
        s = smtplib.SMTP_SSL("127.0.0.1", self.submissions_port, local_hostname=CLIENT_NAME,
                             timeout=timeout, context=client_ssl_context())
        s.ehlo()
        if user is not None:
            s.login(user, password)
        return s

    def imap(self, user: str | None = None, password: str = PASSWORD, starttls: bool = True,
             timeout: float = 10) -> imaplib.IMAP4:
        """imaplib client on the IMAP port, after STARTTLS (and LOGIN if user)."""
        c = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=timeout)
        if starttls:
            c.starttls(ssl_context=client_ssl_context())
        if user is not None:
            c.login(user, password)
        return c

    def imaps(self, user: str | None = None, password: str = PASSWORD,
              timeout: float = 10) -> imaplib.IMAP4_SSL:
        """imaplib client on the implicit-TLS IMAP port (and LOGIN if user)."""
        c = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=client_ssl_context(),
                              timeout=timeout)
        if user is not None:
            c.login(user, password)
        return c

    def imapclient(self, user: str | None = None, password: str = PASSWORD,
                   timeout: float = 10) -> imapclient.IMAPClient:
        """imapclient on the implicit-TLS IMAP port (and LOGIN if user)."""
        c = imapclient.IMAPClient("127.0.0.1", port=self.imaps_port, ssl=True,
                                  ssl_context=client_ssl_context(), timeout=timeout)
        if user is not None:
            c.login(user, password)
        return c

    def raw(self, kind: str = "smtp", timeout: float = 10) -> RawSMTP:
        port = {"smtp": self.smtp_port, "submission": self.submission_port,
                "submissions": self.submissions_port}[kind]
        return RawSMTP(port, tls=(kind == "submissions"), timeout=timeout)
