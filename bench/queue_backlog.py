#!/usr/bin/env python3
"""A deferred backlog of 100,000 messages (issue 4): idle CPU, intake, `queue list`.

Issue 4 asks that the scheduler sleep until the next due message, that 100k
deferred messages neither slow intake nor cost CPU while idle, and that
`queue list` stay fast with 100k entries. This bench builds two throwaway
servers side by side, one with an empty queue and one whose spool holds
`--backlog` messages for a remote domain, each deferred with its next attempt an
hour away (the records and state files a server writes after a 451), then:

1. starts each and times it until its SMTP port answers;
2. samples its CPU use over `--idle` seconds of doing nothing;
3. runs the same `smtp-source` load (20 sessions, 4 KB, new connection each,
   to a local mailbox) against each, alternately, `--rounds` times;
4. times `pillarbox queue list` and `queue list --json` on the backlog (the
   server running), and reads the resident memory of both servers.

The backlog is written straight into the spool (segments through the Spool
class, the same code the server uses; state files without fsync, since this is
set-up, not the path under test). All traffic stays on 127.0.0.1.

    .venv/bin/python bench/queue_backlog.py [--backlog 100000] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import smtp_load as sl
from common import write_section

SECTION = "A deferred backlog of 100,000 messages (issue 4)"
REMOTE = "far-away.test"


def fill_spool(root: Path, n: int) -> float:
    """Write n deferred messages into the spool at root; return the seconds it took."""
    from pillarbox.queue.spool import Delivery, Envelope, Spool, State, new_id

    t0 = time.perf_counter()
    spool = Spool(root)
    body = (b"From: backlog@example.test\r\nTo: someone@" + REMOTE.encode()
            + b"\r\nSubject: deferred\r\n\r\n" + b"x" * 1000 + b"\r\n")
    now = time.time()
    ids: list[str] = []

    async def write() -> None:
        batch = []
        for i in range(n):
            env = Envelope(id=new_id(), mail_from="backlog@example.test",
                           rcpts=[f"r{i}@{REMOTE}"], received=now - 60, size=len(body),
                           source="smtp", auth="bench@example.test")
            ids.append(env.id)
            batch.append(spool.append(env, [body]))
            if len(batch) == 1000:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)

    asyncio.run(write())
    for i, msg_id in enumerate(ids):
        d = Delivery(kind="remote", to=f"r{i}@{REMOTE}", rcpt=f"r{i}@{REMOTE}",
                     state="deferred", attempts=1, next_attempt=now + 3600,
                     last_error="451 4.3.0 try again later")
        (spool.states / msg_id).write_bytes(State([d], expanded=True).to_json())
    return time.perf_counter() - t0


@dataclass
class Side:
    name: str
    srv: sl.Server
    start_s: float = 0.0
    idle_cpu_pct: float = 0.0
    rss_mb: float = 0.0
    rates: list[float] | None = None


def start_timed(srv: sl.Server) -> float:
    t0 = time.perf_counter()
    srv.start(timeout=300)
    return time.perf_counter() - t0


def idle_cpu(srv: sl.Server, seconds: float) -> float:
    """Percent of one CPU the server uses while nothing happens."""
    time.sleep(2)  # let start-up work (quota recount, first timers) settle
    c0, t0 = srv.cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return (srv.cpu_seconds() - c0) / (time.perf_counter() - t0) * 100


def intake(srv: sl.Server, n: int, timeout: float) -> float:
    """Accepted msg/s for smtp-source -s 20 -l 4096, a new connection per message."""
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    before = srv.delivered()
    cmd = [source, "-s", "20", "-m", str(n), "-l", "4096", "-f", sl.SENDER, "-t", sl.RCPT,
           f"{sl.HOST}:{srv.port}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"error: smtp-source failed: {p.stdout[-300:]!r} {p.stderr[-300:]!r}")
    deadline = time.monotonic() + timeout
    while srv.delivered() < before + n:
        if time.monotonic() > deadline:
            raise SystemExit(f"error: only {srv.delivered() - before} of {n} delivered")
        time.sleep(0.05)
    return n / took


def cli_time(srv: sl.Server, *args: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of one CLI call, and its last output line."""
    r0 = os.times()
    t0 = time.perf_counter()
    out = sl.pillarbox("-c", str(srv.cfg), *args)
    wall = time.perf_counter() - t0
    r1 = os.times()
    cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    return wall, cpu, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backlog", type=int, default=100_000, help="deferred messages (100000)")
    ap.add_argument("--messages", type=int, default=5000, help="messages per intake run (5000)")
    ap.add_argument("--rounds", type=int, default=3, help="intake runs per server (3)")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle sampling (10)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    if not (shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists()):
        raise SystemExit("error: smtp-source not found; as root: apt-get install postfix "
                         "(or run `make bench` once, which does it)")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="pillarbox-backlog-"))
    sides = [Side("empty queue", sl.Server(tmp / "empty")),
             Side(f"{args.backlog:,} deferred", sl.Server(tmp / "backlog"))]
    try:
        for s in sides:
            s.srv.dir.mkdir()
            s.srv.setup()
        fill_s = fill_spool(sides[1].srv.dir / "var" / "queue", args.backlog)
        print(f"spool filled with {args.backlog:,} deferred messages in {fill_s:.1f}s",
              file=sys.stderr)
        offline = cli_time(sides[1].srv, "queue", "list")
        for s in sides:
            s.start_s = start_timed(s.srv)
            s.idle_cpu_pct = idle_cpu(s.srv, args.idle)
            s.rates = []
            print(f"{s.name}: started in {s.start_s:.2f}s, idle CPU {s.idle_cpu_pct:.2f}%",
                  file=sys.stderr)
        for r in range(args.rounds):
            for s in sides:
                assert s.rates is not None
                s.rates.append(intake(s.srv, args.messages, args.timeout))
                print(f"round {r + 1} {s.name}: {s.rates[-1]:.0f} msg/s", file=sys.stderr)
        for s in sides:
            s.rss_mb = s.srv.status_kb("VmRSS") / 1024
        online = cli_time(sides[1].srv, "queue", "list")
        online_json = cli_time(sides[1].srv, "queue", "list", "--json")
        queued = len(json.loads(online_json[2]))
    finally:
        for s in sides:
            s.srv.stop()
    load_after = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)

    empty, backlog = sides
    e_rate = statistics.median(empty.rates or [0])
    b_rate = statistics.median(backlog.rates or [0])
    rows = [
        ("start until SMTP answers", f"{empty.start_s:.2f} s", f"{backlog.start_s:.2f} s", ""),
        (f"server CPU while idle ({args.idle:.0f} s)", f"{empty.idle_cpu_pct:.2f} %",
         f"{backlog.idle_cpu_pct:.2f} %", ""),
        ("accepted msg/s, 4 KB, 20 sessions, new connection each (median of "
         f"{args.rounds})", f"{e_rate:,.0f}", f"{b_rate:,.0f}", f"{b_rate / e_rate:.2f} ×"),
        ("resident memory after the loads", f"{empty.rss_mb:.0f} MB",
         f"{backlog.rss_mb:.0f} MB", ""),
    ]
    cli_rows = [
        ("`queue list`, server stopped", offline),
        ("`queue list`, server running", online),
        ("`queue list --json`, server running", online_json),
    ]
    table = ["| figure | empty queue | with the backlog | ratio |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    cli_table = ["| command (backlog of "
                 f"{queued:,} listed) | wall s | CPU s | summary line |", "|---|---|---|---|"]
    for name, (w, c, out) in cli_rows:
        summary = "(JSON)" if "json" in name else out.strip().splitlines()[-1][:80]
        cli_table.append(f"| {name} | {w:.2f} | {c:.2f} | {summary} |")
    text = "\n".join(table) + "\n\n" + "\n".join(cli_table) + "\n"
    print(text)
    if args.write_docs:
        m = sl.machine()
        cmd = "  .venv/bin/python bench/queue_backlog.py " + " ".join(
            a for a in sys.argv[1:])
        section = (
            f"## {SECTION}\n\n"
            f"Measured {dt.date.today().isoformat()} on {m['nproc']} CPUs ({m['cpu']}), Python "
            f"{m['python']}; load average "
            f"before {' '.join(f'{x:.2f}' for x in load_before)}, after "
            f"{' '.join(f'{x:.2f}' for x in load_after)}.\n\n"
            f"    {cmd.strip()}\n\n"
            "Two throwaway servers side by side: one with an empty queue, one whose spool\n"
            f"holds {args.backlog:,} messages to a remote domain, each deferred after a 451\n"
            "with its next attempt an hour away. The scheduler keeps deferred messages on\n"
            "a timer heap and sleeps until the earliest is due, so the backlog costs\n"
            "memory (its index) and start-up time (reading it), not CPU.\n\n"
            + text)
        write_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
