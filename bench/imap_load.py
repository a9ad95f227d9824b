#!/usr/bin/env python3
"""IMAP load (issue 5): logins, FETCH, APPEND and idle IDLE connections.

    .venv/bin/python bench/imap_load.py [--clients 10] [--small 1000] [--large 10]
        [--logins 100] [--rounds 3] [--appends 1000] [--big-appends 50] [--idle 1000]
        [--rev REV] [--profile] [--write-docs]

Sets up a throwaway pillarbox in a temporary directory (`pillarbox init`, every
listener on a free 127.0.0.1 port, `log_level = "warning"`, one user with a
password) with the connection limits raised so that one address and one user
may hold --idle connections:

    [limits] max_connections = IDLE + 100, login_cache = "0s" (every login pays argon2id)
    [imap]   max_connections_per_ip = IDLE + 100, max_connections_per_user = IDLE + 100

It fills the user's INBOX through SMTP (the MX port, as mail arrives): --small
messages of about 4 KB (text/plain, varied From/To/Cc/Subject/In-Reply-To) and
--large ones of about 1 MiB (multipart/mixed with a base64 attachment), and
lets the first SELECT take them into the index. Then, each with --clients
asyncio clients in this process (uvloop) over IMAPS unless said otherwise:

- logins/s: connect, TLS, `LOGIN`, `LOGOUT`, a new connection each, over IMAPS
  and over STARTTLS on the imap port; the same without LOGIN (TLS only) to
  separate the TLS handshake from the password check (argon2id). Plain-text
  LOGIN on the non-TLS port is tried once: the server refuses it
  (LOGINDISABLED, `NO [PRIVACYREQUIRED]`), so there is no plain-text figure;
- FETCH: every client logged in once with INBOX selected runs, --rounds times,
  `UID FETCH 1:* (FLAGS UID RFC822.SIZE)` (index only), the same with ENVELOPE
  (a header-style sync), `BODY.PEEK[]` of all small messages and of all large
  ones: messages/s and MB/s of the responses;
- APPEND: --appends messages of 4 KB and --big-appends of 1 MiB into a fresh
  mailbox, LITERAL+ (`{n+}`), the clients in parallel: msg/s and MB/s;
- IDLE: a fresh server process on the same data; the server's resident set
  (VmRSS from /proc) idle, with 10 and with --idle connections logged in,
  INBOX selected, in IDLE; its CPU while they idle; then one message delivered
  through SMTP and the time until every IDLE connection got its EXISTS.

For each load: server CPU (utime + stime from /proc of the server and its
children; in brackets its main thread, the event loop), also per 1,000 IMAP
commands the clients sent, and this process's CPU
(the clients), so a reader sees where the time goes, and the whole machine's
CPU use (it is shared). Then, unless --no-dovecot, the same loads against Debian's
Dovecot on a copy of the Maildir, in two set-ups: its default (a process per
connection) and with process reuse (`service_count = 0`, `process_min_avail`
= the number of CPUs, for imap-login and imap). With --profile, py-spy
(`pip install py-spy`) samples the server during every load (100 Hz,
--nonblocking: the server is not stopped to be sampled) and the heaviest functions are reported.

The run fails (exit 1) unless every login, FETCH and APPEND got OK, every
FETCH returned every message (and exactly the octets stored for BODY.PEEK[]),
the APPENDed messages are all there, and every IDLE connection heard of the
delivery. Only 127.0.0.1 is contacted; every load is bounded in count and
time; the server and everything the script made is removed, also on an error
or Ctrl-C. The server runs from the working tree's src/, or with --rev from
that git revision. --write-docs writes the section "IMAP (issue 5)" into
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import os
import random
import re
import resource
import shlex
import shutil
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import compare_postfix as cp
import smtp_load as sl
from common import apt_install, bullet, client_tls, fmt, log, os_name, para, write_section

SECTION = "IMAP (issue 5)"
HOST = "127.0.0.1"
DOMAIN = "example.test"
USER = f"bench@{DOMAIN}"
PASSWORD = "imap-bench-password-not-secret"
PREFIX = "pillarbox-imap-bench-"
NPROC = len(os.sched_getaffinity(0))
LARGE_AT = 100_000  # messages larger than this are "large"
READ_LIMIT = 1 << 20  # StreamReader line limit
LIT_RE = re.compile(rb"\{(\d+)\+?\}\r\n\Z")


TLS = client_tls()


# -- the messages -----------------------------------------------------------------------

NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra", "Barbara Liskov",
         "Donald Knuth", "Frances Allen", "Ken Thompson", "Radia Perlman", "Leslie Lamport"]
WORDS = ("mail server queue message delivery mailbox folder index flag session client "
         "login password certificate handshake literal envelope header body part "
         "attachment quota limit timeout retry bounce route domain address sender "
         "recipient the a of to in and for with on is it that this we you").split()


def addr(name: str, domain: str) -> str:
    local = name.lower().replace(" ", ".")
    return f'"{name}" <{local}@{domain}>'


def text_lines(rng: random.Random, size: int) -> bytes:
    """CRLF lines of words, exactly `size` octets (size >= 2)."""
    out = bytearray()
    while len(out) < size:
        line = " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."
        out += line[:70].encode() + b"\r\n"
    del out[size - 2:]
    if out.endswith(b"\r"):  # cut inside a line end: no bare CR
        out[-1:] = b"x"
    out += b"\r\n"
    return bytes(out)


def make_message(i: int, size: int, run_id: str) -> bytes:
    """A message of about `size` octets, CRLF lines: text/plain, or multipart/mixed with a
    base64 attachment when large."""
    rng = random.Random(i)
    frm = rng.choice(NAMES)
    date = email_date(time.time() - (10_000 - i) * 60)
    hdr = [f"From: {addr(frm, 'sender.test')}", f"To: \"Bench User\" <{USER}>"]
    if i % 3 == 0:
        hdr.append(f"Cc: {addr(rng.choice(NAMES), 'list.test')}, "
                   f"{addr(rng.choice(NAMES), 'example.test')}")
    hdr += [f"Subject: {'Re: ' if i % 2 else ''}[bench] message {i}: "
            + " ".join(rng.choice(WORDS) for _ in range(6)),
            f"Date: {date}", f"Message-ID: <{i}.{run_id}@sender.test>"]
    if i % 2:
        hdr.append(f"In-Reply-To: <{i - 1}.{run_id}@sender.test>")
    hdr.append("MIME-Version: 1.0")
    if size <= LARGE_AT:
        hdr += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 7bit"]
        head = ("\r\n".join(hdr) + "\r\n\r\n").encode()
        return head + text_lines(rng, max(2, size - len(head)))
    boundary = f"=_bench_{i}_{run_id}"
    hdr.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
    text = text_lines(rng, 2000)
    attach = rng.randbytes(size * 3 // 4 - 3000)
    b64 = base64.encodebytes(attach).replace(b"\n", b"\r\n")
    body = (f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".encode()
            + text
            + f"--{boundary}\r\nContent-Type: application/pdf; name=\"report-{i}.pdf\"\r\n"
              f"Content-Disposition: attachment; filename=\"report-{i}.pdf\"\r\n"
              "Content-Transfer-Encoding: base64\r\n\r\n".encode()
            + b64 + f"--{boundary}--\r\n".encode())
    return ("\r\n".join(hdr) + "\r\n\r\n").encode() + body


def email_date(ts: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(ts))


def smtp_send(port: int, msgs: list[bytes], threads: int = 4) -> None:
    """Deliver through pillarbox's MX port, a few sessions in parallel."""
    errors: list[str] = []

    def one(part: list[bytes]) -> None:
        try:
            with smtplib.SMTP(HOST, port, local_hostname="loadgen.test", timeout=60) as s:
                for m in part:
                    s.sendmail("loadgen@sender.test", [USER], m)
        except (smtplib.SMTPException, OSError) as e:
            errors.append(repr(e))

    ts = [threading.Thread(target=one, args=(msgs[k::threads],)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit(f"error: filling the mailbox through SMTP failed: {errors[0]}")


# -- the throwaway pillarbox ------------------------------------------------------------


class Server(sl.Server):
    def __init__(self, root: Path, conn_limit: int) -> None:
        super().__init__(root)
        self.conn_limit = conn_limit
        self.ports: dict[str, int] = {}
        self.maildir = root / "var" / "mail" / DOMAIN / USER.split("@")[0]

    def setup(self) -> None:
        sl.pillarbox("init", "--dir", str(self.dir), "--domain", DOMAIN)
        self.ports = sl.rewrite_config(self.cfg)
        for kind in ("smtp", "imap", "imaps"):
            if kind not in self.ports:
                raise SystemExit(f"error: pillarbox init wrote no listen.{kind}")
        self.port = self.ports["smtp"]  # sl.Server.start waits for its banner
        text = self.cfg.read_text()
        n = self.conn_limit
        for key in ("max_connections", "max_connections_per_user"):
            text, k = re.subn(rf"(?m)^{key}\s*=\s*\d+", f"{key} = {n}", text)
            if k != 1:
                raise SystemExit(f"error: could not set {key} in {self.cfg}")
        # [imap] max_connections_per_ip, after [limits]' own (set by rewrite_config)
        head, sep, tail = text.partition("\n[imap]\n")
        tail, k = re.subn(r"(?m)^max_connections_per_ip\s*=\s*\d+",
                          f"max_connections_per_ip = {n}", tail)
        text = head + sep + tail
        if k != 1 or not sep:
            raise SystemExit(f"error: could not set imap.max_connections_per_ip in {self.cfg}")
        # Every login pays argon2id, as in Dovecot's default (no auth cache); with
        # pillarbox's default login_cache a repeat login costs about "TLS only".
        text, k = re.subn(r'(?m)^login_cache\s*=.*$', 'login_cache = "0s"', text)
        if k != 1:
            raise SystemExit(f"error: could not set login_cache in {self.cfg}")
        self.cfg.write_text(text)
        parsed = tomllib.loads(text)
        assert parsed["limits"]["max_connections"] == n
        assert parsed["limits"]["login_cache"] == "0s"
        assert parsed["imap"]["max_connections_per_ip"] == n
        assert parsed["imap"]["max_connections_per_user"] == n
        sl.pillarbox("-c", str(self.cfg), "user", "add", USER, "--password-stdin",
                     stdin=PASSWORD + "\n")

    def cheap_password(self) -> str:
        """Replace the user's argon2id hash by a cheap one (t=1, 1 MiB, p=1); argon2
        verifies with the parameters stored in the hash. Only for the IDLE load, where
        the logins are not what is measured. Call while the server is stopped."""
        from argon2 import PasswordHasher

        h = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
        db = sqlite3.connect(self.dir / "var" / "pillarbox.db")
        try:
            n = db.execute("UPDATE users SET password_hash = ? WHERE address = ?",
                           (h, USER)).rowcount
            db.commit()
        finally:
            db.close()
        if n != 1:
            raise SystemExit("error: could not set the cheap password hash")
        return h

    def loop_cpu(self) -> float:
        """utime + stime of the main thread (the event loop)."""
        assert self.proc is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat").read_text()
            f = raw[raw.rindex(")") + 2:].split()
            return (int(f[11]) + int(f[12])) / sl.CLK_TCK
        return 0.0

    name = "pillarbox"
    mem_what = "VmRSS"

    def errors_logged(self) -> list[str]:
        return [ln for ln in self.log_text().splitlines()
                if ln.strip() and not sl.EXPECTED_LOG.search(ln)]

    def mem_kb(self) -> int:
        return self.status_kb("VmRSS")

    def deliver_one(self, msg: bytes) -> None:
        """As mail arrives: through SMTP on the MX port (queue, then Maildir)."""
        smtp_send(self.ports["smtp"], [msg], 1)

    def count_files(self) -> int:
        n = 0
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.maildir / sub) as it:
                n += sum(1 for _ in it)
        return n


# -- Dovecot, side by side -----------------------------------------------------------------

DOVECOT_UID = 65534  # nobody/nogroup own the copy of the mailbox
DOVECOT_CONF = """\
# written by pillarbox bench/imap_load.py: a throwaway instance, 127.0.0.1 only
protocols = imap
listen = 127.0.0.1
instance_name = dovecot-bench-{tag}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = /dev/null
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 1
mail_max_userip_connections = {n}
default_process_limit = {n}
default_client_limit = {clients}
default_vsz_limit = 0
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={d}/home/%n
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
{reuse}}}
{imap_service}"""
# The second set-up (issue 13): processes reused instead of one per connection
# (Dovecot's "high-performance mode" for imap-login), NPROC of each kept started.
DOVECOT_REUSE = f"  service_count = 0\n  process_min_avail = {NPROC}\n"
DOVECOT_VARIANTS = {  # run name -> what the set-up adds to imap-login and imap
    "Dovecot": "",
    "Dovecot, reuse": DOVECOT_REUSE,
}


def ensure_dovecot() -> str | None:
    """Debian's dovecot-imapd, installed if missing (as root; service starts denied during
    the install). None when it cannot be had."""
    exe = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot",
                                                                       os.X_OK) else None)
    if exe:
        return exe
    if os.geteuid() != 0:
        log("Dovecot is not installed and this is not root: no comparison")
        return None
    log("installing Debian's dovecot-imapd for the comparison ...")
    r = apt_install("dovecot-imapd", "bench/imap_load.py")
    if r.returncode != 0:
        log(f"apt-get install dovecot-imapd failed, no comparison:\n{r.stderr[-1000:]}")
        return None
    return shutil.which("dovecot") or "/usr/sbin/dovecot"


