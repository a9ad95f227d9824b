import tomllib
from pathlib import Path

import pytest

from pillarbox import config


def load_text(tmp_path: Path, text: str) -> config.Config:
    p = tmp_path / "pillarbox.toml"
    p.write_text(text)
    return config.load(p)


BASE = 'hostname = "mx.example.test"\ndomains = ["example.test"]\n'


def test_template_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    text = config.TEMPLATE.format(hostname="mx.example.test", domain="example.test")
    cfg = load_text(tmp_path, text)
    assert cfg.hostname == "mx.example.test"
    assert cfg.listen["smtp"] == [("127.0.0.1", 2525)]
    data = tomllib.loads(text)
    for section, keys in config._SECTION_KEYS.items():
        assert set(data[section]) == keys, section


def test_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE)
    assert cfg.data_dir == tmp_path / "var"
    assert cfg.limits.max_message_size == 25 * 1024 * 1024
    assert cfg.queue.retry_schedule[0] == 60
    assert cfg.queue.lease == 30
    assert cfg.listen["smtp"] == []
    assert cfg.limits.max_connections_per_ip == 50
    assert cfg.limits.min_data_rate == 500


def test_cleartext_login_networks(tmp_path: Path) -> None:
    assert load_text(tmp_path, BASE).imap.cleartext_login_networks == []
    cfg = load_text(tmp_path, BASE + '[imap]\ncleartext_login_networks = '
                                     '["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]\n')
    assert [str(n) for n in cfg.imap.cleartext_login_networks] == [
        "127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"]


