#!/usr/bin/env python3
"""SQLite node, PostgreSQL node, two PostgreSQL nodes (issue 19): accepted and
delivered messages per second on the same load, and where the CPU time goes.

    .venv/bin/python bench/pg_nodes.py [--rounds 3] [--messages 5000] [--sessions 20]
        [--users 10] [--size 4096] [--write-docs]

Set-ups, run one after another in each round, each with fresh throwaway servers
(`init`, free 127.0.0.1 ports, `log_level = "warning"`, the default pipeline):

- "SQLite node": one `serve`, the default config (SQLite and files in data_dir);
- "PostgreSQL node": one `serve` with `[storage] url` on a fresh database;
- "two PostgreSQL nodes": two `serve` processes on one fresh database with one
  `[storage] shared_dir` (Maildirs in shared_dir/mail, each node's spool in
  shared_dir/queue/NODE) and `[storage] node` = a / b; the load is split half
  to each node.

PostgreSQL is Debian's package, started by tests/integration/pg_server.py in a
temporary directory on a free port, here with its durable defaults (fsync and
synchronous_commit on), not the tests' unsafe ones. The same users (--users,
seeded once with `user add` and copied into every set-up's directory) receive
the load: --sessions concurrent SMTP sessions (bench/smtp_load.py's client, one
connection per session, PIPELINING) send --messages messages of --size octets,
each to the next user. *Accepted*: messages over the time from the first
connect to the last 250; *delivered*: messages over the time until the users'
Maildirs (new/, counted with inotify) hold them all. CPU seconds per 1,000
messages from /proc over the load and its delivery: the pillarbox processes,
the PostgreSQL process tree, this load generator, and the rest of the machine
(all CPU time in /proc/stat minus those). The bench only uses config, SMTP and
the Maildir files, so it measures whatever the queue and mailbox index do on
PostgreSQL at the revision it runs. Every message must get a 250 and arrive
exactly once, else the exit code is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import smtp_load as sl
from common import REPO, bullet, fmt, log, median, os_name, para, write_section

sys.path.insert(0, str(REPO))
from tests.integration.pg_server import PostgresServer, seed_database  # noqa: E402

SECTION = "One SQLite node, one PostgreSQL node, two PostgreSQL nodes (issue 19)"
SETUPS = ["SQLite node", "PostgreSQL node", "two PostgreSQL nodes"]
PASSWORD = "bench-password-not-secret\n"


class DurablePostgres(PostgresServer):
    """PostgreSQL's own defaults for durability: a commit waits for its WAL fsync."""
    SETTINGS = {"max_connections": "200"}


def storage_config(text: str, url: str, shared_dir: str = "", node: str = "") -> str:
    """The config text with [storage] url, shared_dir and node set."""
    head, sep, rest = text.partition("\n[storage]\n")
    if not sep:
        raise SystemExit("error: no [storage] table in the config `init` wrote")
    body, sep2, tail = rest.partition("\n[")
    for key, value in (("url", url), ("shared_dir", shared_dir), ("node", node)):
        body, n = re.subn(rf'(?m)^{key}\s*=.*$', f'{key} = "{value}"', body)
        if n != 1:
            raise SystemExit(f"error: storage.{key} not found once in the config")
    return head + sep + body + sep2 + tail


def rcpts(users: int) -> list[str]:
    return [f"{sl.USER}{u}@{sl.DOMAIN}" for u in range(users)]


def make_seed(root: Path, users: int) -> Path:
    """A directory with the users added (argon2 hashes made once); its SQLite file."""
    sl.pillarbox("init", "--dir", str(root), "--domain", sl.DOMAIN)
    for rcpt in rcpts(users):
        sl.pillarbox("-c", str(root / "pillarbox.toml"), "user", "add", rcpt,
                     "--password-stdin", stdin=PASSWORD)
    return root / "var" / "pillarbox.db"


