"""docs/MODULES-MORE.md cannot drift from the code: every TOML example
makes its modules, and every option table lists exactly the kind's options
with their defaults."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from pillarbox.modify import headers, rewrite
from pillarbox.target import sink, webhook

DOC = Path(__file__).resolve().parents[2] / "docs" / "MODULES-MORE.md"
KINDS = {k.name: k for k in (webhook.KIND, *sink.KINDS, *rewrite.KINDS, headers.KIND)}


def _examples() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)


def _sections() -> dict[str, str]:
    """Kind name -> its section text (a section may document two kinds)."""
    out = {}
    for title, body in re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", DOC.read_text(), re.S | re.M):
        for name in re.findall(r"`(\w+)`", title):
            out[name] = body
    return out


def test_every_kind_has_a_section_and_an_example():
    assert set(_sections()) == set(KINDS)
    made = {t["kind"] for block in _examples() for t in tomllib.loads(block)["module"].values()}
    assert made == set(KINDS)


@pytest.mark.parametrize("block", _examples())
def test_example_makes_its_modules(block):
    for name, table in tomllib.loads(block)["module"].items():
        options = dict(table)
        kind = KINDS[options.pop("kind")]
        made = kind.make(name, options, None)
        assert made.name == name


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_option_table_lists_every_option_with_its_default(kind):
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|", _sections()[kind], re.M))
    options = KINDS[kind].options
    assert set(rows) == {o.name for o in options}
    for o in options:
        want = "required" if o.required else (
            f'`"{o.default}"`' if isinstance(o.default, str) else
            "`[]`" if o.default == [] else "`{}`" if o.default == {} else f"`{o.default}`")
        assert rows[o.name] == want, o.name
