"""docs/MODULES.md says what the code does: every example loads, every kind
and every option is described with its default, every rule key is listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pillarbox import config, pipelines, registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "MODULES.md"
BASE = 'hostname = "mx.example.org"\ndomains = ["example.org"]\n'


def _toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_examples() -> None:
    assert len(_toml_blocks()) >= 4


@pytest.mark.parametrize("block", _toml_blocks())
def test_every_example_loads(tmp_path: Path, block: str) -> None:
    p = tmp_path / "pillarbox.toml"
    p.write_text(BASE + block)
    cfg = config.load(p, check_files=False)
    # An example that loads as the default config must say it is the default.
    said = "default" in DOC.read_text().split(block)[0][-400:]
    assert not cfg.modules.all_default() or cfg.modules.instances or said
    assert config.warnings(cfg) == []


def _section(kind: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"^### `{kind}` \((check|modifier|target)\)\n(.*?)(?=^##)", text, re.S | re.M)
    assert m, f"docs/MODULES.md has no section ### `{kind}` (role)"
    return m.group(0)


# Their kinds are documented in docs/MODULES-MORE.md (tests/unit/test_new_kinds_docs.py).
MORE = {"pillarbox.target.webhook", "pillarbox.target.sink", "pillarbox.modify.rewrite",
        "pillarbox.modify.headers"}


def _ours() -> list:
    ours = set(registry.BUILTIN_MODULES) - MORE
    return [k for k in registry.kinds().values() if k.make.__module__ in ours
            or getattr(k.make, "__module__", "") in ours]


def test_every_kind_and_option_is_documented_with_its_default() -> None:
    kinds = _ours()
    assert {k.name for k in kinds} >= {"recipient", "relay", "sender", "quarantine", "received",
                                       "submission_headers", "dkim_sign", "mailbox", "pipe",
                                       "remote"}
    for kind in kinds:
        sec = _section(kind.name)
        assert f"({kind.role})" in sec.splitlines()[0]
        if not kind.options:
            assert "No options." in sec, kind.name
        for opt in kind.options:
            row = re.search(rf"^\| `{opt.name}` \| ([^|]*) \|", sec, re.M)
            assert row, f"{kind.name}.{opt.name} is not in its options table"
            want = "(required)" if opt.required else f"`{_toml(opt.default)}`"
            assert row.group(1).strip() == want, f"{kind.name}.{opt.name}"


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def test_every_rule_key_and_default_pipeline_is_documented() -> None:
    text = DOC.read_text()
    for key in pipelines._RULE_KEYS:
        assert re.search(rf"^\| `{key}` \|", text, re.M), key
    for endpoint, (checks, modifiers) in pipelines.DEFAULT_PIPELINES.items():
        row = f"| `{endpoint}` | `{_list(checks)}` | `{_list(modifiers)}` |"
        assert row in text, row


def _list(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{n}"' for n in names) + "]"
