"""`pillarbox export` / `pillarbox import`: the directory from SQLite to
PostgreSQL and back (issue 19), with what the import checks and verifies."""

from __future__ import annotations

import json
import re
import socket

from .imap_raw import RawIMAP, code_number
from .pgp_keys import sequoia_key
from .smtp_double import SMTPDouble
from .support import ALICE, BOB, PASSWORD, free_ports, make_message, parse, token, wait_until

CAROL = "carol@example.test"
TEAM = "team@example.test"
SENDER = "sender@remote.test"
# What the CLI shows of a directory: the same before and after each move.
LISTINGS = [("user", "list"), ("alias", "list"), ("user", "from", ALICE),
            ("user", "key", "show", ALICE), ("list", "show", "news@example.test"),
            ("list", "members", "news@example.test")]


def _populate(srv, tmp_path) -> None:
    srv.add_user(CAROL, quota="10M")
    srv.cli_ok("user", "disable", CAROL)
    srv.add_alias(TEAM, BOB, ALICE)  # targets keep this order
    srv.add_alias("postmaster@example.test", ALICE)
    srv.cli_ok("user", "from", ALICE, "--allow", "@partner.test")
    cert = sequoia_key(f"Alice <{ALICE}>").extract_certificate()  # bytes in the database
    (tmp_path / "alice.key").write_bytes(bytes(cert))
    srv.cli_ok("user", "key", "import", ALICE, tmp_path / "alice.key")
    srv.cli_ok("list", "create", "news@example.test", "--name", "News", "--owner", ALICE)
    srv.cli_ok("list", "add", "news@example.test", BOB)


def _rows(path) -> list[str]:
    """The export without its header line (which names the source backend)."""
    return path.read_text().splitlines()[1:]


def _listings(srv) -> list[str]:
    return [srv.cli_ok(*args).stdout for args in LISTINGS]


def test_directory_moves_sqlite_to_postgresql_and_back(make_server, postgres, tmp_path):
    sqlite_a = make_server(start=False)
    _populate(sqlite_a, tmp_path)
    before = _listings(sqlite_a)
    f1, f2, f3 = (tmp_path / f"dir{i}.jsonl" for i in (1, 2, 3))
    p = sqlite_a.cli_ok("export", f1)
    assert "users: 3 rows" in p.stderr and "aliases: 3 rows" in p.stderr, p.stderr
    assert "verified" in p.stdout, p.stdout
    assert f1.stat().st_mode & 0o077 == 0  # password hashes: the owner's alone

    pg = make_server({"storage.url": postgres.new_database()}, start=False, seed=False)
    p = pg.cli_ok("import", f1)
    assert "users: 3 rows" in p.stderr, p.stderr
    assert "imported users 3, aliases 3" in p.stdout and "verified" in p.stdout, p.stdout
    assert _listings(pg) == before
    pg.cli_ok("export", f2)
    assert _rows(f2) == _rows(f1)  # the same file, whichever backend wrote it

    sqlite_b = make_server(start=False, seed=False)
    sqlite_b.cli_ok("import", f2)
    sqlite_b.cli_ok("export", f3)
    assert _rows(f3) == _rows(f1)  # (the same rows: the same listings, shown above for pg)

    # The PostgreSQL node works from the imported directory: passwords, aliases in
    # order, a disabled user.
    pg.start()
    imap = pg.imap()
    try:
        assert imap.login(ALICE, PASSWORD)[0] == "OK"
    finally:
        imap.logout()
    tok = token()
    with pg.smtp() as s:
        assert s.sendmail(SENDER, [TEAM], make_message(SENDER, TEAM, tok)) == {}
        s.mail(SENDER)
        assert s.rcpt(CAROL)[0] == 550
    for user in (ALICE, BOB):
        (raw,) = pg.wait_for_messages(user, 1)
        assert parse(raw)["Subject"] == tok