@pytest.mark.parametrize(
    "extra, key",
    [
        ("bogus = 1\n", "bogus"),
        ("[limits]\nmax_recipients = 0\n", "limits.max_recipients"),
        ("[limits]\nmax_message_size = \"lots\"\n", "limits.max_message_size"),
        ("[limits]\nnope = 1\n", "limits.nope"),
        ("[listen]\nsmtp = [\"127.0.0.1\"]\n", "listen.smtp"),
        ("[listen]\nsmtp = [\"127.0.0.1:99999\"]\n", "listen.smtp"),
        ("[queue]\nmax_lifetime = \"forever\"\n", "queue.max_lifetime"),
        ("[queue]\nlease = \"0s\"\n", "queue.lease"),
        ("[queue]\nlease = \"soon\"\n", "queue.lease"),
        ("[limits]\nmax_connections_per_ip = 0\n", "limits.max_connections_per_ip"),
        ("[limits]\nmin_data_rate = 0\n", "limits.min_data_rate"),
        ("[limits]\nmin_data_rate = \"fast\"\n", "limits.min_data_rate"),
        ("[limits]\ncommand_timeout = \"0s\"\n", "limits.command_timeout"),
        ("[tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n", "tls.cert"),
        ("mode = \"party\"\n", "mode"),
        ("[imap]\nmax_literal_memory_per_session = \"300M\"\n",
         "imap.max_literal_memory_per_session"),
        ("[imap]\ncleartext_login_networks = [\"localhost\"]\n", "imap.cleartext_login_networks"),
        ("[imap]\ncleartext_login_networks = \"127.0.0.1\"\n", "imap.cleartext_login_networks"),
        ("[imap]\ncleartext_login_networks = [\"10.0.0.1/8\"]\n",
         "imap.cleartext_login_networks"),
        ("[delivery]\nrecipient_delimiter = \".\"\n", "delivery.recipient_delimiter"),
        ("[delivery]\ndetail_folder = \"yes\"\n", "delivery.detail_folder"),
        ("[delivery]\nsrs = \"on\"\n", "delivery.srs"),
        ("[delivery]\narc_seal = 1\n", "delivery.arc_seal"),
        ("[delivery]\nsrs_domain = \"other.test\"\n", "delivery.srs_domain"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, BASE + extra)
    assert e.value.key == key
    assert str(e.value).startswith(key + ":")


def test_bad_domain_and_hostname(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="domains"):
        load_text(tmp_path, 'hostname = "mx.example.test"\ndomains = ["bad domain"]\n')
    with pytest.raises(config.ConfigError, match="hostname"):
        load_text(tmp_path, 'hostname = "mx example"\ndomains = ["example.test"]\n')


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="pillarbox init"):
        config.load(tmp_path / "nope.toml")


def test_sizes_and_durations() -> None:
    assert config.parse_size("10K") == 10240
    assert config.parse_size("1g") == 1024**3
    assert config.parse_size(5) == 5
    assert config.parse_duration("5m") == 300
    assert config.parse_duration("2d") == 172800
    with pytest.raises(config.ConfigError):
        config.parse_size(-1)


def test_routes_and_remote(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE + """
[remote]
port = 2626
max_per_destination = 3

[[route]]
domains = ["partner.test"]
host = "127.0.0.1:2727"
tls = "required"

[[route]]
domains = ["*"]
senders = ["@example.test"]
host = "smart.example.net"
auth_user = "u"
auth_password = "p"
""")
    assert cfg.remote.port == 2626 and cfg.remote.max_per_destination == 3
    first, second = cfg.routes
    assert (first.host, first.port, first.tls) == ("127.0.0.1", 2727, "required")
    assert first.matches("partner.test", "anyone@else.test")
    assert not first.matches("other.test", "a@example.test")
    assert (second.host, second.port) == ("smart.example.net", 25)
    assert second.matches("anything.test", "bob@example.test")
    assert not second.matches("anything.test", "bob@elsewhere.test")


@pytest.mark.parametrize(
    "route, key",
    [
        ('domains = []', "route[0].domains"),
        ('domains = ["x.test"]\ntls = "maybe"', "route[0].tls"),
        ('domains = ["x.test"]\nauth_user = "u"', "route[0].auth_user"),
        ('domains = ["x.test"]\nport = 25', "route[0].port"),
        ('domains = ["x.test"]\nhost = "h:0"', "route[0].host"),
    ],
)
def test_bad_routes_name_the_key(tmp_path: Path, route: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, BASE + "[[route]]\n" + route + "\n")
    assert e.value.key == key


@pytest.mark.parametrize("listen", [
    'smtp = ["127.0.0.1:2525"]\nsubmission = ["127.0.0.1:2525"]\n',
    'smtp = ["127.0.0.1:2525", "127.0.0.1:2525"]\n',
    'smtp = ["0.0.0.0:2525"]\nimap = ["127.0.0.1:2525"]\n',
    'smtp = ["[::]:2525"]\nimaps = ["[::1]:2525"]\n',
    'smtp = ["[::]:2525"]\nimaps = ["[0:0::0]:2525"]\n',
    'smtp = ["LOCALHOST:2525"]\nlmtp = ["localhost:2525"]\n',
])
def test_two_endpoints_on_one_address_are_refused(tmp_path: Path, listen: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, BASE + "[listen]\n" + listen)
    assert e.value.key.startswith("listen."), e.value
    assert "2525" in str(e.value) and "\n" not in str(e.value), e.value


def test_endpoints_on_distinct_addresses_are_fine(tmp_path: Path) -> None:
    # [::] is bound IPv6-only, so it does not overlap 0.0.0.0
    cfg = load_text(tmp_path, BASE + '[listen]\nsmtp = ["0.0.0.0:2525", "[::]:2525"]\n'
                    'submission = ["127.0.0.1:5870", "127.0.0.2:5870"]\n'
                    'imap = ["127.0.0.1:2526"]\n')
    assert cfg.listen["smtp"] == [("0.0.0.0", 2525), ("::", 2525)]


LISTEN = '[listen]\nsmtp = ["127.0.0.1:2525"]\n'


@pytest.mark.parametrize("new, key", [
    ('data_dir = "elsewhere"\n' + LISTEN, "data_dir"),
    ('maildrop_dir = ""\n' + LISTEN, "maildrop_dir"),
    ('storage = { url = "sqlite:" }\n' + LISTEN, "storage.url"),
    ('[listen]\nsmtp = ["127.0.0.1:2526"]\n', "listen.smtp"),
    (LISTEN + 'imaps = ["127.0.0.1:993"]\n', "listen.imaps"),
    (LISTEN + "[queue]\nworkers = 3\n", "queue.workers"),
    (LISTEN + '[queue]\nlease = "10s"\n', "queue.lease"),
    (LISTEN + '[limits]\nmax_message_size = "1M"\n', None),
    ('log_level = "debug"\n' + LISTEN, None),
    (LISTEN + '[queue]\nretry_schedule = ["1s"]\n', None),
])
def test_settings_a_reload_cannot_change(tmp_path: Path, new: str, key: str | None) -> None:
    old = load_text(tmp_path, BASE + LISTEN)
    assert config.restart_needed(old, load_text(tmp_path, BASE + new)) == key


@pytest.mark.parametrize("value, seconds", [(None, 86400.0), ('"1s"', 1.0), ('"12h"', 43200.0)])
def test_chatmail_expire_every(tmp_path: Path, value: str | None, seconds: float) -> None:
    text = BASE + (f"[chatmail]\nexpire_every = {value}\n" if value else "")
    assert load_text(tmp_path, text).chatmail.expire_every == seconds


@pytest.mark.parametrize("value", ['"0s"', '"500ms"', '"400d"', '"soon"'])
def test_chatmail_expire_every_out_of_range(tmp_path: Path, value: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, BASE + f"[chatmail]\nexpire_every = {value}\n")
    assert e.value.key == "chatmail.expire_every"


def test_shared_dir_holds_mail_queue_and_dkim_keys(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE)
    assert (cfg.mail_root, cfg.dkim_dir) == (tmp_path / "var" / "mail", tmp_path / "var" / "dkim")
    cfg = load_text(tmp_path, BASE + '[storage]\nurl = "postgresql://pb@db/pb"\n'
                                      'shared_dir = "/srv/shared"\nnode = "n1"\n')
    assert cfg.mail_root == Path("/srv/shared/mail")
    assert cfg.queue_root == Path("/srv/shared/queue/n1")
    assert cfg.dkim_dir == Path("/srv/shared/dkim")
