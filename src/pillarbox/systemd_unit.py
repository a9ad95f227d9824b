"""The systemd unit `init --production` writes.

One design: systemd starts `serve` as the service user (`User=`), never as
root; the ambient CAP_NET_BIND_SERVICE lets that user bind 25, 587, 465, 143
and 993. (A server started as root by hand binds and drops to `user` itself;
see server.py.) The rest is the sandboxing systemd offers that the server
does not need to be without: a read-only system with data_dir,
maildrop_dir and shared_dir writable, no way back to more privileges, no devices, no
kernel knobs.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from pillarbox.config import Config

UNIT = """\
# pillarbox mail server, written by `pillarbox init --production`.
# Install: install -m 0644 THIS_FILE /etc/systemd/system/pillarbox.service
#          systemctl enable --now pillarbox
[Unit]
Description=pillarbox mail server
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
ExecStartPre={exe} -c {config} check
ExecStart={exe} -c {config} serve
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
TimeoutStopSec=30s
LimitNOFILE=65536
UMask=0077

# Ports below 1024 without root: this capability and no other.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes

# Sandbox. Only data_dir, maildrop_dir and shared_dir are writable: add any directory a
# |command alias writes to.
ProtectSystem=strict
ReadWritePaths={writable}
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def executable() -> str:
    """The command that runs this installation's pillarbox, as an absolute path:
    the `pillarbox` script beside this Python (a virtualenv's bin/), else
    `python -m pillarbox`."""
    script = Path(sys.executable).parent / "pillarbox"
    if script.is_file():
        return str(script.absolute())
    return f"{Path(sys.executable).absolute()} -m pillarbox"


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


def render(cfg: Config, exe: str) -> str:
    paths = [cfg.data_dir] + [d for d in (cfg.maildrop_dir, cfg.shared_dir) if d is not None]
    # ProtectHome=yes would hide a data_dir or config under /home or /root.
    under_home = any(str(p).startswith(("/home/", "/root/", "/run/user/"))
                     for p in [*paths, cfg.path])
    return UNIT.format(user=cfg.user, exe=exe, config=_quote(cfg.path),
                       writable=" ".join(_quote(p) for p in paths),
                       protect_home="read-only" if under_home else "yes")