class Dovecot:
    """A throwaway Dovecot (`dovecot -F -c DIR/dovecot.conf`) on a copy of pillarbox's
    Maildir: its own base, state and log directories, 127.0.0.1 ports, no chroot, the
    same TLS pair, the same user and password (argon2id, same memory and passes)."""

    name = "Dovecot"
    mem_what = "Pss"

    def __init__(self, root: Path, exe: str, conn_limit: int, name: str = "Dovecot") -> None:
        self.dir, self.exe, self.conn_limit = root, exe, conn_limit
        self.name, self.reuse = name, DOVECOT_VARIANTS[name]
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.maildir = root / "home" / USER.split("@")[0] / "Maildir"
        self.version = ""

    def setup(self, src: Path, tls_dir: Path) -> None:
        self.dir.mkdir(parents=True)
        for d in (self.dir, self.dir.parent):
            d.chmod(0o755)  # dovenull and nobody reach their sockets and files
        for sub in ("run", "state"):
            (self.dir / sub).mkdir()
        shutil.copytree(src, self.maildir, symlinks=True, ignore=shutil.ignore_patterns(
            "pillarbox-index.sqlite*", ".Bench"))
        for base, dirs, files in os.walk(self.dir / "home"):
            for x in [base, *(os.path.join(base, f) for f in dirs + files)]:
                os.chown(x, DOVECOT_UID, DOVECOT_UID)
        for kind in ("imap", "imaps"):
            self.ports[kind] = sl.free_port()
        self.set_password(cheap=False)
        n = self.conn_limit
        (self.dir / "dovecot.conf").write_text(DOVECOT_CONF.format(
            tag=os.getpid(), d=self.dir, cert=tls_dir / "cert.pem", key=tls_dir / "key.pem",
            n=n, clients=4 * n, uid=DOVECOT_UID, reuse=self.reuse,
            imap_service=f"service imap {{\n{self.reuse}}}\n" if self.reuse else "",
            **self.ports))
        r = subprocess.run([self.exe, "--version"], capture_output=True, text=True, timeout=30)
        self.version = r.stdout.split()[0] if r.stdout else "?"

    def set_password(self, cheap: bool) -> None:
        """argon2id with pillarbox's memory and passes, but one lane (Dovecot verifies
        through libsodium, which takes p=1 only); cheap: t=1, 1 MiB, for the IDLE load."""
        from argon2 import PasswordHasher

        h = (PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1) if cheap
             else PasswordHasher(parallelism=1))
        (self.dir / "passwd").write_text(f"{USER}:{{ARGON2ID}}{h.hash(PASSWORD)}\n")

    def start(self, timeout: float = 30.0) -> None:
        self._log = open(self.dir / "stdout.log", "wb")
        self.proc = subprocess.Popen([self.exe, "-F", "-c", str(self.dir / "dovecot.conf")],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"error: dovecot exited with {self.proc.returncode}:\n"
                                 + (self.dir / "stdout.log").read_text(errors="replace"))
            with contextlib.suppress(OSError):
                with socket.create_connection((HOST, self.ports["imap"]), timeout=2) as sk:
                    if sk.makefile("rb").readline().startswith(b"* OK"):
                        return
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"error: dovecot not answering after {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # the master stops its children
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """The master and all its processes, and the ones it reaped."""
        assert self.proc is not None
        return cp.tree_cpu(self.proc.pid)

    def loop_cpu(self) -> float:
        return -1.0  # no single event loop: a process per connection

    def mem_kb(self) -> int:
        """Proportional set size summed over the master and all its processes."""
        assert self.proc is not None
        return cp.tree_kb(self.proc.pid, "Pss", "smaps_rollup")

    def processes(self) -> int:
        assert self.proc is not None
        return 1 + len(sl.descendants(self.proc.pid))

    def deliver_one(self, msg: bytes) -> None:
        """As an MDA would: write into tmp/, rename into new/ (Dovecot has no SMTP)."""
        name = f"{time.time():.6f}.bench{os.getpid()}.{socket.gethostname()}"
        tmp = self.maildir / "tmp" / name
        tmp.write_bytes(msg)
        os.chown(tmp, DOVECOT_UID, DOVECOT_UID)
        os.rename(tmp, self.maildir / "new" / name)

    def errors_logged(self) -> list[str]:
        try:
            text = (self.dir / "dovecot.log").read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines()
                if re.search(r"\b(Error|Fatal|Panic|Warning):", ln)
                and f"Killed with signal 15 (by pid={os.getpid()} " not in ln]


Target = Server | Dovecot