def new_node(workdir: Path, seed_db: Path, url: str = "", shared: Path | None = None,
             node: str = "") -> sl.Server:
    """A throwaway node: `init`, free ports, [storage] set, the seed users (SQLite)."""
    from pillarbox.config import load

    sl.pillarbox("init", "--dir", str(workdir), "--domain", sl.DOMAIN)
    srv = sl.Server(workdir)
    srv.port = sl.rewrite_config(srv.cfg)["smtp"]
    srv.cfg.write_text(storage_config(srv.cfg.read_text(), url, str(shared or ""), node))
    cfg = load(srv.cfg)
    if (cfg.storage_url, cfg.shared_dir) != (url, shared):
        raise SystemExit(f"error: {srv.cfg}: [storage] not as written")
    if not url:
        with sqlite3.connect(seed_db) as src, sqlite3.connect(cfg.data_dir / "pillarbox.db") as dst:
            src.backup(dst)
    srv.mail_root = cfg.mail_root  # type: ignore[attr-defined]
    return srv


class Spread(sl.Load):
    """smtp_load's client, each message to the next of several users."""

    def __init__(self, port: int, res: sl.Result, head: bytes, body: bytes,
                 to: list[str]) -> None:
        super().__init__(port, res, head, body)
        self.envelopes = [(f"MAIL FROM:<{sl.SENDER}> SIZE={res.size}\r\n"
                           f"RCPT TO:<{r}>\r\n").encode() for r in to]
        self.accepted = [0] * len(to)

    async def send(self, reader, writer, pipelining: bool, i: int) -> None:
        u = i % len(self.envelopes)
        self.envelope = self.envelopes[u]  # read by send() before its first await
        await super().send(reader, writer, pipelining, i)  # raises unless 250
        self.accepted[u] += 1


