"""`pillarbox init --mode chatmail` and `pillarbox dns` for a chatmail relay."""

from __future__ import annotations

import tomllib

from .support import run_pillarbox


def test_init_and_dns_for_a_chatmail_relay(tmp_path):
    d = tmp_path / "relay"
    r = run_pillarbox(["init", "--dir", str(d), "--domain", "chat.example.org",
                       "--mode", "chatmail"])
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((d / "pillarbox.toml").read_text())
    assert data["mode"] == "chatmail" and data["hostname"] == "chat.example.org"
    assert "pipeline" not in data and data["chatmail"]["username_min_length"] == 9
    cfg = ["-c", str(d / "pillarbox.toml")]
    shown = run_pillarbox([*cfg, "config", "show"]).stdout
    assert 'checks = ["relay", "recipient", "e2ee", "chatmail_dkim"]' in shown
    assert 'checks = ["sender", "relay", "recipient", "chatmail_rate", "e2ee"]' in shown
    dns = run_pillarbox([*cfg, "dns"])
    assert dns.returncode == 0, dns.stderr
    assert '"v=DMARC1;p=reject;adkim=s;aspf=s"' in dns.stdout
    assert "DCACCOUNT:https://chat.example.org/new" in dns.stdout
    assert "_imaps._tcp.chat.example.org." in dns.stdout
    # The standard profile says nothing of chatmail.
    plain = tmp_path / "plain"
    assert run_pillarbox(["init", "--dir", str(plain), "--domain", "example.org"]).returncode == 0
    out = run_pillarbox(["-c", str(plain / "pillarbox.toml"), "dns"]).stdout
    assert "chatmail" not in out and "mx.example.org" in out
