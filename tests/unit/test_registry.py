"""The module registry: built-in kinds, plugins by entry point, option checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pillarbox import module, registry
from pillarbox.check import Reply


def test_builtin_kinds_have_their_roles() -> None:
    k = registry.kinds()
    roles = {name: k[name].role for name in (
        "recipient", "relay", "sender", "quarantine", "received", "submission_headers",
        "dkim_sign", "mailbox", "pipe", "remote")}
    assert roles == {
        "recipient": "check", "relay": "check", "sender": "check", "quarantine": "check",
        "received": "modifier", "submission_headers": "modifier", "dkim_sign": "modifier",
        "mailbox": "target", "pipe": "target", "remote": "target"}


def test_every_built_in_module_must_import(monkeypatch) -> None:
    """A built-in kind that cannot load stops the start; it is never skipped."""
    assert {"webhook", "reject", "discard", "replace_sender", "replace_rcpt",
            "headers"} <= set(registry.builtin_kinds())
    monkeypatch.setattr(registry, "BUILTIN_MODULES", ("pillarbox.check.nonesuch",))
    with pytest.raises(ModuleNotFoundError):
        registry.builtin_kinds()


KIND = module.Kind(
    name="t", role="target",
    options=(module.Option("url", str, required=True),
             module.Option("timeout", (int, float), 30),
             module.Option("json", bool, False),
             module.Option("tags", list, [])),
    make=lambda name, options, env: None)


def test_options_get_defaults() -> None:
    got = registry.validate_options(KIND, "module.helpdesk", {"url": "http://x/", "timeout": 5})
    assert got == {"url": "http://x/", "timeout": 5, "json": False, "tags": []}


@pytest.mark.parametrize("given, message", [
    ({}, "module.helpdesk.url: required option missing"),
    ({"url": "u", "colour": "red"}, "module.helpdesk.colour: unknown option of kind t"),
    ({"url": 3}, "module.helpdesk.url: expected a string, got 3"),
    ({"url": "u", "timeout": True},
     "module.helpdesk.timeout: expected an integer or a number, got True"),
    ({"url": "u", "json": 1}, "module.helpdesk.json: expected true or false, got 1"),
    ({"url": "u", "tags": "a"}, "module.helpdesk.tags: expected a list, got 'a'"),
])
def test_option_errors_name_table_and_key(given, message) -> None:
    with pytest.raises(registry.OptionError) as e:
        registry.validate_options(KIND, "module.helpdesk", given)
    assert str(e.value) == message


PLUGIN = '''
from pillarbox import module
class _S(module.BaseCheckState):
    pass
class Check:
    def __init__(self, name, options, env):
        self.name, self.options = name, options
    def state(self, source):
        return _S()
KIND = module.Kind(name="shout", role="check",
                   options=(module.Option("volume", int, 11),), make=Check)
BAD = "not a kind"
'''


def install_plugin(tmp_path: Path, monkeypatch, entry: str = "shout = shoutplugin:KIND") -> None:
    (tmp_path / "shoutplugin.py").write_text(PLUGIN)
    dist = tmp_path / "shoutplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shoutplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[pillarbox.modules]\n{entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.forget()


def test_a_plugin_kind_comes_from_an_entry_point(tmp_path, monkeypatch) -> None:
    install_plugin(tmp_path, monkeypatch)
    try:
        kind = registry.kinds()["shout"]
        opts = registry.validate_options(kind, "module.loud", {})
        made = kind.make("loud", opts, None)
        assert (made.name, made.options) == ("loud", {"volume": 11})
        with pytest.raises(registry.OptionError, match="module.loud.volume: expected an integer"):
            registry.validate_options(kind, "module.loud", {"volume": "max"})
    finally:
        registry.forget()


def test_a_plugin_that_is_no_kind_is_left_out(tmp_path, monkeypatch) -> None:
    install_plugin(tmp_path, monkeypatch, "shout = shoutplugin:BAD")
    try:
        assert "shout" not in registry.kinds()
    finally:
        registry.forget()


def test_quarantine_check_marks_by_client_ip() -> None:
    asyncio.run(_quarantine())


async def _quarantine() -> None:
    kind = registry.kinds()["quarantine"]
    check = kind.make("q", {"client_ip": ["192.0.2.0/24", "2001:db8::/32"]}, None)
    for ip, want in (("192.0.2.7", True), ("198.51.100.1", False), ("2001:db8::1", True),
                     ("", False)):
        v = await check.state(module.Source("smtp", ip)).connection(module.Source("smtp", ip))
        assert v.quarantine is want, ip


def test_relay_check_as_a_module() -> None:
    asyncio.run(_relay())


async def _relay() -> None:
    class Cfg:
        @staticmethod
        def is_local_domain(d: str) -> bool:
            return d == "example.test"

    check = registry.kinds()["relay"].make("relay", {}, registry.Env(config=Cfg()))
    anon = check.state(module.Source("smtp", "192.0.2.1"))
    assert (await anon.rcpt("a@example.test")).accepts
    refused = (await anon.rcpt("a@other.test")).reject
    assert isinstance(refused, Reply) and refused.code == 554
    authed = check.state(module.Source("submission", "192.0.2.1", auth="a@example.test"))
    assert (await authed.rcpt("a@other.test")).accepts
