#!/usr/bin/env python3
"""SMTP intake load generator for pillarbox (issue 2 baseline).

Sets up a throwaway pillarbox in a temporary directory (its own config, free
127.0.0.1 ports, one user), starts `python -m pillarbox -c CFG serve`, drives
N concurrent SMTP sessions at it with a lean asyncio client (PIPELINING when
the server offers it), and measures:

- accepted msg/s: first connect to the last 250 after DATA;
- delivered msg/s: first connect until the user's Maildir `new/` holds as
  many files as were accepted (counted with inotify, not by polling);
- p50 / p99 latency from the end of DATA (".\\r\\n" written) to its 250;
- the server's CPU seconds per 1,000 messages (/proc/PID/stat utime+stime,
  over the load and the delivery that follows) and its peak RSS (VmHWM).

Every message must get a 250 and land in the Maildir, else the exit code is 1.
Only 127.0.0.1 is ever contacted; every load is bounded in count and time.

    .venv/bin/python bench/smtp_load.py [--sessions 20] [--messages 5000]
        [--size 4096] [--reuse | --both] [--write-docs]

Without --reuse a new connection is made per message (like Postfix's
`smtp-source`); with --reuse each session sends all its messages over one
connection (like `smtp-source -d`). --write-docs runs both modes unless one
was chosen, and writes the table into docs/BENCHMARKS.md. The server runs
from the working tree's src/, or with --rev REV from that git revision (so a
run is not disturbed by edits in progress). --profile PREFIX runs the server
under cProfile to find the slow spots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "BENCHMARKS.md"
SECTION = "SMTP intake (issue 2 baseline)"
HOST = "127.0.0.1"
DOMAIN = "example.test"
USER = "bench"
RCPT = f"{USER}@{DOMAIN}"
SENDER = "loadgen@sender.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_ENV = dict(os.environ)  # PYTHONPATH points at an exported revision with --rev


# -- throwaway server -------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pillarbox(*args: str, stdin: str | None = None) -> str:
    cmd = [sys.executable, "-m", "pillarbox", *args]
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60,
                       env=SERVER_ENV)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def rewrite_config(cfg: Path) -> dict[str, int]:
    """Point every enabled listener at a free 127.0.0.1 port; log at warning."""
    text = cfg.read_text()
    ports: dict[str, int] = {}

    def listen(m: re.Match) -> str:
        port = free_port()
        ports[m.group(2)] = port
        return f'{m.group(1)}["{HOST}:{port}"]'

    head, sep, rest = text.partition("\n[listen]\n")
    if not sep:
        raise SystemExit(f"error: no [listen] table in {cfg}")
    body, sep2, tail = rest.partition("\n[")
    body = re.sub(r'(?m)^((\w+)\s*=\s*)\[\s*"[^"]*:\d+"\s*\]', listen, body)
    text = head + "\n[listen]\n" + body + sep2 + tail
    # Every bench client comes from 127.0.0.1: lift the per-address SMTP limit
    # (revisions before it have none: --rev may name one).
    text, n = re.subn(r"(?m)^(max_connections_per_ip\s*=\s*)\d+(.*# concurrent SMTP)",
                      r"\g<1>100000\2", text)
    if n > 1:
        raise SystemExit(f"error: could not set limits.max_connections_per_ip in {cfg}")
    # Intake is measured with the built-in pipeline (relay, recipient), as Postfix
    # runs with none of its content checks: bench/trust_checks.py measures those.
    text = re.sub(r"(?ms)^\[pipeline\.smtp\]\n.*?(?=^\[|\Z)", "", text)
    if re.search(r"(?m)^log_level\s*=", text):
        text = re.sub(r'(?m)^log_level\s*=.*$', 'log_level = "warning"', text)
    else:
        text = 'log_level = "warning"\n' + text
    cfg.write_text(text)
    parsed = tomllib.loads(text)
    assert parsed["limits"].get("max_connections_per_ip", 100000) == 100000
    if parsed["listen"]["smtp"] != [f"{HOST}:{ports.get('smtp')}"]:
        raise SystemExit(f"error: could not set listen.smtp in {cfg}")
    return ports


class Server:
    def __init__(self, workdir: Path, profile: Path | None = None) -> None:
        self.dir = workdir
        self.profile = profile
        self.cfg = workdir / "pillarbox.toml"
        self.log_path = workdir / "server.log"
        self.maildir_new = workdir / "var" / "mail" / DOMAIN / USER / "new"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def setup(self) -> None:
        pillarbox("init", "--dir", str(self.dir), "--domain", DOMAIN)
        self.port = rewrite_config(self.cfg)["smtp"]
        pillarbox("-c", str(self.cfg), "user", "add", RCPT, "--password-stdin",
                  stdin="bench-password-not-secret\n")

    def start(self, timeout: float = 30.0) -> None:
        self._log = open(self.log_path, "wb")  # closed in stop()
        prof = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        self.proc = subprocess.Popen(
            [sys.executable, *prof, "-m", "pillarbox", "-c", str(self.cfg), "serve"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.dir, env=SERVER_ENV)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"error: server exited with {self.proc.returncode}:\n"
                                 + self.log_text())
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as s:
                    f = s.makefile("rb")
                    banner = f.readline()
                    s.sendall(b"QUIT\r\n")
                    f.readline()
                if banner.startswith(b"220"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"error: server not answering on {HOST}:{self.port} after {timeout}s")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def status_kb(self, key: str) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def delivered(self) -> int:
        try:
            with os.scandir(self.maildir_new) as it:
                return sum(1 for _ in it)
        except FileNotFoundError:
            return 0

    def verify(self, head: bytes, body: bytes, count: int) -> list[str]:
        """Every file in new/ ends with one of our messages, intact; each index once."""
        seen: dict[int, int] = {}
        bad = 0
        with os.scandir(self.maildir_new) as it:
            for entry in it:
                data = Path(entry.path).read_bytes()
                at = data.rfind(head)
                tail = data[at + len(head) + 8:] if at >= 0 else b""
                idx = data[at + len(head):at + len(head) + 8] if at >= 0 else b""
                if at < 0 or tail != body or not idx.isdigit():
                    bad += 1
                    continue
                seen[int(idx)] = seen.get(int(idx), 0) + 1
        out = []
        if bad:
            out.append(f"{bad} delivered files do not hold an intact test message")
        dups = sum(n - 1 for n in seen.values() if n > 1)
        if dups:
            out.append(f"{dups} duplicate deliveries")
        missing = count - len(seen)
        if missing > 0:
            out.append(f"{missing} accepted messages missing from new/")
        return out

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def read_stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # fields from "state" on (field 3)


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of a process, its reaped children and its live descendants."""
    total = 0.0
    for pid in [root, *descendants(root)]:
        with contextlib.suppress(OSError):
            fields = read_stat(pid)
            # fields after the command name: index 11..14 = utime stime cutime cstime
            ticks = sum(int(x) for x in fields[11:13])
            if pid == root:
                ticks += sum(int(x) for x in fields[13:15])
            total += ticks / CLK_TCK
    return total


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int(read_stat(int(entry.name))[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class NewFiles:
    """Counts files arriving in a directory (a Maildir's new/) with inotify, and notes
    when the count reached a target. Polling with os.scandir instead costs about 5 ms of
    CPU per scan of 5,000 entries here, which the server under test would pay for."""

    IN_CREATE, IN_MOVED_TO, IN_ISDIR, IN_NONBLOCK = 0x100, 0x80, 0x40000000, 0o4000

    def __init__(self, path: Path) -> None:
        import ctypes
        import ctypes.util
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        path.mkdir(parents=True, exist_ok=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self.libc.inotify_add_watch(self.fd, os.fsencode(path),
                                       self.IN_CREATE | self.IN_MOVED_TO) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.count = 0
        self.reached: dict[int, float] = {}
        self.targets: list[int] = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.closed:
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if not r:
                continue
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                break
            now = time.perf_counter()
            n, off = 0, 0
            while off + 16 <= len(buf):
                _, mask, _, size = struct.unpack_from("iIII", buf, off)
                if mask & (self.IN_CREATE | self.IN_MOVED_TO) and not mask & self.IN_ISDIR:
                    n += 1
                off += 16 + size
            with self.cond:
                self.count += n
                for t in self.targets:
                    if self.count >= t and t not in self.reached:
                        self.reached[t] = now
                self.cond.notify_all()

    def wait_for(self, n: int, deadline: float, alive=lambda: True) -> float | None:
        """perf_counter time at which the n-th file arrived, or None at the deadline."""
        with self.cond:
            self.targets.append(n)
            if self.count >= n and n not in self.reached:
                self.reached[n] = time.perf_counter()
            while n not in self.reached:
                left = deadline - time.perf_counter()
                if left <= 0 or not alive():
                    return None
                self.cond.wait(min(left, 0.2))
            return self.reached[n]

    def close(self) -> None:
        self.closed = True
        self.thread.join()
        os.close(self.fd)


# -- the client ---------------------------------------------------------------


def make_message(size: int, run_id: str) -> tuple[bytes, bytes]:
    """A message of exactly `size` octets (CRLF lines, nothing to dot-stuff),
    split around an 8-digit sequence number: head + b"%08d" % i + tail."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    head = (f"From: Load Generator <{SENDER}>\r\n"
            f"To: <{RCPT}>\r\n"
            f"Date: {date}\r\n"
            f"Subject: pillarbox bench {run_id}\r\n"
            f"Message-ID: <bench-{run_id}-").encode()
    tail = b"@bench.test>\r\n\r\n"
    room = size - len(head) - 8 - len(tail)
    if room < 0:
        raise SystemExit(f"error: --size must be at least {size - room} octets")
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n"
    filler = line * (room // len(line))
    rest = room - len(filler)
    if rest == 1:  # a lone octet cannot form a CRLF line; grow the last line by one
        filler = filler[:-2] + b"x\r\n"
    elif rest >= 2:
        filler += b"y" * (rest - 2) + b"\r\n"
    body = tail + filler
    assert len(head) + 8 + len(body) == size
    return head, body


class ProtocolError(Exception):
    pass


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    lines = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise ProtocolError("connection closed by server")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            break
    try:
        return int(lines[-1][:3]), lines
    except ValueError:
        raise ProtocolError(f"bad reply {lines[-1][:60]!r}") from None


@dataclass
class Result:
    mode: str
    sessions: int
    messages: int
    size: int
    accepted: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    t_first_connect: float = 0.0
    t_last_250: float = 0.0
    t_delivered: float | None = None
    delivered: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    rss_idle_kb: int = 0
    rss_peak_kb: int = 0
    connections: int = 0
    pipelining: bool = True
    content_errors: list[str] = field(default_factory=list)
    server_log: str = ""
    server_exit: int | None = None
    timed_out: bool = False

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    @property
    def accept_rate(self) -> float:
        span = self.t_last_250 - self.t_first_connect
        return self.accepted / span if span > 0 else 0.0

    @property
    def deliver_rate(self) -> float | None:
        if self.t_delivered is None:
            return None
        return self.delivered / (self.t_delivered - self.t_first_connect)

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
        return xs[k] * 1000


class Load:
    def __init__(self, port: int, res: Result, head: bytes, body: bytes) -> None:
        self.port = port
        self.res = res
        self.head = head
        self.body = body + b".\r\n"
        self.next = 0
        self.envelope = (f"MAIL FROM:<{SENDER}> SIZE={res.size}\r\n"
                         f"RCPT TO:<{RCPT}>\r\n").encode()

    def take(self) -> int | None:
        if self.next >= self.res.messages:
            return None
        self.next += 1
        return self.next - 1

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 10)
        self.res.connections += 1
        try:
            code, _ = await read_reply(reader)
            if code != 220:
                raise ProtocolError(f"banner {code}")
            writer.write(b"EHLO loadgen.sender.test\r\n")
            code, lines = await read_reply(reader)
            if code != 250:
                raise ProtocolError(f"EHLO {code}")
        except BaseException:
            writer.close()
            raise
        pipelining = any(ln[4:].strip().upper() == b"PIPELINING" for ln in lines[1:])
        if not pipelining:
            self.res.pipelining = False
        return reader, writer, pipelining

    async def send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   pipelining: bool, i: int) -> None:
        if pipelining:
            writer.write(self.envelope + b"DATA\r\n")
            codes = [(await read_reply(reader))[0] for _ in range(3)]
        else:
            codes = []
            for cmd in [*self.envelope.splitlines(keepends=True), b"DATA\r\n"]:
                writer.write(cmd)
                codes.append((await read_reply(reader))[0])
                if codes[-1] >= 400:
                    break
        if codes != [250, 250, 354]:
            raise ProtocolError("MAIL/RCPT/DATA " + "/".join(map(str, codes)))
        writer.write(self.head + b"%08d" % i + self.body)
        await writer.drain()
        t0 = time.perf_counter()
        code, _ = await read_reply(reader)
        t1 = time.perf_counter()
        if code != 250:
            raise ProtocolError(f"end of DATA {code}")
        self.res.accepted += 1
        self.res.latencies.append(t1 - t0)
        self.res.t_last_250 = max(self.res.t_last_250, t1)

    @staticmethod
    async def close(writer: asyncio.StreamWriter, reader: asyncio.StreamReader | None) -> None:
        if reader is not None:
            with contextlib.suppress(Exception):
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(read_reply(reader), 5)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def worker_new(self) -> None:
        while (i := self.take()) is not None:
            writer = None
            try:
                reader, writer, pipe = await self.connect()
                await self.send(reader, writer, pipe, i)
                await self.close(writer, reader)
            except (ProtocolError, OSError, TimeoutError) as e:
                self.res.fail(type(e).__name__ + ": " + str(e))
                if writer is not None:
                    await self.close(writer, None)

    async def worker_reuse(self) -> None:
        conn = None
        while (i := self.take()) is not None:
            try:
                if conn is None:
                    conn = await self.connect()
                await self.send(*conn, i)
            except (ProtocolError, OSError, TimeoutError) as e:
                self.res.fail(type(e).__name__ + ": " + str(e))
                if conn is not None:
                    await self.close(conn[1], None)
                conn = None
        if conn is not None:
            await self.close(conn[1], conn[0])

    async def run(self, reuse: bool, timeout: float) -> None:
        worker = self.worker_reuse if reuse else self.worker_new
        self.res.t_first_connect = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(worker() for _ in range(self.res.sessions)))
        except TimeoutError:
            self.res.timed_out = True


# -- one measured run -------------------------------------------------------


def run_mode(args: argparse.Namespace, reuse: bool) -> Result:
    mode = "reuse" if reuse else "new"
    res = Result(mode, args.sessions, args.messages, args.size)
    tmp = Path(tempfile.mkdtemp(prefix=f"pillarbox-bench-{mode}-", dir=args.tmpdir))
    profile = Path(f"{args.profile}.{mode}.prof").resolve() if args.profile else None
    srv = Server(tmp, profile)
    try:
        srv.setup()
        srv.start()
        head, body = make_message(args.size, f"{os.getpid()}{mode}")
        res.rss_idle_kb = srv.status_kb("VmRSS")
        watch = NewFiles(srv.maildir_new)
        cpu0 = srv.cpu_seconds()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            asyncio.run(Load(srv.port, res, head, body).run(reuse, args.timeout))
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            res.client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            deadline = time.perf_counter() + args.timeout
            res.t_delivered = watch.wait_for(res.accepted, deadline, srv.alive)
        finally:
            watch.close()
        res.delivered = srv.delivered()
        if res.t_delivered is not None:
            time.sleep(0.2)  # anything beyond the count would be a duplicate
            res.delivered = srv.delivered()
        if srv.alive():
            res.server_cpu = srv.cpu_seconds() - cpu0
            res.rss_peak_kb = srv.status_kb("VmHWM")
        if res.t_delivered is not None:
            res.content_errors = srv.verify(head, body, res.accepted)
    finally:
        res.server_exit = srv.stop()
        res.server_log = srv.log_text()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return res


# -- reporting ----------------------------------------------------------------

COLUMNS = ["connections", "sessions", "messages", "size", "accepted msg/s", "delivered msg/s",
           "p50 ms", "p99 ms", "server CPU s / 1k msg", "server peak RSS MB",
           "server idle RSS MB", "client CPU s / 1k msg"]


def row(r: Result) -> list[str]:
    per_k = 1000 / r.accepted if r.accepted else 0
    dr = r.deliver_rate
    return [
        "new per message" if r.mode == "new" else "reused",
        str(r.sessions), str(r.messages), f"{r.size} B",
        f"{r.accept_rate:,.0f}", f"{dr:,.0f}" if dr else "n/a",
        f"{r.pct(50):.1f}", f"{r.pct(99):.1f}",
        f"{r.server_cpu * per_k:.2f}", f"{r.rss_peak_kb / 1024:.0f}",
        f"{r.rss_idle_kb / 1024:.0f}", f"{r.client_cpu * per_k:.2f}",
    ]


def table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)


def problems(r: Result) -> list[str]:
    out = [f"{n} x {why}" for why, n in sorted(r.failures.items())]
    if r.timed_out:
        out.append(f"load timed out after {r.accepted} accepted")
    if r.accepted != r.messages:
        out.append(f"accepted {r.accepted} of {r.messages}")
    if r.t_delivered is None:
        out.append(f"only {r.delivered} of {r.accepted} delivered before the timeout")
    elif r.delivered != r.accepted:
        out.append(f"{r.delivered} files in new/ for {r.accepted} accepted")
    out += r.content_errors
    if r.server_exit != 0:
        out.append(f"server exit status {r.server_exit} after SIGTERM")
    if not r.pipelining:
        out.append("server did not advertise PIPELINING")
    return out


EXPECTED_LOG = re.compile(r"mod=pillarbox\.server pillarbox (started|stopping)\b")


def log_lines(r: Result) -> list[str]:
    """What the server logged beyond its start and stop lines."""
    return [ln for ln in r.server_log.splitlines() if ln.strip() and not EXPECTED_LOG.search(ln)]


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def fs_type(path: Path) -> str:
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        real = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, f"{parts[2]} ({parts[0]} on {mnt})"
    return kind


def git(*a: str) -> str:
    return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout


def git_rev(rev: str | None, commit: str | None) -> str:
    if rev and commit:
        return f"commit {commit[:7]} (`--rev {rev}`)"
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    if git("status", "--porcelain", "--", "src").strip():
        return f"the working tree of {head} with uncommitted changes in src/"
    return f"commit {head}"


def export_rev(rev: str, into: Path) -> str:
    """Put REV's src/ under `into`, make the server run from it; return the commit."""
    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    if not commit:
        raise SystemExit(f"error: --rev {rev}: not a commit")
    r = subprocess.run(["git", "archive", "--format=tar", commit, "src"], cwd=REPO,
                       capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"error: --rev {rev}: {r.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        tar.extractall(into, filter="data")
    SERVER_ENV["PYTHONPATH"] = str(into / "src")
    return commit


def write_docs(results: list[Result], command: str, tmp_root: Path,
               m: dict[str, str]) -> None:
    today = dt.date.today().isoformat()
    section = f"""## {SECTION}

Measured {today} on this machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']},
Python {m['python']}; pillarbox at {m['src']}; spool and Maildir on {fs_type(tmp_root)};
load average before the run {m['load']} (other work on the machine shows up in the figures).

Command (run by hand; `make bench` runs the side-by-side comparison with Postfix,
`bench/compare_postfix.py`, below):

    {command}

{table(results)}

How it is measured (`bench/smtp_load.py`): a throwaway pillarbox (`init`, one
user, free 127.0.0.1 ports, `log_level = "warning"`) is started as
`python -m pillarbox -c CFG serve`; an asyncio client on the same machine runs
the sessions concurrently, each sending EHLO, then MAIL/RCPT/DATA pipelined,
a message of the given size in CRLF lines, and QUIT; "new per message" opens a
connection for every message (like `smtp-source`), "reused" keeps one per
session (like `smtp-source -d`). *Accepted* is messages over the time from the
first connect to the last 250; *delivered* is messages over the time from the
first connect until the recipient's Maildir `new/` holds them all (counted with
inotify, which costs the server nothing). Latency is
from the end of DATA (`.` CRLF written) to its 250. Server CPU
(utime + stime from /proc) covers the load and the delivery after it; peak RSS
is the server's VmHWM. The client is Python too and shares the CPUs with the
server; its own CPU is in the last column. Every message was accepted with 250
and delivered exactly once in this run. No target is set here; issue 3 compares
against Postfix.
"""
    old = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pat = re.compile(rf"(?ms)^## {re.escape(SECTION)}\n.*?(?=^## |\Z)")
    if pat.search(old):
        new = pat.sub(lambda _: section + "\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + section
    DOCS.write_text(new.rstrip("\n") + "\n")
    print(f"wrote {DOCS.relative_to(REPO)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20, help="concurrent sessions (20)")
    ap.add_argument("--messages", type=int, default=5000, help="messages per run (5000)")
    ap.add_argument("--size", type=int, default=4096, help="message size in octets (4096)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--reuse", action="store_true",
                      help="reuse each session's connection (default: one per message)")
    mode.add_argument("--both", action="store_true",
                      help="run both modes (the default with --write-docs)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds allowed for the load, and again for delivery (60)")
    ap.add_argument("--tmpdir", default=None, help="where the throwaway server lives")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway directories")
    ap.add_argument("--rev", default=None,
                    help="benchmark this git revision's src/ (e.g. HEAD) instead of the "
                    "working tree, which others may be editing")
    ap.add_argument("--profile", metavar="PREFIX", default=None,
                    help="run the server under cProfile, stats to PREFIX.<mode>.prof "
                    "(event-loop thread only; figures are then not representative)")
    ap.add_argument("--write-docs", action="store_true",
                    help=f'write the table into docs/BENCHMARKS.md ("{SECTION}")')
    args = ap.parse_args()
    if not (1 <= args.sessions <= 1000 and 1 <= args.messages <= 1_000_000):
        ap.error("--sessions must be 1..1000 and --messages 1..1000000")

    if args.profile and args.write_docs:
        ap.error("--profile slows the server down: not with --write-docs")
    if args.reuse:
        modes = [True]
    elif args.both or args.write_docs:
        modes = [False, True]
    else:
        modes = [False]

    args.commit = None
    if args.rev:
        export_dir = Path(tempfile.mkdtemp(prefix="pillarbox-bench-src-", dir=args.tmpdir))
        try:
            args.commit = export_rev(args.rev, export_dir)
            return run_all(args, modes)
        finally:
            shutil.rmtree(export_dir, ignore_errors=True)
    return run_all(args, modes)


def run_all(args: argparse.Namespace, modes: list[bool]) -> int:
    results, bad = [], False
    before = machine()
    before["src"] = git_rev(args.rev, args.commit)  # now, before anyone commits meanwhile
    print(f"load average before the run: {before['load']}", file=sys.stderr, flush=True)
    for reuse in modes:
        r = run_mode(args, reuse)
        results.append(r)
        what = "reused connections" if reuse else "a new connection per message"
        print(f"{r.mode}: {r.accepted}/{r.messages} accepted, {r.delivered} delivered "
              f"({what}, {r.connections} connections)", file=sys.stderr, flush=True)
        for p in problems(r):
            bad = True
            print(f"  FAIL: {p}", file=sys.stderr)
        logged = log_lines(r)
        if logged:
            print(f"  server logged {len(logged)} other lines (first 20):", file=sys.stderr)
            for ln in logged[:20]:
                print("    " + ln, file=sys.stderr)

    print(table(results))
    if bad:
        print("error: not every message was accepted and delivered; docs not written",
              file=sys.stderr)
        return 1
    if args.write_docs:
        command = shlex.join([".venv/bin/python", "bench/smtp_load.py", *sys.argv[1:]])
        write_docs(results, command, Path(args.tmpdir or tempfile.gettempdir()), before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
