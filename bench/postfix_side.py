#!/usr/bin/env python3
"""Beside Postfix (issue 15): tcp_table lookups and LMTP deliveries.

    .venv/bin/python bench/postfix_side.py [--lookups 20000] [--messages 2000]
        [--sessions 10] [--size 4096] [--no-dovecot] [--write-docs]

A throwaway pillarbox (`init`, one user and one alias, free 127.0.0.1 ports,
`log_level = "warning"`, listen.lmtp and [postfix] recipient_access set) is
started as `python -m pillarbox -c CFG serve`. Then:

- tcp_table: --lookups `get KEY` requests to the recipient-access map, each
  waiting for its reply as Postfix's client does, over one persistent
  connection and over 20 concurrent ones; the keys cycle through a user, an
  alias, an unknown address of the domain and an address of another domain;
- LMTP: --messages messages of --size octets to the user, --sessions
  connections at once, each LHLO once, then MAIL/RCPT/DATA pipelined per
  message (as Postfix's lmtp client), the same load against pillarbox and
  against Debian's Dovecot LMTP (dovecot-lmtpd; a throwaway instance with its
  own base and state directories, a static userdb, Maildir, 127.0.0.1).

*Accepted* is messages over the time from the first connect to the last 250.
Dovecot answers 250 once the message is in the Maildir; pillarbox once it is
durable in its queue (fsync'd), and puts it into the Maildir right after:
*in Maildir* is messages over the time until the Maildir holds them all.
Every reply must be as expected and every message must arrive, else exit 1.
--write-docs writes the section into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import smtp_load as sl
from common import bullet, fmt, log, os_name, para, write_section

SECTION = "Beside Postfix: tcp_table and LMTP (issue 15)"
HOST = "127.0.0.1"
ALIAS = f"team@{sl.DOMAIN}"
KEYS = [sl.RCPT, ALIAS, f"nobody@{sl.DOMAIN}", "someone@elsewhere.test"]
DOVECOT_UID = 65534
DOVECOT_CONF = """\
# written by pillarbox bench/postfix_side.py: a throwaway instance, 127.0.0.1 only
protocols = lmtp
listen = 127.0.0.1
instance_name = dovecot-lmtp-bench-{tag}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = /dev/null
ssl = no
mail_location = maildir:~/Maildir
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={d}/home/%n allow_all_users=yes
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


# -- tcp_table ------------------------------------------------------------------------------

