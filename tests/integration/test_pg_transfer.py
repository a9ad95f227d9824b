"""`pillarbox export` / `pillarbox import`: the directory from SQLite to
PostgreSQL and back (issue 19), with what the import checks and verifies."""

from __future__ import annotations

from .pgp_keys import sequoia_key
from .support import ALICE, BOB, PASSWORD, make_message, parse, token

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

