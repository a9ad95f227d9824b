"""A real sync client: mbsync (isync) mirrors a 1,000-message mailbox both ways.

mbsync is what many people run from cron to keep a local Maildir in step with
their IMAP server; it leans on UIDs, UIDPLUS, flags, EXPUNGE and APPEND far more
than a mail reader does. The test delivers 1,000 messages over SMTP, lets
mbsync pull them into a Maildir in tmp_path, changes both sides, and checks
that each run carries the changes across (isync is installed by
scripts/ensure-system-packages, as swaks is).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import smtplib
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support import ALICE, BOB, CLIENT_NAME, PASSWORD, Server, make_message

N_MESSAGES = 1000
SENDERS = 4  # parallel SMTP sessions
DELIVERY_TIMEOUT = 60.0
MBSYNC_TIMEOUT = 120.0

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None,
                                reason="mbsync (Debian isync) not installed; "
                                       "scripts/ensure-system-packages installs it")


# -- helpers ------------------------------------------------------------------


def subject_of(i: int) -> str:
    return f"sync message {i:04d}"


def body_of(i: int) -> str:
    # A few lines of text whose digest pins the exact content of message i.
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
        except BaseException as e:  # reported by the main thread
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


@dataclass
class LocalMessage:
    path: Path
    subject: str
    flags: str  # Maildir info letters


def read_local(maildir: Path) -> dict[str, LocalMessage]:
    """Messages of a local Maildir (new/ and cur/) by Subject."""
    out: dict[str, LocalMessage] = {}
    for sub in ("new", "cur"):
        for f in sorted((maildir / sub).iterdir()):
            if f.name.startswith("."):
                continue
            data = f.read_bytes()
            m = re.search(rb"^Subject: (.*?)\r?$", data, re.M)
            assert m, f"{f}: no Subject"
            subject = m.group(1).decode()
            assert subject not in out, f"{subject!r} twice in {maildir}"
            flags = f.name.partition(":2,")[2]
            out[subject] = LocalMessage(f, subject, flags)
    return out


def set_local_flags(msg: LocalMessage, letters: str) -> None:
    """Change flags as a Maildir MUA does: rename the file, moving it to cur/."""
    base = msg.path.name.partition(":2,")[0]
    dest = msg.path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(letters))}"
    msg.path.rename(dest)
    msg.path, msg.flags = dest, "".join(sorted(letters))


def server_view(server: Server) -> dict[str, tuple[int, frozenset[str]]]:
    """Subject -> (UID, flags) of every message in alice's INBOX, over IMAP."""
    c = server.imaps(ALICE, timeout=60)
    try:
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK", data
        if int(data[0]) == 0:
            return {}
        typ, data = c.fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", data
        out = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            head, hdr = item
            uid = int(re.search(rb"UID (\d+)", head).group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", head).group(1).decode().split()
            subject = re.search(rb"Subject: (.*?)\r\n", hdr).group(1).decode()
            out[subject] = (uid, frozenset(flags) - {"\\Recent"})
        return out
    finally:
        c.logout()


class MBSync:
    """mbsync with a config in tmp_path: alice's IMAP account <-> a local Maildir tree."""

    def __init__(self, server: Server, root: Path) -> None:
        self.root = root
        self.local = root / "Mail"
        self.local.mkdir(parents=True)
        self.inbox = self.local / "INBOX"
        self.rc = root / "mbsyncrc"
        self.runs = 0
        cert = server.data_dir / "tls" / "cert.pem"
        assert cert.is_file(), f"no server certificate at {cert}"
        self.rc.write_text(mbsyncrc(server.imaps_port, ALICE, PASSWORD, cert, self.local))

    def run(self, *extra: str) -> subprocess.CompletedProcess:
        self.runs += 1
        log = self.root / f"mbsync-{self.runs}.log"
        env = {"HOME": str(self.root), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "LC_ALL": "C"}
        start = time.monotonic()
        p = subprocess.run(["mbsync", "-c", str(self.rc), "-D", *extra, "-a"],
                           capture_output=True, env=env, timeout=MBSYNC_TIMEOUT)
        took = time.monotonic() - start
        out = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
        log.write_text(out)
        print(f"mbsync run {self.runs}: exit {p.returncode} in {took:.1f}s, log {log}")
        assert p.returncode == 0, f"mbsync exited {p.returncode}; tail of {log}:\n" + \
            "\n".join(out.splitlines()[-40:])
        problems = [line for line in out.splitlines()
                    if re.search(r"^(Error|Warning)|IMAP error|unexpected|BAD ", line)]
        assert not problems, f"mbsync complained (see {log}):\n" + "\n".join(problems[:20])
        return p


def mbsyncrc(port: int, user: str, password: str, cert: Path, local: Path) -> str:
    return f"""\
IMAPAccount pillarbox
Host 127.0.0.1
Port {port}
User {user}
Pass {password}
SSLType IMAPS
CertificateFile {cert}
SystemCertificates no

IMAPStore pillarbox-far
Account pillarbox

MaildirStore local-near
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel pillarbox
Far :pillarbox-far:
Near :local-near:
Patterns *
Sync All
Create Both
Expunge Both
SyncState *
"""


# -- the test -------------------------------------------------------------------


def test_mbsync_syncs_1000_messages_both_ways(make_server, tmp_path):
    started = time.monotonic()
    server = make_server()
    inbox = server.maildir(ALICE)
    deliver_all(server, N_MESSAGES)
    wait_for_files(inbox / "new", N_MESSAGES, DELIVERY_TIMEOUT)
    print(f"delivered {N_MESSAGES} in {time.monotonic() - started:.1f}s")

    # 1. First run: everything arrives locally, byte for byte as the server has it.
    sync = MBSync(server, tmp_path / "client")
    sync.run()
    local = read_local(sync.inbox)
    assert sorted(local) == sorted(subject_of(i) for i in range(N_MESSAGES))
    server_files = {}
    for f in (inbox / "cur").iterdir():
        data = f.read_bytes()
        subject = re.search(rb"^Subject: (.*?)\r$", data, re.M).group(1).decode()
        server_files[subject] = data
    assert len(server_files) == N_MESSAGES
    for i in range(N_MESSAGES):
        msg = local[subject_of(i)]
        # mbsync stores LF line ends (ours are CRLF) and adds an X-TUID header.
        data = re.sub(rb"^X-TUID: \S+\n", b"", msg.path.read_bytes(), flags=re.M)
        assert data == server_files[subject_of(i)].replace(b"\r\n", b"\n"), \
            f"{msg.path}: differs from the server's copy"
        assert data.endswith(body_of(i).replace("\r\n", "\n").encode()), f"{msg.path}: body"
        assert msg.flags == "", f"{msg.path}: flags {msg.flags!r} for an unread message"
    for folder in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (sync.local / folder / "cur").is_dir(), f"{folder} not created locally"
    print(f"first sync done at {time.monotonic() - started:.1f}s")
    before = server_view(server)
    assert len(before) == N_MESSAGES

    # 2. Local changes: flags, deletions, a new message, a new folder.
    seen = [subject_of(i) for i in range(0, 100)]
    flagged = [subject_of(i) for i in range(50, 150)]
    deleted = [subject_of(i) for i in range(900, 920)]
    trashed = [subject_of(i) for i in range(920, 930)]  # T flag: deleted, then expunged
    for s in seen:
        set_local_flags(local[s], local[s].flags + "S")
    for s in flagged:
        set_local_flags(local[s], local[s].flags + "F")
    for s in deleted:
        local[s].path.unlink()
    for s in trashed:
        set_local_flags(local[s], local[s].flags + "T")
    added_subject = "written locally"
    added = make_message(ALICE, BOB, added_subject, "Composed offline.\r\n")
    (sync.inbox / "new" / "1700000000.local1.client:2,S").write_bytes(added)
    notes = sync.local / "Notes"
    for sub in ("cur", "new", "tmp"):
        (notes / sub).mkdir(parents=True)
    (notes / "cur" / "1700000001.local2.client:2,S").write_bytes(
        make_message(ALICE, ALICE, "a note", "In a folder made locally.\r\n"))

    sync.run()
    after = server_view(server)
    expected_subjects = (set(before) - set(deleted) - set(trashed)) | {added_subject}
    assert set(after) == expected_subjects
    assert len(after) == N_MESSAGES - 30 + 1
    for s in set(seen) | set(flagged):
        want = ({"\\Seen"} if s in seen else set()) | ({"\\Flagged"} if s in flagged else set())
        assert after[s][1] == want, f"{s}: server flags {set(after[s][1])}, expected {want}"
        assert after[s][0] == before[s][0], f"{s}: UID changed"
    untouched = [subject_of(i) for i in range(150, 900)]
    assert all(after[s][1] == frozenset() for s in untouched)
    assert after[added_subject][1] == {"\\Seen"}
    assert after[added_subject][0] > max(uid for uid, _ in before.values())
    c = server.imaps(ALICE)
    try:
        c.select("INBOX", readonly=True)
        assert c.uid("SEARCH", "SEEN")[1][0].split().__len__() == 101
        assert len(c.uid("SEARCH", "FLAGGED")[1][0].split()) == 100
        assert c.uid("SEARCH", "DELETED")[1] == [b""]
        typ, data = c.uid("FETCH", str(after[added_subject][0]), "(BODY.PEEK[])")
        assert data[0][1].endswith(b"Composed offline.\r\n")
        typ, data = c.select("Notes", readonly=True)
        assert (typ, data) == ("OK", [b"1"]), "the local folder did not reach the server"
    finally:
        c.logout()
    assert count_files(inbox / "cur") == N_MESSAGES - 30 + 1

    # 3. Server changes: flags by STORE, deletions by EXPUNGE, a new delivery.
    c = server.imaps(ALICE)
    try:
        c.select("INBOX")
        answered = [after[subject_of(i)][0] for i in range(200, 210)]
        unseen = [after[subject_of(i)][0] for i in range(0, 10)]
        expunged = [after[subject_of(i)][0] for i in range(300, 340)]
        c.uid("STORE", ",".join(map(str, answered)), "+FLAGS", "(\\Answered \\Seen)")
        c.uid("STORE", ",".join(map(str, unseen)), "-FLAGS", "(\\Seen)")
        c.uid("STORE", ",".join(map(str, expunged)), "+FLAGS", "(\\Deleted)")
        assert c.expunge()[0] == "OK"
    finally:
        c.logout()
    with server.smtp() as s:
        s.sendmail(BOB, [ALICE], make_message(BOB, ALICE, "late arrival", "Hello again.\r\n"))
    wait_for_files(inbox / "new", 1, 10)

    sync.run()
    local = read_local(sync.inbox)
    expected_local = (expected_subjects - {subject_of(i) for i in range(300, 340)}) | {
        "late arrival"}
    assert set(local) == expected_local
    for i in range(200, 210):
        assert set(local[subject_of(i)].flags) == {"R", "S"}, local[subject_of(i)]
    for i in range(0, 10):
        want = {"F"} if i >= 50 else set()
        assert set(local[subject_of(i)].flags) == want, local[subject_of(i)]
    assert local["late arrival"].flags == ""
    # 4. A run with nothing to do changes nothing.
    sync.run()
    assert set(read_local(sync.inbox)) == expected_local
    assert set(server_view(server)) == expected_local
    print(f"all done in {time.monotonic() - started:.1f}s")
