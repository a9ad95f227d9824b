"""`--help` explains every command, option and argument; `--version` answers."""

from __future__ import annotations

import os

import pytest

from pillarbox import __version__, cli


def _parsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {"pillarbox": parser, **{f"pillarbox {k}": v for k, v in sub.choices.items()}}


def test_every_command_option_and_argument_has_a_help_text():
    missing = []
    for name, parser in _parsers().items():
        if name != "pillarbox" and not parser.description:
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if not (action.help or "").strip():
                missing.append(f"{name}: {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_version(capsys):
    umask = os.umask(0o022)  # main() sets the service's 077: keep it out of other tests
    try:
        with pytest.raises(SystemExit) as e:
            cli.main(["--version"])
    finally:
        os.umask(umask)
    assert e.value.code == 0
    assert capsys.readouterr().out == f"pillarbox {__version__}\n"
