"""A real PostgreSQL (Debian's package) for the tests of the shared store (issue 19).

    pg = PostgresServer(tmp_dir)
    pg.start()                # initdb into tmp_dir, a free port on 127.0.0.1
    url = pg.new_database()   # "postgresql://pillarbox@127.0.0.1:PORT/t_..." (empty, fresh)
    pg.restart() / pg.stop_server() / pg.start_server()   # for the outage tests
    pg.stop()                 # the server stops, the directory goes

The cluster runs as the package's `postgres` user (initdb and postgres refuse
root), trusts connections from 127.0.0.1 (a throwaway test cluster, never
reachable from elsewhere) and has fsync off: durability across a power cut
is PostgreSQL's own business, not what these tests show. One cluster per
test session (per xdist worker); each server under test gets a database of
its own.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from .support import free_ports

# The values of the `storage` fixture (conftest.py): a module runs against both with
# pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)
BACKENDS = ["sqlite", "postgresql"]

RUN_AS = "postgres"  # the package's user
SUPERUSER = "pillarbox"
START_TIMEOUT = 60.0


def pg_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (scripts/ensure-system-packages
    installs one)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise AssertionError("PostgreSQL is not installed: run scripts/ensure-system-packages")
    return Path(found[-1]).parent


class PostgresServer:
    # Throwaway-test settings (no durability); bench/pg_nodes.py runs with durable ones.
    SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                "max_connections": "200", "shared_buffers": "16MB"}

    def __init__(self, base: Path) -> None:
        self.base = base
        self.bindir = pg_bindir()
        self.datadir = base / "pgdata"
        self.sockdir = base / "sock"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = base / "postgres.log"

    @staticmethod
    def _user() -> dict:
        """Popen arguments that run a child as RUN_AS when we are root."""
        if os.getuid() != 0:
            return {}
        pw = pwd.getpwnam(RUN_AS)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
                "cwd": "/", "env": {**os.environ, "HOME": pw.pw_dir}}

    def _as_user(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT,
                              **self._user())

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        if os.getuid() == 0:
            pw = pwd.getpwnam(RUN_AS)
            for p in (self.base, self.sockdir):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            # initdb must reach its directory through every parent (pytest's are 0700).
            p = self.base
            while p != p.parent and p != Path("/tmp"):
                p.chmod(p.stat().st_mode | 0o711)
                p = p.parent
        r = self._as_user([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                           "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
        if r.returncode != 0:
            raise AssertionError(f"initdb failed: {r.stdout}{r.stderr}")
        self.port = free_ports(1)[0]
        self.start_server()

    def start_server(self) -> None:
        """Start (again) on the same port and data; return once it takes connections."""
        argv = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                "-h", "127.0.0.1", "-k", str(self.sockdir)]
        argv += [a for k, v in self.SETTINGS.items() for a in ("-c", f"{k}={v}")]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True, **self._user())
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            r = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p",
                                str(self.port), "-U", SUPERUSER, "-d", "postgres"],
                               capture_output=True)
            if r.returncode == 0:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"postgres did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop_server(self) -> None:
        """A fast shutdown (SIGINT: clients cut off), as an operator's restart does."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(2)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop_server()
        self.start_server()

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.stop_server()
        shutil.rmtree(self.base, ignore_errors=True)


def seed_database(url: str, sqlite_path: Path) -> None:
    """Migrate a fresh database and copy the seed users (and their argon2 hashes)
    from a seed SQLite directory into it, as the SQLite servers get them."""
    import sqlite3

    import psycopg

    from pillarbox.store.postgresql import PgDatabase

    PgDatabase(url).close()
    src = sqlite3.connect(sqlite_path)
    try:
        rows = src.execute("SELECT address, password_hash, enabled, quota, used, created "
                           "FROM users").fetchall()
    finally:
        src.close()
    with psycopg.connect(url, autocommit=True) as c, c.cursor() as cur:
        cur.executemany("INSERT INTO users (address, password_hash, enabled, quota, used, "
                        "created) VALUES (%s, %s, %s, %s, %s, %s)", rows)


def sharing_mail(make_server, storage: str, tmp_path: Path):
    """make_server whose servers, on PostgreSQL, share one `storage.shared_dir` (each
    its own `storage.node`): the IMAP index is on PostgreSQL only then
    (store/pg_mailbox_index.py). A module overrides its make_server with it."""
    if storage != "postgresql":
        return make_server
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    made = itertools.count()

    def factory(overrides: dict | None = None, **kw):
        merged = {"storage.shared_dir": str(shared), "storage.node": f"node{next(made)}",
                  **(overrides or {})}
        return make_server(merged, **kw)

    return factory
