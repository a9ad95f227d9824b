"""A module kind from a third-party package (entry point pillarbox.modules),
named in the config, validated by `check` and used by the running server."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from .support import ALICE, make_message, parse, token

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugin_pkg"
TOML = '''
[module.no_casino]
kind = "subject_block"
word = "casino"
reply = "5.7.1 no gambling here"

[pipeline.smtp]
checks = ["relay", "recipient", "no_casino"]
'''


@pytest.fixture
def plugin_on_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(PLUGIN_DIR))


def test_a_plugin_check_refuses_and_passes_on_a_running_server(make_server, plugin_on_path):
    srv = make_server(extra_toml=TOML)
    with srv.smtp() as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@remote.test", [ALICE], make_message("a@remote.test", ALICE,
                                                              "Casino bonus"))
        assert (e.value.smtp_code, e.value.smtp_error) == (550, b"5.7.1 no gambling here")
        tok = token()
        s.sendmail("a@remote.test", [ALICE], make_message("a@remote.test", ALICE, tok))
    msg = parse(srv.wait_for_messages(ALICE, 1)[0])
    assert msg["Subject"] == tok
    assert msg["X-Subject-Checked"] == "yes"
    assert msg["Authentication-Results"].split() == ["mx.example.test;", "x-subject=pass"]


def test_check_validates_a_plugin_modules_options(make_server, plugin_on_path):
    srv = make_server(start=False, seed=False, extra_toml=TOML.replace('word = "casino"',
                                                                      "word = 3"))
    p = srv.cli("check")
    assert p.returncode == 1
    assert p.stderr.startswith("error: module.no_casino.word: expected a string, got 3"), p.stderr


def test_without_the_package_the_kind_is_unknown(make_server):
    srv = make_server(start=False, seed=False, extra_toml=TOML)
    p = srv.cli("check")
    assert p.returncode == 1
    assert p.stderr.startswith("error: module.no_casino.kind: unknown module kind "
                               "'subject_block'"), p.stderr