async def table_client(port: int, n: int, offset: int) -> tuple[int, list[str]]:
    """n lookups one after another over one connection; (answered, wrong replies)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    wrong = []
    expect = {sl.RCPT: b"200 OK", ALIAS: b"200 OK"}
    for i in range(n):
        key = KEYS[(offset + i) % len(KEYS)]
        writer.write(f"get {key}\n".encode())
        line = (await reader.readline()).rstrip(b"\n")
        if line[:3] != (expect.get(key, b"500 ")[:3]) or (key in expect and line != expect[key]):
            wrong.append(f"{key}: {line[:80]!r}")
    writer.close()
    return n, wrong


async def table_load(port: int, total: int, conns: int) -> dict:
    start = time.perf_counter()
    per = total // conns
    results = await asyncio.gather(*(table_client(port, per, i) for i in range(conns)))
    took = time.perf_counter() - start
    done = sum(r[0] for r in results)
    wrong = [w for r in results for w in r[1]]
    return {"conns": conns, "lookups": done, "rate": done / took, "wrong": wrong}


# -- LMTP -----------------------------------------------------------------------------------

async def lmtp_session(port: int, n: int, message: bytes, sender: str, rcpt: str,
                       wrong: list[str]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line

    await reply()  # greeting
    writer.write(b"LHLO bench.test\r\n")
    await reply()
    data = message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    for _ in range(n):
        writer.write(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        got = [await reply() for _ in range(3)]
        if [g[:3] for g in got] != [b"250", b"250", b"354"]:
            wrong.append(repr(got)[:200])
            break
        writer.write(data)
        final = await reply()
        if final[:3] != b"250":
            wrong.append(final[:200].decode(errors="replace"))
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()


def count(new: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(new))
    except FileNotFoundError:
        return 0


async def lmtp_load(name: str, port: int, total: int, sessions: int, message: bytes,
                    new: Path, alive) -> dict:
    wrong: list[str] = []
    before = count(new)
    start = time.perf_counter()
    per = total // sessions
    await asyncio.gather(*(lmtp_session(port, per, message, "sender@remote.test", sl.RCPT,
                                        wrong) for _ in range(sessions)))
    accepted = time.perf_counter() - start
    sent = per * sessions
    deadline = time.monotonic() + 120
    while count(new) - before < sent and time.monotonic() < deadline and alive():
        await asyncio.sleep(0.02)
    landed = time.perf_counter() - start
    arrived = count(new) - before
    if arrived != sent:
        wrong.append(f"{arrived} of {sent} messages in the Maildir")
    return {"name": name, "messages": sent, "accepted": sent / accepted,
            "in_maildir": sent / landed, "wrong": wrong}


class DovecotLMTP:
    def __init__(self, root: Path) -> None:
        self.dir = root
        self.port = sl.free_port()
        self.proc: subprocess.Popen | None = None
        self.new = root / "home" / sl.USER / "Maildir" / "new"
        self.version = "?"

    def start(self) -> None:
        exe = shutil.which("dovecot") or "/usr/sbin/dovecot"
        self.dir.mkdir(parents=True)
        for d in (self.dir, self.dir.parent):
            d.chmod(0o755)
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir()
        os.chown(self.dir / "home", DOVECOT_UID, DOVECOT_UID)
        (self.dir / "dovecot.conf").write_text(DOVECOT_CONF.format(
            tag=os.getpid(), d=self.dir, uid=DOVECOT_UID, port=self.port))
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        self.version = r.stdout.split()[0] if r.stdout else "?"
        self._log = open(self.dir / "stdout.log", "wb")
        self.proc = subprocess.Popen([exe, "-F", "-c", str(self.dir / "dovecot.conf")],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("error: dovecot exited:\n"
                                 + (self.dir / "stdout.log").read_text(errors="replace"))
            try:
                import socket
                with socket.create_connection((HOST, self.port), timeout=2) as s:
                    if s.makefile("rb").readline().startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("error: dovecot LMTP not answering")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log.close()

    def errors(self) -> list[str]:
        try:
            text = (self.dir / "dovecot.log").read_text(errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if re.search(r"\b(Error|Fatal|Panic):", ln)]


# -- the run --------------------------------------------------------------------------------

def setup_pillarbox(root: Path) -> tuple[sl.Server, int, int]:
    srv = sl.Server(root)
    srv.setup()
    lmtp, access = sl.free_port(), sl.free_port()
    text = srv.cfg.read_text()
    text = re.sub(r"(?m)^lmtp\s*=.*$", f'lmtp = ["{HOST}:{lmtp}"]', text, count=1)
    text = re.sub(r"(?m)^recipient_access\s*=.*$", f'recipient_access = ["{HOST}:{access}"]',
                  text, count=1)
    srv.cfg.write_text(text)
    sl.pillarbox("-c", str(srv.cfg), "alias", "add", ALIAS, sl.RCPT)
    return srv, lmtp, access


def message(size: int) -> bytes:
    head = (f"From: <sender@remote.test>\r\nTo: <{sl.RCPT}>\r\nSubject: lmtp bench\r\n"
            "Message-ID: <bench@remote.test>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, and then some more words.\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head) - 2)]
    body = body[: body.rfind(b"\r\n") + 2] if b"\r\n" in body else b""
    return head + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    tmp = Path(tempfile.mkdtemp(prefix="pbx-postfix-side-", dir="/tmp"))
    srv = dovecot = None
    problems: list[str] = []
    try:
        srv, lmtp_port, access_port = setup_pillarbox(tmp / "pillarbox")
        srv.start()
        log("tcp_table lookups ...")
        tables = [asyncio.run(table_load(access_port, args.lookups, c)) for c in (1, 20)]
        msg = message(args.size)
        log("LMTP into pillarbox ...")
        runs = [asyncio.run(lmtp_load("pillarbox", lmtp_port, args.messages, args.sessions,
                                      msg, srv.maildir_new, srv.alive))]
        if not args.no_dovecot:
            dovecot = DovecotLMTP(tmp / "dovecot")
            dovecot.start()
            log("LMTP into Dovecot ...")
            runs.append(asyncio.run(lmtp_load(f"Dovecot {dovecot.version}", dovecot.port,
                                              args.messages, args.sessions, msg, dovecot.new,
                                              dovecot.alive)))
            problems += [f"dovecot: {e}" for e in dovecot.errors()]
        for t in tables:
            problems += [f"tcp_table ({t['conns']} conns): {w}" for w in t["wrong"][:5]]
        for r in runs:
            problems += [f"{r['name']}: {w}" for w in r["wrong"][:5]]
        if srv.alive() and re.search(r"Traceback|level=error", srv.log_text()):
            problems.append("pillarbox logged errors:\n" + srv.log_text()[-2000:])
    finally:
        if dovecot is not None:
            dovecot.stop()
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = render(args, tables, runs, load_before, load_after)
    print(text)
    for p in problems:
        log(f"problem: {p}")
    if args.write_docs and not problems:
        write_section(SECTION, text)
    return 1 if problems else 0


def render(args, tables: list[dict], runs: list[dict], before: str, after: str) -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=sl.REPO).stdout.strip()
    out = [f"## {SECTION}", "",
           para(f"Measured {dt.date.today().isoformat()} on this machine: {os.cpu_count()} "
                f"CPUs, {os_name()}, Python {sys.version.split()[0]}; pillarbox at commit "
                f"{rev}; load average before the run {before} and after it {after} (other "
                "work on the machine shows up in the figures)."), "",
           "Command:", "",
           "    .venv/bin/python bench/postfix_side.py --write-docs", "",
           "| tcp_table (recipient access) | connections | lookups | lookups/s |",
           "|---|---|---|---|"]
    for t in tables:
        out.append(f"| `get KEY`, each awaited | {t['conns']} | {t['lookups']} | "
                   f"{fmt(t['rate'])} |")
    out += ["", "| LMTP into | sessions | messages | size | accepted msg/s | "
            "in Maildir msg/s |", "|---|---|---|---|---|---|"]
    for r in runs:
        out.append(f"| {r['name']} | {args.sessions} | {r['messages']} | {args.size} B | "
                   f"{fmt(r['accepted'])} | {fmt(r['in_maildir'])} |")
    out += ["", bullet("tcp_table: an asyncio client in the same process as the others sends "
                       "`get KEY` and waits for the reply line before the next (as Postfix's "
                       "tcp: client does); keys cycle through a user, an alias, an unknown "
                       "address of the domain and one of another domain, every reply checked."),
            bullet("LMTP: the same client load against both: each session LHLO once, then "
                   "per message MAIL, RCPT, DATA pipelined and the message (one recipient), "
                   "as Postfix's lmtp client delivers. Dovecot's 250 comes after the Maildir "
                   "write (its default mail_fsync); pillarbox's after the message is fsync'd "
                   "into its queue, which delivers it into the Maildir right after: *in "
                   "Maildir* counts until the Maildir holds every message."),
            bullet("Every reply was as expected and every message arrived in this run.")]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
