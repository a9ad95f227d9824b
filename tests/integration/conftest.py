"""Fixtures: a real pillarbox server per test, on free ports of 127.0.0.1.

    def test_x(server):                       # default config, already serving
        server.add_user("carol@example.test", quota="10K")
        with server.smtp() as s: ...
        server.wait_for_messages("carol@example.test", 1)

    def test_y(make_server):                  # overrides, or not started at all
        srv = make_server(limits__max_recipients=3)
        srv = make_server({"queue.min_free_space": "100000000M"})
        srv = make_server(start=False, seed=False, extra_toml="bogus = 1")
        srv = make_server(wrapper=["strace", "-f", "-o", "trace"])  # run under a wrapper

Every server starts with the users of support.SEED_USERS (alice@ and
bob@example.test, password support.PASSWORD), unless made with seed=False: they are
created once per session by `pillarbox user add` and the data directory is
copied in, because argon2 hashing makes `user add` the slowest step of a test.

Teardown stops every server with SIGTERM and fails the test if its stderr
holds a Traceback or an ERROR/CRITICAL line (a client's mistake must never be
logged at ERROR, and nothing may crash).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from .pg_server import PostgresServer, seed_database
from .support import (
    PASSWORD,
    SEED_USERS,
    SERVICE_USER,
    Server,
    run_pillarbox,
    service_account,
)


@pytest.fixture(scope="session")
def seed_data_dir(tmp_path_factory):
    """A data directory holding SEED_USERS, made with the real CLI (once per worker)."""
    srv = Server(tmp_path_factory.mktemp("seed"))
    for addr in SEED_USERS:
        srv.add_user(addr, PASSWORD)
    return srv.data_dir


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL cluster (Debian's package) for this session (per xdist worker)."""
    pg = PostgresServer(Path(tempfile.mkdtemp(prefix="pbx-pg-", dir="/tmp")))
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def storage(request) -> str:
    """The store a test's servers use: "sqlite" (the default) or "postgresql".
    A module runs its tests against both with
    `pytestmark = pytest.mark.parametrize("storage", pg_server.BACKENDS, indirect=True)`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def storage_url(request, storage) -> str:
    """"" for SQLite; for PostgreSQL a fresh database of the session's cluster."""
    if storage == "sqlite":
        return ""
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def make_server(tmp_path, seed_data_dir, storage_url):
    servers: list[Server] = []

    def factory(overrides: dict | None = None, *, start: bool = True, seed: bool = True,
                extra_toml: str = "", wrapper: list[str] | None = None, **kw) -> Server:
        merged = dict(overrides or {})
        merged.update(kw)
        _use_storage(merged, storage_url, first=not servers, seed=seed_data_dir if seed else None)
        srv = Server(tmp_path / f"server{len(servers)}", merged, extra_toml=extra_toml,
                     seed=seed_data_dir if seed else None, wrapper=wrapper)
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield factory

    _stop_and_check(servers)


def _use_storage(overrides: dict, url: str, first: bool, seed: Path | None) -> None:
    """Point a server at the test's PostgreSQL database, if it has one. The first
    server's database is seeded like the SQLite file; more servers of one test
    share it, as nodes do."""
    if not url:
        return
    if first and seed is not None:
        seed_database(url, seed / "pillarbox.db")
    overrides.setdefault("storage.url", url)


def _stop_and_check(servers: list[Server]) -> None:
    """Stop each server, show its log tail, and fail the test on what went wrong."""
    problems = []
    for srv in servers:
        problems += srv.shutdown_and_check()
        if srv.logs:
            print(f"--- {srv.root} stderr (tail) ---\n{srv.log_tail(80)}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def make_service_server(seed_data_dir, storage_url):
    """Like make_server, for a server started as root with `user = SERVICE_USER`
    (pass user="" for none): in a directory under /tmp that the service user
    can reach (pytest's own tmp_path is root's alone)."""
    service_account()
    base = Path(tempfile.mkdtemp(prefix="pbx-svc-", dir="/tmp"))
    base.chmod(0o755)
    servers: list[Server] = []

    def factory(overrides: dict | None = None, *, start: bool = True,
                user: str = SERVICE_USER, extra_toml: str = "") -> Server:
        merged = {"user": user, **(overrides or {})}
        _use_storage(merged, storage_url, first=not servers, seed=seed_data_dir)
        srv = Server(base / f"server{len(servers)}", merged, seed=seed_data_dir,
                     extra_toml=extra_toml)
        srv.root.chmod(0o755)
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield factory

    try:
        _stop_and_check(servers)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def service_server(make_service_server) -> Server:
    return make_service_server()


@pytest.fixture
def server(make_server) -> Server:
    return make_server()


@pytest.fixture
def pillarbox():
    """Run `python -m pillarbox ARGS` with no implied -c (for config-lookup tests)."""
    return run_pillarbox
