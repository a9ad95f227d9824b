"""The command line: happy paths, and every error path is `error: ...` + exit 1."""

from __future__ import annotations

import re
import socket
import subprocess
import tomllib

import pytest

from .pg_server import BACKENDS
from .support import HOSTNAME


def assert_error(p: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 1, a message on stderr starting with "error: ", naming `words`, no traceback."""
    assert p.returncode == 1, f"expected exit 1, got {p.returncode}\n{p.stderr}{p.stdout}"
    assert p.stderr.startswith("error: "), f"stderr must start with 'error: ': {p.stderr!r}"
    assert "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w.lower() in p.stderr.lower(), f"error should mention {w!r}: {p.stderr!r}"


# -------------------------------------------------------------------- users


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)  # users on SQLite and PG
def test_user_add_list_disable_enable_del(make_server):
    srv = make_server(start=False, seed=False)
    srv.add_user("alice@example.test", quota="10M")
    srv.add_user("bob@example.test")
    out = srv.cli_ok("user", "list").stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 2, out
    alice = next(ln for ln in lines if "alice@example.test" in ln)
    assert "enabled" in alice and "disabled" not in alice, alice
    assert "/" in alice, f"user list should show used/quota: {alice!r}"
    srv.cli_ok("user", "disable", "alice@example.test")
    alice = next(ln for ln in srv.cli_ok("user", "list").stdout.splitlines()
                 if "alice@example.test" in ln)
    assert "disabled" in alice, alice
    srv.cli_ok("user", "enable", "alice@example.test")
    srv.cli_ok("user", "del", "bob@example.test")
    out = srv.cli_ok("user", "list").stdout
    assert "bob@example.test" not in out and "alice@example.test" in out


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)  # users on SQLite and PG
def test_user_del_unknown_user(make_server):
    srv = make_server(start=False, seed=False)
    assert_error(srv.cli("user", "del", "ghost@example.test"), "ghost@example.test")


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)  # users on SQLite and PG
@pytest.mark.parametrize("verb", ["disable", "enable", "passwd"])
def test_user_verbs_on_unknown_user(make_server, verb):
    srv = make_server(start=False, seed=False)
    extra = ["--password-stdin"] if verb == "passwd" else []
    assert_error(srv.cli("user", verb, "ghost@example.test", *extra, input="pw\n"),
                 "ghost@example.test")


@pytest.mark.parametrize("addr", ["not-an-address", "a@@example.test", "@example.test",
                                  "alice@", "a b@example.test", "alice@exa mple.test"])
def test_user_add_malformed_address(make_server, addr):
    srv = make_server(start=False, seed=False)
    assert_error(srv.cli("user", "add", addr, "--password-stdin", input="pw\n"))
    assert addr not in srv.cli_ok("user", "list").stdout


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)  # users on SQLite and PG
def test_user_add_twice(make_server):
    srv = make_server(start=False, seed=False)
    srv.add_user("alice@example.test")
    assert_error(srv.cli("user", "add", "alice@example.test", "--password-stdin",
                         input="pw\n"), "alice@example.test")


def test_user_add_bad_quota(make_server):
    srv = make_server(start=False, seed=False)
    assert_error(srv.cli("user", "add", "alice@example.test", "--password-stdin",
                         "--quota", "lots", input="pw\n"), "quota")


# ------------------------------------------------------------------ aliases


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)  # users on SQLite and PG
def test_alias_add_list_del(make_server):
    srv = make_server(start=False, seed=False)
    srv.add_user("alice@example.test")
    srv.add_alias("info@example.test", "alice@example.test", "friend@remote.test")
    out = srv.cli_ok("alias", "list").stdout
    assert "info@example.test" in out and "friend@remote.test" in out, out
    srv.cli_ok("alias", "del", "info@example.test")
    assert "info@example.test" not in srv.cli_ok("alias", "list").stdout


@pytest.mark.parametrize("storage", BACKENDS, indirect=True)  # users on SQLite and PG
def test_alias_errors(make_server):
    srv = make_server(start=False, seed=False)
    assert_error(srv.cli("alias", "del", "ghost@example.test"))
    assert_error(srv.cli("alias", "add", "bad@@example.test", "x@example.test"))
    assert_error(srv.cli("alias", "add", "ok@example.test", "not an address"))
    assert_error(srv.cli("alias", "add", "ok@example.test"))  # no target


# ------------------------------------------------------------------- config


def test_check_ok(make_server):
    srv = make_server(start=False, seed=False)
    p = srv.cli("check")
    assert p.returncode == 0, p.stderr
    assert "config ok" in p.stdout.lower() + p.stderr.lower(), p


def test_missing_config_file(make_server, pillarbox, tmp_path):
    missing = tmp_path / "nowhere" / "pillarbox.toml"
    for args in (["check"], ["user", "list"], ["serve"]):
        p = pillarbox(["-c", missing, *args], cwd=tmp_path, timeout=20)
        assert_error(p, "nowhere")


def test_config_from_env_then_cwd(make_server, pillarbox, tmp_path):
    srv = make_server(start=False, seed=False)
    p = pillarbox(["check"], cwd=tmp_path, env_extra={"PILLARBOX_CONFIG": str(srv.cfg_path)})
    assert p.returncode == 0, p.stderr
    p = pillarbox(["check"], cwd=srv.root)  # ./pillarbox.toml
    assert p.returncode == 0, p.stderr
    p = pillarbox(["check"], cwd=tmp_path)  # no config anywhere
    assert_error(p)


BAD_VALUES = [
    ("limits.max_recipients", "lots", "max_recipients"),
    ("limits.max_recipients", -5, "max_recipients"),
    ("limits.max_message_size", "huge", "max_message_size"),
    ("limits.command_timeout", "forever", "command_timeout"),
    ("queue.min_free_space", "-5X", "min_free_space"),
    ("queue.retry_schedule", ["soon"], "retry_schedule"),
    ("queue.workers", -1, "workers"),
    ("listen.smtp", ["no-port-here"], "smtp"),
    ("hostname", "not a hostname!", "hostname"),
    ("domains", ["bad domain"], "domains"),
    ("mode", "turbo", "mode"),
    ("log_level", "loud", "log_level"),
    ("tls.cert", "/nonexistent/cert.pem", "cert"),
]


@pytest.mark.parametrize(("key", "value", "name"), BAD_VALUES,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_check_names_the_bad_key(make_server, key, value, name):
    overrides = {key: value}
    if key == "tls.cert":
        overrides["tls.key"] = "/nonexistent/key.pem"
    srv = make_server(overrides, start=False, seed=False)
    assert_error(srv.cli("check"), name)


@pytest.mark.parametrize(("where", "name"), [("top", "bogus_key"), ("limits", "max_frobs"),
                                             ("section", "frobnicate")])
def test_unknown_key_is_an_error(make_server, where, name):
    if where == "top":
        srv = make_server({name: 1}, start=False, seed=False)
    elif where == "limits":
        srv = make_server({f"limits.{name}": 3}, start=False, seed=False)
    else:
        srv = make_server(start=False, seed=False, extra_toml=f"[{name}]\nlevel = 3\n")
    assert_error(srv.cli("check"), name)
    assert_error(srv.cli("serve", timeout=20), name)


def test_toml_syntax_error(make_server):
    srv = make_server(start=False, seed=False)
    srv.cfg_path.write_text(srv.cfg_path.read_text() + "\nthis is = = not toml\n")
    assert_error(srv.cli("check"))


def test_serve_refuses_bad_config_with_one_line(make_server):
    srv = make_server({"limits.max_recipients": "lots"}, start=False, seed=False)
    p = srv.cli("serve", timeout=20)
    assert_error(p, "max_recipients")
    assert len(p.stderr.strip().splitlines()) == 1, f"not one line: {p.stderr!r}"


def test_serve_on_port_in_use_exits_1_with_one_line(make_server):
    srv = make_server(start=False, seed=False)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", srv.smtp_port))
        blocker.listen(1)
        p = srv.cli("serve", timeout=20)
    finally:
        blocker.close()
    assert_error(p, str(srv.smtp_port))
    assert len(p.stderr.strip().splitlines()) == 1, f"not one line: {p.stderr!r}"
    # and nothing was left listening on the other ports
    for port in (srv.submission_port, srv.submissions_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


def test_unknown_command_and_missing_args(make_server):
    srv = make_server(start=False, seed=False)
    for args in (["frobnicate"], ["user"], ["user", "add"], ["alias", "add"],
                 ["queue", "show"]):
        p = srv.cli(*args)
        assert p.returncode == 1, (args, p)
        assert "error: " in p.stderr, (args, p.stderr)  # after argparse's usage line
        assert "Traceback" not in p.stderr, p.stderr


# --------------------------------------------------------------------- init


def test_init_writes_config_tls_and_data_dir(pillarbox, tmp_path):
    d = tmp_path / "site"
    p = pillarbox(["init", "--dir", d, "--domain", "example.test", "--hostname", HOSTNAME],
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cfg = d / "pillarbox.toml"
    assert cfg.is_file()
    data = tomllib.loads(cfg.read_text())
    assert data["hostname"] == HOSTNAME
    assert data["domains"] == ["example.test"]
    assert data["data_dir"] == "var"
    assert re.search(r"^\s*#", cfg.read_text(), re.M), "init should write a commented config"
    assert (d / "var").is_dir()
    assert (d / "var" / "tls" / "cert.pem").is_file()
    assert (d / "var" / "tls" / "key.pem").is_file()
    assert "BEGIN CERTIFICATE" in (d / "var" / "tls" / "cert.pem").read_text()
    p = pillarbox(["-c", cfg, "check"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # init over an existing config never clobbers it
    cfg.write_text(cfg.read_text() + "\n# operator's own note\n")
    p = pillarbox(["init", "--dir", d, "--domain", "example.test"], cwd=tmp_path)
    assert p.returncode in (0, 1), p
    if p.returncode == 1:
        assert_error(p)
    assert "# operator's own note" in cfg.read_text(), "init overwrote an existing config"


@pytest.mark.parametrize("clash", ["same", "wildcard"])
def test_two_endpoints_on_one_address_are_refused(make_server, clash):
    """smtp and submission on one port: one would silently get every session."""
    srv = make_server(start=False, seed=False)
    shared = f"127.0.0.1:{srv.smtp_port}"
    srv.config["listen"]["submission"] = [shared]
    if clash == "wildcard":
        srv.config["listen"]["smtp"] = [f"0.0.0.0:{srv.smtp_port}"]
    srv.write_config()
    for cmd in ("check", "serve"):
        p = srv.cli(cmd, timeout=20)
        assert_error(p, "listen.", str(srv.smtp_port))
        assert len(p.stderr.strip().splitlines()) == 1, f"{cmd}: not one line: {p.stderr!r}"


def test_serve_fails_on_a_clash_only_the_bind_sees(make_server):
    """`localhost` and 127.0.0.1 are one address to the kernel, two to the config check."""
    srv = make_server({"log_level": "warning"}, start=False, seed=False)
    srv.config["listen"]["smtp"] = [f"localhost:{srv.smtp_port}"]
    srv.config["listen"]["submission"] = [f"127.0.0.1:{srv.smtp_port}"]
    srv.write_config()
    p = srv.cli("serve", timeout=20)
    assert_error(p, "listen.", str(srv.smtp_port), "in use")
    assert len(p.stderr.strip().splitlines()) == 1, f"not one line: {p.stderr!r}"


# ------------------------------------------------------------ password rules

GOOD_PASSWORD = "tulip-orbit-canyon-42"


@pytest.mark.parametrize(("password", "words"), [
    ("x", ["too short", "12"]),
    ("elevenchars", ["too short", "12"]),
    ("password1234", ["commonest"]),
    ("QWERTY123456", ["commonest"]),
    ("carol.longname@example.test", ["address"]),
    ("Carol.Longname", ["address"]),
])
@pytest.mark.parametrize("storage", BACKENDS, indirect=True)  # users on SQLite and PG
def test_user_add_and_passwd_refuse_weak_passwords(make_server, password, words):
    srv = make_server(start=False, seed=False)
    addr = "carol.longname@example.test"
    assert_error(srv.cli("user", "add", addr, "--password-stdin", input=password + "\n"),
                 *words)
    assert addr not in srv.cli_ok("user", "list").stdout
    srv.add_user(addr, GOOD_PASSWORD)
    assert_error(srv.cli("user", "passwd", addr, "--password-stdin", input=password + "\n"),
                 *words)


def test_min_password_length_is_a_setting(make_server):
    srv = make_server({"limits.min_password_length": 20}, start=False, seed=False)
    assert_error(srv.cli("user", "add", "dora@example.test", "--password-stdin",
                         input=GOOD_PASSWORD[:19] + "\n"), "too short", "20")
    srv.add_user("dora@example.test", GOOD_PASSWORD[:20])
    srv.config["limits"]["min_password_length"] = 4
    srv.write_config()
    srv.cli_ok("user", "passwd", "dora@example.test", "--password-stdin", input="w0rd\n")