def machine_cpu() -> float:
    """CPU seconds used by the whole machine (every process, every CPU) so far."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / sl.CLK_TCK


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- a small IMAP client ------------------------------------------------------------------


class IMAPError(Exception):
    pass


@dataclass
class Reply:
    status: bytes  # OK | NO | BAD
    text: bytes
    fetches: int = 0  # untagged FETCH responses
    literal_octets: int = 0
    octets: int = 0  # everything read for this command
    lines: list[bytes] = field(default_factory=list)  # untagged, first physical line


class Client:
    """One IMAP connection: commands one at a time, responses read to the tagged line,
    literals skipped over (counted), untagged FETCH responses counted."""

    sent = 0  # commands written by every client (the Meter takes the difference)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer
        self.n = 0
        self.greeting = b""

    @classmethod
    async def connect(cls, port: int, mode: str) -> Client:
        """mode: imaps (implicit TLS), starttls (imap port, then STARTTLS), plain."""
        if mode == "imaps":
            r, w = await asyncio.open_connection(HOST, port, ssl=TLS, limit=READ_LIMIT)
        else:
            r, w = await asyncio.open_connection(HOST, port, limit=READ_LIMIT)
        c = cls(r, w)
        c.greeting = await r.readline()
        if not c.greeting.startswith(b"* OK"):
            w.close()
            raise IMAPError(f"greeting {c.greeting[:80]!r}")
        if mode == "starttls":
            await c.ok(b"STARTTLS")
            await w.start_tls(TLS)
        return c

    async def command(self, cmd: bytes, literal: bytes | None = None,
                      keep: bool = False) -> Reply:
        self.n += 1
        Client.sent += 1
        tag = b"a%d" % self.n
        if literal is None:
            self.w.write(tag + b" " + cmd + b"\r\n")
        else:  # LITERAL+: no continuation request to wait for
            self.w.write(tag + b" " + cmd + b" {%d+}\r\n" % len(literal))
            self.w.write(literal)
            self.w.write(b"\r\n")
        await self.w.drain()
        return await self.response(tag, keep)

    async def ok(self, cmd: bytes, literal: bytes | None = None, keep: bool = False) -> Reply:
        rep = await self.command(cmd, literal, keep)
        if rep.status != b"OK":
            raise IMAPError(f"{cmd[:40]!r}: {rep.status.decode()} {rep.text[:120]!r}")
        return rep

    async def response(self, tag: bytes, keep: bool = False) -> Reply:
        rep = Reply(b"", b"")
        prefix = tag + b" "
        while True:
            head = line = await self.r.readline()
            if not line.endswith(b"\n"):
                raise IMAPError("connection closed by the server")
            rep.octets += len(line)
            while line.endswith(b"}\r\n"):
                m = LIT_RE.search(line)
                if m is None:
                    break
                n = int(m.group(1))
                await self.r.readexactly(n)
                rep.octets += n
                rep.literal_octets += n
                line = await self.r.readline()
                rep.octets += len(line)
            if head.startswith(prefix):
                status, _, text = head[len(prefix):].rstrip(b"\r\n").partition(b" ")
                rep.status, rep.text = status, text
                return rep
            if head.startswith(b"* ") and b" FETCH (" in head:
                rep.fetches += 1
            if keep:
                rep.lines.append(head)

    async def login(self) -> None:
        await self.ok(b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))

    async def close(self, logout: bool = True) -> None:
        with contextlib.suppress(Exception):
            if logout:
                await asyncio.wait_for(self.command(b"LOGOUT"), 10)
        self.w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.w.wait_closed(), 2)


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Load:
    key: str
    label: str
    clients: int
    ops: int = 0  # logins, messages fetched or appended
    octets: int = 0
    wall: float = 0.0
    server_cpu: float = 0.0
    loop_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_cpu: float = 0.0
    profiler_cpu: float = 0.0
    commands: int = 0  # IMAP commands the clients sent (STARTTLS, LOGIN, LOGOUT included)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    shares: dict[str, float] = field(default_factory=dict)  # function -> share of samples
    unit: str = "msg"
    timed_out: bool = False

    @property
    def rate(self) -> float:
        return self.ops / self.wall if self.wall > 0 else 0.0

    def pct(self, p: float) -> float | None:
        xs = sorted(self.latencies)
        if not xs:
            return None
        k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
        return xs[k] * 1000


class Meter:
    """Server, event-loop, client and machine CPU and wall time over one load."""

    def __init__(self, srv: Target, load: Load, profiler: Profiler | None) -> None:
        self.srv, self.load, self.profiler = srv, load, profiler

    def __enter__(self) -> Meter:
        if self.profiler:
            self.profiler.start(self.load.key)
        self.c0 = (self.srv.cpu_seconds(), self.srv.loop_cpu(), self_cpu(), machine_cpu())
        self.sent0 = Client.sent
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        t1 = time.perf_counter()
        c1 = (self.srv.cpu_seconds(), self.srv.loop_cpu(), self_cpu(), machine_cpu())
        ld = self.load
        ld.wall = t1 - self.t0
        ld.commands = Client.sent - self.sent0
        ld.server_cpu, ld.loop_cpu, ld.client_cpu, ld.machine_cpu = (
            b - a for a, b in zip(self.c0, c1, strict=True))
        if c1[1] < 0:
            ld.loop_cpu = -1.0  # no event loop to tell apart (Dovecot)
        if self.profiler:
            (ld.profile, ld.shares), ld.profiler_cpu = self.profiler.stop()


class Profiler:
    """py-spy record attached to the server for one load; summarised afterwards."""

    def __init__(self, pid: int, out_dir: Path, exe: str, rate: int = 100) -> None:
        self.pid, self.out_dir, self.exe, self.rate = pid, out_dir, exe, rate
        self.proc: subprocess.Popen | None = None
        self.path = out_dir / "none"
        self.base = 0.0

    def start(self, name: str) -> None:
        self.path = self.out_dir / f"{name}.txt"
        self.base = children_cpu()
        self.proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(self.pid), "--rate", str(self.rate),
             "--nonblocking", "--threads", "--format", "raw", "--output", str(self.path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)  # let it attach

    def stop(self) -> tuple[tuple[list[str], dict[str, float]], float]:
        p = self.proc
        assert p is not None
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        self.proc = None
        cpu = children_cpu() - self.base  # py-spy is the only child reaped meanwhile
        if not self.path.exists():
            why = err.decode(errors="replace").strip()[-200:]
            return ([f"(py-spy wrote nothing: {why})"], {}), cpu
        return summarize(self.path), cpu


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime

FRAME_RE = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> tuple[str, bool]:
    """("function (short/file.py)", whether it is pillarbox's own code)."""
    m = FRAME_RE.match(frame.strip())
    if not m:
        return frame.strip(), False
    f = m.group("file")
    for cut in ("site-packages/", "/src/", "/lib/python3.11/", "/lib/python3.12/"):
        if cut in f:
            f = f.split(cut, 1)[1]
            break
    ours = f.startswith("pillarbox/")
    if ours:
        f = f.removeprefix("pillarbox/").removeprefix("endpoint/")
    return f"{m.group('fn')} ({f})", ours


# Frames on every stack of the event loop (or of every worker) or that only pass a call on,
# and worker threads waiting for work (py-spy --nonblocking does not always see they sleep).
WRAPPERS = {"<module> (__main__.py)", "main (cli.py)", "cmd_serve (cli.py)",
            "serve (server.py)", "Session.run_guarded (imap/session.py)",
            "Session.run (imap/session.py)", "Session.dispatch (imap/session.py)",
            "Session.cmd_UID_FETCH (imap/session.py)"}
IDLE_LEAVES = {"_worker (concurrent/futures/thread.py)", "wait (threading.py)"}
LOOP_IN_C = "Runner.run (asyncio/runners.py)"  # on top: uvloop's own C code (I/O, TLS)


def summarize(path: Path, top: int = 5) -> tuple[list[str], dict[str, float]]:
    """From py-spy's raw output (one `thread (TID): NAME;frame;...;frame COUNT` per line):
    the share of samples in the main thread (the event loop) and in the others (asyncio's
    thread pool), the functions most often on top of the stack (self), and the pillarbox
    functions most often anywhere on it (inclusive; also returned as shares)."""
    self_n: dict[str, int] = {}
    incl: dict[str, int] = {}  # pillarbox's functions, for the summary
    anywhere: dict[str, int] = {}  # every function, for the shares returned
    main = workers = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or not stack:
            continue
        count = int(n)
        thread, *raw = stack.split(";")
        frames = [frame_name(f) for f in raw] or [(thread, False)]
        leaf = frames[-1][0]
        if leaf in IDLE_LEAVES:
            continue
        if leaf == LOOP_IN_C:
            leaf = "uvloop's C code (socket I/O, TLS)"
        if "MainThread" in thread:
            main += count
        else:
            workers += count
        self_n[leaf] = self_n.get(leaf, 0) + count
        for f, ours in set(frames):
            anywhere[f] = anywhere.get(f, 0) + count
            if ours and f not in WRAPPERS:
                incl[f] = incl.get(f, 0) + count
    total = main + workers
    if not total:
        return ["no samples (the server was idle)"], {}

    def share(items: dict[str, int]) -> str:
        return "; ".join(f"{k} {v * 100 / total:.0f} %"
                         for k, v in sorted(items.items(), key=lambda x: -x[1])[:top])

    return ([f"{total} samples, event loop (main thread) {main * 100 / total:.0f} %, thread "
             f"pool {workers * 100 / total:.0f} %",
             "on top of the stack: " + share(self_n),
             "pillarbox functions anywhere on it: " + share(incl)],
            {k: v / total for k, v in anywhere.items()})


async def run_workers(n: int, worker: Callable[[int], Awaitable[None]], timeout: float
                      ) -> bool:
    """Run n workers; False if the timeout ended them."""
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker(k) for k in range(n)))
        return True
    except TimeoutError:
        return False


# -- the loads ---------------------------------------------------------------------------


LOGIN_LABELS = {
    "login_imaps": "LOGIN + LOGOUT, IMAPS (implicit TLS)",
    "login_starttls": "LOGIN + LOGOUT, STARTTLS on the imap port",
    "tls_only": "TLS + LOGOUT, no LOGIN (IMAPS; what TLS costs)",
    "login_plain": "LOGIN + LOGOUT, plain text on the imap port (no TLS)",
}


