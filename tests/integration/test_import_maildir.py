"""`pillarbox import-maildir`: a Maildir made by a real Dovecot (Debian's
dovecot-imapd, a throwaway instance with its own config on a free port) is
filled and flagged over IMAP, imported, and read back through pillarbox with
the same UIDVALIDITY, UIDs, UIDNEXT, flags, keywords and folder names."""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .support import ALICE, BOB, PASSWORD, free_ports, make_message

DOVECOT = "/usr/sbin/dovecot"
USER = "alice"
DOVECOT_CONF = """\
# a throwaway instance for pillarbox's import test, 127.0.0.1 only
protocols = imap
listen = 127.0.0.1
instance_name = dovecot-pillarbox-test-{pid}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = /dev/null
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 0
default_internal_user = {internal}
default_login_user = {login}
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%n
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


class Dovecot:
    """`dovecot -F -c DIR/dovecot.conf` in a temporary directory of its own."""

    def __init__(self) -> None:
        # Not under pytest's 0700 tmp_path: Dovecot's unprivileged users walk to it.
        self.dir = Path(tempfile.mkdtemp(prefix="pillarbox-dovecot-"))
        self.dir.chmod(0o755)
        for sub in ("run", "state", f"home/{USER}"):
            (self.dir / sub).mkdir(parents=True)
        if os.geteuid() == 0:  # Dovecot never runs mail processes as root
            self.uid = self.gid = 65534
            internal, login = "dovecot", "dovenull"
            os.chown(self.dir / "home" / USER, self.uid, self.gid)
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            internal = login = pwd.getpwuid(self.uid).pw_name
        (self.dir / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        self.port = free_ports(1)[0]
        (self.dir / "dovecot.conf").write_text(DOVECOT_CONF.format(
            pid=os.getpid(), d=self.dir, internal=internal, login=login, uid=self.uid,
            gid=self.gid, port=self.port))
        self.maildir = self.dir / "home" / USER / "Maildir"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                pytest.fail(f"dovecot exited with {self.proc.returncode}: {out}{self.log()}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sk:
                    if sk.makefile("rb").readline().startswith(b"* OK"):
                        return
            time.sleep(0.05)  # Dovecot's start has no event we could wait on
        pytest.fail(f"dovecot not answering after {timeout} s: {self.log()}")

    def log(self) -> str:
        try:
            return (self.dir / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # the master stops its children and writes everything
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def dovecot():
    if not os.access(DOVECOT, os.X_OK):
        pytest.fail("Debian's dovecot-imapd is missing: run scripts/ensure-system-packages")
    d = Dovecot()
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def _select(c: imaplib.IMAP4, box: str) -> tuple[int, int]:
    typ, _ = c.select(f'"{box}"')
    assert typ == "OK", (box, typ)
    v = int(c.response("UIDVALIDITY")[1][0])
    typ, data = c.status(f'"{box}"', "(UIDNEXT)")
    assert typ == "OK", data
    n = int(re.search(rb"UIDNEXT (\d+)", data[0]).group(1))
    return v, n


def _view(c: imaplib.IMAP4, box: str) -> dict:
    """UIDVALIDITY, UIDNEXT and, per Message-ID, the UID and flags (not \\Recent)."""
    uidvalidity, uidnext = _select(c, box)
    msgs = {}
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta, header = item
        uid = int(re.search(rb"UID (\d+)", meta).group(1))
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode().split())
        mid = re.search(rb"Message-ID:\s*(\S+)", header, re.I).group(1).decode()
        msgs[mid] = (uid, flags - {"\\Recent"})
    return {"uidvalidity": uidvalidity, "uidnext": uidnext, "messages": msgs}


def _folders(c: imaplib.IMAP4) -> set[str]:
    typ, data = c.list()
    assert typ == "OK", data
    return {re.search(rb' "?([^"]*)"?$', line).group(1).decode() for line in data}


def _fill_dovecot(d: Dovecot) -> None:
    """Messages via APPEND, gaps in the UIDs (expunges), flags and keywords set."""
    c = imaplib.IMAP4("127.0.0.1", d.port, timeout=10)
    try:
        c.login(USER, PASSWORD)
        for box in ("Archive", "Lists.pillarbox"):
            assert c.create(f'"{box}"')[0] == "OK"
        assert c.subscribe('"Lists.pillarbox"')[0] == "OK"
        for box, n in (("INBOX", 6), ("Archive", 3), ("Lists.pillarbox", 1)):
            for i in range(n):
                msg = make_message("bob@example.test", ALICE, f"{box} {i}", date_and_id=False,
                                   headers={"Message-ID": f"<{box}.{i}@dovecot.test>"})
                assert c.append(f'"{box}"', None, None, msg)[0] == "OK"
        c.select("INBOX")
        c.uid("STORE", "2,4", "+FLAGS", r"(\Deleted)")
        c.expunge()  # INBOX UIDs are now 1 3 5 6, UIDNEXT 7
        c.uid("STORE", "1", "+FLAGS", r"(\Seen)")
        c.uid("STORE", "3", "+FLAGS", r"(\Flagged Project)")
        c.uid("STORE", "6", "+FLAGS", r"(\Answered \Seen $Forwarded)")
        c.select('"Archive"')
        c.uid("STORE", "1", "+FLAGS", r"(\Deleted)")
        c.expunge()
        c.uid("STORE", "3", "+FLAGS", r"(\Seen Project)")
        c.logout()
    finally:
        with contextlib.suppress(Exception):
            c.shutdown()


def test_import_dovecot_maildir_keeps_uids_flags_and_folders(dovecot, make_server):
    _fill_dovecot(dovecot)
    c = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=10)
    c.login(USER, PASSWORD)
    boxes = ("INBOX", "Archive", "Lists.pillarbox")
    before = {box: _view(c, box) for box in boxes}
    dovecot_folders = _folders(c)
    c.logout()
    dovecot.stop()
    assert sorted(before["INBOX"]["messages"].values())[0][0] == 1
    assert [u for u, _ in sorted(before["INBOX"]["messages"].values())] == [1, 3, 5, 6]
    assert (dovecot.maildir / "dovecot-uidlist").exists()

    srv = make_server(start=False)
    p = srv.cli_ok("import-maildir", dovecot.maildir, ALICE)
    assert "INBOX\t4 messages" in p.stdout, p.stdout
    srv.start()
    # A running server keeps mailboxes in memory: importing then is refused.
    p = srv.cli("import-maildir", dovecot.maildir, BOB)
    assert p.returncode == 1 and "is running" in p.stderr, p.stderr

    c = srv.imap(ALICE)
    after = {box: _view(c, box) for box in boxes}
    folders = _folders(c)
    typ, subscribed = c.lsub()
    c.logout()
    assert typ == "OK" and any(b"Lists.pillarbox" in x for x in subscribed), subscribed
    for box in boxes:
        assert after[box] == before[box], box
    assert after["INBOX"]["messages"]["<INBOX.2@dovecot.test>"] == (3, {"\\Flagged", "Project"})
    assert after["INBOX"]["messages"]["<INBOX.5@dovecot.test>"] == (
        6, {"\\Answered", "\\Seen", "$Forwarded"})
    assert after["INBOX"]["uidnext"] == 7
    assert dovecot_folders <= folders, (dovecot_folders, folders)

    # Importing into a mailbox that has messages would mix two sets of UIDs.
    srv.stop()
    p = srv.cli("import-maildir", dovecot.maildir, ALICE)
    assert p.returncode == 1 and "already holds messages" in p.stderr, p.stderr


def test_import_plain_maildir_numbers_in_arrival_order(make_server, tmp_path):
    src = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur", ".Work/cur", ".Work/new", ".Work/tmp"):
        (src / sub).mkdir(parents=True)
    names = ["1700000001.M1P1.old,S=10:2,S", "1700000002.M1P1.old:2,FS", "1700000003.M1P1.old"]
    for i, name in enumerate(names):
        where = src / ("new" if ":2," not in name else "cur") / name
        where.write_bytes(make_message(ALICE, BOB, f"plain {i}", date_and_id=False,
                                       headers={"Message-ID": f"<plain.{i}@x.test>"}))
    (src / ".Work" / "cur" / "1700000009.M1P1.old:2,").write_bytes(
        make_message(ALICE, BOB, "w", date_and_id=False, headers={"Message-ID": "<work@x.test>"}))
    srv = make_server(start=False)
    srv.cli_ok("import-maildir", src, BOB)
    srv.start()
    c = srv.imap(BOB)
    inbox, work = _view(c, "INBOX"), _view(c, "Work")
    c.logout()
    assert inbox["messages"] == {"<plain.0@x.test>": (1, {"\\Seen"}),
                                 "<plain.1@x.test>": (2, {"\\Flagged", "\\Seen"}),
                                 "<plain.2@x.test>": (3, set())}
    assert inbox["uidnext"] == 4
    assert work["messages"] == {"<work@x.test>": (1, set())}
