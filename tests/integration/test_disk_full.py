"""A full disk, for real: the data directory on a small tmpfs, filled by a file.

With `queue.min_free_space = 0` the server's own free-space check lets mail
through as long as it fits, so the writes themselves fail with ENOSPC: the
queue's segment and spill file, the Maildir delivery, the IMAP index of a
first login, APPEND. Every one must give a temporary failure and leave
nothing half-made; once the filler is gone, everything works again and every
message that got a 250 or an OK is there.

Mounting needs root; elsewhere the test is skipped and says so.
"""

from __future__ import annotations

import errno
import imaplib
import os
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest

from .support import ALICE, BOB, PASSWORD, assert_reply, make_message, token, wait_until

OUTSIDER = "someone@elsewhere.test"
TMPFS_SIZE = "24m"


class Filler:
    """One file that takes whatever room is left on its file system."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)

    def fill(self, leave: int = 0) -> None:
        """Write until ENOSPC, then give `leave` bytes back (tmpfs frees whole pages)."""
        os.lseek(self.fd, 0, os.SEEK_END)
        block = b"\xa5" * 65536
        while True:
            try:
                os.write(self.fd, block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
        if leave:
            size = os.fstat(self.fd).st_size
            os.ftruncate(self.fd, max(0, size - leave))

    def free(self) -> None:
        os.ftruncate(self.fd, 0)

    def close(self) -> None:
        os.close(self.fd)


def _mount_tmpfs(where: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the disk-full test mounts a small tmpfs, which needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs",
                    str(where)], check=True, capture_output=True)


def _body(size: int) -> str:
    line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\n"
    return line * (size // len(line) + 1)


def _smtp_send(server, rcpt: str, subject: str, size: int) -> tuple[int, bytes]:
    """MAIL, RCPT, DATA on a fresh connection; the DATA reply (or the first refusal)."""
    with server.smtp() as s:
        for r in (s.mail(OUTSIDER), s.rcpt(rcpt)):
            if r[0] != 250:
                return r
        try:
            r = s.data(make_message(OUTSIDER, rcpt, subject, body=_body(size)))
        except smtplib.SMTPDataError as e:
            r = (e.smtp_code, e.smtp_error)
        assert s.noop()[0] == 250, "the SMTP session must go on after a refusal"
        return r


def _subjects(maildir: Path) -> list[str]:
    out = []
    for sub in ("new", "cur"):
        for f in (maildir / sub).iterdir():
            for line in f.read_bytes().split(b"\r\n"):
                if line.startswith(b"Subject: "):
                    out.append(line[9:].decode())
                    break
    return out


def _leftovers(data_dir: Path) -> list[str]:
    """Partial files a refused write must not leave behind."""
    dirs = [data_dir / "queue" / "tmp", data_dir / "queue" / "bodies",
            data_dir / "queue" / "maildrop"]
    dirs += list((data_dir / "mail").glob("*/*/tmp")) + list((data_dir / "mail").glob("*/*/.*/tmp"))
    return [str(p) for d in dirs if d.is_dir() for p in d.iterdir()]


def test_full_disk_gives_temporary_failures_then_everything_works(make_server):
    server = make_server(start=False, queue__min_free_space=0, queue__retry_schedule=["1h"])
    seed = server.root / "seed"
    server.data_dir.rename(seed)
    server.data_dir.mkdir()
    _mount_tmpfs(server.data_dir)
    filler = None
    try:
        shutil.copytree(seed, server.data_dir, dirs_exist_ok=True)
        server.start()
        accepted: list[str] = []  # subjects that got a 250 or an OK, all for alice
        alice = server.imap(ALICE)  # her mailbox exists before the disk fills
        filler = Filler(server.data_dir / "filler")

        # -- the queue takes a message, the Maildir has no room for it: deferred
        filler.fill(leave=256 * 1024)
        deferred = token()
        r = _smtp_send(server, ALICE, deferred, 160 * 1024)
        assert_reply(r, 250, "2.0.0", "a message that fits into the queue")
        accepted.append(deferred)

        def deferred_entry():
            for e in server.queue_list():
                for d in e["rcpts"]:
                    if d["state"] == "deferred":
                        return d
            return None

        d = wait_until(deferred_entry, 15, "the Maildir delivery deferred on a full disk")
        assert d["last_error"].startswith("4.3.1"), d

        # -- the disk is full
        filler.fill()
        r = _smtp_send(server, ALICE, "small on full disk", 2000)
        assert_reply(r, 452, "4.3.1", "a small message on a full disk")
        r = _smtp_send(server, ALICE, "large on full disk", 700 * 1024)  # spilled to a file
        assert_reply(r, 452, "4.3.1", "a large message on a full disk")

        bob = server.imap()
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            bob.login(BOB, PASSWORD)
        assert bob.noop()[0] == "OK", "the session must survive a failed first login"
        bob.logout()

        for size in (3000, 300 * 1024):  # in memory, and streamed to tmp/
            typ, data = alice.append("INBOX", None, None,
                                     make_message(OUTSIDER, ALICE, "append on full disk",
                                                  body=_body(size)))
            assert typ == "NO" and b"[OVERQUOTA]" in data[0], (size, typ, data)
        assert alice.noop()[0] == "OK"

        p = server.cli("sendmail", "-i", ALICE, input="Subject: sendmail on full disk\n\nx\n")
        assert p.returncode == 75, f"sendmail on a full disk must exit EX_TEMPFAIL: {p}"
        assert p.stderr.startswith("error:") and "disk space" in p.stderr, p.stderr
        assert _leftovers(server.data_dir) == [], "partial files left by refused writes"

        # -- space again: everything works, nothing acknowledged is lost
        filler.free()
        for subject, size in ((token(), 2000), (token(), 700 * 1024)):
            assert_reply(_smtp_send(server, ALICE, subject, size), 250, "2.0.0", subject)
            accepted.append(subject)
        for size in (3000, 300 * 1024):
            subject = token()
            typ, data = alice.append("INBOX", None, None,
                                     make_message(OUTSIDER, ALICE, subject, body=_body(size)))
            assert typ == "OK", (typ, data)
            accepted.append(subject)
        subject = token()
        server.cli_ok("sendmail", "-i", ALICE, input=f"Subject: {subject}\n\nx\n")
        accepted.append(subject)

        bob = server.imap(BOB)
        typ, listing = bob.list()
        names = b"\n".join(listing)
        for box, use in (("Drafts", b"\\Drafts"), ("Trash", b"\\Trash"), ("Junk", b"\\Junk"),
                         ("Archive", b"\\Archive"), ("Sent", b"\\Sent")):
            assert box.encode() in names and use in names, (box, listing)
        typ, subscribed = bob.lsub()
        assert len(subscribed) == 6, subscribed
        bob.logout()
        alice.logout()

        server.cli_ok("queue", "retry")
        maildir = server.maildir(ALICE)
        wait_until(lambda: set(accepted) <= set(_subjects(maildir)), 15,
                   "every accepted message in alice's mailbox")
        wait_until(lambda: server.queue_list() == [], 10, "an empty queue")
        assert not any("on full disk" in s for s in _subjects(maildir)), "a refused message"
        assert _leftovers(server.data_dir) == []
    finally:
        if filler is not None:
            filler.close()
        server.stop()
        subprocess.run(["umount", str(server.data_dir)], check=False)