async def login_load(srv: Target, key: str, total: int, clients: int, timeout: float,
                     profiler: Profiler | None) -> Load:
    ld = Load(key, LOGIN_LABELS[key], clients, unit="login")
    mode = {"login_starttls": "starttls", "login_plain": "plain"}.get(key, "imaps")
    port = srv.ports["imaps" if mode == "imaps" else "imap"]
    left = [total]

    async def worker(_: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            try:
                c = await Client.connect(port, mode)
                if key != "tls_only":
                    await c.login()
                ld.latencies.append(time.perf_counter() - t0)
                await c.ok(b"LOGOUT")
                await c.close(logout=False)
                ld.ops += 1
            except (IMAPError, OSError, asyncio.IncompleteReadError) as e:
                ld.errors.append(f"{type(e).__name__}: {e}")

    with Meter(srv, ld, profiler):
        ld.timed_out = not await run_workers(clients, worker, timeout)
    return ld


async def plain_login_refused(srv: Target) -> str:
    """What the non-TLS port says to a plain-text LOGIN (Dovecot allows it from the
    machine itself: it counts loopback connections as secure)."""
    c = await Client.connect(srv.ports["imap"], "plain")
    try:
        rep = await c.command(b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
        disabled = b"LOGINDISABLED" in c.greeting
        text = re.sub(r"^\[CAPABILITY [^\]]*\]\s*", "", rep.text.decode(errors="replace"))
        return (f"greeting {'announces' if disabled else 'does not announce'} LOGINDISABLED; "
                f"LOGIN: {rep.status.decode()} {text[:80]}".rstrip())
    finally:
        await c.close()


def seqset(uids: list[int]) -> bytes:
    out, start, prev = [], None, None
    for u in sorted(uids):
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            out.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = u
    if start is not None:
        out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out).encode()


@dataclass
class Mailbox:
    small: list[int]
    large: list[int]
    sizes: dict[int, int]
    first_select_s: float = 0.0


async def first_look(srv: Target, expect: int) -> Mailbox:
    """One login; the first SELECT takes the delivered files into the index (timed)."""
    c = await Client.connect(srv.ports["imaps"], "imaps")
    try:
        await c.login()
        t0 = time.perf_counter()
        await c.ok(b"SELECT INBOX")
        took = time.perf_counter() - t0
        rep = await c.ok(b"UID FETCH 1:* (UID RFC822.SIZE)", keep=True)
    finally:
        await c.close()
    sizes = {}
    for ln in rep.lines:
        m = re.search(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)", ln)
        if m:
            if m.group(1):
                sizes[int(m.group(1))] = int(m.group(2))
            else:
                sizes[int(m.group(4))] = int(m.group(3))
    if len(sizes) != expect:
        raise SystemExit(f"error: INBOX holds {len(sizes)} messages, {expect} delivered")
    small = [u for u, s in sizes.items() if s <= LARGE_AT]
    large = [u for u, s in sizes.items() if s > LARGE_AT]
    return Mailbox(small, large, sizes, took)


async def open_clients(srv: Target, n: int, select: bytes | None) -> list[Client]:
    async def one(_: int) -> Client:
        c = await Client.connect(srv.ports["imaps"], "imaps")
        await c.login()
        if select:
            await c.ok(b"SELECT " + select)
        return c
    return list(await asyncio.gather(*(one(k) for k in range(n))))


FETCH_LOADS = {
    "fetch_flags": ("UID FETCH 1:* (FLAGS UID RFC822.SIZE), all messages (index only)",
                    b"(FLAGS UID RFC822.SIZE)"),
    "fetch_envelope": ("UID FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE), all messages",
                       b"(FLAGS UID RFC822.SIZE ENVELOPE)"),
    "fetch_small": ("UID FETCH BODY.PEEK[], every ~4 KB message", b"BODY.PEEK[]"),
    "fetch_large": ("UID FETCH BODY.PEEK[], every ~1 MiB message", b"BODY.PEEK[]"),
}


async def fetch_load(srv: Target, key: str, clients: list[Client], box: Mailbox, rounds: int,
                     timeout: float, profiler: Profiler | None) -> Load:
    label, atts = FETCH_LOADS[key]
    if key == "fetch_small":
        uids = box.small
    elif key == "fetch_large":
        uids = box.large
    else:
        uids = list(box.sizes)
    cmd = b"UID FETCH " + (seqset(uids) if key in ("fetch_small", "fetch_large") else b"1:*") \
        + b" " + atts
    want_octets = sum(box.sizes[u] for u in uids)
    if key == "fetch_flags":  # so cheap that it needs more rounds to be measured
        rounds *= 10
    ld = Load(key, label + f" ({len(uids):,})", len(clients))

    async def worker(k: int) -> None:
        c = clients[k]
        for _ in range(rounds):
            t0 = time.perf_counter()
            try:
                rep = await c.ok(cmd)
            except (IMAPError, OSError, asyncio.IncompleteReadError) as e:
                ld.errors.append(f"{type(e).__name__}: {e}")
                return
            ld.latencies.append(time.perf_counter() - t0)
            ld.ops += rep.fetches
            ld.octets += rep.octets
            if rep.fetches < len(uids):
                ld.errors.append(f"{key}: {rep.fetches} FETCH responses for {len(uids)}")
            if b"BODY" in atts and rep.literal_octets != want_octets:
                ld.errors.append(f"{key}: {rep.literal_octets} body octets, "
                                 f"{want_octets} stored")

    with Meter(srv, ld, profiler):
        ld.timed_out = not await run_workers(len(clients), worker, timeout)
    return ld


async def append_load(srv: Target, key: str, clients: list[Client], total: int, size: int,
                      mailbox: bytes, timeout: float, profiler: Profiler | None) -> Load:
    label = f"APPEND {'~4 KB' if size < LARGE_AT else '~1 MiB'}, LITERAL+"
    ld = Load(key, label, len(clients))
    run_id = f"{os.getpid()}{key}"
    msgs = [make_message(100_000 + i, size, run_id) for i in range(min(total, 50))]
    left = [total]

    async def worker(k: int) -> None:
        c = clients[k]
        while left[0] > 0:
            left[0] -= 1
            m = msgs[left[0] % len(msgs)]
            t0 = time.perf_counter()
            try:
                await c.ok(b"APPEND " + mailbox + b" (\\Seen)", literal=m)
            except (IMAPError, OSError, asyncio.IncompleteReadError) as e:
                ld.errors.append(f"{type(e).__name__}: {e}")
                return
            ld.latencies.append(time.perf_counter() - t0)
            ld.ops += 1
            ld.octets += len(m)

    with Meter(srv, ld, profiler):
        ld.timed_out = not await run_workers(len(clients), worker, timeout)
    return ld


IDLE_MODES = {
    "inbox": "IMAPS, LOGIN, SELECT INBOX, IDLE",
    "auth": "IMAPS, LOGIN, IDLE (no mailbox selected)",
    "plain": "plain TCP on the imap port, greeting only (no TLS, no login)",
}


@dataclass
class IdleResult:
    mode: str  # inbox | auth | plain
    connections: int
    rss_fresh_kb: int = 0
    rss_10_kb: int = 0
    rss_all_kb: int = 0
    rss_after_kb: int = 0  # after they all logged out
    setup_s: float = 0.0
    idle_cpu: float = 0.0  # server CPU s per s while they idle
    idle_s: float = 0.0
    wake: list[float] = field(default_factory=list)  # s from the SMTP session to EXISTS
    errors: list[str] = field(default_factory=list)
    held: int = 0  # connections set up
    processes: int = 1  # the server's processes with them all held

    @property
    def per_conn_kib(self) -> float:
        n = self.held - 10
        return (self.rss_all_kb - self.rss_10_kb) / n if n > 0 else 0.0


async def idle_load(srv: Target, mode: str, n: int, timeout: float) -> IdleResult:
    """n connections held open on a fresh server: its RSS with 10 and with n; for "inbox"
    also how fast a delivery reaches every IDLE connection."""
    res = IdleResult(mode, n)
    res.rss_fresh_kb = srv.mem_kb()
    conns: list[Client] = []
    gate = asyncio.Semaphore(50)

    async def one(_: int) -> None:
        async with gate:
            try:
                if mode == "plain":
                    conns.append(await Client.connect(srv.ports["imap"], "plain"))
                    return
                c = await Client.connect(srv.ports["imaps"], "imaps")
                await c.login()
                if mode == "inbox":
                    await c.ok(b"SELECT INBOX")
                c.n += 1
                c.w.write(b"a%d IDLE\r\n" % c.n)
                line = await c.r.readline()
                if not line.startswith(b"+"):
                    raise IMAPError(f"IDLE: {line[:80]!r}")
                conns.append(c)
            except (IMAPError, OSError, asyncio.IncompleteReadError) as e:
                res.errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(one(k) for k in range(min(10, n))))
            await asyncio.sleep(1)
            res.rss_10_kb = srv.mem_kb()
            await asyncio.gather(*(one(k) for k in range(n - min(10, n))))
    except TimeoutError:
        res.errors.append(f"{mode}: only {len(conns)} of {n} connections set up after "
                          f"{timeout} s")
    res.setup_s = time.perf_counter() - t0
    res.held = len(conns)
    if res.held != n and not res.errors:
        res.errors.append(f"{mode}: {res.held} of {n} connections set up")
    await asyncio.sleep(2)
    res.rss_all_kb = srv.mem_kb()
    if isinstance(srv, Dovecot):
        res.processes = srv.processes()
    c0, t1 = srv.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(5)
    res.idle_s = time.perf_counter() - t1
    res.idle_cpu = (srv.cpu_seconds() - c0) / res.idle_s
    gone = [c for c in conns if c.r.at_eof()]
    if gone:
        res.errors.append(f"{mode}: the server closed {len(gone)} idle connections")

    if mode == "inbox":
        await fan_out(srv, conns, res)

    async def leave(c: Client) -> None:
        async with gate:
            if mode != "plain":
                c.w.write(b"DONE\r\n")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.response(b"a%d" % c.n), 10)
            await c.close()

    await asyncio.gather(*(leave(c) for c in conns))
    await asyncio.sleep(1)
    res.rss_after_kb = srv.mem_kb()
    return res


async def fan_out(srv: Target, conns: list[Client], res: IdleResult) -> None:
    """One message through SMTP: the time from the start of that SMTP session until each
    IDLE connection got its `* N EXISTS`."""
    sent = [0.0]

    async def wait_exists(c: Client) -> None:
        while True:
            line = await c.r.readline()
            if not line:
                raise IMAPError("closed while in IDLE")
            if line.startswith(b"* ") and line.rstrip().endswith(b"EXISTS"):
                res.wake.append(time.perf_counter() - sent[0])
                return

    waiters = [asyncio.ensure_future(wait_exists(c)) for c in conns]
    await asyncio.sleep(0.1)
    msg = make_message(200_000, 4096, f"{os.getpid()}idle")
    sent[0] = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(None, srv.deliver_one, msg)
    done, pending = await asyncio.wait(waiters, timeout=45)
    for w in pending:
        w.cancel()
    if pending:
        res.errors.append(f"{len(pending)} of {len(conns)} IDLE connections did not hear of "
                          "the delivery within 45 s")
    for w in done:
        if w.exception() is not None:
            res.errors.append(f"IDLE: {w.exception()!r}")


# -- one whole run ----------------------------------------------------------------------------


@dataclass
class Run:
    loads: list[Load] = field(default_factory=list)
    idle: list[IdleResult] = field(default_factory=list)
    box: Mailbox | None = None
    plain: str = ""
    fill_s: float = 0.0
    argon2: dict[str, float] = field(default_factory=dict)
    rss_idle_kb: int = 0
    hwm_kb: int = 0
    append_check: str = ""
    server_log: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    profiled: bool = False
    version: str = ""


ARGON2_SNIPPET = r"""
import json, sys, time
from pillarbox.directory import passwords
hashed = passwords.hash_password("x" * 20)
n = 5
t = time.process_time(); w = time.perf_counter()
for _ in range(n):
    passwords.verify(hashed, "x" * 20)
out = {"cpu_ms": (time.process_time() - t) / n * 1000,
       "wall_ms": (time.perf_counter() - w) / n * 1000,
       "mib": passwords.MEMLIMIT / 2**20, "t": passwords.OPSLIMIT, "p": 1}
print(json.dumps(out))
"""


def argon2_cost() -> dict[str, float]:
    """One argon2id verification with the server's parameters, on its own."""
    import json
    r = subprocess.run([sys.executable, "-c", ARGON2_SNIPPET], capture_output=True, text=True,
                       timeout=120, env=sl.SERVER_ENV)
    if r.returncode != 0:
        log(f"warning: could not time argon2id on its own: {r.stderr.strip()[-300:]}")
        return {}
    return json.loads(r.stdout)


def fill(srv: Server, args: argparse.Namespace) -> float:
    run_id = str(os.getpid())
    msgs = [make_message(i, 4096, run_id) for i in range(args.small)]
    msgs += [make_message(args.small + i, 1 << 20, run_id) for i in range(args.large)]
    t0 = time.perf_counter()
    smtp_send(srv.ports["smtp"], msgs)
    deadline = time.monotonic() + args.timeout
    while srv.count_files() < len(msgs):
        if time.monotonic() > deadline or not srv.alive():
            raise SystemExit(f"error: only {srv.count_files()} of {len(msgs)} delivered")
        time.sleep(0.1)
    return time.perf_counter() - t0


def idle_modes(srv: Target, run: Run, args: argparse.Namespace, modes: list[str]) -> None:
    for mode in modes:
        srv.start()
        time.sleep(1)
        log(f"fresh {srv.name} (pid {srv.proc.pid if srv.proc else '?'}): {args.idle} "
            f"connections, {IDLE_MODES[mode]}")
        r = asyncio.run(idle_load(srv, mode, args.idle, args.timeout))
        run.idle.append(r)
        srv.stop()
        run.server_log += srv.errors_logged()
        log(f"  {srv.mem_what} {r.rss_fresh_kb / 1024:.0f} MB fresh, {r.rss_10_kb / 1024:.0f} "
            f"MB with 10, {r.rss_all_kb / 1024:.0f} MB with {r.held}: {r.per_conn_kib:.1f} KiB "
            f"each; set-up {r.setup_s:.1f} s; idle CPU {r.idle_cpu * 100:.1f} %"
            + (f"; EXISTS after {max(r.wake) * 1000:.0f} ms at most" if r.wake else "")
            + (f"; {len(r.errors)} errors: {r.errors[0]}" if r.errors else ""))


