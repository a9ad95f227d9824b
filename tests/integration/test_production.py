"""`init --production` (config, ownership, systemd unit) and `check`'s report."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from .support import SERVICE_USER, service_account


@pytest.fixture
def base():
    """A directory under /tmp: the unit must not name a path under /root."""
    d = Path(tempfile.mkdtemp(prefix="pbx-prod-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_init_production_writes_config_ownership_and_a_valid_unit(pillarbox, base):
    account = service_account()
    etc, data, drop = base / "etc", base / "lib", base / "spool" / "maildrop"
    p = pillarbox(["init", "--dir", etc, "--domain", "example.test", "--production",
                   "--data-dir", data, "--maildrop-dir", drop, "--user", SERVICE_USER])
    assert p.returncode == 0, p.stderr
    unit = etc / "pillarbox.service"
    assert f"  install -m 0644 {unit} /etc/systemd/system/pillarbox.service\n" in p.stdout
    assert "  systemctl enable --now pillarbox\n" in p.stdout

    cfg_path = etc / "pillarbox.toml"
    cfg = tomllib.loads(cfg_path.read_text())
    assert cfg["user"] == SERVICE_USER
    assert (cfg["data_dir"], cfg["maildrop_dir"]) == (str(data), str(drop))
    for kind, port in (("smtp", 25), ("submission", 587), ("submissions", 465),
                       ("imap", 143), ("imaps", 993)):
        assert cfg["listen"][kind] == [f"0.0.0.0:{port}", f"[::]:{port}"]
    assert cfg["listen"]["http"] == []
    assert stat.S_IMODE(cfg_path.stat().st_mode) == 0o644  # the service user reads it

    # Made by root, given to the service user.
    assert all(q.lstat().st_uid == account.pw_uid for q in [data, *data.rglob("*")])
    st = drop.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, 0o1733)

    text = unit.read_text()
    exe = Path(sys.executable).parent / "pillarbox"  # this venv's script
    assert f"ExecStart={exe} -c {cfg_path} serve\n" in text
    for line in (f"User={SERVICE_USER}", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", f"ReadWritePaths={data} {drop}", "ProtectHome=yes",
                 "PrivateDevices=yes"):
        assert f"\n{line}\n" in text, line
    v = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    assert unit.name not in v.stderr, v.stderr  # no unknown key, no bad value

    p = pillarbox(["-c", cfg_path, "check"])
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_init_production_refuses_an_existing_config(pillarbox, base):
    (base / "pillarbox.toml").write_text("# mine\n")
    p = pillarbox(["init", "--dir", base, "--domain", "example.test", "--production",
                   "--data-dir", base / "lib", "--maildrop-dir", base / "drop"])
    assert p.returncode == 1 and "already exists" in p.stderr
    assert not (base / "pillarbox.service").exists()


def test_check_reports_every_error_at_once(pillarbox, base):
    cfg = base / "pillarbox.toml"
    cfg.write_text('hostname = "mx.example.test"\ndomains = []\nbogus = 1\n'
                   '[limits]\nmax_recipients = "lots"\n[queue]\nworker = 3\n'
                   '[[route]]\ndomains = ["elsewhere.test"]\ntls = "sometimes"\n')
    p = pillarbox(["-c", cfg, "check"])
    assert p.returncode == 1
    assert sorted(p.stderr.splitlines()) == sorted([
        "error: bogus: unknown key",
        "error: domains: expected a non-empty list of domains",
        "error: limits.max_recipients: expected an integer >= 1, got 'lots'",
        "error: queue.worker: unknown key",
        "error: route[0].tls: expected one of none, opportunistic, required, verify, "
        "got 'sometimes'",
    ])
    assert p.stdout == ""


def test_check_warns_about_likely_mistakes(pillarbox, base):
    cfg = base / "pillarbox.toml"
    cfg.write_text('hostname = "mx"\ndomains = ["example.test"]\n'
                   '[dns]\nnameservers = ["ns1.example.net", "192.0.2.53", "[2001:db8::53]:53"]\n'
                   '[[route]]\ndomains = ["example.test", "elsewhere.test"]\n'
                   'host = "smarthost.example.net"\n')
    p = pillarbox(["-c", cfg, "check"])
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [
        "warning: hostname: mx is not a fully qualified name (like mx.example.org); other "
        "servers look this name up to reach this one",
        "warning: dns.nameservers: ns1.example.net is not an IP address; name the resolvers "
        "by address (a name would need a resolver of its own)",
        "warning: route[0].domains: example.test is a local domain; its mail is delivered "
        "here, never through this route",
    ]
    assert p.stdout.startswith("config ok:")
