#!/usr/bin/env python3
"""Idle IMAP IDLE sessions on a chatmail relay (issue 17).

    .venv/bin/python bench/chatmail_idle.py [--idle 10000] [--timeout 600]
        [--dovecot-idle N] [--no-dovecot] [--write-docs]

A throwaway pillarbox (`pillarbox init --mode chatmail`, strict DKIM off, the
limits raised so one address and one user may hold --idle connections, the
user's password hash made cheap: logins are not what is measured) holds
--idle connections over IMAPS, each logged in, INBOX selected, in IDLE. The
script reads the server's resident set (VmRSS) fresh, with 10 and with all
of them, its CPU while they idle, then delivers one PGP/MIME message through
the MX port (cleartext would be refused) and times until every connection got
its `* N EXISTS`. The loads and measures are bench/imap_load.py's `idle_load`.

Then, unless --no-dovecot, the same against Debian's Dovecot (default set-up,
a process per connection; memory as Pss summed over its processes) with
--dovecot-idle connections (default: --idle; each Dovecot connection is a
process, so on a small machine a smaller count may be kinder to neighbours,
and the report says which count each figure is for). --write-docs writes the
section "Idle IDLE sessions on a chatmail relay (issue 17)" into
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import imap_load as il
import smtp_load as sl
from common import fmt, log, os_name, para, write_section

SECTION = "Idle IDLE sessions on a chatmail relay (issue 17)"


def pgp_mime(n: int) -> bytes:
    """A message the e2ee check passes: PGP/MIME, a PKESK and a SEIPD packet (no real
    cryptography: the relay only reads the packet headers)."""
    pkesk = bytes([0xC1, 40]) + b"\x03" + b"k" * 39
    body = b"\x01" + b"x" * 150
    seipd = bytes([0xD2, len(body)]) + body
    b64 = base64.b64encode(pkesk + seipd).decode()
    armored = "\r\n".join(["-----BEGIN PGP MESSAGE-----", "",
                           *[b64[i:i + 64] for i in range(0, len(b64), 64)],
                           "-----END PGP MESSAGE-----"])
    return (f"From: <sender{n}@example.net>\r\nTo: <{il.USER}>\r\nSubject: [...]\r\n"
            f"Message-ID: <bench{n}.{time.time()}@example.net>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
            'boundary="b"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\n'
            "Version: 1\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n"
            f"{armored}\r\n--b--\r\n").encode()


class ChatmailServer(il.Server):
    def setup(self) -> None:
        real = sl.pillarbox

        def init_chatmail(*args, **kw):  # the parent's `init`, with --mode chatmail
            if args and args[0] == "init":
                args = (*args, "--mode", "chatmail")
            return real(*args, **kw)

        sl.pillarbox = init_chatmail
        try:
            super().setup()
        finally:
            sl.pillarbox = real
        text = self.cfg.read_text()
        text, k = re.subn(r"(?m)^strict_dkim\s*=\s*true", "strict_dkim = false", text)
        if k != 1 or not re.search(r'(?m)^mode = "chatmail"$', text):
            raise SystemExit(f"error: {self.cfg} is not a chatmail config")
        self.cfg.write_text(text)

    def deliver_one(self, msg: bytes) -> None:
        il.smtp_send(self.ports["smtp"], [pgp_mime(0)], 1)


def describe(name: str, r: il.IdleResult) -> dict[str, object]:
    return {
        "name": name, "held": r.held, "asked": r.connections,
        "fresh_mb": r.rss_fresh_kb / 1024, "all_mb": r.rss_all_kb / 1024,
        "per_kib": r.per_conn_kib, "setup_s": r.setup_s, "idle_cpu": r.idle_cpu * 100,
        "wake_max_ms": max(r.wake) * 1000 if r.wake else None,
        "wake_med_ms": sorted(r.wake)[len(r.wake) // 2] * 1000 if r.wake else None,
        "processes": r.processes, "errors": r.errors,
    }


def run_one(srv, n: int, timeout: float) -> il.IdleResult:
    srv.start()
    time.sleep(1)
    try:
        return asyncio.run(il.idle_load(srv, "inbox", n, timeout))
    finally:
        srv.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--dovecot-idle", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--no-dovecot", dest="dovecot", action="store_false")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    need = max(args.idle, args.dovecot_idle or 0) * 2 + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    root = Path(tempfile.mkdtemp(prefix="pillarbox-chatmail-idle-"))
    rows = []
    try:
        srv = ChatmailServer(root / "pillarbox", args.idle + 100)
        srv.setup()
        srv.cheap_password()
        log(f"pillarbox in chatmail mode: {args.idle} connections in IDLE")
        r = run_one(srv, args.idle, args.timeout)
        rows.append(describe("pillarbox (chatmail mode)", r))
        log(f"  {rows[-1]}")
        if args.dovecot:
            exe = il.ensure_dovecot()
            if exe:
                n = args.dovecot_idle or args.idle
                dov = il.Dovecot(root / "dovecot", exe, n + 100, "Dovecot")
                dov.setup(srv.maildir, srv.dir / "var" / "tls")
                dov.set_password(cheap=True)
                log(f"Dovecot {dov.version}: {n} connections in IDLE")
                d = run_one(dov, n, args.timeout)
                rows.append(describe(f"Dovecot {dov.version} (default set-up)", d))
                log(f"  {rows[-1]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    problems = [f"{row['name']}: {e}" for row in rows for e in row["errors"]]
    if args.write_docs:
        write_section(SECTION, report(rows, args))
    for p in problems:
        log(f"problem: {p}")
    return 1 if problems else 0


def report(rows: list[dict], args: argparse.Namespace) -> str:
    head = ("| server | connections | RSS/Pss fresh | with all | per connection | set-up "
            "| idle CPU | EXISTS after (median / max) |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['name']} | {r['held']} of {r['asked']} | {fmt(r['fresh_mb'])} MB "
        f"| {fmt(r['all_mb'])} MB | {fmt(r['per_kib'], 1)} KiB | {fmt(r['setup_s'], 1)} s "
        f"| {fmt(r['idle_cpu'], 1)} % | {fmt(r['wake_med_ms'])} / {fmt(r['wake_max_ms'])} ms |\n"
        for r in rows)
    when = dt.date.today().isoformat()
    return (f"## {SECTION}\n\n" + para(f"`bench/chatmail_idle.py --idle {args.idle}"
                 + (f" --dovecot-idle {args.dovecot_idle}" if args.dovecot_idle else "")
                 + f"` on {os_name()}, {il.NPROC} CPUs shared with other work, {when}. "
                 "Each connection: IMAPS, LOGIN, SELECT INBOX, IDLE; then one PGP/MIME "
                 "message through the MX port, timed from the start of that SMTP session "
                 "to each connection's EXISTS. pillarbox's memory is the server "
                 "process's VmRSS; Dovecot's the Pss of all its processes (a process "
                 "per connection).") + "\n" + head + body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
