"""Where mail lands on disk: one Maildir per address, readable by the service only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .support import ALICE, BOB, DOMAIN, PASSWORD, make_message, token, wait_until

OUTSIDER = "someone@elsewhere.test"


def _login(server, address: str):
    c = server.imap()
    # Quoted: "%" is not an atom character in IMAP.
    c.login(f'"{address}"', PASSWORD)
    return c


def _subjects(c) -> list[str]:
    typ, data = c.select("INBOX")
    assert typ == "OK", data
    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])") if int(data[0]) else (
        "OK", [])
    return sorted(part[1].decode().strip().removeprefix("Subject: ")
                  for part in data if isinstance(part, tuple))


def test_addresses_that_looked_alike_on_disk_get_their_own_maildirs(server):
    slash, percent = f"a/b@{DOMAIN}", f"a%2fb@{DOMAIN}"
    for address in (slash, percent):
        server.add_user(address)
    subjects = {}
    with server.smtp() as s:
        for address in (slash, percent):
            subjects[address] = token()
            s.sendmail(OUTSIDER, [address], make_message(OUTSIDER, address, subjects[address]))
    for address in (slash, percent):
        c = _login(server, address)
        got = wait_until(lambda c=c: _subjects(c) or None, 10, f"mail for {address}")
        assert got == [subjects[address]], f"{address} sees {got}"
        c.logout()
    mail = server.data_dir / "mail" / DOMAIN
    assert (mail / "a%2fb").is_dir() and (mail / "a%252fb").is_dir()


def test_maildir_named_by_the_old_mapping_moves_at_start(make_server):
    server = make_server(start=False)
    address = f"c%d@{DOMAIN}"
    server.add_user(address)
    old = server.data_dir / "mail" / DOMAIN / "c%d"
    for sub in ("tmp", "new", "cur"):
        (old / sub).mkdir(parents=True)
    subject = token()
    (old / "new" / "1700000000.M1P1Q1.host").write_bytes(
        make_message(OUTSIDER, address, subject))
    server.start()
    assert "maildir renamed to the new address mapping" in server.log_text()
    assert not old.exists()
    c = _login(server, address)
    assert _subjects(c) == [subject]
    c.logout()


def _open_entries(root: Path) -> list[str]:
    """Everything under root that is not private to its owner."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                bad.append(f"{oct(stat.S_IMODE(st.st_mode))} {p}")
    return bad


def _use_every_store(server) -> None:
    """Write the database, the queue, a Maildir and an IMAP index."""
    server.add_user(f"carol@{DOMAIN}")
    with server.smtp() as s:
        s.sendmail(OUTSIDER, [ALICE], make_message(OUTSIDER, ALICE, "modes"))
    server.wait_for_messages(ALICE, 1)
    c = server.imap(BOB)
    c.select("INBOX")
    c.logout()


def test_data_dir_private_to_the_service_user(server):
    _use_every_store(server)
    assert _open_entries(server.data_dir) == []


def test_open_data_dir_of_an_older_version_is_closed_at_start(make_server):
    server = make_server(start=False)
    for dirpath, _, filenames in os.walk(server.data_dir):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    server.start()
    _use_every_store(server)
    assert _open_entries(server.data_dir) == []


def test_init_makes_a_private_data_dir(pillarbox, tmp_path):
    p = pillarbox(["init", "--dir", str(tmp_path / "new"), "--domain", DOMAIN])
    assert p.returncode == 0, p.stderr
    assert _open_entries(tmp_path / "new" / "var") == []
    assert stat.S_IMODE((tmp_path / "new" / "var").stat().st_mode) == 0o700
