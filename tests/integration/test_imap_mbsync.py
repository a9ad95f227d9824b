"""A real sync client: mbsync (isync) mirrors a 1,000-message mailbox both ways.

mbsync is what many people run from cron to keep a local Maildir in step with
their IMAP server. It leans on UIDs, UIDPLUS (APPENDUID, COPYUID), flags,
EXPUNGE, APPEND with dates and pipelining (hundreds of commands in flight) far
more than a mail reader does. The tests deliver mail over SMTP, let mbsync pull
it into a Maildir tree in tmp_path, change both sides, and check that each run
carries the changes across, as seen over IMAP (imaplib) and in the local files.

isync is installed by scripts/ensure-system-packages, as swaks is. Every mbsync
run keeps its `-D` protocol trace in tmp_path (mbsync-N.log).
"""

from __future__ import annotations

import calendar
import hashlib
import imaplib
import os
import re
import shutil
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support import ALICE, BOB, CLIENT_NAME, PASSWORD, Server, make_message

N_MESSAGES = 1000
SENDERS = 4  # parallel SMTP sessions
DELIVERY_TIMEOUT = 60.0
MBSYNC_TIMEOUT = 120.0
LETTERS = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered",
           "S": "\\Seen", "T": "\\Deleted"}


@pytest.fixture(autouse=True)
def _mbsync_installed() -> None:
    assert shutil.which("mbsync"), "mbsync is missing: run scripts/ensure-system-packages"


# -- mail -----------------------------------------------------------------------


def subject_of(i: int) -> str:
    return f"sync message {i:04d}"


def body_of(i: int) -> str:
    """A few lines whose digest pins the exact content of message i."""
    line = hashlib.sha256(str(i).encode()).hexdigest()
    return "".join(f"{line} line {k}\r\n" for k in range(1 + i % 7))


