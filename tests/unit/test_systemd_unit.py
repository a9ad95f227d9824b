"""The unit `init --production` writes lets the service write where the config
keeps state: data_dir, maildrop_dir and, on several nodes, shared_dir."""

from __future__ import annotations

from pathlib import Path

from pillarbox import config, systemd_unit


def _unit(tmp_path: Path, storage: str) -> str:
    p = tmp_path / "pillarbox.toml"
    p.write_text('hostname = "mx.example.org"\ndomains = ["example.org"]\n'
                 'data_dir = "/var/lib/pillarbox"\nuser = "pillarbox"\n'
                 'maildrop_dir = "/var/spool/pillarbox/maildrop"\n' + storage)
    return systemd_unit.render(config.load(p, check_files=False), "/usr/bin/pillarbox")


def test_shared_dir_is_writable_beside_data_dir(tmp_path):
    unit = _unit(tmp_path, '[storage]\nurl = "postgresql://pbx@db.example.org/pbx"\n'
                           'shared_dir = "/srv/pillarbox-shared"\nnode = "a"\n')
    want = "ReadWritePaths=/var/lib/pillarbox /var/spool/pillarbox/maildrop /srv/pillarbox-shared"
    assert want + "\n" in unit, unit


def test_one_node_writes_data_dir_and_maildrop_only(tmp_path):
    assert "ReadWritePaths=/var/lib/pillarbox /var/spool/pillarbox/maildrop\n" in _unit(
        tmp_path, "")