def test_import_refuses_a_damaged_file_or_a_full_directory(make_server, postgres, tmp_path):
    src = make_server(start=False)
    good = tmp_path / "dir.jsonl"
    src.cli_ok("export", good)
    lines = good.read_text().splitlines(keepends=True)
    pg = make_server({"storage.url": postgres.new_database()}, start=False, seed=False)

    damaged = tmp_path / "damaged.jsonl"
    row = next(i for i, x in enumerate(lines) if x.startswith(f'["{ALICE}"'))
    damaged.write_text("".join(lines[:row] + [lines[row].replace(ALICE, CAROL)]
                               + lines[row + 1:]))
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:-1]))
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\xff{not json\n")
    for path, says in ((damaged, "do not match the digest"), (cut, "cut short"),
                       (junk, "not a pillarbox directory export"),
                       (tmp_path / "missing.jsonl", "cannot read")):
        p = pg.cli("import", path)
        assert p.returncode == 1 and says in p.stderr, (path, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr, p.stderr
    assert pg.cli_ok("user", "list").stdout == ""  # nothing half-imported

    p = src.cli("import", good)  # its own directory: not empty
    assert p.returncode == 1 and "not empty: users (2)" in p.stderr, p.stderr
    pg.cli_ok("import", good)
    assert pg.cli_ok("user", "list").stdout == src.cli_ok("user", "list").stdout

    p = pg.cli("export", tmp_path / "nodir" / "x.jsonl")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr



def _index_view(srv) -> dict[str, tuple]:
    """What a client knows of each mailbox: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and
    per UID its flags and MODSEQ (\\Recent aside: it is per session)."""
    out = {}
    with RawIMAP(srv.imaps_port, ALICE) as c:
        c.ok("ENABLE CONDSTORE")
        for box in ("INBOX", "Work"):
            untagged, _ = c.ok(f"EXAMINE {box}")
            fetched, _ = c.ok("UID FETCH 1:* (FLAGS MODSEQ)")
            out[box] = (code_number(untagged, "UIDVALIDITY"), code_number(untagged, "UIDNEXT"),
                        code_number(untagged, "HIGHESTMODSEQ"),
                        sorted(re.sub(rb"^\d+ | ?\\Recent", b"", f) for f in fetched))
        (subscribed,), _ = c.ok('LSUB "" Work')
        out["subscribed"] = subscribed
    return out


def test_imap_index_moves_with_the_directory_and_clients_keep_their_uids(
        make_server, postgres, tmp_path):
    """SQLite -> PostgreSQL (shared_dir) -> SQLite: UIDVALIDITY, UIDs, flags, MODSEQs
    and subscriptions survive each move, and a client's UID FETCH of an old UID works."""
    old = make_server()
    with RawIMAP(old.imaps_port, ALICE) as c:
        for i in range(4):
            assert c.append("INBOX", make_message(SENDER, ALICE, f"m{i}")).startswith(b"OK")
        c.ok("CREATE Work")
        c.ok("SUBSCRIBE Work")
        assert c.append("Work", make_message(SENDER, ALICE, "w"), "\\Flagged").startswith(b"OK")
        c.ok("SELECT INBOX")
        c.ok("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        c.ok("UID STORE 3 +FLAGS.SILENT (\\Seen $Label)")
    before = _index_view(old)
    assert [u.split()[2] for u in before["INBOX"][3]] == [b"1", b"3", b"4"]
    old.stop()
    f1, f2 = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    p = old.cli_ok("export", f1)
    assert "mailbox_index_messages: 4 rows" in p.stderr, p.stderr

    shared = tmp_path / "shared"  # the Maildir files travel in the file too
    pg = make_server({"storage.url": postgres.new_database(), "storage.shared_dir": str(shared),
                      "storage.node": "pg"}, start=False, seed=False)
    p = pg.cli_ok("import", f1)
    assert "mailbox_index_messages 4" in p.stdout and "verified" in p.stdout, p.stdout
    pg.start()
    assert _index_view(pg) == before
    imap = pg.imap(ALICE)
    try:
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "3", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"Subject: m2" in data[0][1] and b"$Label" in data[0][0], data
    finally:
        imap.logout()
    pg.stop()

    pg.cli_ok("export", f2)
    assert _rows(f2) == _rows(f1)  # the same index, whichever backend kept it
    back = make_server(start=False, seed=False)
    back.cli_ok("import", f2)
    back.start()
    assert _index_view(back) == before
    back.stop()
    refused = back.cli("import", f2)
    assert refused.returncode == 1 and "not empty" in refused.stderr, refused.stderr


FAR = "carol@remote.test"
_held: list[socket.socket] = []


def _closed_port() -> int:
    """Bound, never listening: deliveries there are refused at once (deferred)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    _held.append(s)
    return s.getsockname()[1]


def _route(port: int) -> dict:
    (no_dns,) = free_ports(1)  # a resolver that is not there: nothing goes to the internet
    return {"dns__nameservers": [f"127.0.0.1:{no_dns}"],
            "extra_toml": f'[[route]]\ndomains = ["remote.test"]\nhost = "127.0.0.1:{port}"\n'
                          'tls = "none"\n'}


def _bodies(srv) -> dict[str, list[tuple[bytes, bytes]]]:
    """Per mailbox, each UID's FETCH BODY[] as a client gets it."""
    out = {}
    imap = srv.imap(ALICE)
    try:
        for box in ("INBOX", "Work"):
            assert imap.select(box, readonly=True)[0] == "OK"
            typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
            assert typ == "OK", data
            out[box] = [(re.search(rb"UID (\d+)", d[0]).group(1), d[1])
                        for d in data if isinstance(d, tuple)]
    finally:
        imap.logout()
    return out


def _queued(srv) -> list[dict]:
    return [e for e in srv.queue_list() if any(r["addr"] == FAR for r in e["rcpts"])]


def test_maildir_files_and_queue_move_with_the_export(make_server, postgres, tmp_path):
    """A stopped SQLite node's mail (INBOX and a folder, flags, a message of several
    chunks) and its queue (a message deferred to an unreachable remote) go into a
    PostgreSQL node with shared_dir through the file alone; a client sees the same
    UIDs, flags and bodies, and the queued message goes out from the new node."""
    old = make_server(**_route(_closed_port()))
    big = make_message(SENDER, ALICE, "big", body=("x" * 78 + "\r\n") * 32_000)  # 3 chunks
    with RawIMAP(old.imaps_port, ALICE) as c:
        assert c.append("INBOX", make_message(SENDER, ALICE, "m0")).startswith(b"OK")
        assert c.append("INBOX", big).startswith(b"OK")
        c.ok("CREATE Work")
        c.ok("SUBSCRIBE Work")
        assert c.append("Work", make_message(SENDER, ALICE, "w"), "\\Flagged").startswith(b"OK")
        c.ok("SELECT INBOX")
        c.ok("UID STORE 1 +FLAGS.SILENT (\\Seen $Label)")
    tok = token()
    long_body = ("y" * 78 + "\r\n") * 16_000  # past the spool's 512 KiB: a body file of its own
    with old.submission(user=ALICE) as s:  # BOB is delivered now, FAR waits
        assert s.sendmail(ALICE, [BOB, FAR], make_message(ALICE, [BOB, FAR], tok, long_body)) == {}
    old.wait_for_messages(BOB, 1)
    (entry,) = wait_until(lambda: [e for e in _queued(old)
                                   if e["rcpts"][0]["state"] == "deferred"] or None,
                          10, f"{FAR} deferred in the queue")
    before, bodies = _index_view(old), _bodies(old)
    assert len(bodies["INBOX"]) == 2 and len(bodies["INBOX"][1][1]) > 2_500_000
    old.stop()

    files = {x.relative_to(old.data_dir / "mail"): x.read_bytes()  # messages, maildirfolder
             for x in (old.data_dir / "mail").rglob("*")
             if x.is_file() and not x.name.startswith("pillarbox-index")}
    assert len([x for x in files if x.parent.name in ("cur", "new")]) == 4, files.keys()
    f = tmp_path / "all.jsonl"
    p = old.cli_ok("export", f)
    assert f"maildir: {len(files)}/{len(files)} files, " in p.stderr, p.stderr
    assert re.search(r"queue: 1/1 messages, 1\d{6} bytes", p.stderr), p.stderr
    assert list((old.data_dir / "queue" / "bodies").iterdir()), "the queued body is not spilled"

    double = SMTPDouble(starttls=False).start()
    try:
        shared = tmp_path / "shared"
        pg = make_server({"storage.url": postgres.new_database(),
                          "storage.shared_dir": str(shared), "storage.node": "pg"},
                         start=False, seed=False, **_route(double.port))
        # A damaged chunk of the large message: refused, and nothing written anywhere.
        lines = f.read_text().splitlines(keepends=True)
        i = next(n for n, x in enumerate(lines) if x.startswith('"') and len(x) > 1_000_000)
        bad = lines[i][:5000] + ("A" if lines[i][5000] != "A" else "B") + lines[i][5001:]
        damaged = tmp_path / "damaged.jsonl"
        damaged.write_text("".join(lines[:i] + [bad] + lines[i + 1:]))
        p = pg.cli("import", damaged)
        assert p.returncode == 1 and "do not match its digest" in p.stderr, p.stderr
        assert pg.cli_ok("user", "list").stdout == ""
        assert not [x for x in shared.rglob("*") if x.is_file()], list(shared.rglob("*"))
        assert pg.queue_list() == []
        # A file that would write outside the Maildirs (digests all intact): refused.
        j = next(n for n, x in enumerate(lines) if x.startswith('{"blob":"maildir"'))
        for field, evil in (("path", "../../../../escaped/cur/x"), ("path", "/etc/escaped"),
                            ("owner", "../../escaped@example.test")):
            head = json.loads(lines[j])
            head[field] = evil
            hostile = tmp_path / "hostile.jsonl"
            hostile.write_text("".join(lines[:j] + [json.dumps(head) + "\n"] + lines[j + 1:]))
            p = pg.cli("import", hostile)
            assert p.returncode == 1 and p.stderr.startswith("error:"), (evil, p.stderr)
            assert not list(tmp_path.rglob("escaped*")), evil
            assert pg.cli_ok("user", "list").stdout == ""

        pg.start()  # a running target: its spool has a writer already
        p = pg.cli("import", f)
        assert p.returncode == 1 and "server is running; stop it" in p.stderr, p.stderr
        pg.stop()
        assert pg.cli_ok("user", "list").stdout == "" and pg.queue_list() == []

        p = pg.cli_ok("import", f)
        assert f"maildir files {len(files)}" in p.stdout, p.stdout
        assert "queue messages 1" in p.stdout, p.stdout
        assert {x.relative_to(shared / "mail"): x.read_bytes() for x in (shared / "mail").rglob("*")
                if x.is_file()} == files
        assert "verified" in p.stdout, p.stdout
        (moved,) = _queued(pg)  # waiting in the new node's queue, for FAR only
        assert moved["id"] == entry["id"] and [r["addr"] for r in moved["rcpts"]] == [FAR]
        assert moved["rcpts"][0]["state"] == "deferred", moved
        assert entry["id"] in pg.cli_ok("queue", "list").stdout
        assert list((shared / "queue" / "pg" / "bodies").iterdir())  # kept as serve keeps it

        pg.start()
        assert _index_view(pg) == before
        assert _bodies(pg) == bodies
        (raw,) = pg.messages(BOB)  # not yet seen by a client: still in new/
        assert parse(raw)["Subject"] == tok
        pg.cli_ok("queue", "retry")
        (sent,) = double.wait_for_messages(1, timeout=15)
        assert sent.rcpts == [FAR] and tok.encode() in sent.content
        assert sent.content.replace(b"\r\n", b"\n").endswith(
            long_body.replace("\r\n", "\n").encode())
        wait_until(lambda: not pg.queue_list(), 10, "the queue empty after the delivery")
        pg.stop()
        again = pg.cli("import", f)  # the same again: refused before anything is written
        assert again.returncode == 1 and "not empty" in again.stderr, again.stderr
    finally:
        double.stop()


def test_maildirs_already_in_place_are_verified_not_copied(make_server, postgres, tmp_path):
    """shared_dir set to the old data_dir: the Maildirs are where the export found
    them, so import copies nothing and checks each file against its digest."""
    old = make_server()
    with RawIMAP(old.imaps_port, ALICE) as c:
        assert c.append("INBOX", make_message(SENDER, ALICE, "here"), "\\Seen").startswith(b"OK")
    before, bodies = _index_view_inbox(old), _bodies_inbox(old)
    old.stop()
    f = tmp_path / "all.jsonl"
    old.cli_ok("export", f)
    mail = sorted(p for p in (old.data_dir / "mail").rglob("*") if p.is_file())
    pg = make_server({"storage.url": postgres.new_database(),
                      "storage.shared_dir": str(old.data_dir), "storage.node": "pg"},
                     start=False, seed=False)
    p = pg.cli_ok("import", f)
    assert "files not copied, only verified" in p.stderr, p.stderr
    assert "(already in place)" in p.stderr and "verified" in p.stdout, (p.stderr, p.stdout)
    assert sorted(p for p in (old.data_dir / "mail").rglob("*") if p.is_file()) == mail
    pg.start()
    assert _index_view_inbox(pg) == before and _bodies_inbox(pg) == bodies
    pg.stop()

    # A file changed after the export is caught by the verify step.
    msg = next(p for p in mail if p.parent.name == "cur")
    msg.write_bytes(msg.read_bytes() + b"tampered\r\n")
    pg2 = make_server({"storage.url": postgres.new_database(),
                       "storage.shared_dir": str(old.data_dir), "storage.node": "pg2"},
                      start=False, seed=False)
    p = pg2.cli("import", f)
    assert p.returncode == 1 and "is not the file in the export" in p.stderr, p.stderr


def _index_view_inbox(srv) -> tuple:
    with RawIMAP(srv.imaps_port, ALICE) as c:
        untagged, _ = c.ok("EXAMINE INBOX")
        fetched, _ = c.ok("UID FETCH 1:* (FLAGS)")
        return code_number(untagged, "UIDVALIDITY"), sorted(fetched)


def _bodies_inbox(srv) -> list:
    imap = srv.imap(ALICE)
    try:
        imap.select("INBOX", readonly=True)
        return imap.uid("FETCH", "1:*", "(BODY.PEEK[])")[1]
    finally:
        imap.logout()