def deliver_all(server: Server, n: int, senders: int = SENDERS) -> None:
    """n messages to alice over several SMTP sessions at once."""
    errors: list[BaseException] = []

    def send(indices: range) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname=CLIENT_NAME,
                              timeout=30) as s:
                for i in indices:
                    s.sendmail(BOB, [ALICE], make_message(BOB, ALICE, subject_of(i), body_of(i)))
        except BaseException as e:  # re-raised by the main thread
            errors.append(e)

    threads = [threading.Thread(target=send, args=(range(k, n, senders),))
               for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def count_files(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def wait_for_files(folder: Path, n: int, timeout: float) -> None:
    """Poll a Maildir subfolder until it holds n files (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while (have := count_files(folder)) < n:
        assert time.monotonic() < deadline, f"{folder}: {have} of {n} files after {timeout}s"
        time.sleep(0.02)


def subject_in(data: bytes, where: object) -> str:
    m = re.search(rb"^Subject: (.*?)\r?$", data, re.M)
    assert m, f"{where}: no Subject"
    return m.group(1).decode()


# -- the local side ---------------------------------------------------------------


@dataclass
class LocalMessage:
    path: Path
    flags: str  # Maildir info letters


def read_local(maildir: Path) -> dict[str, LocalMessage]:
    """Messages of a local Maildir (new/ and cur/) by Subject."""
    out: dict[str, LocalMessage] = {}
    for sub in ("new", "cur"):
        for f in sorted((maildir / sub).iterdir()):
            if f.name.startswith("."):
                continue
            subject = subject_in(f.read_bytes(), f)
            assert subject not in out, f"{subject!r} twice in {maildir}"
            out[subject] = LocalMessage(f, f.name.partition(":2,")[2])
    return out


def set_local_flags(msg: LocalMessage, letters: str) -> None:
    """Change flags as a Maildir MUA does: rename the file (into cur/)."""
    letters = "".join(sorted(set(letters)))
    base = msg.path.name.partition(":2,")[0]
    dest = msg.path.parent.parent / "cur" / f"{base}:2,{letters}"
    msg.path.rename(dest)
    msg.path, msg.flags = dest, letters


def write_local(folder: Path, name: str, data: bytes, mtime: float | None = None) -> Path:
    """Drop a message into a local Maildir folder (made if missing), as a MUA would."""
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    path = folder / ("cur" if ":2," in name else "new") / name
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# -- the server side, over IMAP ---------------------------------------------------


@dataclass
class ServerMessage:
    uid: int
    flags: frozenset[str]
    internaldate: float


def server_view(server: Server, mailbox: str = "INBOX") -> dict[str, ServerMessage]:
    """Subject -> UID, flags and internal date of every message in a mailbox, over IMAP."""
    c = server.imaps(ALICE, timeout=60)
    try:
        typ, data = c.select(mailbox, readonly=True)
        assert typ == "OK", f"SELECT {mailbox}: {data}"
        if int(data[0]) == 0:
            return {}
        typ, data = c.fetch("1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", data
        out = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            head, hdr = item
            uid = int(re.search(rb"UID (\d+)", head).group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", head).group(1).decode().split()
            date = time.mktime(imaplib.Internaldate2tuple(head))
            out[subject_in(hdr, head)] = ServerMessage(uid, frozenset(flags) - {"\\Recent"},
                                                       date)
        return out
    finally:
        c.logout()


# -- mbsync -----------------------------------------------------------------------


class MBSync:
    """mbsync with its config in tmp_path: alice's IMAP account <-> a local Maildir tree."""

    def __init__(self, server: Server, root: Path, *, starttls: bool = False,
                 account_extra: str = "", store_extra: str = "", patterns: str = "*") -> None:
        self.root = root
        self.local = root / "Mail"
        self.local.mkdir(parents=True)
        self.inbox = self.local / "INBOX"
        self.rc = root / "mbsyncrc"
        self.runs = 0
        cert = server.data_dir / "tls" / "cert.pem"
        assert cert.is_file(), f"no server certificate at {cert}"
        port = server.imap_port if starttls else server.imaps_port
        self.rc.write_text(mbsyncrc(port, "STARTTLS" if starttls else "IMAPS", cert, self.local,
                                    account_extra, store_extra, patterns))

    def run(self) -> str:
        """One `mbsync -a`; fails on a non-zero exit or on any error or warning it prints."""
        self.runs += 1
        log = self.root / f"mbsync-{self.runs}.log"
        env = {"HOME": str(self.root), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "LC_ALL": "C"}
        start = time.monotonic()
        p = subprocess.run(["mbsync", "-c", str(self.rc), "-D", "-a"], capture_output=True,
                           env=env, timeout=MBSYNC_TIMEOUT)
        took = time.monotonic() - start
        out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
        log.write_text(out)
        print(f"mbsync run {self.runs}: exit {p.returncode} in {took:.1f}s, trace {log}")
        assert p.returncode == 0, f"mbsync exited {p.returncode}; tail of {log}:\n" + \
            "\n".join(out.splitlines()[-40:])
        # Protocol lines are "F: ..." (far side); tagged NO/BAD would mean a refused command.
        problems = [line for line in out.splitlines()
                    if re.match(r"(Error|Warning|IMAP error)", line)
                    or re.match(r"F: \d+ (NO|BAD) ", line) or re.match(r"F: \* (NO|BAD|BYE) ",
                                                                      line)]
        problems = [line for line in problems if line != "F: * BYE Logging out"]
        assert not problems, f"mbsync saw problems (trace {log}):\n" + "\n".join(problems[:20])
        return out


def mbsyncrc(port: int, ssltype: str, cert: Path, local: Path, account_extra: str = "",
             store_extra: str = "", patterns: str = "*") -> str:
    """The sample of docs/IMAP.md (plus Remove Both), pointed at the test server."""
    return f"""\
IMAPAccount pillarbox
Host 127.0.0.1
Port {port}
User {ALICE}
Pass {PASSWORD}
SSLType {ssltype}
# the server's self-signed certificate, trusted as it is
CertificateFile {cert}
SystemCertificates no
{account_extra}
IMAPStore pillarbox-far
Account pillarbox
{store_extra}
MaildirStore local-near
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel pillarbox
Far :pillarbox-far:
Near :local-near:
Patterns {patterns}
Sync All
Create Both
Remove Both
Expunge Both
CopyArrivalDate yes
SyncState *
"""


# -- the tests --------------------------------------------------------------------


def test_mbsync_syncs_1000_messages_both_ways(make_server: Callable[..., Server],
                                              tmp_path: Path) -> None:
    started = time.monotonic()
    server = make_server()
    inbox = server.maildir(ALICE)
    deliver_all(server, N_MESSAGES)
    wait_for_files(inbox / "new", N_MESSAGES, DELIVERY_TIMEOUT)
    print(f"delivered {N_MESSAGES} in {time.monotonic() - started:.1f}s")
    # A folder made on the server, with a message, comes down too.
    c = server.imaps(ALICE)
    try:
        assert c.create("Projects.alpha")[0] == "OK"
        assert c.append("Projects.alpha", "(\\Flagged)", None,
                        make_message(BOB, ALICE, "project news", "On the server.\r\n"))[0] == "OK"
    finally:
        c.logout()

    # 1. First run: everything arrives locally, as the server has it.
    sync = MBSync(server, tmp_path / "client")
    sync.run()
    local = read_local(sync.inbox)
    assert sorted(local) == sorted(subject_of(i) for i in range(N_MESSAGES))
    server_files = {}
    for f in (inbox / "cur").iterdir():
        data = f.read_bytes()
        server_files[subject_in(data, f)] = (data, f.stat().st_mtime)
    assert len(server_files) == N_MESSAGES, "the server's INBOX is not all in cur/"
    for i in range(N_MESSAGES):
        msg = local[subject_of(i)]
        # mbsync stores LF line ends (ours are CRLF) and adds an X-TUID header.
        data = re.sub(rb"^X-TUID: \S+\n", b"", msg.path.read_bytes(), flags=re.M)
        server_data, server_mtime = server_files[subject_of(i)]
        assert data == server_data.replace(b"\r\n", b"\n"), f"{msg.path}: differs from the server"
        assert data.endswith(body_of(i).replace("\r\n", "\n").encode()), f"{msg.path}: body"
        assert msg.flags == "", f"{msg.path}: flags {msg.flags!r} for an unread message"
        # CopyArrivalDate: the file's time is the INTERNALDATE (whole seconds on the wire)
        assert int(msg.path.stat().st_mtime) == int(server_mtime), f"{msg.path}: date"
    for folder in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (sync.local / folder / "cur").is_dir(), f"{folder} was not made locally"
    project = read_local(sync.local / "Projects" / "alpha")
    assert list(project) == ["project news"] and project["project news"].flags == "F"
    print(f"first sync done at {time.monotonic() - started:.1f}s")
    before = server_view(server)
    assert len(before) == N_MESSAGES

    # 2. Local changes: flags (by renaming files), deletions, new messages and folders.
    seen = [subject_of(i) for i in range(0, 100)]
    flagged = [subject_of(i) for i in range(50, 150)]
    forwarded = [subject_of(i) for i in range(150, 160)]  # Maildir P = $Forwarded
    deleted = [subject_of(i) for i in range(900, 920)]  # file removed
    trashed = [subject_of(i) for i in range(920, 930)]  # T flag: \Deleted, then expunged
    for s in seen:
        set_local_flags(local[s], local[s].flags + "S")
    for s in flagged:
        set_local_flags(local[s], local[s].flags + "F")
    for s in forwarded:
        set_local_flags(local[s], local[s].flags + "P")
    for s in deleted:
        local[s].path.unlink()
    for s in trashed:
        set_local_flags(local[s], local[s].flags + "T")
    composed = calendar.timegm((2019, 1, 2, 3, 4, 5))
    write_local(sync.inbox, "1700000000.local1.client:2,S",
                make_message(ALICE, BOB, "written locally", "Composed offline.\r\n"), composed)
    shutil.rmtree(sync.local / "Archive" / "cur")  # an empty folder removed (Remove Both)
    write_local(sync.local / "Old Mail", "1700000001.local2.client:2,S",
                make_message(ALICE, ALICE, "a note", "In a folder made locally.\r\n"))
    big = make_message(ALICE, ALICE, "big local", "".join(
        f"{k:07d} {'y' * 90}\r\n" for k in range(30_000)))  # ~3 MB
    write_local(sync.local / "Lists" / "pillarbox", "1700000002.local3.client", big)
    # An IMAP client watching INBOX meanwhile hears of every change mbsync makes.
    watcher = server.imaps(ALICE)
    watcher.select("INBOX")

    sync.run()
    after = server_view(server)
    expected = (set(before) - set(deleted) - set(trashed)) | {"written locally"}
    assert set(after) == expected
    assert len(after) == N_MESSAGES - 30 + 1
    for s in set(seen) | set(flagged) | set(forwarded):
        want = ({"\\Seen"} if s in seen else set()) | (
            {"\\Flagged"} if s in flagged else set()) | (
            {"$Forwarded"} if s in forwarded else set())
        assert after[s].flags == want, f"{s}: server flags {set(after[s].flags)}, want {want}"
        assert after[s].uid == before[s].uid, f"{s}: UID changed"
    assert all(after[subject_of(i)].flags == frozenset() for i in range(160, 900))
    new = after["written locally"]
    assert new.flags == {"\\Seen"} and new.internaldate == composed
    assert new.uid > max(m.uid for m in before.values())
    c = server.imaps(ALICE)
    try:
        c.select("INBOX", readonly=True)
        assert len(c.uid("SEARCH", "SEEN")[1][0].split()) == 101
        assert len(c.uid("SEARCH", "FLAGGED")[1][0].split()) == 100
        assert len(c.uid("SEARCH", "KEYWORD", "$Forwarded")[1][0].split()) == 10
        assert c.uid("SEARCH", "DELETED")[1] == [b""]
        typ, data = c.uid("FETCH", str(new.uid), "(BODY.PEEK[])")
        assert data[0][1].endswith(b"Composed offline.\r\n")
        typ, data = c.list()
        names = {re.search(rb'"\." "?(.*?)"?$', line).group(1).decode() for line in data}
        assert {"Old Mail", "Lists.pillarbox", "Projects.alpha"} <= names, names
        assert "Archive" not in names, "the folder removed locally is still on the server"
        typ, data = c.select('"Lists.pillarbox"', readonly=True)
        typ, data = c.fetch("1", "(BODY.PEEK[])")
        assert re.sub(rb"X-TUID: \S+\r\n", b"", data[0][1]) == big, "the big message changed"
    finally:
        c.logout()
    assert list(server_view(server, '"Old Mail"')) == ["a note"]
    assert count_files(inbox / "cur") == N_MESSAGES - 30 + 1
    # the watcher's view: 30 EXPUNGEs, the new message, the flag changes
    typ, _ = watcher.noop()
    assert typ == "OK"
    expunges = watcher.untagged_responses.get("EXPUNGE", [])
    assert len(expunges) == 30, f"the watcher got {len(expunges)} EXPUNGE responses"
    assert watcher.untagged_responses.get("EXISTS", [b""])[-1] == str(N_MESSAGES - 29).encode()
    changed = [r for r in watcher.untagged_responses.get("FETCH", []) if b"FLAGS" in r]
    assert len(changed) >= 160, f"the watcher saw {len(changed)} flag changes"
    watcher.logout()

    # 3. Server changes: flags by STORE, deletions by EXPUNGE, a delivery, a folder.
    c = server.imaps(ALICE)
    try:
        c.select("INBOX")
        answered = [after[subject_of(i)].uid for i in range(200, 210)]
        unseen = [after[subject_of(i)].uid for i in range(0, 10)]
        expunged = [after[subject_of(i)].uid for i in range(300, 340)]
        forward = [after[subject_of(i)].uid for i in range(160, 165)]
        assert c.uid("STORE", ",".join(map(str, answered)), "+FLAGS", "(\\Answered \\Seen)")[0] \
            == "OK"
        assert c.uid("STORE", ",".join(map(str, unseen)), "-FLAGS", "(\\Seen)")[0] == "OK"
        assert c.uid("STORE", ",".join(map(str, forward)), "+FLAGS", "($Forwarded)")[0] == "OK"
        assert c.uid("STORE", ",".join(map(str, expunged)), "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"
        assert c.append("Projects.alpha", None, None,
                        make_message(BOB, ALICE, "more project news", "Again.\r\n"))[0] == "OK"
    finally:
        c.logout()
    with server.smtp() as s:
        s.sendmail(BOB, [ALICE], make_message(BOB, ALICE, "late arrival", "Hello again.\r\n"))
    wait_for_files(inbox / "new", 1, 10)
    # A program on the server (mutt, say) flags a message by renaming its file.
    target = next(f for f in (inbox / "cur").iterdir()
                  if subject_in(f.read_bytes(), f) == subject_of(400))
    base, _, letters = target.name.partition(":2,")
    assert letters == ""
    target.rename(target.with_name(f"{base}:2,F"))

    sync.run()
    local = read_local(sync.inbox)
    expected = (expected - {subject_of(i) for i in range(300, 340)}) | {"late arrival"}
    assert set(local) == expected
    for i in range(200, 210):
        assert local[subject_of(i)].flags == "RS", local[subject_of(i)]
    for i in range(0, 10):
        assert local[subject_of(i)].flags == "", local[subject_of(i)]
    for i in range(160, 165):
        assert local[subject_of(i)].flags == "P", local[subject_of(i)]
    assert local["late arrival"].flags == ""
    assert local[subject_of(400)].flags == "F"
    assert set(read_local(sync.local / "Projects" / "alpha")) == {"project news",
                                                                 "more project news"}

    # 4. After a server restart (UIDs and UIDVALIDITY kept), a run with nothing to do
    # neither writes nor downloads anything, and both sides agree.
    server.restart()
    out = sync.run()
    writes = re.findall(r"^F: >>> \d+ (?:UID STORE|APPEND|CREATE|UID EXPUNGE|EXPUNGE|UID FETCH "
                        r"\d+ \(.*BODY).*", out, re.M)
    assert not writes, f"a run with nothing to do still sent {writes[:5]}"
    assert "UIDVALIDITY" not in "".join(re.findall(r"^Notice.*", out, re.M))
    far = server_view(server)
    local = read_local(sync.inbox)
    assert set(far) == set(local) == expected
    for s, m in far.items():
        assert m.flags == {LETTERS[c] for c in local[s].flags}, f"{s}: {m.flags} vs {local[s]}"
    print(f"all done in {time.monotonic() - started:.1f}s")


def test_mbsync_starttls_login_sync_literals_and_trash(make_server: Callable[..., Server],
                                                       tmp_path: Path) -> None:
    """The other way in: STARTTLS, LOGIN, synchronizing literals only; deletions are
    moved to the server's Trash (UID MOVE, COPYUID) before they are expunged."""
    server = make_server()
    c = server.imaps(ALICE)
    try:
        for i in range(20):
            assert c.append("INBOX", None, None, make_message(BOB, ALICE, subject_of(i),
                                                              body_of(i)))[0] == "OK"
    finally:
        c.logout()
    sync = MBSync(server, tmp_path / "client", starttls=True, patterns="INBOX",
                  account_extra="AuthMechs LOGIN\nDisableExtensions LITERAL+\n",
                  store_extra="Trash Trash\n")
    out = sync.run()
    assert re.search(r"F: >>> 1 STARTTLS", out) and re.search(r"F: >>> \d+ LOGIN ", out)
    local = read_local(sync.inbox)
    assert sorted(local) == [subject_of(i) for i in range(20)]
    for i in range(5):
        local[subject_of(i)].path.unlink()
    write_local(sync.inbox, "1700000003.local4.client", make_message(ALICE, BOB, "sync literal",
                                                                      "Sent with {n}.\r\n"))
    out = sync.run()
    assert re.search(r'F: >>> \d+ APPEND "INBOX" .*\{\d+\}\r?$', out, re.M), "no {n} literal"
    assert re.search(r'F: >>> \d+ UID (MOVE|COPY) \d+ "Trash"', out), "nothing went to Trash"
    far = server_view(server)
    assert set(far) == {subject_of(i) for i in range(5, 20)} | {"sync literal"}
    trash = server_view(server, "Trash")
    assert set(trash) == {subject_of(i) for i in range(5)}
    assert set(read_local(sync.inbox)) == set(far)
