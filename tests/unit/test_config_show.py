"""`config show` writes TOML that loads again to the same effective config."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from pillarbox import config
from pillarbox.config_show import effective_toml

DATA = Path(__file__).resolve().parents[1] / "data"
BASE = 'hostname = "mx.example.test"\ndomains = ["example.test", "other.test"]\n'

CONFIGS = {
    "init file before modules": (DATA / "init-before-modules.toml").read_text(),
    "modules, pipelines, rules, routes": BASE + '''
data_dir = "state"
maildrop_dir = ""
[listen]
smtp = ["[::1]:2525", "127.0.0.1:2526"]
[limits]
command_timeout = "90s"
auth_failure_delay = "500ms"
[queue]
retry_schedule = ["10s", "1h"]
[imap]
cleartext_login_networks = ["127.0.0.1", "fd00::/8"]
[delivery]
srs_domain = "other.test"
[[route]]
domains = ["partner.test"]
senders = ["@example.test"]
host = "smtp.partner.test:587"
tls = "required"
auth_user = "me"
auth_password = "sécret \\" \\\\ \\u007f"
[module.junk]
kind = "quarantine"
client_ip = ["192.0.2.0/24"]
[module."odd name"]
kind = "pipe"
command = "cat > /dev/null"
[pipeline.smtp]
checks = ["relay", "recipient", "junk"]
[[rule]]
rcpt = ["tickets@example.test", "help-*@example.test"]
sender = ["", "*@partner.test"]
targets = ["odd name"]
[[rule]]
auth = ["alice@example.test"]
client_ip = "2001:db8::/32"
source = ["submission", "submissions"]
reply = "550 5.7.1 not from there"
[[rule]]
auth = false
rcpt_domain = "partner.test"
targets = ["remote", "mailbox"]
''',
}


def _effective(cfg: config.Config) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("path")
    return d


@pytest.mark.parametrize("text", CONFIGS.values(), ids=CONFIGS.keys())
def test_show_round_trips(tmp_path: Path, text: str) -> None:
    first = tmp_path / "pillarbox.toml"
    first.write_text(text)
    cfg = config.load(first, check_files=False)
    shown = effective_toml(cfg)
    data = tomllib.loads(shown)
    assert set(data["pipeline"]) == {"smtp", "submission", "submissions", "sendmail",
                                     "lmtp", "policy"}
    again = tmp_path / "elsewhere" / "pillarbox.toml"  # paths are absolute: any place
    again.parent.mkdir()
    again.write_text(shown)
    assert _effective(config.load(again, check_files=False)) == _effective(cfg)
    assert effective_toml(config.load(again, check_files=False)).splitlines()[1:] == \
        shown.splitlines()[1:]


def test_show_spells_out_the_default_pipelines(tmp_path: Path) -> None:
    p = tmp_path / "pillarbox.toml"
    p.write_text(BASE)
    data = tomllib.loads(effective_toml(config.load(p, check_files=False)))
    assert data["pipeline"]["smtp"] == {"checks": ["relay", "recipient"],
                                        "modifiers": ["received"]}
    assert data["pipeline"]["submission"]["modifiers"] == [
        "received", "submission_headers", "dkim_sign"]
    assert data["limits"]["max_message_size"] == 25 * 1024 * 1024
    assert "rule" not in data and "module" not in data
