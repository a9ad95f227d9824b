"""A module kind from a third-party package (entry point pillarbox.modules),
named in the config, validated by `check` and used by the running server.

The package is tests/plugin_pkg, installed into the venv for real (not
editable, not on PYTHONPATH) by the Makefile step that builds the venv."""

from __future__ import annotations

import smtplib
import sys
from importlib import metadata
from pathlib import Path

import pytest

from .support import ALICE, make_message, parse, token

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "plugin_pkg"
TOML = '''
[module.no_casino]
kind = "subject_block"
word = "casino"
reply = "5.7.1 no gambling here"

[pipeline.smtp]
checks = ["relay", "recipient", "no_casino"]
'''


def test_the_plugin_is_an_installed_distribution():
    """The entry point comes from the installed pbx-subject-block, whose code
    lives in the venv's site-packages, not from the source tree under tests/."""
    (ep,) = [e for e in metadata.entry_points(group="pillarbox.modules")
             if e.name == "subject_block"]
    assert ep.value == "pbx_subject_block:KIND"
    assert ep.dist is not None and ep.dist.name == "pbx-subject-block"
    assert ep.dist.version == "1.0"
    files = {str(f) for f in ep.dist.files or []}
    assert "pbx_subject_block.py" in files, files
    installed = Path(ep.dist.locate_file("pbx_subject_block.py")).resolve()
    assert installed.is_relative_to(Path(sys.prefix).resolve()), installed
    assert not installed.is_relative_to(PLUGIN_SOURCE), installed
    assert ep.load().name == "subject_block"


def test_a_plugin_check_refuses_and_passes_on_a_running_server(make_server):
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


def test_check_validates_a_plugin_modules_options(make_server):
    srv = make_server(start=False, seed=False, extra_toml=TOML.replace('word = "casino"',
                                                                      "word = 3"))
    p = srv.cli("check")
    assert p.returncode == 1
    assert p.stderr.startswith("error: module.no_casino.word: expected a string, got 3"), p.stderr


def test_check_knows_the_plugin_kind_and_its_required_option(make_server):
    """`check` passes the plugin's config, and names a missing required option
    of the plugin kind like a built-in's."""
    srv = make_server(start=False, seed=False, extra_toml=TOML)
    p = srv.cli("check")
    assert p.returncode == 0, p.stderr
    srv = make_server(start=False, seed=False,
                      extra_toml=TOML.replace('word = "casino"\n', ""))
    p = srv.cli("check")
    assert p.returncode == 1
    assert p.stderr.startswith("error: module.no_casino.word: required option missing"), p.stderr


def test_a_kind_no_package_provides_is_unknown(make_server):
    srv = make_server(start=False, seed=False,
                      extra_toml=TOML.replace('"subject_block"', '"subject_blocker"'))
    p = srv.cli("check")
    assert p.returncode == 1
    assert p.stderr.startswith("error: module.no_casino.kind: unknown module kind "
                               "'subject_blocker'"), p.stderr
