"""The pieces of pillarbox beside Postfix that need no server: tcp_table's
%XX coding, the [postfix] and listen.lmtp settings, `pillarbox postfix`'s lines."""

from pathlib import Path

import pytest

from pillarbox import config
from pillarbox.check import Reply
from pillarbox.cli_postfix import main_cf
from pillarbox.endpoint import policy, tcp_table

BASE = 'hostname = "mx.example.test"\ndomains = ["example.test", "example.org"]\n'


def load_text(tmp_path: Path, text: str) -> config.Config:
    p = tmp_path / "pillarbox.toml"
    p.write_text(BASE + text)
    return config.load(p)


def test_tcp_table_coding() -> None:
    assert tcp_table.encode("REJECT 5.2.1 100% full\n") == "REJECT%205.2.1%20100%25%20full%0A"
    assert tcp_table.encode("a,b@x.test") == "a,b@x.test"
    assert tcp_table.decode(b"a%40b%2Ec%zz%4") == b"a@b.c%zz%4"  # bad escapes stay
    assert tcp_table.decode(tcp_table.encode("é x").encode()).decode() == "é x"


def test_policy_actions() -> None:
    assert policy.action(Reply(450, "4.7.1 Too many\r\n messages")) == \
        "DEFER_IF_PERMIT 4.7.1 Too many messages"
    assert policy.action(Reply(554, "5.7.1 blocked")) == "554 5.7.1 blocked"
    assert policy.action(None) == "DUNNO"


def test_postfix_settings_and_lmtp_socket_path(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[listen]\nlmtp = ["./lmtp.sock"]\n[postfix]\n'
                    'recipient_access = ["127.0.0.1:10031"]\nvirtual_alias = ["[::]:10032"]\n'
                    'policy = ["0.0.0.0:10033"]\n')
    assert cfg.listen["lmtp"] == [(str((tmp_path / "lmtp.sock").resolve()), 0)]
    assert cfg.postfix.virtual_alias == [("::", 10032)]
    text, missing = main_cf(cfg)
    assert missing == []
    assert f"virtual_transport = lmtp:unix:{(tmp_path / 'lmtp.sock').resolve()}\n" in text
    assert "virtual_mailbox_domains = example.test, example.org\n" in text
    assert "virtual_alias_maps = tcp:[::1]:10032\n" in text  # a wildcard: by loopback
    assert ("smtpd_recipient_restrictions =\n    reject_unlisted_recipient,\n"
            "    check_policy_service inet:127.0.0.1:10033,\n"
            "    check_recipient_access tcp:127.0.0.1:10031\n") in text
    assert main_cf(load_text(tmp_path, ""))[1] == [
        "listen.lmtp", "postfix.recipient_access", "postfix.virtual_alias", "postfix.policy"]


@pytest.mark.parametrize("text, key", [
    ('[postfix]\nmaps = []\n', "postfix.maps"),
    ('[postfix]\npolicy = "127.0.0.1:1"\n', "postfix.policy"),
    ('[postfix]\npolicy = ["nowhere"]\n', "postfix.policy"),
    ('[listen]\nsmtp = ["127.0.0.1:2525"]\n[postfix]\npolicy = ["0.0.0.0:2525"]\n',
     "postfix.policy"),
    ('[listen]\nlmtp = ["/run/x.sock", "/run/x.sock"]\n', "listen.lmtp"),
    ('[listen]\nsmtp = ["/run/x.sock"]\n', "listen.smtp"),  # paths: LMTP only
    ('[pipeline.policy]\nmodifiers = ["received"]\n', "pipeline.policy.modifiers"),
])
def test_bad_postfix_settings(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, text)
    assert str(e.value).startswith(key + ":"), str(e.value)
