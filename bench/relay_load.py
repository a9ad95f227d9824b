#!/usr/bin/env python3
"""Outbound relay from authenticated clients (issue 4): end-to-end throughput.

    .venv/bin/python bench/relay_load.py [--clients 20] [--messages 5000]
        [--size 4096] [--variants starttls,implicit,unsigned] [--rounds 1] [--rev REV]
        [--write-docs]

Sets up, for every run, a throwaway pillarbox in a temporary directory
(`pillarbox init`, every listener on a free 127.0.0.1 port, user
alice@example.test with a password, and a static route

    [[route]]
    domains = ["sink.test"]
    host    = "127.0.0.1:SINKPORT"
    tls     = "none"

) and a local sink: Debian's `smtp-sink -c` (Postfix's test server, written in
C, so it costs next to nothing), started by this script on 127.0.0.1, whose
running counter counts every message it received up to the final "." and
which appends every message to a dump file (`-D`) for the checks afterwards.

N asyncio clients then send a burst the way a mail client or an application
server does: each logs in once on the submission port (STARTTLS, certificate
not verified, AUTH PLAIN) or on the submissions port (implicit TLS), and sends
its share of the messages over that one connection, MAIL/RCPT/DATA pipelined:
4 KB messages from alice@example.test to rcpt@sink.test, which pillarbox
queues, DKIM-signs (mail from an authenticated user) and relays to the sink.

Measured, per run:

- accepted msg/s: messages over the time from the first connect to the last
  250 after DATA;
- end to end msg/s: messages over the time from the first connect until the
  sink has counted the last of them;
- p50 / p99 from the end of DATA (".\\r\\n" written) to its 250;
- pillarbox's CPU seconds per 1,000 messages (utime + stime from /proc, of the
  server and its children, from just before the first connect until the sink
  has them all; the N logins are included) and its peak RSS (VmHWM);
- before the load, the cost of one login (connect, TLS, AUTH PLAIN; argon2id
  on the server): wall time and server CPU, from 5 logins one after another;
- the steady state, once every client has logged in until the last 250
  (sampled from /proc every 0.2 s): accepted msg/s, the server's CPU use
  (whole process, and its main thread, which runs the event loop), and the
  whole machine's, which is shared with other work.

Variants (--variants): "starttls" (submission port), "implicit" (submissions
port), and "unsigned": starttls against a server whose DKIM keys for the
domain were removed after `init`, so it relays unsigned; the difference is
what signing costs.

The run fails (exit 1) unless every message got its 250, the sink counted
exactly that many, pillarbox's queue is empty afterwards, and the dump holds
every message exactly once, intact, with the right envelope and two
DKIM-Signature fields (a sample of them verified with dkimpy against the keys
`pillarbox dns` publishes; none in the "unsigned" variant). Only 127.0.0.1 is
contacted; every load is bounded in count and in time; every process and
directory the script starts or makes is stopped and removed (by its pid), also
on an error or Ctrl-C.

The server runs from the working tree's src/, or with --rev from that git
revision (so a run is not disturbed by edits in progress). --write-docs runs
all three variants unless told otherwise and writes the section "Outbound relay
from authenticated clients (issue 4)" into docs/BENCHMARKS.md. Needs root (the
sink drops to the postfix user) and smtp-sink (`apt-get install postfix`, as
bench/compare_postfix.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import pwd
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import compare_postfix as cp
import smtp_load as sl
from common import bullet, client_tls, fmt, log, median, os_name, para, write_section

SECTION = "Outbound relay from authenticated clients (issue 4)"
HOST = "127.0.0.1"
DOMAIN = "example.test"
SENDER = f"alice@{DOMAIN}"
PASSWORD = "relay-bench-password-not-secret"
SINK_DOMAIN = "sink.test"
RCPT = f"rcpt@{SINK_DOMAIN}"
PREFIX = "pillarbox-relay-bench-"
LOGIN_PROBES = 5
DKIM_SAMPLE = 10
NPROC = len(os.sched_getaffinity(0))
VARIANTS = {
    "starttls": "submission, STARTTLS",
    "implicit": "submissions, implicit TLS",
    "unsigned": "submission, STARTTLS, no DKIM keys (for comparison)",
}


# -- the sink: smtp-sink -c, dumping every message ------------------------------------


class Sink(cp.Sink):
    """`smtp-sink -c -u postfix -D DUMP 127.0.0.1:PORT 256`: counts messages ("mesg=N",
    at each "." received) and sessions ("sess=N", at each session's end), and appends
    each message, whole, to DUMP."""

    def __init__(self, dump: Path) -> None:
        super().__init__()
        self.dump = dump
        self.sessions = 0
        self.probes = 0  # sessions of the readiness check in start()

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 2
        while self.sessions < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.probes = self.sessions

    @property
    def connections(self) -> int:
        """Sessions since start(): pillarbox's connections."""
        return self.sessions - self.probes

    def command(self) -> list[str]:
        return [cp.tool("smtp-sink") or "smtp-sink", "-c", "-u", "postfix", "-D",
                str(self.dump), f"{HOST}:{self.port}", "256"]

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            now = time.perf_counter()
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            for x in reversed(done):
                m = re.search(rb"sess=(\d+) quit=\d+ mesg=(\d+)", x)
                if m:
                    with self.cond:
                        self.sessions = int(m.group(1))
                        if int(m.group(2)) != self.count:
                            self.count, self.changed = int(m.group(2)), now
                            self.cond.notify_all()
                    break


# -- the throwaway pillarbox ---------------------------------------------------------------


class Server(sl.Server):
    def __init__(self, root: Path, sink_port: int) -> None:
        super().__init__(root)
        self.sink_port = sink_port
        self.ports: dict[str, int] = {}

    def setup(self) -> None:
        sl.pillarbox("init", "--dir", str(self.dir), "--domain", DOMAIN)
        self.ports = sl.rewrite_config(self.cfg)
        for p in self.ports.values():
            cp.TAKEN.add(p)
            if not cp.port_is_free(p):
                raise RuntimeError(f"port {p} taken before pillarbox started")
        for kind in ("submission", "submissions"):
            if kind not in self.ports:
                raise RuntimeError(f"pillarbox init wrote no listen.{kind}")
        self.port = self.ports["smtp"]  # sl.Server.start waits for its banner
        # Every login pays argon2id, so the login figures show its cost; with
        # the default login_cache a client's repeat login skips it.
        text, k = re.subn(r'(?m)^login_cache\s*=.*$', 'login_cache = "0s"', self.cfg.read_text())
        if k != 1:
            raise RuntimeError(f"could not set login_cache in {self.cfg}")
        self.cfg.write_text(text)
        cfg = ["-c", str(self.cfg)]
        sl.pillarbox(*cfg, "user", "add", SENDER, "--password-stdin", stdin=PASSWORD + "\n")
        with open(self.cfg, "a") as f:
            f.write(f'\n[[route]]\ndomains = ["{SINK_DOMAIN}"]\n'
                    f'host = "{HOST}:{self.sink_port}"\ntls = "none"\n')

    def queue_summary(self) -> str:
        out = sl.pillarbox("-c", str(self.cfg), "queue", "list").strip().splitlines()
        return out[-1] if out else "(no output)"

    def dkim_records(self) -> dict[str, bytes]:
        """name -> TXT value of the DKIM records `pillarbox dns` prints."""
        recs = {}
        for line in sl.pillarbox("-c", str(self.cfg), "dns").splitlines():
            m = re.match(r"(\S+\._domainkey\.\S+)\s+\d+\s+IN\s+TXT\s+(.*)$", line)
            if m:
                recs[m.group(1).rstrip(".").lower()] = "".join(
                    re.findall(r'"([^"]*)"', m.group(2))).encode()
        return recs

    def errors(self) -> list[str]:
        return [ln for ln in self.log_text().splitlines()
                if ln.strip() and not sl.EXPECTED_LOG.search(ln)]


FACTS: dict[str, float] = {}

FACTS_SNIPPET = r"""
import json, sys, time
from pathlib import Path
from pillarbox.directory import passwords
from pillarbox.modify.dkim_sign import DKIMSigner
dkim_dir, domain, path = sys.argv[1:4]
msg = Path(path).read_bytes()
signer = DKIMSigner(Path(dkim_dir))
assert signer.sign(msg, domain)
n = 200
t = time.process_time()
for _ in range(n):
    signer.sign(msg, domain)
print(json.dumps({"dkim_ms": (time.process_time() - t) / n * 1000,
                  "argon2_mib": passwords.MEMLIMIT / 2**20,
                  "argon2_t": passwords.OPSLIMIT,
                  "argon2_p": 1}))
"""


def server_facts(srv: Server, message: bytes) -> dict[str, float]:
    """What one DKIM signing of the test message costs (both keys, CPU ms, in a process
    of its own with the server's code and keys), and the argon2id parameters of its
    password checks. Measured once, while the server is idle."""
    path = srv.dir / "facts-message"
    path.write_bytes(message)
    r = subprocess.run([sys.executable, "-c", FACTS_SNIPPET, str(srv.dir / "var" / "dkim"),
                        DOMAIN, str(path)], capture_output=True, text=True, timeout=120,
                       env=sl.SERVER_ENV)
    if r.returncode != 0:
        log(f"warning: could not measure DKIM signing on its own: {r.stderr.strip()[-300:]}")
        return {}
    return json.loads(r.stdout)


class CPUSampler:
    """(perf_counter, CPU s of the process, CPU s of its main thread, CPU s used by the
    whole machine, all processes and CPUs) every 0.2 s; and every 10 ms what the main
    thread (the event loop) is doing: "run" (running or runnable), "lock" (asleep on a
    futex: a lock, such as the interpreter's), "idle" (asleep in epoll, waiting for
    work) or "other"."""

    def __init__(self, pid: int, out: list[tuple[float, float, float, float]],
                 states: list[tuple[float, str]]) -> None:
        self.pid, self.out, self.states = pid, out, states
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.state_thread = threading.Thread(target=self._run_states, daemon=True)

    def _run_states(self) -> None:
        stat = f"/proc/{self.pid}/task/{self.pid}/stat"
        wchan = f"/proc/{self.pid}/task/{self.pid}/wchan"
        while not self.done.wait(0.01):
            try:
                with open(stat) as f:
                    raw = f.read()
                state = raw[raw.rindex(")") + 2]
                if state == "R":
                    what = "run"
                else:
                    with open(wchan) as f:
                        w = f.read()
                    what = "lock" if "futex" in w else "idle" if "epoll" in w else "other"
            except (OSError, ValueError, IndexError):
                return
            self.states.append((time.perf_counter(), what))

    def sample(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            proc = sl.read_stat(self.pid)
            raw = Path(f"/proc/{self.pid}/task/{self.pid}/stat").read_text()
            main = raw[raw.rindex(")") + 2:].split()
            # /proc/stat "cpu": user nice system idle iowait irq softirq steal ...
            ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = sum(ticks[:8]) - ticks[3] - ticks[4]
            # DKIM signing runs in worker processes (under a forkserver): count them.
            kids = 0
            for pid in sl.descendants(self.pid):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    st = sl.read_stat(pid)
                    kids += int(st[11]) + int(st[12])
            self.out.append((time.perf_counter(),
                             (int(proc[11]) + int(proc[12]) + kids) / sl.CLK_TCK,
                             (int(main[11]) + int(main[12])) / sl.CLK_TCK,
                             busy / sl.CLK_TCK))

    def _run(self) -> None:
        self.sample()
        while not self.done.wait(0.2):
            self.sample()
        self.sample()

    def start(self) -> None:
        self.thread.start()
        self.state_thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.state_thread.join()


# -- the clients --------------------------------------------------------------------------


def make_message(size: int, run_id: str) -> tuple[bytes, bytes]:
    """A message of exactly `size` octets, CRLF lines, nothing to dot-stuff, split
    around an 8-digit index: head + b"%08d" % i + body."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    head = (f"From: Alice <{SENDER}>\r\n"
            f"To: <{RCPT}>\r\n"
            f"Date: {date}\r\n"
            f"Subject: pillarbox relay bench {run_id}\r\n"
            f"Message-ID: <relay-{run_id}-").encode()
    tail = f"@{DOMAIN}>\r\n\r\n".encode()
    room = size - len(head) - 8 - len(tail)
    if room < 80:
        raise SystemExit(f"error: --size must be at least {size - room + 80} octets")
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n"
    filler = line * (room // len(line))
    rest = room - len(filler)
    if rest == 1:
        filler = filler[:-2] + b"x\r\n"
    elif rest >= 2:
        filler += b"y" * (rest - 2) + b"\r\n"
    body = tail + filler
    assert len(head) + 8 + len(body) == size
    return head, body


@dataclass
class Result:
    variant: str  # starttls | implicit | unsigned
    clients: int
    messages: int
    size: int
    accepted: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    logins: list[float] = field(default_factory=list)  # connect -> 235, during the load
    t_first_connect: float = 0.0
    t_last_250: float = 0.0
    t_all_in: float = 0.0  # when the last of the first logins got its 235
    acks: list[float] = field(default_factory=list)  # perf_counter of each 250
    cpu_samples: list[tuple[float, float, float, float]] = field(default_factory=list)
    loop_states: list[tuple[float, str]] = field(default_factory=list)
    t_sink: float | None = None
    sink_count: int = 0
    sink_sessions: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    rss_idle_kb: int = 0
    rss_peak_kb: int = 0
    in_flight: int = 0  # data written, 250 not read when the load ended
    stop_s: float = 0.0  # how long pillarbox took to exit after SIGTERM
    rss_end_kb: int = 0  # VmRSS when the sink has counted them all
    rss_probe_kb: int = 0  # VmHWM after the logins one at a time, before the load
    probe_ms: list[float] = field(default_factory=list)  # one login at a time
    probe_cpu: float = 0.0  # server CPU s per login, from those
    queue_left: str = ""
    content_errors: list[str] = field(default_factory=list)
    dkim_checked: int = 0
    server_log: list[str] = field(default_factory=list)
    server_exit: int | None = None
    timed_out: bool = False
    problems_setup: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    @property
    def accept_rate(self) -> float | None:
        span = self.t_last_250 - self.t_first_connect
        return self.accepted / span if span > 0 and self.accepted else None

    @property
    def e2e_rate(self) -> float | None:
        if self.t_sink is None:
            return None
        return self.sink_count / (self.t_sink - self.t_first_connect)

    @property
    def cpu_busy(self) -> float | None:
        """Server CPU over the load's wall time (first connect to the sink's last count),
        as a fraction of one CPU."""
        if self.t_sink is None or not self.server_cpu:
            return None
        return self.server_cpu / (self.t_sink - self.t_first_connect)

    def steady(self) -> tuple[float, float, float, float] | None:
        """Once every client has logged in, until the last 250: accepted msg/s, the
        server's CPU use (whole process with its DKIM worker processes, and its main
        thread, the event loop) and the
        whole machine's (every process; steal counts as busy), in CPUs; None when that
        stretch is under a second."""
        t0, t1 = self.t_all_in, self.t_last_250
        xs = [x for x in self.cpu_samples if t0 <= x[0] <= t1]
        if t1 - t0 < 1.0 or len(xs) < 3:
            return None
        (a, cpu_a, main_a, all_a), (b, cpu_b, main_b, all_b) = xs[0], xs[-1]
        n = sum(1 for t in self.acks if a < t <= b)
        return (n / (b - a), (cpu_b - cpu_a) / (b - a), (main_b - main_a) / (b - a),
                (all_b - all_a) / (b - a))

    def steady_latency(self, p: float) -> float | None:
        """p-th percentile (ms) of end of DATA -> 250 for the messages whose end of DATA
        was written in the steady state."""
        t0, t1 = self.t_all_in, self.t_last_250
        if t1 - t0 < 1.0:
            return None
        return self.pct(p, [lat for t, lat in zip(self.acks, self.latencies, strict=True)
                            if t0 <= t - lat <= t1])

    def loop_share(self) -> dict[str, float] | None:
        """In the steady state, the share of samples with the event loop running (or
        runnable), asleep on a lock, idle in epoll, or other."""
        t0, t1 = self.t_all_in, self.t_last_250
        xs = [w for t, w in self.loop_states if t0 <= t <= t1]
        if t1 - t0 < 1.0 or len(xs) < 50:
            return None
        return {k: xs.count(k) / len(xs) for k in ("run", "lock", "idle", "other")}

    @property
    def cpu_per_k(self) -> float | None:
        return self.server_cpu * 1000 / self.accepted if self.accepted else None

    def pct(self, p: float, xs: list[float] | None = None) -> float | None:
        xs = sorted(self.latencies if xs is None else xs)
        if not xs:
            return None
        k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
        return xs[k] * 1000

    def problems(self) -> list[str]:
        out = list(self.problems_setup)
        out += [f"{n} x {why}" for why, n in sorted(self.failures.items())]
        if self.timed_out:
            out.append(f"load timed out after {self.accepted} accepted")
        if self.accepted != self.messages:
            out.append(f"accepted {self.accepted} of {self.messages}")
        if self.t_sink is None:
            out.append(f"the sink counted only {self.sink_count} of {self.accepted} "
                       "before the timeout")
        elif self.sink_count != self.accepted:
            out.append(f"the sink counted {self.sink_count} for {self.accepted} accepted"
                       + (f" ({self.in_flight} messages were in flight, their 250 unread, "
                          "when the load ended)" if self.in_flight else ""))
        if self.queue_left and not self.queue_left.startswith("0 message(s)"):
            out.append(f"pillarbox's queue afterwards: {self.queue_left}")
        out += self.content_errors
        if self.server_exit not in (0, None):
            out.append(f"server exit status {self.server_exit} after SIGTERM")
        return out


class Load:
    def __init__(self, port: int, implicit: bool, res: Result, head: bytes,
                 body: bytes) -> None:
        self.port, self.implicit, self.res = port, implicit, res
        self.head, self.body = head, body + b".\r\n"
        self.tls = client_tls()
        self.next = 0
        self.written: set[int] = set()  # message indexes whose data went out whole
        self.acked: set[int] = set()  # ... and got their 250
        self.envelope = (f"MAIL FROM:<{SENDER}> SIZE={res.size}\r\n"
                         f"RCPT TO:<{RCPT}>\r\nDATA\r\n").encode()
        creds = base64.b64encode(b"\0" + SENDER.encode() + b"\0" + PASSWORD.encode())
        self.auth = b"AUTH PLAIN " + creds + b"\r\n"

    def take(self) -> int | None:
        if self.next >= self.res.messages:
            return None
        self.next += 1
        return self.next - 1

    async def ehlo(self, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> set[str]:
        writer.write(b"EHLO client.relay-bench.test\r\n")
        code, lines = await sl.read_reply(reader)
        if code != 250:
            raise sl.ProtocolError(f"EHLO {code}")
        return {ln[4:].strip().decode(errors="replace").upper() for ln in lines[1:]}

    async def login(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
        """Connected, in TLS, logged in; and how long that took (s)."""
        t0 = time.perf_counter()
        async with asyncio.timeout(60):
            if self.implicit:
                reader, writer = await asyncio.open_connection(HOST, self.port, ssl=self.tls)
            else:
                reader, writer = await asyncio.open_connection(HOST, self.port)
            try:
                code, _ = await sl.read_reply(reader)
                if code != 220:
                    raise sl.ProtocolError(f"banner {code}")
                ext = await self.ehlo(reader, writer)
                if not self.implicit:
                    if "STARTTLS" not in ext:
                        raise sl.ProtocolError("no STARTTLS offered")
                    writer.write(b"STARTTLS\r\n")
                    code, _ = await sl.read_reply(reader)
                    if code != 220:
                        raise sl.ProtocolError(f"STARTTLS {code}")
                    await writer.start_tls(self.tls)
                    ext = await self.ehlo(reader, writer)
                if not any(e.startswith("AUTH ") and "PLAIN" in e.split() for e in ext):
                    raise sl.ProtocolError("no AUTH PLAIN offered")
                if "PIPELINING" not in ext:
                    raise sl.ProtocolError("no PIPELINING offered")
                writer.write(self.auth)
                code, _ = await sl.read_reply(reader)
                if code != 235:
                    raise sl.ProtocolError(f"AUTH PLAIN {code}")
            except BaseException:
                writer.close()
                raise
        return reader, writer, time.perf_counter() - t0

    async def send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   i: int) -> None:
        writer.write(self.envelope)
        codes = [(await sl.read_reply(reader))[0] for _ in range(3)]
        if codes != [250, 250, 354]:
            raise sl.ProtocolError("MAIL/RCPT/DATA " + "/".join(map(str, codes)))
        writer.write(self.head + b"%08d" % i + self.body)
        await writer.drain()
        self.written.add(i)
        t0 = time.perf_counter()
        code, _ = await sl.read_reply(reader)
        t1 = time.perf_counter()
        if code != 250:
            raise sl.ProtocolError(f"end of DATA {code}")
        self.acked.add(i)
        self.res.accepted += 1
        self.res.latencies.append(t1 - t0)
        self.res.t_last_250 = max(self.res.t_last_250, t1)
        self.res.acks.append(t1)

    @staticmethod
    async def close(writer: asyncio.StreamWriter,
                    reader: asyncio.StreamReader | None) -> None:
        if reader is not None:
            with contextlib.suppress(Exception):
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(sl.read_reply(reader), 5)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 5)

    async def client(self) -> None:
        """One client: log in once, send its share over that connection; log in
        again only after an error (counted as a failure)."""
        conn = None
        while (i := self.take()) is not None:
            try:
                if conn is None:
                    reader, writer, took = await self.login()
                    self.res.logins.append(took)
                    self.res.t_all_in = max(self.res.t_all_in, time.perf_counter())
                    conn = reader, writer
                await self.send(*conn, i)
            except (sl.ProtocolError, OSError, TimeoutError) as e:
                self.res.fail(type(e).__name__ + ": " + str(e)[:120])
                if conn is not None:
                    await self.close(conn[1], None)
                conn = None
        if conn is not None:
            await self.close(conn[1], conn[0])

    async def run(self, timeout: float) -> None:
        self.res.t_first_connect = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self.client() for _ in range(self.res.clients)))
        except TimeoutError:
            self.res.timed_out = True

    async def probe(self, n: int) -> list[float]:
        """n logins one after another (then QUIT); each one's wall time."""
        took = []
        for _ in range(n):
            reader, writer, t = await self.login()
            took.append(t)
            await self.close(writer, reader)
        return took