def measure(args: argparse.Namespace, root: Path, runs: dict[str, Run]) -> None:
    run = runs["pillarbox"] = Run()
    srv = Server(root / "pillarbox", args.idle + 100)
    srv.setup()
    dovs: list[Dovecot] = []
    try:
        srv.start()
        run.rss_idle_kb = srv.mem_kb()
        log(f"pillarbox up (pid {srv.proc.pid if srv.proc else '?'}), idle RSS "
            f"{run.rss_idle_kb / 1024:.0f} MB; filling INBOX through SMTP: {args.small} x 4 KB "
            f"+ {args.large} x 1 MiB")
        run.fill_s = fill(srv, args)
        profiler = None
        if args.profile:
            assert srv.proc is not None
            pdir = root / "profiles"
            pdir.mkdir()
            profiler = Profiler(srv.proc.pid, pdir, args.py_spy)
            run.profiled = True
        asyncio.run(main_loads(srv, args, run, profiler))
        run.hwm_kb = srv.status_kb("VmHWM")
        srv.stop()
        run.server_log += srv.errors_logged()

        # the same mailbox, before the IDLE load adds a message; each set-up on its own copy
        for i, name in enumerate(DOVECOT_VARIANTS if args.dovecot_exe else []):
            drun = runs[name] = Run()
            dov = Dovecot(root / f"dovecot{i}", args.dovecot_exe, args.idle + 100, name)
            dovs.append(dov)
            dov.setup(srv.maildir, srv.dir / "var" / "tls")
            dov.start()
            drun.rss_idle_kb = dov.mem_kb()
            log(f"{name} {dov.version} up (pid {dov.proc.pid if dov.proc else '?'}), "
                f"{dov.processes()} processes, Pss {drun.rss_idle_kb / 1024:.0f} MB")
            drun.fill_s = run.fill_s
            drun.version = dov.version
            asyncio.run(main_loads(dov, args, drun, None))
            drun.hwm_kb = dov.mem_kb()
            dov.stop()
            drun.server_log += dov.errors_logged()

        if args.idle:
            srv.cheap_password()
            idle_modes(srv, run, args, list(IDLE_MODES))
            for dov in dovs:
                dov.set_password(cheap=True)
                idle_modes(dov, runs[dov.name], args, ["inbox"])
    finally:
        srv.stop()
        for dov in dovs:
            dov.stop()


async def main_loads(srv: Target, args: argparse.Namespace, run: Run,
                     profiler: Profiler | None) -> None:
    n_msgs = args.small + args.large
    run.box = await first_look(srv, n_msgs)
    log(f"INBOX: {n_msgs} messages delivered in {run.fill_s:.1f} s; first SELECT took "
        f"{run.box.first_select_s:.2f} s")
    run.plain = await plain_login_refused(srv)
    log(f"plain-text LOGIN on the imap port: {run.plain}")
    plain_ok = "LOGIN: OK" in run.plain
    for key in ("login_imaps", "login_starttls", "tls_only",
                *(["login_plain"] if plain_ok else [])):
        total = args.logins * 5 if key == "tls_only" else args.logins
        ld = await login_load(srv, key, total, args.clients, args.timeout, profiler)
        report(ld)
        run.loads.append(ld)
    clients = await open_clients(srv, args.clients, b"INBOX")
    try:
        for key in FETCH_LOADS:
            if key == "fetch_large" and not run.box.large:
                continue
            ld = await fetch_load(srv, key, clients, run.box, args.rounds, args.timeout,
                                  profiler)
            report(ld)
            run.loads.append(ld)
        for c in clients:  # APPEND clients have no mailbox selected, like a Sent copy
            await c.ok(b"UNSELECT")
        await clients[0].ok(b"CREATE Bench")
        done = 0
        for key, total, size in (("append_4k", args.appends, 4096),
                                 ("append_1m", args.big_appends, 1 << 20)):
            if not total:
                continue
            ld = await append_load(srv, key, clients, total, size, b"Bench", args.timeout,
                                   profiler)
            report(ld)
            run.loads.append(ld)
            done += ld.ops
        rep = await clients[0].ok(b"STATUS Bench (MESSAGES)", keep=True)
        got = re.search(rb"MESSAGES (\d+)", b"".join(rep.lines))
        count = int(got.group(1)) if got else -1
        run.append_check = f"STATUS Bench: {count} messages for {done} APPEND OKs"
        if count != done:
            run.problems.append(run.append_check)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def report(ld: Load) -> None:
    mb = f", {ld.octets / ld.wall / 1e6:.1f} MB/s" if ld.octets and ld.wall else ""
    log(f"  {ld.key:15} {ld.ops:6} {ld.unit}s in {ld.wall:5.1f} s: {ld.rate:8,.1f}/s{mb}, "
        f"server CPU {ld.server_cpu:.1f} s"
        + (f" (event loop {ld.loop_cpu:.1f} s)" if ld.loop_cpu >= 0 else "") + ", client CPU "
        f"{ld.client_cpu:.1f} s, machine {ld.machine_cpu / ld.wall if ld.wall else 0:.2f} CPUs"
        + (f", {len(ld.errors)} errors: {ld.errors[0]}" if ld.errors else ""))
    for ln in ld.profile:
        log("    " + ln)


def problems(run: Run, pillarbox: bool = True) -> list[str]:
    out = list(run.problems)
    for ld in run.loads:
        if ld.errors:
            out.append(f"{ld.key}: {len(ld.errors)} errors, first: {ld.errors[0]}")
        if ld.timed_out:
            out.append(f"{ld.key}: timed out")
    for r in run.idle:
        out += r.errors
    if pillarbox and ("LOGINDISABLED" not in run.plain or "LOGIN: NO" not in run.plain):
        out.append(f"plain-text LOGIN was not refused: {run.plain}")
    return out


# -- reporting ---------------------------------------------------------------------------------