def machine_cpu() -> tuple[float, float]:
    """(busy, iowait) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    busy = sum(ticks[:8]) - idle - iowait  # user nice system (idle iowait) irq softirq steal
    return busy / sl.CLK_TCK, iowait / sl.CLK_TCK


@dataclass
class Run:
    setup: str
    accepted: int = 0
    accept_rate: float | None = None
    deliver_rate: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # seconds per 1k messages
    busy: tuple[float, float] | None = None  # cores busy: pillarbox + PostgreSQL + client, all
    problems: list[str] = field(default_factory=list)


def measure(setup: str, nodes: list[sl.Server], pg: PostgresServer | None,
            args: argparse.Namespace) -> Run:
    """Start the nodes, run the load split evenly over them, wait for delivery."""
    run = Run(setup)
    users = rcpts(args.users)
    for srv in nodes:
        srv.start()
    watches = [sl.NewFiles(nodes[0].mail_root / sl.DOMAIN / r.split("@")[0] / "new")
               for r in users]
    loads = []
    for n, srv in enumerate(nodes):
        res = sl.Result("reuse", args.sessions // len(nodes), args.messages // len(nodes),
                        args.size)
        head, body = sl.make_message(args.size, f"{os.getpid()}-{setup[:3]}{n}")
        loads.append(Spread(srv.port, res, head, body, users))
    try:
        pb0 = sum(s.cpu_seconds() for s in nodes)
        pg0 = sl.tree_cpu_seconds(pg.proc.pid) if pg else 0.0
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        busy0, io0 = machine_cpu()
        w0 = time.perf_counter()

        async def drive() -> None:
            await asyncio.gather(*(ld.run(True, args.timeout) for ld in loads))

        asyncio.run(drive())
        t0 = min(ld.res.t_first_connect for ld in loads)
        run.accepted = sum(ld.res.accepted for ld in loads)
        if run.accepted:
            run.accept_rate = run.accepted / (max(ld.res.t_last_250 for ld in loads) - t0)
        per_user = [sum(ld.accepted[u] for ld in loads) for u in range(len(users))]
        deadline = time.perf_counter() + args.timeout
        alive = lambda: all(s.alive() for s in nodes)  # noqa: E731
        reached = [w.wait_for(n, deadline, alive) if n else t0
                   for w, n in zip(watches, per_user, strict=True)]
        if None not in reached:
            run.deliver_rate = run.accepted / (max(reached) - t0)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        busy1, io1 = machine_cpu()
        if alive():
            per_k = 1000 / max(run.accepted, 1)
            pillarbox = sum(s.cpu_seconds() for s in nodes) - pb0
            postgres = (sl.tree_cpu_seconds(pg.proc.pid) - pg0) if pg else 0.0
            client = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            wall = time.perf_counter() - w0
            run.busy = ((pillarbox + postgres + client) / wall, (busy1 - busy0) / wall)
            run.cpu = {k: v * per_k for k, v in {
                "pillarbox": pillarbox, "postgres": postgres, "client": client,
                "other": (busy1 - busy0) - pillarbox - postgres - client,
                "iowait": io1 - io0}.items()}
        time.sleep(0.2)  # a file beyond the count would be a duplicate
        for r, n in zip(users, per_user, strict=True):
            with contextlib.suppress(FileNotFoundError):
                got = sum(1 for _ in os.scandir(nodes[0].mail_root / sl.DOMAIN
                                                / r.split("@")[0] / "new"))
                if got != n:
                    run.problems.append(f"{r}: {got} files in new/ for {n} accepted")
    finally:
        for w in watches:
            w.close()
        for srv in nodes:
            if srv.stop() != 0:
                run.problems.append(f"{srv.dir.name}: exit status {srv.proc.returncode}")
    for ld in loads:
        run.problems += [f"{n} x {why}" for why, n in ld.res.failures.items()]
    if run.accepted != args.messages // len(nodes) * len(nodes):
        run.problems.append(f"{run.accepted} of {args.messages} accepted")
    if run.deliver_rate is None:
        run.problems.append("not all accepted messages delivered before the timeout")
    if run.problems:
        for srv in nodes:
            run.problems += [f"{srv.dir.name}: {ln}" for ln in srv.log_text().splitlines()[-5:]]
    return run


def one_setup(setup: str, pg: PostgresServer, seed_db: Path,
              args: argparse.Namespace) -> Run:
    tmp = Path(tempfile.mkdtemp(prefix="pillarbox-pgnodes-", dir=args.tmpdir))
    try:
        if setup == "SQLite node":
            return measure(setup, [new_node(tmp / "a", seed_db)], None, args)
        url = pg.new_database()
        seed_database(url, seed_db)
        if setup == "PostgreSQL node":
            return measure(setup, [new_node(tmp / "a", seed_db, url)], pg, args)
        shared = tmp / "shared"
        shared.mkdir()
        nodes = [new_node(tmp / n, seed_db, url, shared, n) for n in ("a", "b")]
        return measure(setup, nodes, pg, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(runs: list[Run]) -> dict[str, dict[str, float | None]]:
    """Per set-up, the median over its runs of each figure."""
    out = {}
    for s in SETUPS:
        mine = [r for r in runs if r.setup == s]
        fig = {"acc": median([r.accept_rate for r in mine]),
               "dlv": median([r.deliver_rate for r in mine]),
               "ours": median([r.busy[0] if r.busy else None for r in mine]),
               "whole": median([r.busy[1] if r.busy else None for r in mine])}
        fig.update({k: median([r.cpu.get(k) for r in mine]) for k in CPU_KEYS})
        out[s] = fig
    return out


CPU_KEYS = ("pillarbox", "postgres", "client", "other", "iowait")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def table(runs: list[Run], fig: dict, cores: int) -> str:
    lines = ["| set-up | cores | cores busy: these processes / all | accepted msg/s "
             "| delivered msg/s | runs (acc / del) | CPU s per 1k msg: pillarbox | PostgreSQL "
             "| load generator | rest of machine | iowait | ÷ SQLite node (acc / del) "
             "| ÷ one PostgreSQL node (acc / del) |", "|" + "---|" * 13]

    def vs(s: str, base: str) -> str:
        if s == base:
            return ""
        return (f"{fmt(ratio(fig[s]['acc'], fig[base]['acc']), 2)}× / "
                f"{fmt(ratio(fig[s]['dlv'], fig[base]['dlv']), 2)}×")

    for s in SETUPS:
        f = fig[s]
        each = " · ".join(f"{fmt(r.accept_rate)} / {fmt(r.deliver_rate)}"
                          for r in runs if r.setup == s)
        lines.append(f"| {s} | {cores} | {fmt(f['ours'], 2)} / {fmt(f['whole'], 2)} "
                     f"| {fmt(f['acc'])} | {fmt(f['dlv'])} | {each} | "
                     + " | ".join(fmt(f[k], 2) for k in CPU_KEYS)
                     + f" | {vs(s, SETUPS[0])} | {vs(s, SETUPS[1])} |")
    return "\n".join(lines)


def reading(fig: dict, cores: int) -> list[str]:
    """The issue's two goals, met or not, and why, from the figures."""
    sq, one, two = (fig[s] for s in SETUPS)
    out = []
    a, d = ratio(one["acc"], sq["acc"]), ratio(one["dlv"], sq["dlv"])
    if a and d:
        met = "met" if min(a, d) >= 0.7 else "not met"
        out.append(f"One PostgreSQL node accepts {a:.2f}× and delivers {d:.2f}× what the "
                   f"SQLite node does: the goal (at least 0.7×) is {met}. PostgreSQL's own "
                   f"CPU is {fmt(one['postgres'], 2)} s per 1,000 messages against "
                   f"pillarbox's {fmt(one['pillarbox'], 2)} s (SQLite node: "
                   f"{fmt(sq['pillarbox'], 2)} s)."
                   + (" So at this revision PostgreSQL does next to no work per message: "
                      "a difference between these rows is pillarbox's own, or noise."
                      if (one["postgres"] or 0) < 0.05 else ""))
    a, d = ratio(two["acc"], one["acc"]), ratio(two["dlv"], one["dlv"])
    if a and d and one["whole"] is not None:
        spare = cores - one["whole"]
        why = (f"During the one-node runs the whole machine kept {one['whole']:.2f} of its "
               f"{cores} cores busy ({fmt(one['ours'], 2)} of them pillarbox, PostgreSQL and "
               f"the load generator, the rest other work)")
        if (one["ours"] or 0) >= 0.8:
            why += ("; a node is one Python process with one event loop, which keeps at most "
                    "about one core busy, so a second node helps only where another core is free")
        if spare < 0.5:
            out.append(f"Two PostgreSQL nodes accept {a:.2f}× and deliver {d:.2f}× what one "
                       f"does. {why}: no core was spare, so the second node runs on the same "
                       f"cores as the first and adds only its own cost (pillarbox CPU "
                       f"{fmt(two['pillarbox'], 2)} s per 1,000 messages for two nodes, "
                       f"{fmt(one['pillarbox'], 2)} s for one). The goal (two nodes faster "
                       f"where cores are spare) cannot be shown on this machine.")
        else:
            met = "met" if min(a, d) > 1 else "not met"
            line = (f"Two PostgreSQL nodes accept {a:.2f}× and deliver {d:.2f}× what one "
                    f"does. {why}: about {spare:.1f} cores were spare, and the goal (two "
                    f"nodes faster than one) is {met}")
            if d > 1 >= a and one["acc"] > one["dlv"]:
                line += (f" for the burst's intake, met end to end (delivered). One node takes "
                         f"a burst first and delivers after (it accepts {one['acc']:,.0f} msg/s "
                         f"while its deliveries keep up with {one['dlv']:,.0f}: the queue "
                         f"fills); two nodes deliver while they take, so their intake shares "
                         f"the two cores with both nodes' deliveries (cores busy "
                         f"{fmt(two['ours'], 2)} against {fmt(one['ours'], 2)})")
            out.append(line + ".")
    return out


