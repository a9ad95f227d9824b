#!/usr/bin/env python3
"""What encryption at rest costs (issue 14): end-to-end messages per second into
the Maildir with `[encryption]` off and on, 4 KB and 100 KB messages, side by side.

    .venv/bin/python bench/encryption.py [--rounds 2] [--messages 2000] [--write-docs]

Each run is a fresh throwaway server (bench/smtp_load.py's) and its client
(one connection per session, PIPELINING): the figure is from the first
connect until the user's Maildir `new/` holds every accepted message. With
encryption on, the user has an Ed25519/Cv25519 key made by pysequoia; a few
delivered files are decrypted and compared with the message sent, and no
delivered file may hold the body's cleartext. Off and on alternate, so a
busy neighbour on the machine hurts both alike. The issue's goal: at most
25 % fewer messages per second at 4 KB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pysequoia

import smtp_load as sl
from common import bullet, log, median, os_name, para, write_section

SECTION = "Encryption at rest (issue 14)"


@dataclass
class Figure:
    variant: str
    size: int
    rate: float | None  # delivered msg/s
    cpu_per_k: float | None
    problems: list[str]


def enable(srv: sl.Server, tsk: pysequoia.Tsk) -> None:
    """[encryption] for the bench domain, and the user's key imported."""
    text = srv.cfg.read_text()
    at = text.index("\n[encryption]\n")
    text = text[:at] + text[at:].replace("domains         = []",
                                         f'domains         = ["{sl.DOMAIN}"]', 1)
    srv.cfg.write_text(text)
    key = srv.dir / "user.asc"
    key.write_text(str(tsk.extract_certificate()))
    sl.pillarbox("-c", str(srv.cfg), "user", "key", "import", sl.RCPT, str(key))


def check_encrypted(srv: sl.Server, tsk: pysequoia.Tsk, head: bytes, body: bytes,
                    count: int) -> list[str]:
    """Every file is PGP/MIME without the body in clear; three decrypt to the message."""
    files = sorted(srv.maildir_new.iterdir())
    out = []
    marker = body[-80:]
    clear = sum(1 for f in files if marker in f.read_bytes())
    if clear:
        out.append(f"{clear} delivered files hold the body in clear")
    if len(files) != count:
        out.append(f"{len(files)} files in new/ for {count} accepted")
    for f in files[:3]:
        data = f.read_bytes()
        start = data.find(b"-----BEGIN PGP MESSAGE-----")
        end = data.find(b"-----END PGP MESSAGE-----")
        if start < 0 or end < 0:
            out.append(f"{f.name}: no PGP message")
            continue
        inner = pysequoia.decrypt(data[start:end + 26], tsk.decryptor()).bytes or b""
        # the inner entity is the body after the blank line: tail = "@bench.test>\r\n\r\n"
        if not inner.endswith(body[len(b"@bench.test>\r\n"):]):
            out.append(f"{f.name}: decrypts to something else")
    return out