def table(run: Run) -> str:
    cols = ["load", "clients", "count", "rate", "MB/s", "p50 ms", "p99 ms",
            "server CPU ms / op", "server CPU s / 1,000 commands",
            "server CPU busy (event loop)", "client CPU ms / op", "machine CPU busy"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for ld in run.loads:
        per = 1000 / ld.ops if ld.ops else 0
        mbs = f"{ld.octets / ld.wall / 1e6:,.1f}" if ld.octets and ld.wall else "—"
        unit = "logins/s" if ld.unit == "login" else "msg/s"
        lines.append("| " + " | ".join([
            ld.label, str(ld.clients), f"{ld.ops:,}", f"{ld.rate:,.0f} {unit}", mbs,
            fmt(ld.pct(50), 1), fmt(ld.pct(99), 1), f"{ld.server_cpu * per:.2f}",
            fmt(per_1k_commands(ld), 3),
            f"{ld.server_cpu / ld.wall * 100:.0f} %" + (
                f" ({ld.loop_cpu / ld.wall * 100:.0f} %)" if ld.loop_cpu >= 0 else ""),
            f"{ld.client_cpu * per:.2f}",
            f"{ld.machine_cpu / ld.wall:.2f} of {NPROC}"]) + " |")
    return "\n".join(lines)


def idle_table(runs: dict[str, Run]) -> str:
    rs = [(name, r) for name, run in runs.items() for r in run.idle]
    n = rs[0][1].connections
    cols = ["server", "connections held", "memory fresh MB", "with 10 MB", f"with {n:,} MB",
            "KiB per connection", "after they left MB", "set-up s", "server CPU while idle",
            "delivery → EXISTS p50 ms", "max ms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in rs:
        wake = sorted(r.wake)
        lines.append("| " + " | ".join([
            name, f"{r.held:,} × {IDLE_MODES[r.mode]}", f"{r.rss_fresh_kb / 1024:.0f}",
            f"{r.rss_10_kb / 1024:.0f}", f"{r.rss_all_kb / 1024:.0f}",
            f"{r.per_conn_kib:.0f}", f"{r.rss_after_kb / 1024:.0f}", f"{r.setup_s:.1f}",
            f"{r.idle_cpu * 100:.1f} %",
            f"{statistics.median(wake) * 1000:.0f}" if wake else "—",
            f"{wake[-1] * 1000:.0f}" if wake else "—"]) + " |")
    return "\n".join(lines)


COMPARE = [  # (load key, what, figure)
    ("login_imaps", "logins/s, LOGIN + LOGOUT over IMAPS", "rate"),
    ("login_imaps", "server CPU ms per login (IMAPS)", "cpu_ms"),
    ("login_imaps", "server CPU s per 1,000 commands, LOGIN + LOGOUT over IMAPS", "cpu_1k"),
    ("login_starttls", "logins/s, LOGIN + LOGOUT with STARTTLS", "rate"),
    ("tls_only", "connections/s, TLS + LOGOUT without LOGIN", "rate"),
    ("tls_only", "server CPU ms per connection without LOGIN", "cpu_ms"),
    ("tls_only", "server CPU s per 1,000 commands, TLS + LOGOUT (LOGOUT only)", "cpu_1k"),
    ("fetch_flags", "msg/s, FETCH 1:* (FLAGS UID RFC822.SIZE)", "rate"),
    ("fetch_envelope", "msg/s, FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE)", "rate"),
    ("fetch_envelope", "server CPU µs per message, same", "cpu_us"),
    ("fetch_small", "msg/s, BODY.PEEK[] of ~4 KB messages", "rate"),
    ("fetch_small", "server CPU µs per message, same", "cpu_us"),
    ("fetch_large", "MB/s, BODY.PEEK[] of ~1 MiB messages", "mbs"),
    ("append_4k", "msg/s, APPEND ~4 KB", "rate"),
    ("append_4k", "server CPU ms per message, same", "cpu_ms"),
    ("append_4k", "server CPU s per 1,000 commands, APPEND ~4 KB", "cpu_1k"),
    ("append_1m", "MB/s, APPEND ~1 MiB", "mbs"),
]


def per_1k_commands(ld: Load | None) -> float | None:
    """Server CPU seconds per 1,000 IMAP commands the clients sent during the load."""
    return ld.server_cpu / ld.commands * 1000 if ld and ld.commands else None


def cpu_table(runs: dict[str, Run]) -> str:
    """Server CPU s per 1,000 commands, load by load, every server side by side."""
    names = list(runs)
    lines = ["| load | commands | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    keyed = {n: by_key(r) for n, r in runs.items()}
    for ld in runs["pillarbox"].loads:
        lines.append(f"| {ld.label} | {ld.commands:,} | " + " | ".join(
            fmt(per_1k_commands(keyed[n].get(ld.key)), 3) for n in names) + " |")
    tot = [(sum(x.server_cpu for x in runs[n].loads if x.key in keyed["pillarbox"]),
            sum(x.commands for x in runs[n].loads if x.key in keyed["pillarbox"]))
           for n in names]
    lines.append("| all these loads together | " + f"{tot[0][1]:,} | " + " | ".join(
        fmt(cpu / n * 1000 if n else None, 3) for cpu, n in tot) + " |")
    return "\n".join(lines)


def figure(ld: Load | None, what: str) -> float | None:
    if ld is None or not ld.ops or not ld.wall:
        return None
    if what == "rate":
        return ld.rate
    if what == "mbs":
        return ld.octets / ld.wall / 1e6
    if what == "cpu_1k":
        return per_1k_commands(ld)
    per = ld.server_cpu / ld.ops
    return per * 1000 if what == "cpu_ms" else per * 1e6


def compare_table(runs: dict[str, Run]) -> str:
    """pillarbox against every Dovecot set-up in runs, with pillarbox ÷ each."""
    dnames = [n for n in runs if n in DOVECOT_VARIANTS]
    pb, dvs = by_key(runs["pillarbox"]), [by_key(runs[n]) for n in dnames]
    lines = ["| figure | " + " | ".join(dnames) + " | pillarbox | "
             + " | ".join(f"ratio to {n}" for n in dnames) + " |",
             "|" + "---|" * (2 * len(dnames) + 2)]

    def add(what: str, ds: list[float | None], p: float | None, digits: int = 0) -> None:
        ratios = [f"{p / d:.2f} ×" if d and p is not None else "—" for d in ds]
        lines.append(f"| {what} | " + " | ".join(fmt(d, digits) for d in ds)
                     + f" | {fmt(p, digits)} | " + " | ".join(ratios) + " |")

    for key, what, fig in COMPARE:
        ds, p = [figure(dv.get(key), fig) for dv in dvs], figure(pb.get(key), fig)
        add(what, ds, p, 3 if fig == "cpu_1k" else 2 if fig == "cpu_ms"
            else 1 if (ds[0] or 0) < 100 else 0)
    dis = [next((r for r in runs[n].idle if r.mode == "inbox"), None) for n in dnames]
    pi = next((r for r in runs["pillarbox"].idle if r.mode == "inbox"), None)
    if pi and all(dis):
        add(f"KiB per IDLE connection ({pi.held:,} held, INBOX selected)",
            [d.per_conn_kib for d in dis if d], pi.per_conn_kib)
        add("memory with them all MB", [d.rss_all_kb / 1024 for d in dis if d],
            pi.rss_all_kb / 1024)
    add("idle memory at start MB", [runs[n].rss_idle_kb / 1024 for n in dnames],
        runs["pillarbox"].rss_idle_kb / 1024)
    return "\n".join(lines)


def by_key(run: Run) -> dict[str, Load]:
    return {ld.key: ld for ld in run.loads}


def reading(runs: dict[str, Run]) -> list[str]:
    """What the figures say, from this run's own measurements."""
    run = runs["pillarbox"]
    k = by_key(run)
    out = []
    li, tl = k.get("login_imaps"), k.get("tls_only")
    a2 = run.argon2
    if li and li.ops:
        per = li.server_cpu / li.ops * 1000
        s = (f"Logins: {li.rate:,.1f} logins/s over IMAPS with {li.clients} clients, "
             f"{per:.0f} ms of server CPU each")
        if tl and tl.ops:
            tper = tl.server_cpu / tl.ops * 1000
            s += (f", of which {tper:.1f} ms is the connection with its TLS handshake and "
                  f"LOGOUT (the same without LOGIN: {tl.rate:,.0f}/s)")
        if a2:
            s += (f"; one argon2id verification ({a2['mib']:.0f} MiB, t={a2['t']:.0f}, "
                  f"p={a2['p']:.0f}, libsodium through PyNaCl) takes {a2['cpu_ms']:.0f} ms of "
                  "CPU on its own")
        busy = li.server_cpu / li.wall
        s += (f". The server was {busy * 100:.0f} % busy (of one CPU) and the machine "
              f"{li.machine_cpu / li.wall:.2f} of its {NPROC} CPUs: the password hash, not the "
              "protocol, sets the login rate; it runs in two threads of its own, "
              "outside the event loop (event loop "
              f"{li.loop_cpu / li.wall * 100:.0f} % of a CPU).")
        out.append(s)
    fl, fe = k.get("fetch_flags"), k.get("fetch_envelope")
    if fl and fe and fl.ops and fe.ops:
        out.append(
            f"FETCH: the index-only sync (FLAGS UID RFC822.SIZE) ran at {fl.rate:,.0f} msg/s "
            f"({fl.server_cpu / fl.ops * 1e6:.0f} µs of server CPU per message); adding "
            f"ENVELOPE brings it to {fe.rate:,.0f} msg/s ({fe.server_cpu / fe.ops * 1e6:.0f} "
            "µs per message): the envelope comes from the index, where the first FETCH of "
            "it stored it (docs/IMAP.md), but each is a row to read and a response to "
            "build.")
    fs, fb = k.get("fetch_small"), k.get("fetch_large")
    if fs and fs.ops:
        s = (f"Whole messages: {fs.rate:,.0f} msg/s ({fs.octets / fs.wall / 1e6:,.1f} MB/s) "
             "for the ~4 KB ones")
        if fb and fb.ops:
            s += (f", {fb.rate:,.1f} msg/s ({fb.octets / fb.wall / 1e6:,.1f} MB/s) for the "
                  "~1 MiB ones")
        s += (f"; the clients used {fs.client_cpu / fs.wall * 100:.0f} % of a CPU against the "
              f"server's {fs.server_cpu / fs.wall * 100:.0f} % in the first.")
        out.append(s)
    a4, a1 = k.get("append_4k"), k.get("append_1m")
    if a4 and a4.ops:
        s = (f"APPEND: {a4.rate:,.0f} msg/s of ~4 KB ({a4.server_cpu / a4.ops * 1000:.2f} ms "
             f"of server CPU each, p50 {fmt(a4.pct(50), 1)} ms: each message is written, "
             "fsynced and renamed, and its directory fsynced, before the OK)")
        if a1 and a1.ops:
            s += (f", {a1.rate:,.1f} msg/s of ~1 MiB ({a1.octets / a1.wall / 1e6:,.1f} MB/s, "
                  f"{a1.server_cpu / a1.ops * 1000:.1f} ms of server CPU each)")
        out.append(s + ".")
    idle = {r.mode: r for r in run.idle}
    r = idle.get("inbox")
    if r is not None:
        s = (f"IDLE: {r.held:,} connections logged in over IMAPS with INBOX selected "
             f"({len(run.box.sizes) if run.box else 0:,} messages) hold "
             f"{(r.rss_all_kb - r.rss_10_kb) / 1024:.0f} MB more than 10 do, "
             f"{r.per_conn_kib:.0f} KiB each")
        parts = []
        if "auth" in idle:
            parts.append(f"{idle['auth'].per_conn_kib:.0f} KiB logged in with no mailbox "
                         "selected")
        if "plain" in idle:
            parts.append(f"{idle['plain'].per_conn_kib:.0f} KiB for a bare connection "
                         "without TLS or login")
        if parts:
            s += " (" + ", ".join(parts) + ")"
        s += (f"; the server used {r.idle_cpu * 100:.1f} % of a CPU while they idled, and a "
              "message sent through SMTP reached all of them as EXISTS within "
              f"{max(r.wake) * 1000 if r.wake else 0:.0f} ms of the start of its SMTP "
              "session.")
        if "auth" in idle and run.box:
            extra = r.per_conn_kib - idle["auth"].per_conn_kib
            s += (f" Selecting INBOX adds about {extra:.0f} KiB per connection, "
                  f"{extra * 1024 / len(run.box.sizes):.0f} bytes per message in the mailbox: "
                  "each session keeps its own list of UIDs and dict of flags for every message "
                  "(`Session.uids`, `Session.vflags`), so this grows with the mailbox (a "
                  "50,000-message INBOX would cost about "
                  f"{extra * 50_000 / len(run.box.sizes) / 1024:.1f} MB per connection).")
        out.append(s)
    if "Dovecot" in runs:
        out += reading_dovecot(runs)
    return out


def profile_reading(run: Run) -> str:
    """The profile in one paragraph, from the shares of this run's samples."""
    k = by_key(run)

    def sh(key: str, fn: str) -> float:
        ld = k.get(key)
        return ld.shares.get(fn, 0.0) * 100 if ld else 0.0

    if not any(ld.shares for ld in run.loads):
        return ""
    part, read = "Part.__init__ (imap/mime.py)", "Path.read_bytes (pathlib.py)"
    flush = "Session.flush (imap/session.py)"
    auth = sh("login_imaps", "Users.authenticate (directory/users.py)")
    env = sh("fetch_envelope", "envelope (imap/mime.py)")
    addrs = sh("fetch_envelope", "_addresses (imap/mime.py)")
    write = sh("append_4k", "MailStore.write_file (store/mailbox_index.py)")
    out = [f"In short: during the logins {auth:.0f} % of the samples are the argon2id check "
           "(`Users.authenticate`, in the thread pool)."]
    out.append(
        f"FETCH with ENVELOPE: building the envelope {env:.0f} % (mostly parsing addresses "
        f"with the email package, `_addresses` {addrs:.0f} %), parsing the MIME structure "
        f"{sh('fetch_envelope', part):.0f} %, reading the whole file (for the header only) "
        f"{sh('fetch_envelope', read):.0f} %, for every message every time, all on the event "
        "loop but the reads of the large files.")
    out.append(
        f"BODY.PEEK[] of the ~4 KB messages: reading the file {sh('fetch_small', read):.0f} %, "
        f"writing out (TLS) {sh('fetch_small', flush):.0f} %, parsing the MIME structure "
        f"{sh('fetch_small', part):.0f} % (a whole message is sent as stored since commit "
        f"bd651a8; it was 39 % before); of the ~1 MiB ones, writing out "
        f"{sh('fetch_large', flush):.0f} % and reading {sh('fetch_large', read):.0f} %.")
    out.append(
        f"APPEND: writing and fsyncing the file (`MailStore.write_file`, in the thread pool) "
        f"{write:.0f} % of the samples.")
    return " ".join(out)


def reading_dovecot(runs: dict[str, Run]) -> list[str]:
    """The comparison, in words, from this run's figures."""
    pb, dv = by_key(runs["pillarbox"]), by_key(runs["Dovecot"])
    out = []

    def ratio(key: str, fig: str) -> float | None:
        p, d = figure(pb.get(key), fig), figure(dv.get(key), fig)
        return p / d if p is not None and d else None

    li, lc, tl = ratio("login_imaps", "rate"), ratio("login_imaps", "cpu_ms"), \
        ratio("tls_only", "cpu_ms")
    if li is not None and lc is not None:
        s = (f"Against Dovecot: logins at {li:.2f} × Dovecot's rate, with {lc:.2f} × its "
             "server CPU per login; the password check (argon2id through libsodium on "
             "both sides, the same memory and passes) dominates both")
        if tl is not None:
            s += (f"; without the password check pillarbox needs {tl:.2f} × Dovecot's CPU "
                  "per connection (Dovecot starts a login process for each connection by "
                  "default)")
        out.append(s + ".")
    fe, fs, fb = (ratio("fetch_envelope", "rate"), ratio("fetch_small", "rate"),
                  ratio("fetch_large", "mbs"))
    if fe is not None:
        s = (f"FETCH with ENVELOPE runs at {fe:.2f} × Dovecot's rate: both answer from a "
             "cache after the first fetch (Dovecot's dovecot.index.cache, pillarbox's index "
             "rows), Dovecot with compiled code in one process per connection")
        if fs is not None:
            s += f"; whole ~4 KB messages at {fs:.2f} ×"
        if fb is not None:
            s += f", ~1 MiB messages at {fb:.2f} × its MB/s"
        out.append(s + ".")
    a4 = ratio("append_4k", "rate")
    if a4 is not None:
        out.append(f"APPEND of ~4 KB messages runs at {a4:.2f} × Dovecot's rate with the 10 "
                   "clients appending to one mailbox at once (presumably Dovecot's Maildir "
                   "saves wait in turn for the mailbox's dovecot-uidlist lock; pillarbox "
                   "writes each file in a thread and indexes it in the event loop).")
    di = next((r for r in runs["Dovecot"].idle if r.mode == "inbox"), None)
    pi = next((r for r in runs["pillarbox"].idle if r.mode == "inbox"), None)
    if di and pi and di.per_conn_kib:
        out.append(f"Memory per IDLE connection: {pi.per_conn_kib:.0f} KiB against "
                   f"Dovecot's {di.per_conn_kib:,.0f} KiB ({pi.per_conn_kib / di.per_conn_kib:.2f}"
                   f" ×; Dovecot ran {di.processes:,} processes for {di.held:,} connections), "
                   f"while idle at start pillarbox takes {runs['pillarbox'].rss_idle_kb / 1024:.0f}"
                   f" MB and Dovecot {runs['Dovecot'].rss_idle_kb / 1024:.0f} MB.")
    if "Dovecot, reuse" in runs:
        rv = by_key(runs["Dovecot, reuse"])

        def cpu(k: dict[str, Load], key: str) -> str:
            return fmt(per_1k_commands(k.get(key)), 3)

        def rate(k: dict[str, Load], key: str) -> str:
            return fmt(figure(k.get(key), "rate"))

        out.append(
            "With process reuse (`service_count = 0`, `process_min_avail = "
            f"{NPROC}` for imap-login and imap) Dovecot's server CPU per 1,000 commands is "
            f"{cpu(rv, 'tls_only')} s for TLS + LOGOUT (default set-up {cpu(dv, 'tls_only')}, "
            f"pillarbox {cpu(pb, 'tls_only')}; {rate(rv, 'tls_only')} connections/s against "
            f"{rate(dv, 'tls_only')} and {rate(pb, 'tls_only')}), {cpu(rv, 'login_imaps')} s "
            f"for LOGIN + LOGOUT over IMAPS (default {cpu(dv, 'login_imaps')}, pillarbox "
            f"{cpu(pb, 'login_imaps')}; {rate(rv, 'login_imaps')} logins/s against "
            f"{rate(dv, 'login_imaps')} and {rate(pb, 'login_imaps')}) and "
            f"{cpu(rv, 'append_4k')} s for APPEND of ~4 KB (default {cpu(dv, 'append_4k')}, "
            f"pillarbox {cpu(pb, 'append_4k')}); the table above gives every load.")
    return out


def docs_section(args: argparse.Namespace, m: dict[str, str], runs: dict[str, Run],
                 took: float, load_after: str) -> str:
    run = runs["pillarbox"]
    cmd = shlex.join([".venv/bin/python", "bench/imap_load.py", *sys.argv[1:]])
    where = sl.fs_type(Path(args.tmpdir or tempfile.gettempdir()))
    box = run.box
    intro = para(
        f"Measured {dt.date.today().isoformat()} on this machine: {m['nproc']} CPUs "
        f"({m['cpu']}), {os_name()}, Linux {m['kernel']}, Python {m['python']}; pillarbox at "
        f"{m['src']}; Maildir and index on {where}; load average before the run {m['load']} "
        f"and after it {load_after} (other work on the machine shows up in the figures). The "
        f"whole run took {took / 60:.1f} minutes"
        + (", with py-spy sampling the server during every load (see the profile below)."
           if run.profiled else "."))
    profile = []
    for ld in run.loads:
        if ld.profile:
            profile.append(bullet(f"*{ld.label}* (py-spy used {ld.profiler_cpu:.1f} s of CPU "
                                  f"itself): " + " — ".join(ld.profile)))
    pr = profile_reading(run)
    profile_para = para(pr) + "\n\n" if pr else ""
    profile_text = ("\n".join(profile) if profile else
                    "(not profiled in this run: add --profile)")
    how = [
        f"A throwaway pillarbox: `pillarbox init --dir DIR --domain {DOMAIN}`, every listener "
        "moved to a free 127.0.0.1 port, `log_level = \"warning\"`, `user add "
        f"{USER}` with a password (argon2id at the server's default cost), started as "
        "`python -m pillarbox -c DIR/pillarbox.toml serve`"
        + (" from the exported `--rev` tree." if args.rev else "."),
        f"Connection limits raised in that config so that one address and one user may "
        f"hold {args.idle:,} connections (the defaults are 50 per address and 20 per user, "
        f"`[imap]` in config.py; 1,000 in all, `[limits]`): `[limits] max_connections = "
        f"{args.idle + 100}`, `[imap] max_connections_per_ip = {args.idle + 100}`, "
        f"`max_connections_per_user = {args.idle + 100}`. The bench raises its own open-file "
        "limit (setrlimit) to what the connections need; the server inherits it.",
        "`[limits] login_cache = \"0s\"`: every login pays the argon2id check, as in "
        "Dovecot's default (no auth cache). With pillarbox's default (10 minutes) a "
        "client's repeat login skips it and costs about what the TLS-only row shows.",
        f"The mailbox: {args.small:,} messages of about 4 KB (text/plain, From/To/Subject/"
        "Date/Message-ID, every 3rd with Cc, every 2nd with In-Reply-To) and "
        f"{args.large} of about 1 MiB (multipart/mixed, text plus a base64 attachment), "
        "sent to the user through SMTP on the MX port (4 sessions), delivered by pillarbox "
        "into the Maildir; one SELECT then took them into the IMAP index"
        + (f" ({len(box.sizes):,} messages, {sum(box.sizes.values()) / 1e6:,.1f} MB; "
           f"delivered in {run.fill_s:.1f} s, the first SELECT took "
           f"{box.first_select_s:.2f} s)" if box else "") + ".",
        f"The clients: {args.clients} asyncio clients (uvloop) in the bench process, over IMAPS "
        "(TLS, certificate not verified) unless said otherwise, one command at a time each. "
        "*Logins*: a new connection for each, TLS handshake, `LOGIN`, `LOGOUT`; latency is "
        "connect to the LOGIN's OK. STARTTLS: the same on the imap port after `STARTTLS`. "
        f"Plain-text LOGIN on the imap port was tried once: {run.plain} — pillarbox allows "
        "no login without TLS, so there is no plain-text figure.",
        f"*FETCH*: each client logged in once, INBOX selected, then ran the command "
        f"{args.rounds} times ({args.rounds * 10} times the index-only one); count is the "
        "untagged FETCH responses received, MB/s the octets of the responses, latency is "
        "per command (all messages). Every response was "
        "checked: one FETCH per message, and for BODY.PEEK[] exactly the octets of "
        "RFC822.SIZE.",
        f"*APPEND*: the same clients, no mailbox selected, `APPEND Bench (\\Seen) {{n+}}` "
        f"(LITERAL+) of {args.appends:,} messages of ~4 KB and {args.big_appends} of ~1 MiB "
        "into a new mailbox, the clients in parallel; latency is from the command written "
        f"to its OK; afterwards `STATUS Bench` counted them ({run.append_check}).",
        "*Server CPU*: utime + stime from /proc of the server process (all its threads) and "
        "its children over the load; *busy* is that over the wall time (100 % = one CPU), in "
        "brackets its main thread alone, which runs the event loop (the rest is asyncio's "
        "thread pool: argon2id, large file reads, APPEND writes). *Client CPU*: this "
        "process (getrusage). *Machine*: every process on the machine, from /proc/stat.",
        f"*IDLE*: the server is restarted on the same data (a fresh process), the user's "
        "password hash replaced by a cheap argon2id one (t=1, 1 MiB, p=1; argon2 verifies "
        f"with the parameters stored in the hash) so that {args.idle:,} logins take seconds, "
        "not minutes. RSS is VmRSS from /proc: fresh, with 10 connections in IDLE (so the "
        f"mailbox index is loaded), and with all {args.idle:,} (2 s after the last `+ "
        "idling`); KiB per connection is the difference over the connections beyond 10. "
        "Each connection: IMAPS, LOGIN, SELECT INBOX, IDLE (50 set up at a time). Then 5 s "
        "of silence (server CPU), then one 4 KB message sent through SMTP: the time from "
        "the start of that SMTP session to each connection's `* N EXISTS`. Then DONE, LOGOUT.",
        "Everything shares the 2 CPUs: pillarbox, the client process and whatever else runs "
        "on the machine.",
    ]
    dv = runs.get("Dovecot")
    if dv is not None:
        di = next((r for r in dv.idle if r.mode == "inbox"), None)
        how.append(
            f"Dovecot {dv.version} (Debian's dovecot-imapd, installed by the script if "
            "missing, service starts denied during the install): `dovecot -F -c "
            "DIR/dovecot.conf`, its own base, state and log directories, listeners on free "
            "127.0.0.1 ports (imap and imaps), `ssl = required` (so LOGINDISABLED before "
            "STARTTLS, like pillarbox), pillarbox's TLS pair, no chroot for imap-login, "
            "`info_log_path = /dev/null` (pillarbox logs at warning), everything else at "
            "Debian's defaults: a process per login connection (imap-login, which also "
            "carries the TLS) and one per logged-in session (imap), `mail_fsync = optimized`; "
            "limits raised as for pillarbox (`mail_max_userip_connections`, "
            "`default_process_limit`, `default_client_limit`). Dovecot allows a plain-text "
            f"LOGIN from the machine itself (it counts loopback as secure): {dv.plain}; so it "
            "has a plain-text row, pillarbox has none. User from a passwd-file, "
            "password `{ARGON2ID}` with pillarbox's memory (64 MiB) and passes (t=3) but one "
            "lane (libsodium verifies p=1 only); mail as uid/gid 65534 in "
            "`maildir:~/Maildir`: a copy of pillarbox's Maildir taken after pillarbox's loads "
            "(the same files, flags in the names; pillarbox's index and the APPEND mailbox "
            "left out), so Dovecot builds its own index at its first SELECT"
            + (f" ({dv.box.first_select_s:.2f} s)" if dv.box else "") + ".")
        how.append(
            "Dovecot ran the same loads with the same clients after pillarbox (one run each, "
            "not alternated); CPU is the master's and all its processes' (and the ones it "
            "reaped); memory is the proportional set size (Pss from smaps_rollup) summed over "
            "all its processes, pillarbox's is VmRSS (one process, so the same thing for a "
            "difference). For the IDLE load Dovecot has no SMTP: the message is written into "
            "`tmp/` and renamed into `new/` as an MDA would, and the time runs from there. "
            "Each IDLE imap process watches the Maildir with an inotify instance; this "
            f"machine allows {inotify_limit()} per user (fs.inotify.max_user_instances, left "
            "as it is), and the processes past that poll the Maildir every "
            "`mailbox_idle_check_interval` (30 s by default) instead, as Dovecot's log says "
            "(\"Anything odd\" above)"
            + (f"; with the {di.held:,} connections Dovecot ran {di.processes:,} processes"
               if di else "") + ".")
    rv = runs.get("Dovecot, reuse")
    if rv is not None:
        ri = next((r for r in rv.idle if r.mode == "inbox"), None)
        how.append(
            "*Dovecot, reuse*: the same Dovecot, a fresh copy of the same Maildir, the same "
            "configuration plus process reuse for `service imap-login` and `service imap`: "
            f"`service_count = 0` and `process_min_avail = {NPROC}` (the number of CPUs). "
            "An imap-login process then serves many connections (Dovecot's high-performance "
            "mode; it carries the TLS of all of them) and an imap process, after its session "
            "ends, serves the next one instead of exiting; a session still has an imap "
            "process to itself. It ran after the default set-up, the same loads and clients"
            + (f"; with the {ri.held:,} IDLE connections it ran {ri.processes:,} processes"
               if ri else "") + ".")
    how.append(
        "*Server CPU s per 1,000 commands*: the server's CPU over a load divided by the IMAP "
        "commands the clients sent during it (each tagged command counts one: STARTTLS, "
        "LOGIN, LOGOUT, FETCH, APPEND), times 1,000. A FETCH `1:*` answers every message of "
        "INBOX, so its per-command figure is large; the login rows are mostly argon2id.")
    idle = idle_table(runs) if run.idle else "(no IDLE load in this run)"
    notes = [bullet(f"{name} logged{x}") for name, r in runs.items()
             for x in distinct(r.server_log)[:5]] or ["- none"]
    compare = ""
    if dv is not None:
        compare = ("Side by side with Dovecot (ratio is pillarbox ÷ Dovecot; the same "
                   "mailbox, clients and loads, see below):\n\n" + compare_table(runs) + "\n\n")
    dovecot_all = "".join(
        f"\nThe figures of {name}, the same loads (no event-loop column: no single "
        f"event loop):\n\n" + table(r) + "\n"
        for name, r in runs.items() if name in DOVECOT_VARIANTS)
    cpu = ("Server CPU seconds per 1,000 IMAP commands, load by load (\"Dovecot\" is its "
           "default set-up, a process per connection; \"Dovecot, reuse\" has `service_count = "
           f"0` and `process_min_avail = {NPROC}` for imap-login and imap):\n\n"
           + cpu_table(runs) + "\n\n")
    return f"""## {SECTION}

{intro}

Command (`make bench-imap` runs it with `--profile --write-docs`, installing py-spy into
.venv; run as root for the side-by-side Dovecot, which it installs if missing):

    {cmd}

{table(run)}

{idle}

{compare}{cpu}{chr(10).join(para(x) + chr(10) for x in reading(runs)).rstrip()}

Server peak RSS (VmHWM) over the loads above: {run.hwm_kb / 1024:.0f} MB (idle at start
{run.rss_idle_kb / 1024:.0f} MB); the concurrent argon2id checks (64 MiB each) make most of it.

What the profile says (py-spy, 100 Hz, all the server's threads, idle ones left out; "on top
of the stack" is where the time went, "anywhere on it" the pillarbox functions that time was
spent under; C code such as OpenSSL and argon2 shows as the Python function that called it,
uvloop's own C code as "uvloop's C code"):

{profile_para}{profile_text}

Anything odd in this run (server log lines other than start and stop):

{chr(10).join(notes)}

### How it is measured (`bench/imap_load.py`)

{chr(10).join(bullet(x) for x in how)}
{dovecot_all}"""


def distinct(lines: list[str]) -> list[str]:
    """Log lines without their time stamps, process ids and session ids, counted."""
    seen: dict[str, int] = {}
    for ln in lines:
        key = re.sub(r"^\w{3} +\d+ [\d:]+ ", "", ln)
        key = re.sub(r"<\d+>|<[A-Za-z0-9+/]{16}>", "", key)
        seen[key] = seen.get(key, 0) + 1
    return [(f" ({n} times): " if n > 1 else ": ") + k[:300] for k, n in seen.items()]


def inotify_limit() -> str:
    try:
        return Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
    except OSError:
        return "?"


# -- main -----------------------------------------------------------------------------------


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # clean up as on Ctrl-C


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"error: {need} open files needed, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10, help="concurrent clients (10)")
    ap.add_argument("--small", type=int, default=1000, help="~4 KB messages in INBOX (1000)")
    ap.add_argument("--large", type=int, default=10, help="~1 MiB messages in INBOX (10)")
    ap.add_argument("--logins", type=int, default=100,
                    help="logins per login load (100; five times that without LOGIN)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="FETCH commands per client and load (5; ten times that for the "
                    "index-only FETCH)")
    ap.add_argument("--appends", type=int, default=3000, help="4 KB APPENDs (3000)")
    ap.add_argument("--big-appends", type=int, default=100, help="1 MiB APPENDs (100)")
    ap.add_argument("--idle", type=int, default=1000,
                    help="IDLE connections for the memory figure (1000; 0: skip)")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="seconds allowed for each load (180)")
    ap.add_argument("--tmpdir", default=None, help="where the throwaway server lives")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway directory")
    ap.add_argument("--rev", default=None,
                    help="benchmark this git revision's src/ (e.g. HEAD) instead of the "
                    "working tree, which others may be editing")
    ap.add_argument("--no-dovecot", dest="dovecot", action="store_false",
                    help="skip the side-by-side run of Dovecot (installed if missing, as root)")
    ap.add_argument("--profile", action="store_true",
                    help="sample the server with py-spy during every load (pip install py-spy)")
    ap.add_argument("--write-docs", action="store_true",
                    help=f'write the tables into docs/BENCHMARKS.md ("{SECTION}")')
    args = ap.parse_args()
    if not (1 <= args.clients <= 100 and 0 <= args.small <= 20_000 and 0 <= args.large <= 100
            and args.small + args.large >= 1 and 1 <= args.logins <= 5000
            and 1 <= args.rounds <= 50 and 0 <= args.appends <= 50_000
            and 0 <= args.big_appends <= 500 and 0 <= args.idle <= 5000
            and 0 < args.timeout <= 600):
        ap.error("bounds: --clients 1..100, --small 0..20000, --large 0..100, --logins "
                 "1..5000, --rounds 1..50, --appends 0..50000, --big-appends 0..500, --idle "
                 "0..5000, --timeout <= 600")
    args.py_spy = None
    if args.profile:
        args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(args.py_spy).exists():
            raise SystemExit("error: --profile needs py-spy: .venv/bin/pip install py-spy")
    raise_fd_limit(args.idle + args.clients + 200)
    with contextlib.suppress(ImportError):
        import uvloop  # less of the shared CPU for the load generator
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    export_dir = None
    commit = None
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=args.tmpdir))
    try:
        if args.rev:
            export_dir = Path(tempfile.mkdtemp(prefix=PREFIX + "src-", dir=args.tmpdir))
            commit = sl.export_rev(args.rev, export_dir)
        return run_all(args, root, commit)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        if export_dir:
            shutil.rmtree(export_dir, ignore_errors=True)


def run_all(args: argparse.Namespace, root: Path, commit: str | None) -> int:
    started = time.monotonic()
    m = sl.machine()
    m["src"] = sl.git_rev(args.rev, commit)  # now, before anyone commits meanwhile
    log(f"load average before the run: {m['load']}; pillarbox at {m['src']}")
    argon2 = argon2_cost()
    if argon2:
        log(f"argon2id on its own: {argon2['cpu_ms']:.0f} ms CPU, "
            f"{argon2['wall_ms']:.0f} ms wall per verification")
    signal.signal(signal.SIGTERM, on_sigterm)
    args.dovecot_exe = ensure_dovecot() if args.dovecot else None
    runs: dict[str, Run] = {}
    measure(args, root, runs)
    runs["pillarbox"].argon2 = argon2
    took = time.monotonic() - started
    load_after = sl.machine()["load"]
    log(f"load average after the run: {load_after}")
    for name, run in runs.items():
        print(f"{name}:\n{table(run)}\n")
    if any(r.idle for r in runs.values()):
        print(idle_table(runs) + "\n")
    if "Dovecot" in runs:
        print(compare_table(runs) + "\n")
    print(cpu_table(runs) + "\n")
    for x in reading(runs):
        print(para(x) + "\n")
    bad = [f"{name}: {p}" for name, run in runs.items()
           for p in problems(run, name == "pillarbox")]
    for p in bad:
        log(f"FAIL: {p}")
    for name, run in runs.items():
        for ln in run.server_log[:10]:
            log(f"{name} logged: {ln[:300]}")
    if bad:
        log("error: the run had failures; docs not written")
        return 1
    if args.write_docs:
        write_section(SECTION, docs_section(args, m, runs, took, load_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