# -- checks on what reached the sink ------------------------------------------------------


def check_dump(dump: Path, load: Load, dkim_txt: dict[str, bytes], res: Result,
               signed: bool = True) -> None:
    """Every message in the sink's dump exactly once, intact, with our envelope and
    two DKIM signatures (none when not `signed`); a random sample verified with dkimpy."""
    if not dump.exists():
        res.content_errors.append("the sink's dump file is missing: it received no message")
        return
    try:
        data = dump.read_bytes()
    except OSError as e:
        res.content_errors.append(f"sink dump unreadable: {e}")
        return
    # smtp-sink writes LF line ends, dot-unstuffed; our message has nothing to unstuff.
    want_head = load.head.replace(b"\r\n", b"\n")
    want_body = load.body[:-3].replace(b"\r\n", b"\n")  # without the final ".\r\n"
    parts = data.split(b"X-Client-Addr: ")[1:]
    seen: dict[int, int] = {}
    bad_env = bad_content = bad_dkim = 0
    candidates: list[bytes] = []
    for part in parts:
        meta, sep, msg = part.partition(b"\nReceived: from ")
        if not sep:
            bad_content += 1
            continue
        if (f"\nX-Mail-Args: <{SENDER}>".encode() not in meta
                or f"\nX-Rcpt-Args: <{RCPT}>\n".encode() not in meta + b"\n"
                or meta.count(b"\nX-Rcpt-Args: ") != 1):
            bad_env += 1
        # skip smtp-sink's own three-line Received header
        lines = msg.split(b"\n", 3)
        if len(lines) < 4:
            bad_content += 1
            continue
        msg = lines[3]
        if not msg.endswith(b"\n\n"):
            bad_content += 1
            continue
        msg = msg[:-1]  # the empty line smtp-sink ends each message with
        at = msg.find(want_head)
        idx = msg[at + len(want_head):at + len(want_head) + 8] if at >= 0 else b""
        if at < 0 or not idx.isdigit() or msg[at + len(want_head) + 8:] != want_body:
            bad_content += 1
            continue
        added = msg[:at]
        sigs = [m.group(1) if m else b"?" for m in (
            re.search(rb"\ba=([a-z0-9-]+)", h)
            for h in re.findall(rb"(?m)^DKIM-Signature:[^\n]*(?:\n[ \t][^\n]*)*", added))]
        if sorted(sigs) != ([b"ed25519-sha256", b"rsa-sha256"] if signed else []):
            bad_dkim += 1
        elif signed:
            candidates.append(msg)
        seen[int(idx)] = seen.get(int(idx), 0) + 1
    out = res.content_errors
    if len(parts) != len(load.acked):
        out.append(f"the sink's dump holds {len(parts)} messages for {len(load.acked)} "
                   "accepted")
    if bad_env:
        out.append(f"{bad_env} messages at the sink with the wrong envelope")
    if bad_content:
        out.append(f"{bad_content} messages at the sink not intact")
    if bad_dkim:
        out.append(f"{bad_dkim} messages at the sink without both DKIM signatures"
                   if signed else f"{bad_dkim} messages signed though the keys were removed")
    dups = sum(k - 1 for k in seen.values() if k > 1)
    if dups:
        out.append(f"{dups} messages reached the sink more than once")
    missing = len(load.acked - seen.keys())
    if missing:
        out.append(f"{missing} accepted messages never reached the sink")
    unknown = len(seen.keys() - load.written)
    if unknown:
        out.append(f"{unknown} messages at the sink that were never sent whole")
    # A sample through dkimpy, against the records `pillarbox dns` prints.
    import dkim

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        key = name.decode() if isinstance(name, bytes) else name
        return dkim_txt.get(key.rstrip(".").lower(), b"")

    failed = 0
    for msg in random.sample(candidates, min(DKIM_SAMPLE, len(candidates))):
        wire = msg.replace(b"\n", b"\r\n")
        sigs = len(re.findall(rb"(?m)^DKIM-Signature:", wire))
        d = dkim.DKIM(wire)
        ok = all(d.verify(idx=k, dnsfunc=dnsfunc) for k in range(sigs))
        res.dkim_checked += 1
        failed += not ok
    if failed:
        out.append(f"{failed} of {res.dkim_checked} sampled messages fail DKIM verification")