def run(variant: str, size: int, args: argparse.Namespace, tsk: pysequoia.Tsk,
        leftovers: list[Path]) -> Figure:
    """One server, one load. Its directory is deleted only at the end of the
    whole bench (`leftovers`): this machine's ext4 has no journal, and there
    creating a file checks every inode deleted in the last minute or more
    (`recently_deleted` in perf), so deleting a run's 4,000 files right
    before the next run made that run pay up to 0.3 ms per Maildir file."""
    tmp = Path(tempfile.mkdtemp(prefix="pillarbox-enc-", dir=args.tmpdir))
    leftovers.append(tmp)
    srv = sl.Server(tmp)
    res = sl.Result("reuse", args.sessions, args.messages, size)
    head, body = sl.make_message(size, f"{os.getpid()}{variant[:3]}{size}")
    problems: list[str] = []
    try:
        srv.setup()
        if variant == "on":
            enable(srv, tsk)
        srv.start()
        watch = sl.NewFiles(srv.maildir_new)
        cpu0 = srv.cpu_seconds()
        try:
            asyncio.run(sl.Load(srv.port, res, head, body).run(True, args.timeout))
            res.t_delivered = watch.wait_for(res.accepted, time.perf_counter() + args.timeout,
                                             srv.alive)
        finally:
            watch.close()
        cpu = srv.cpu_seconds() - cpu0
        problems += [f"{n} x {why}" for why, n in res.failures.items()]
        if res.accepted != args.messages:
            problems.append(f"{res.accepted} of {args.messages} accepted")
        if res.t_delivered is None:
            problems.append("not all delivered before the timeout")
        else:
            res.delivered = res.accepted
            problems += (check_encrypted(srv, tsk, head, body, res.accepted)
                         if variant == "on" else srv.verify(head, body, res.accepted))
        if problems:
            problems += srv.log_text().splitlines()[-5:]
        return Figure(variant, size, res.deliver_rate if not problems else None,
                      cpu * 1000 / res.accepted if res.accepted else None, problems)
    finally:
        srv.stop()



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="runs of each, alternating (2)")
    ap.add_argument("--messages", type=int, default=2000, help="messages per run (2000)")
    ap.add_argument("--sessions", type=int, default=20, help="concurrent sessions (20)")
    ap.add_argument("--timeout", type=float, default=180.0, help="bound per run (180)")
    ap.add_argument("--sizes", default="4,100",
                    help="message sizes in KB, comma-separated (4,100)")
    ap.add_argument("--tmpdir", default=None, help="where the throwaway servers live")
    ap.add_argument("--write-docs", action="store_true",
                    help=f'write the table into docs/BENCHMARKS.md ("{SECTION}")')
    args = ap.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sizes = [int(k) * 1024 for k in args.sizes.split(",")]
    started = time.monotonic()
    m = sl.machine()
    tsk = pysequoia.Tsk.generate(f"Bench <{sl.RCPT}>")
    figures: list[Figure] = []
    leftovers: list[Path] = []
    try:
        for rnd in range(1, args.rounds + 1):
            for size in sizes:
                for variant in ("off", "on"):
                    try:
                        f = run(variant, size, args, tsk, leftovers)
                    except Exception as e:  # one failed set-up must not end the whole run
                        f = Figure(variant, size, None, None, [f"{type(e).__name__}: {e}"])
                    figures.append(f)
                    log(f"round {rnd} {size // 1024:>3} KB encryption {variant:3}: "
                        + (f"{f.rate:,.0f} msg/s" if f.rate else "no figure")
                        + (f", CPU {f.cpu_per_k:.2f} s/1k" if f.cpu_per_k else ""))
                    for p in f.problems:
                        log(f"  FAIL: {p}")
    finally:
        for tmp in leftovers:
            shutil.rmtree(tmp, ignore_errors=True)
    lines = ["| size | encryption | delivered msg/s (median) | runs | server CPU s / 1k msg "
             "| vs off |", "|---|---|---|---|---|---|"]
    cost: dict[int, float | None] = {}
    paired: dict[int, list[float]] = {}
    for size in sizes:
        rates = {}
        for variant in ("off", "on"):
            fs = [f for f in figures if f.size == size and f.variant == variant]
            rates[variant] = median([f.rate for f in fs])
            cpu = median([f.cpu_per_k for f in fs])
            runs = " · ".join(f"{f.rate:,.0f}" if f.rate else "failed" for f in fs)
            vs = (f"{rates['on'] / rates['off']:.2f}×" if variant == "on" and rates["on"]
                  and rates["off"] else "")
            lines.append(f"| {size // 1024} KB | {variant} | "
                         f"{rates[variant]:,.0f} | " if rates[variant] else
                         f"| {size // 1024} KB | {variant} | n/a | ")
            lines[-1] += f"{runs} | {cpu:.2f} | {vs} |" if cpu else f"{runs} | n/a | {vs} |"
        cost[size] = (1 - rates["on"] / rates["off"]) if rates["on"] and rates["off"] else None
        # each round runs off then on back to back: the ratio within a round
        offs = [f for f in figures if f.size == size and f.variant == "off"]
        ons = [f for f in figures if f.size == size and f.variant == "on"]
        paired[size] = [b.rate / a.rate for a, b in zip(offs, ons, strict=False)
                        if a.rate and b.rate]
    table = "\n".join(lines)
    print(table)
    c4 = cost.get(4096)
    verdict = (f"encryption costs {c4:.0%} of end-to-end throughput at 4 KB (goal: at most "
               "25 %)" if c4 is not None else "no figure at 4 KB")
    verdict += "".join(f", {c:.0%} at {s // 1024} KB" for s, c in cost.items()
                       if s != 4096 and c is not None)
    verdict += "; on/off within each round: " + "; ".join(
        f"{s // 1024} KB " + " · ".join(f"{r:.2f}" for r in rs) + f" (median {median(rs):.2f})"
        for s, rs in paired.items() if rs)
    print(verdict)
    took = time.monotonic() - started
    if args.write_docs:
        cmd = "bench/encryption.py " + " ".join(sys.argv[1:])
        write_section(SECTION, "\n".join([
            f"## {SECTION}", "",
            para(f"Run with `.venv/bin/python {cmd.strip()}` on {m.get('cpu', '?')}, "
                 f"{os_name()}, load average {m.get('load', '?')} before the run, "
                 f"{args.rounds} rounds alternating off and on, {args.messages} messages "
                 f"per run from {args.sessions} sessions, took {took:.0f} s. Delivered "
                 "msg/s: from the first connect until the Maildir holds every accepted "
                 "message (intake, queue, encryption, Maildir write and sync)."),
            "", table, "",
            bullet(verdict + "."),
            bullet("With encryption on, a stage in front of the Maildir writer hands the "
                   "waiting messages up to 256 KB to one long-lived child process in one "
                   "round trip (modify/pgp_child.py), which wraps them in PGP/MIME and "
                   "encrypts them (pysequoia: one X25519 key agreement, AES over the body, "
                   "ASCII armor), while the writer writes and syncs the batch before; the "
                   "server's own process only reads each message and pipes it. The queue "
                   "zeroes a delivered encrypted message's bytes `scrub_delay` (15 s) "
                   "later, and its segments rotate every 5 s meanwhile: a segment whose "
                   "messages are all delivered is deleted before then, so steady traffic "
                   "rewrites nothing (only segments kept by deferred mail are). These runs "
                   "are shorter than 15 s, so no scrub could fall in them anyway; a "
                   "40,000-message run of about 50 s (under a profiler) made 9 segments "
                   "and one scrub batch before the stop's."),
            bullet("Where the cost was (4 KB, 5,000 messages, the server under yappi with "
                   "CPU clocks, and the CPU of the server process alone beside the "
                   "bench's total): before, the server process spent about 0.44 ms of "
                   "CPU per message with encryption on against 0.28 off, all of it under "
                   "the one GIL that bounds intake and delivery: pysequoia's encrypt 0.08 "
                   "to 0.1 ms (holding the GIL), the inline-armor regex 0.02 ms, the rest "
                   "of the wrapping 0.01 ms, and the queue scrub about 0.04 ms (mostly "
                   "the kernel writing the zeroed pages back). The revision before these "
                   "changes, run alternately with this work in one session (4 KB, 5 "
                   "rounds of 5,000 each, three times), gave on/off 0.64, 0.65 and 0.68 "
                   "(median of the rounds) where this work gave 0.71 and 0.73 (two "
                   "intermediate versions) and 0.79 (the final one); a 4 KB run "
                   "of this bench (7 rounds) after the one above, at load average 1.3, "
                   "gave 0.75x (0.77 median of the rounds). After: the server "
                   "process about 0.30 ms per message on against 0.28 off, the child 0.11 "
                   "to 0.13 ms on another core. What is left of the cost is that CPU, "
                   "most of it the key agreement (pysequoia takes 0.078 ms for a 1-byte "
                   "message; OpenSSL's X25519 alone 0.05 ms here): on this two-core "
                   "machine, shared with other jobs (load average 3 to 7 during this "
                   "work), the child competes with the server and the load generator for "
                   "the cores, so the ratio moves with the neighbours' load, between 0.69 "
                   "and 0.79 in a round here (not measured with a core to spare)."),
            bullet("Tried before and not kept: a pool of child processes with a round "
                   "trip per message (the wake-ups cost as much as the GIL hold), "
                   "encrypting in worker threads before the writer, a Maildir writer "
                   "with two batches in flight. This bench deletes its throwaway servers "
                   "only at the end (see `run`: on this machine's journal-less ext4 a "
                   "deleted inode slows every file creation for a minute or more)."),
            ""]))
    return 1 if any(f.problems for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
