"""[module.*], [pipeline.*] and [[rule]]: parsing, defaults, every mistake class."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pillarbox import config, pipelines

DATA = Path(__file__).resolve().parents[1] / "data"
BASE = 'hostname = "mx.example.test"\ndomains = ["example.test"]\n'


def load_text(tmp_path: Path, text: str) -> config.Config:
    p = tmp_path / "pillarbox.toml"
    p.write_text(text)
    return config.load(p, check_files=False)


def _effective(cfg: config.Config) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("path")
    return d


def test_the_config_init_wrote_before_modules_loads_to_the_same_effective_config(
        tmp_path: Path) -> None:
    old = load_text(tmp_path, (DATA / "init-before-modules.toml").read_text())
    assert old.modules.all_default()
    assert old.modules == pipelines.Modules()
    today = load_text(tmp_path, config.TEMPLATE.format(hostname="mx.example.test",
                                                       domain="example.test"))
    # Today's template differs in one place: it turns the MX's authentication on.
    assert today.modules.pipelines["smtp"].checks == ["relay", "recipient", "authentication"]
    today.modules.pipelines["smtp"].checks = ["relay", "recipient"]
    assert _effective(old) == _effective(today)
    assert config.warnings(old) == []


def test_default_pipelines_are_todays() -> None:
    p = pipelines.Modules().pipelines
    assert p["smtp"].checks == ["relay", "recipient"] and p["smtp"].modifiers == ["received"]
    assert p["submission"].checks == ["sender", "relay", "recipient"]
    assert p["submissions"].modifiers == ["received", "submission_headers", "dkim_sign"]


FULL = BASE + '''
[module.printer_junk]
kind = "quarantine"
client_ip = ["192.0.2.0/24"]

[module.tickets]
kind = "pipe"
command = "cat > /dev/null"

[module.more_tickets]
kind = "tickets"

[pipeline.smtp]
checks = ["relay", "recipient", "printer_junk"]

[[rule]]
rcpt = ["tickets@example.test", "help-*@example.test"]
targets = ["more_tickets"]

[[rule]]
rcpt = "nobody@example.test"
reply = "550 5.7.1 nobody reads this"

[[rule]]
rcpt_domain = "partner.test"
auth = true
client_ip = "2001:db8::/32"
targets = ["remote"]
'''


def test_modules_pipelines_rules_parse(tmp_path: Path) -> None:
    m = load_text(tmp_path, FULL).modules
    assert m.instances["more_tickets"].kind == "pipe"
    assert m.instances["more_tickets"].options == {"command": "cat > /dev/null"}
    assert m.pipelines["smtp"].checks == ["relay", "recipient", "printer_junk"]
    assert not m.pipelines["smtp"].is_default("smtp")
    assert m.pipelines["submission"].is_default("submission")
    r = pipelines.first_match(m.rules, "help-desk@example.test", "a@b.test", "smtp", None, "")
    assert r is m.rules[0]
    r = pipelines.first_match(m.rules, "nobody@example.test", "", "smtp", None, "192.0.2.1")
    assert r.refusal.code == 550 and r.refusal.text == "5.7.1 nobody reads this"
    assert pipelines.first_match(m.rules, "x@partner.test", "", "smtp", None,
                                 "2001:db8::1") is None  # not authenticated
    assert pipelines.first_match(m.rules, "x@partner.test", "", "submission", "a@example.test",
                                 "2001:db8::1") is m.rules[2]
    assert pipelines.first_match(m.rules, "x@partner.test", "", "submission", "a@example.test",
                                 "192.0.2.1") is None


MISTAKES = [
    ('[module.x]\nkind = "frobnicator"\n', "module.x.kind: unknown module kind 'frobnicator'"),
    ('[module.x]\ncolour = "red"\n', "module.x.kind: required"),
    ('[module.x]\nkind = "pipe"\n', "module.x.command: required option missing"),
    ('[module.x]\nkind = "pipe"\ncommand = "true"\ncolour = "red"\n',
     "module.x.colour: unknown option of kind pipe"),
    ('[module.x]\nkind = "pipe"\ncommand = 3\n', "module.x.command: expected a string, got 3"),
    ('[module.q]\nkind = "quarantine"\nclient_ip = ["192.0.2.0/24", "nonsense"]\n',
     "module.q.client_ip: not an IP address or network: 'nonsense'"),
    ('[module.a]\nkind = "b"\n[module.b]\nkind = "a"\n',
     "module.a.kind: reference cycle: a -> b -> a"),
    ('[module.relay]\nkind = "relay"\n', "module.relay: relay is the name of a built-in kind"),
    ('[pipeline.smtp]\nchecks = ["mailbox"]\n',
     "pipeline.smtp.checks: mailbox is a target, not a check"),
    ('[pipeline.smtp]\nmodifiers = ["relay"]\n',
     "pipeline.smtp.modifiers: relay is a check, not a modifier"),
    ('[pipeline.smtp]\nchecks = ["nonesuch"]\n',
     "pipeline.smtp.checks: 'nonesuch' is no [module.*] instance and no module kind"),
    ('[pipeline.smtp]\nchecks = ["quarantine"]\n',
     "pipeline.smtp.checks: kind quarantine needs options (client_ip)"),
    ('[pipeline.lmtpx]\nchecks = []\n', "pipeline.lmtpx: unknown endpoint"),
    ('[pipeline.smtp]\nfilters = []\n', "pipeline.smtp.filters: unknown key"),
    ('[[rule]]\nrcpt = "a@example.test"\ntargets = ["helpdesk"]\n',
     "rule[0].targets: 'helpdesk' is no [module.*] instance and no module kind"),
    ('[[rule]]\nrcpt = "a@example.test"\ntargets = ["relay"]\n',
     "rule[0].targets: relay is a check, not a target"),
    ('[[rule]]\nrcpt = "a@example.test"\n', "rule[0]: give either targets or reply"),
    ('[[rule]]\nrcpt = "a@example.test"\nreply = "go away"\n', "rule[0].reply: expected"),
    ('[[rule]]\nrcpt = "a@example.test"\nreply = "250 2.0.0 fine"\n', "rule[0].reply: expected"),
    ('[[rule]]\nclient_ip = "300.1.1.1"\nreply = "550 5.7.1 no"\n',
     "rule[0].client_ip: not an IP address or network"),
    ('[[rule]]\nsource = "imap"\nreply = "550 5.7.1 no"\n', "rule[0].source: unknown source"),
    ('[[rule]]\nrecipient = "a@b"\nreply = "550 5.7.1 no"\n', "rule[0].recipient: unknown key"),
]


@pytest.mark.parametrize(("text", "message"), MISTAKES, ids=[m for _, m in MISTAKES])
def test_each_mistake_is_one_line_naming_table_and_key(tmp_path: Path, text, message) -> None:
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, BASE + text)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_a_rule_after_a_catch_all_is_a_warning(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE + '[[rule]]\ntargets = ["remote"]\n'
                    '[[rule]]\nrcpt = "a@example.test"\nreply = "550 5.7.1 no"\n')
    assert config.warnings(cfg) == [
        "rule[1]: can never match: rule[0] before it matches every recipient"]
    cfg = load_text(tmp_path, BASE + '[[rule]]\nrcpt = "a@example.test"\nreply = "550 5.7.1 no"\n'
                    '[[rule]]\ntargets = ["remote"]\n')
    assert config.warnings(cfg) == []


def test_validate_goes_on_after_a_module_mistake(tmp_path: Path) -> None:
    p = tmp_path / "pillarbox.toml"
    p.write_text(BASE + '[module.x]\nkind = "nonesuch"\n[limits]\nmax_recipients = "lots"\n')
    cfg, errors = config.validate(p)
    assert cfg is None
    assert [e.key for e in errors] == ["limits.max_recipients", "module.x.kind"]