# -- one measured run ---------------------------------------------------------------------


def run_one(variant: str, args: argparse.Namespace) -> Result:
    res = Result(variant, args.clients, args.messages, args.size)
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{variant}-", dir=args.tmpdir))
    try:
        measure(variant, args, res, root)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return res


def measure(variant: str, args: argparse.Namespace, res: Result, root: Path) -> None:
    implicit = variant == "implicit"
    signed = variant != "unsigned"
    sinkdir = root / "sink"
    sinkdir.mkdir()
    pw = pwd.getpwnam("postfix")
    os.chown(sinkdir, pw.pw_uid, pw.pw_gid)  # smtp-sink writes its dump as postfix
    root.chmod(0o755)
    dump = sinkdir / "dump"
    sink = Sink(dump)
    srv = Server(root / "pillarbox", sink.port)
    srv.dir.mkdir()
    load = None
    dkim_txt: dict[str, bytes] = {}
    try:
        sink.start()
        srv.setup()
        if not signed:  # the domain's keys gone: pillarbox then sends unsigned
            shutil.rmtree(srv.dir / "var" / "dkim" / DOMAIN)
        srv.start()
        assert srv.proc is not None
        cp.CHILDREN.append(srv.proc)  # stopped by main() too, should this end early
        port = srv.ports["submissions" if implicit else "submission"]
        head, body = make_message(args.size, f"{os.getpid()}{variant}{len(RUNS)}")
        res.rss_idle_kb = srv.status_kb("VmRSS")
        dkim_txt = srv.dkim_records() if signed else {}  # `dns` would make new keys
        load = Load(port, implicit, res, head, body)

        cpu0 = srv.cpu_seconds()
        res.probe_ms = [t * 1000 for t in asyncio.run(load.probe(LOGIN_PROBES))]
        res.probe_cpu = (srv.cpu_seconds() - cpu0) / LOGIN_PROBES
        res.rss_probe_kb = srv.status_kb("VmHWM")
        if signed and not FACTS:
            FACTS.update(server_facts(srv, head + b"%08d" % 0 + body))

        cpu0 = srv.cpu_seconds()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        sampler = CPUSampler(srv.proc.pid, res.cpu_samples, res.loop_states)
        sampler.start()
        try:
            asyncio.run(load.run(args.timeout))
        finally:
            sampler.stop()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        res.client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        res.in_flight = len(load.written - load.acked)
        if res.accepted:
            res.t_sink = sink.wait_for(res.accepted, time.perf_counter() + args.timeout)
        if res.t_sink is not None and srv.alive():
            res.server_cpu = srv.cpu_seconds() - cpu0
            res.rss_peak_kb = srv.status_kb("VmHWM")
            res.rss_end_kb = srv.status_kb("VmRSS")
        time.sleep(0.5)  # anything beyond the count would be a duplicate
        res.sink_count = sink.count
        res.queue_left = srv.queue_summary()
    except (Exception, SystemExit) as e:  # sl.pillarbox raises SystemExit on CLI errors
        res.problems_setup.append(f"{type(e).__name__}: {str(e).strip()[:300]}")
        load = None
    finally:
        try:
            if srv.proc is not None:
                t0 = time.monotonic()
                res.server_exit = srv.stop()
                res.stop_s = time.monotonic() - t0
                with contextlib.suppress(ValueError):
                    cp.CHILDREN.remove(srv.proc)
            res.server_log = srv.errors()
        finally:
            sink.stop()
    res.sink_sessions = sink.connections  # counted at each session's end, so after stop
    if load is not None and res.accepted:
        check_dump(dump, load, dkim_txt, res, signed)