def spread(runs: list[Run], fig: dict) -> str | None:
    """A warning when one set-up's runs differ more than the set-ups do (noise)."""
    worst = max(((max(rs) - min(rs)) / fig[s]["dlv"] for s in SETUPS
                 if len(rs := [r.deliver_rate for r in runs if r.setup == s and r.deliver_rate])
                 > 1 and fig[s]["dlv"]), default=0.0)
    if worst < 0.15:
        return None
    return (f"The delivered rates of one set-up's runs differ by up to {worst:.0%} of their "
            "median here: a difference between set-ups smaller than that is noise, not a "
            "property of the set-ups.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three set-ups (3)")
    ap.add_argument("--messages", type=int, default=5000, help="messages per set-up (5000)")
    ap.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions (20)")
    ap.add_argument("--users", type=int, default=10, help="local users receiving (10)")
    ap.add_argument("--size", type=int, default=4096, help="message size in octets (4096)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds for the load, and again for delivery (120)")
    ap.add_argument("--tmpdir", default=None, help="where the throwaway servers live")
    ap.add_argument("--write-docs", action="store_true",
                    help=f'write the table into docs/BENCHMARKS.md ("{SECTION}")')
    args = ap.parse_args()
    if not (1 <= args.users <= 1000 and 2 <= args.sessions <= 1000 and args.messages >= 2):
        ap.error("--users 1..1000, --sessions 2..1000, --messages at least 2")
    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    started = time.monotonic()
    m = sl.machine()
    cores = os.cpu_count() or 0
    base = Path(tempfile.mkdtemp(prefix="pillarbox-pgnodes-base-", dir=args.tmpdir))
    pg = DurablePostgres(base / "pg")
    runs: list[Run] = []
    try:
        log(f"load average before: {m['load']}; seeding {args.users} users")
        seed_db = make_seed(base / "seed", args.users)
        pg.start()
        for rnd in range(1, args.rounds + 1):
            for setup in SETUPS:
                try:
                    r = one_setup(setup, pg, seed_db, args)
                except Exception as e:  # one failed set-up must not end the whole run
                    r = Run(setup, problems=[f"{type(e).__name__}: {e}"])
                runs.append(r)
                log(f"round {rnd} {setup:22}: accepted {fmt(r.accept_rate)} msg/s, "
                    f"delivered {fmt(r.deliver_rate)} msg/s, CPU s/1k "
                    + ", ".join(f"{k} {v:.2f}" for k, v in r.cpu.items()))
                for p in r.problems:
                    log(f"  FAIL: {p}")
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)

    fig = summarize(runs)
    text = table(runs, fig, cores)
    verdicts = reading(fig, cores)
    if noise := spread(runs, fig):
        verdicts.append(noise)
    print(text)
    for v in verdicts:
        print(v)
    bad = any(r.problems for r in runs)
    if args.write_docs and not bad:
        cmd = " ".join(["bench/pg_nodes.py", *sys.argv[1:]])
        write_section(SECTION, "\n".join([
            f"## {SECTION}", "",
            para(f"Run with `.venv/bin/python {cmd}` (`make bench-pg`) on {cores} cores "
                 f"({m['cpu']}), {os_name()}, Python {m['python']}, pillarbox at "
                 f"{sl.git_rev(None, None)}; load average {m['load']} before the run, "
                 f"{sl.machine()['load']} after; {args.rounds} rounds of the three set-ups, "
                 f"each {args.messages} messages of {args.size} B from {args.sessions} "
                 f"SMTP sessions to {args.users} users; took {time.monotonic() - started:.0f} s."),
            "", text, "",
            *(bullet(v) for v in verdicts),
            *([bullet(f"The machine was not quiet (load average {m['load']} before the run, "
                      "other work in the rest-of-machine column): the figures were taken with "
                      "other work running; `make bench-pg` on a quiet machine gives steadier "
                      "ones.")] if float(m["load"].split()[0]) > cores / 2 else []),
            bullet("Set-ups: one `serve` with the default config (SQLite); one with `[storage] "
                   "url` on PostgreSQL (Debian's package, a throwaway cluster on 127.0.0.1 with "
                   "its durable defaults: fsync and synchronous_commit on); two `serve` processes "
                   "on one database and one `[storage] shared_dir`, half of the sessions and "
                   "messages to each. Each set-up starts fresh; the users are the same."),
            bullet("Accepted: messages over the time from the first connect to the last 250 "
                   "(smtp_load.py's client, one connection per session, PIPELINING). Delivered: "
                   "over the time until every user's Maildir new/ holds its messages (inotify). "
                   "CPU per 1,000 messages over the load and its delivery, from /proc: the "
                   "pillarbox processes, PostgreSQL's process tree, the load generator, and the "
                   "rest of the machine's busy time (other work on it); iowait is the machine's "
                   "(so: Python, the database, others, the disk). "
                   "Cores busy: those CPU seconds over the wall time of the load and delivery."),
            ""]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