# -- reporting ----------------------------------------------------------------------------

RUNS: list[Result] = []



def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.0f} %"


COLUMNS = ["clients log in on", "clients", "messages", "size", "accepted msg/s",
           "end to end msg/s", "steady msg/s", "p50 ms", "p99 ms", "server CPU s / 1k msg",
           "server CPU busy", "server peak RSS MB", "login ms (one at a time)",
           "server CPU ms per login"]


def summary_row(variant: str, runs: list[Result]) -> list[str]:
    ok = [r for r in runs if r.variant == variant and not r.problems()]
    any_r = next(r for r in runs if r.variant == variant)
    return [
        VARIANTS[variant], str(any_r.clients), f"{any_r.messages:,}", f"{any_r.size} B",
        fmt(median([r.accept_rate for r in ok])), fmt(median([r.e2e_rate for r in ok])),
        fmt(median([(r.steady() or (None,))[0] for r in ok])),
        fmt(median([r.pct(50) for r in ok]), 1), fmt(median([r.pct(99) for r in ok]), 1),
        fmt(median([r.cpu_per_k for r in ok]), 2), pct(median([r.cpu_busy for r in ok])),
        fmt(median([r.rss_peak_kb / 1024 for r in ok])),
        fmt(median([statistics.median(r.probe_ms) if r.probe_ms else None for r in ok])),
        fmt(median([r.probe_cpu * 1000 for r in ok])),
    ]


def table(runs: list[Result]) -> str:
    variants = list(dict.fromkeys(r.variant for r in runs))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(summary_row(v, runs)) + " |" for v in variants]
    return "\n".join(lines)


def steady_rate(r: Result) -> str:
    st = r.steady()
    return fmt(st[0]) if st else "n/a"


def steady_busy(r: Result) -> str:
    st = r.steady()
    return f"{pct(st[1])} ({pct(st[2])})" if st else "n/a"


def steady_machine(r: Result) -> str:
    st = r.steady()
    return f"{st[3]:.2f} of {NPROC} CPUs" if st else "n/a"


def loop_states(r: Result) -> str:
    x = r.loop_share()
    return " / ".join(pct(x[k]) for k in ("run", "lock", "idle")) if x else "n/a"


def runs_table(runs: list[Result]) -> str:
    """Every run, in the order run: the figures, then the steady state."""
    head = ["#", "variant", "accepted msg/s", "end to end msg/s", "p50 ms", "p99 ms",
            "CPU s / 1k msg", "CPU busy", "idle RSS MB", f"RSS MB after {LOGIN_PROBES} logins",
            "peak RSS MB", "RSS MB at the end", "login p50 ms (burst)", "sink connections",
            "client CPU s / 1k msg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(runs, 1):
        per_k = 1000 / r.accepted if r.accepted else 0
        bad = " (failed)" if r.problems() else ""
        lines.append("| " + " | ".join([
            str(i), r.variant + bad, fmt(r.accept_rate), fmt(r.e2e_rate),
            fmt(r.pct(50), 1), fmt(r.pct(99), 1), fmt(r.cpu_per_k, 2), pct(r.cpu_busy),
            fmt(r.rss_idle_kb / 1024 if r.rss_idle_kb else None),
            fmt(r.rss_probe_kb / 1024 if r.rss_probe_kb else None),
            fmt(r.rss_peak_kb / 1024 if r.rss_peak_kb else None),
            fmt(r.rss_end_kb / 1024 if r.rss_end_kb else None),
            fmt(r.pct(50, r.logins), 0), str(r.sink_sessions),
            f"{r.client_cpu * per_k:.2f}"]) + " |")
    head = ["#", "variant", "steady msg/s", "p50 ms", "p99 ms", "server CPU busy (event loop)",
            "machine CPU busy", "event loop: running / on a lock / idle"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(runs, 1):
        lines.append("| " + " | ".join([
            str(i), r.variant, steady_rate(r), fmt(r.steady_latency(50), 1),
            fmt(r.steady_latency(99), 1), steady_busy(r), steady_machine(r),
            loop_states(r)]) + " |")
    return "\n".join(lines)


def notes_for(runs: list[Result]) -> list[str]:
    out = []
    for i, r in enumerate(runs, 1):
        for p in r.problems():
            out.append(f"run {i} ({r.variant}): {p}")
        if r.stop_s > 3:
            out.append(f"run {i} ({r.variant}): pillarbox took {r.stop_s:.1f} s to exit "
                       "after SIGTERM")
    logged: dict[str, int] = {}
    for r in runs:
        for ln in r.server_log:
            key = re.sub(r"^\S*\d{4}-\d\d-\d\dT\S* ", "", ln)
            key = re.sub(r"\bid=\S+", "id=…", key)
            logged[key] = logged.get(key, 0) + 1
    for ln, k in list(logged.items())[:15]:
        out.append(f"pillarbox logged ({k} times): {ln[:300]}")
    return out


def reading(runs: list[Result], clients: int, n: int) -> str:
    """What the figures say, from this run's own measurements."""
    ok = [r for r in runs if not r.problems()]

    def med(f, variants=("starttls", "implicit")) -> float | None:
        return median([f(r) for r in ok if r.variant in variants])

    def st(r: Result, k: int) -> float | None:
        x = r.steady()
        return x[k] if x else None

    cpu_msg = med(lambda r: r.cpu_per_k)
    login_cpu = med(lambda r: r.probe_cpu * 1000)
    idle = med(lambda r: r.rss_idle_kb / 1024)
    probe = med(lambda r: r.rss_probe_kb / 1024)
    peak = med(lambda r: r.rss_peak_kb / 1024)
    if None in (cpu_msg, login_cpu, idle, probe, peak):
        return ""
    out = [f"Reading the figures: with signing, pillarbox spent {cpu_msg:.1f} ms of CPU per "
           f"message (median of the signed runs), of which about "
           f"{login_cpu * clients / n:.1f} ms is the {clients} logins spread over the "
           f"{n:,} messages"]
    if "dkim_ms" in FACTS:
        out[0] += (f"; signing one test message with both keys costs {FACTS['dkim_ms']:.1f} "
                   "ms of CPU when timed on its own (a process of its own with the server's "
                   "code and keys)")
    out[0] += "."
    sig = [med(lambda r, k=k: st(r, k)) for k in range(4)]
    uns = [med(lambda r, k=k: st(r, k), ("unsigned",)) for k in range(4)]
    if None not in sig:
        out.append(f"In the steady state (all clients logged in) it accepted {sig[0]:,.0f} "
                   f"msg/s using {sig[1] * 100:.0f} % of one CPU, its event-loop thread "
                   f"{sig[2] * 100:.0f} %, with the machine at {sig[3]:.2f} of its "
                   f"{NPROC} CPUs busy.")
    if None not in sig and None not in uns:
        p50s = med(lambda r: r.pct(50))
        p50u = med(lambda r: r.pct(50), ("unsigned",))
        out.append(f"Without DKIM keys the same load went through at {uns[0]:,.0f} msg/s "
                   f"({uns[1] * 100:.0f} % of one CPU, event loop {uns[2] * 100:.0f} %), "
                   f"p50 {p50u:.1f} ms against {p50s:.1f} ms.")
        spare = sig[3] < 0.85 * NPROC
        same_cpu = abs(sig[1] - uns[1]) < 0.15 * uns[1]
        out.append(f"Signing adds {(sig[1] / sig[0] - uns[1] / uns[0]) * 1000:.1f} ms of "
                   "server CPU per message"
                   + (", and the server does not use more CPU to make up for it: about as "
                      "much as without keys" if same_cpu else "")
                   + (", though the machine had CPU free" if spare and same_cpu else "")
                   + ".")
        lock_s = med(lambda r: (r.loop_share() or {}).get("lock"))
        lock_u = med(lambda r: (r.loop_share() or {}).get("lock"), ("unsigned",))
        idle_s = med(lambda r: (r.loop_share() or {}).get("idle"))
        if sig[2] < uns[2] and lock_s is not None and lock_u is not None \
                and idle_s is not None and lock_s > lock_u:
            out.append(f"With signing the event loop does less, not more ({sig[2] * 100:.0f} "
                       f"% of a CPU against {uns[2] * 100:.0f} %): "
                       f"it was asleep on a lock {lock_s * 100:.0f} % of the time "
                       f"(without keys {lock_u * 100:.0f} %) and idle {idle_s * 100:.0f} %. "
                       "That lock is presumably the interpreter's, which the signing threads "
                       "(`asyncio.to_thread`) hold while dkimpy canonicalizes and hashes in "
                       "Python: signing in a thread takes turns with the event loop rather "
                       "than running beside it.")
    p99_all = med(lambda r: r.pct(99))
    p99_st = med(lambda r: r.steady_latency(99))
    if p99_all is not None and p99_st is not None and p99_all > 1.5 * p99_st:
        out.append(f"p99 over the whole run is {p99_all:.0f} ms, in the steady state "
                   f"{p99_st:.0f} ms: the slowest 250s come in the first seconds, while "
                   "the other clients are still logging in.")
    login = f"Each login costs {login_cpu:.0f} ms of server CPU"
    if "argon2_mib" in FACTS:
        login += (f" (argon2id with {FACTS['argon2_mib']:.0f} MiB, t={FACTS['argon2_t']:.0f}, "
                  f"p={FACTS['argon2_p']:.0f})")
    out.append(login + f" and memory while it runs: the server's resident set peaked at "
               f"{probe:.0f} MB after {LOGIN_PROBES} logins one at a time (idle: {idle:.0f} MB) "
               f"and at {peak:.0f} MB with the {clients} clients logging in at once (the "
               "checks run in two threads of their own, so at most two at a time; "
               "`login_cache = \"0s\"` here, so that every login pays the check).")
    return para(" ".join(out))


def docs_section(args: argparse.Namespace, m: dict[str, str], runs: list[Result],
                 notes: list[str], took: float, load_after: str) -> str:
    cmd = shlex.join([".venv/bin/python", "bench/relay_load.py", *sys.argv[1:]])
    where = sl.fs_type(Path(args.tmpdir or tempfile.gettempdir()))
    n = args.messages
    intro = para(
        f"Measured {dt.date.today().isoformat()} on this machine: {m['nproc']} CPUs "
        f"({m['cpu']}), {os_name()}, Linux {m['kernel']}, Python {m['python']}; "
        f"pillarbox at {m['src']}; spool on {where}; load average before the run "
        f"{m['load']} and after it {load_after} (other work on the machine shows up in the "
        f"figures). The whole run took {took / 60:.1f} minutes.")
    rounds = (f"Each figure is the median of {args.rounds} runs per variant, the variants "
              "run in turn, each run on a fresh throwaway server and sink (all runs below)."
              if args.rounds > 1 else "One run per variant.")
    how = [
        f"A throwaway pillarbox: `pillarbox init --dir DIR --domain {DOMAIN}`, every "
        f"listener moved to a free 127.0.0.1 port, `log_level = \"warning\"`, `user add "
        f"{SENDER}` with a password, and `[[route]] domains = [\"{SINK_DOMAIN}\"] host = "
        f"\"127.0.0.1:SINKPORT\" tls = \"none\"`; started as `python -m pillarbox -c "
        f"DIR/pillarbox.toml serve`" + (" from the exported `--rev` tree." if args.rev
                                         else "."),
        "The sink is Debian's `smtp-sink -c -u postfix -D DUMP 127.0.0.1:SINKPORT 256` "
        "(Postfix's test server, in C), started by the script; its `-c` running counter "
        "(`mesg=N`, updated at each \".\" received) is read from its output, and `-D` "
        "appends every message to a dump file for the checks afterwards.",
        f"The clients: {args.clients} asyncio clients in one process (uvloop), each like a "
        "mail client or an application server sending a burst: one connection, one login, "
        "then its share of the messages back to back. *STARTTLS*: banner, EHLO, STARTTLS, "
        "TLS handshake (certificate not verified), EHLO, `AUTH PLAIN` with an initial "
        "response, on the submission port; *implicit TLS*: TLS handshake, banner, EHLO, "
        "`AUTH PLAIN`, on the submissions port; *no DKIM keys*: as STARTTLS, against a "
        f"server whose keys for {DOMAIN} were removed after `init`, so it relays the "
        "messages unsigned (for comparison: the difference is what signing costs). "
        f"Each message: `MAIL FROM:<{SENDER}> "
        f"SIZE={args.size}`, `RCPT TO:<{RCPT}>` and `DATA` pipelined, then {args.size:,} "
        "octets in CRLF lines (From, To, Date, Subject, Message-ID, text), so pillarbox adds "
        "its Received field and two DKIM-Signature fields (ed25519 and RSA) and relays it "
        "to the sink over connections it reuses.",
        f"*Accepted* is {n:,} messages over the time from the first connect to the last 250 "
        f"after DATA; *end to end* is {n:,} messages over the time from the first connect "
        "until the sink has counted the last of them. p50 and p99: from the end of DATA "
        "(`.` CRLF written) to its 250, all messages of the run.",
        "Server CPU: utime + stime from /proc of the server and its children, from just "
        "before the first connect until the sink has counted every message, divided by the "
        f"messages; it includes the {args.clients} logins. *Busy* is that CPU time over the "
        "same wall time (100 % = one CPU). Peak RSS is the server's VmHWM at that point. "
        "*Steady msg/s*: see the next point.",
        "Steady state (runs below): from when the last client got its `235` until the last "
        "`250`, sampled from /proc every 0.2 s: accepted msg/s, p50 and p99 of the messages "
        "whose end of DATA was written in that stretch, the server's CPU use (in "
        "brackets: its main thread alone, which runs the event loop; the rest is its "
        "thread pool), and the whole machine's (/proc/stat, every process; the machine is "
        "shared with other work). And every 10 ms what the main thread was doing, from "
        "/proc/PID/task/PID/stat and wchan: running or runnable, asleep on a futex (a lock, "
        "such as the interpreter's), or asleep in epoll (idle, waiting for work).",
        f"Login: before each load, {LOGIN_PROBES} logins one after another on the same "
        "server (connect to `235`, then QUIT): the median wall time and the server's CPU "
        "per login (argon2id password check, TLS handshake). *login p50 (burst)* in the "
        f"runs below is connect to `235` for the {args.clients} clients that log in at "
        "once at the start of the load.",
        "Checks (any failure fails the run and leaves the docs unwritten): every message "
        "got its 250; the sink counted exactly as many (also 0.5 s later: none twice); "
        "`pillarbox queue list` shows an empty queue; the sink's dump holds every message "
        "exactly once, intact, with the envelope sent and with an ed25519-sha256 and an "
        f"rsa-sha256 DKIM-Signature (none without keys); {DKIM_SAMPLE} of them, picked at "
        "random, verify with dkimpy against the DKIM records `pillarbox dns` prints.",
        "Everything shares the 2 CPUs: pillarbox, the client process (its CPU is in the "
        "last column of the runs below), the sink, and whatever else runs on the machine.",
    ]
    note_text = "\n".join(bullet(x) for x in notes) if notes else "- none"
    return f"""## {SECTION}

{intro}

Command (run by hand, as root: the sink drops to the postfix user; smtp-sink comes with
Debian's `postfix` package, which `make bench` installs):

    {cmd}

{table(runs)}

{para(rounds + " Every message was accepted and reached the sink exactly once and "
      "intact, in every run; signed with two valid DKIM signatures, except in the "
      "comparison without keys.")}

{reading(runs, args.clients, n)}

Anything odd in this run:

{note_text}

### How it is measured (`bench/relay_load.py`)

{chr(10).join(bullet(x) for x in how)}

All runs, in order:

{runs_table(runs)}
"""


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients (20)")
    ap.add_argument("--messages", type=int, default=5000, help="messages per run (5000)")
    ap.add_argument("--size", type=int, default=4096, help="message size in octets (4096)")
    ap.add_argument("--variants", default=None,
                    help="comma-separated, run in this order each round: starttls (submission "
                    "port), implicit (submissions port), unsigned (starttls with the domain's "
                    "DKIM keys removed, to see what signing costs); default starttls, all "
                    "three with --write-docs")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs per variant, alternating; the median is reported (1)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds allowed for the load, and again for the relay (120)")
    ap.add_argument("--tmpdir", default=None, help="where the throwaway servers live")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway directories")
    ap.add_argument("--rev", default=None,
                    help="benchmark this git revision's src/ (e.g. HEAD) instead of the "
                    "working tree, which others may be editing")
    ap.add_argument("--write-docs", action="store_true",
                    help=f'write the table into docs/BENCHMARKS.md ("{SECTION}")')
    args = ap.parse_args()
    if not (1 <= args.clients <= 500 and 1 <= args.messages <= 100_000
            and 1 <= args.rounds <= 9 and 0 < args.timeout <= 600
            and 256 <= args.size <= 10_000_000):
        ap.error("bounds: --clients 1..500, --messages 1..100000, --rounds 1..9, "
                 "--timeout <= 600, --size 256..10000000")
    variants = [v for v in (args.variants or (
        "starttls,implicit,unsigned" if args.write_docs else "starttls")).split(",") if v]
    if not variants or not set(variants) <= set(VARIANTS):
        ap.error("--variants takes starttls, implicit, unsigned")

    if os.geteuid() != 0:
        raise SystemExit("error: run as root (smtp-sink must drop to the postfix user)")
    if not cp.tool("smtp-sink"):
        raise SystemExit("error: smtp-sink not found; as root: "
                         "DEBIAN_FRONTEND=noninteractive apt-get install -y postfix "
                         "(or run bench/compare_postfix.py once, which does it)")
    signal.signal(signal.SIGTERM, cp.on_sigterm)
    signal.signal(signal.SIGHUP, cp.on_sigterm)
    with contextlib.suppress(ImportError):
        import uvloop  # less of the shared CPU for the load generator
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    export_dir = None
    commit = None
    try:
        if args.rev:
            export_dir = Path(tempfile.mkdtemp(prefix=PREFIX + "src-", dir=args.tmpdir))
            commit = sl.export_rev(args.rev, export_dir)
        return run_all(args, variants, commit)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        for p in list(cp.CHILDREN):
            cp.reap(p)
        if export_dir:
            shutil.rmtree(export_dir, ignore_errors=True)


def run_all(args: argparse.Namespace, variants: list[str], commit: str | None) -> int:
    started = time.monotonic()
    m = sl.machine()
    m["src"] = sl.git_rev(args.rev, commit)  # now, before anyone commits meanwhile
    log(f"load average before the run: {m['load']}; pillarbox at {m['src']}")
    for rnd in range(1, args.rounds + 1):
        for variant in variants:
            r = run_one(variant, args)
            RUNS.append(r)
            log(f"round {rnd} {variant:8}: accepted {fmt(r.accept_rate)}/s, end to end "
                f"{fmt(r.e2e_rate)}/s, p50 {fmt(r.pct(50), 1)} ms, p99 {fmt(r.pct(99), 1)} "
                f"ms, CPU {fmt(r.cpu_per_k, 2)} s/1k, peak RSS "
                f"{r.rss_peak_kb / 1024:.0f} MB, login {fmt(median(r.probe_ms), 0)} ms / "
                f"{r.probe_cpu * 1000:.0f} ms CPU, sink {r.sink_count} in "
                f"{r.sink_sessions} connections, DKIM sample {r.dkim_checked} ok, server stop "
                f"{r.stop_s:.1f} s")
            for p in r.problems():
                log(f"  FAIL: {p}")
            for ln in r.server_log[:10]:
                log(f"  server logged: {ln[:300]}")
    took = time.monotonic() - started
    load_after = sl.machine()["load"]
    log(f"load average after the run: {load_after}")
    notes = notes_for(RUNS)
    print(table(RUNS))
    print()
    print(runs_table(RUNS))
    if notes:
        print("\nnotes:\n" + "\n".join("- " + n for n in notes))
    failed = any(r.problems() for r in RUNS)
    if failed:
        log("error: not every message was accepted and relayed intact; docs not written")
        return 1
    if args.write_docs:
        write_section(SECTION, docs_section(args, m, RUNS, notes, took, load_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
