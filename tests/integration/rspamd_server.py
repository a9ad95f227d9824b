"""A real rspamd (Debian's package) for the tests of the `rspamd` check.

    rs = RspamdServer(tmp_dir)
    rs.start()          # its own config directory, a free port on 127.0.0.1
    rs.url              # "http://127.0.0.1:PORT"
    rs.stop()

The config is our own rspamd.conf, which takes the packaged defaults from
/etc/rspamd and this directory as LOCAL_CONFDIR, DBDIR and RUNDIR: only the
normal worker (no controller, proxy or fuzzy storage), no redis (the modules
that need it disable themselves), no DNS (a nameserver where nothing
answers, so nothing waits on the network; the tests' client is 127.0.0.1,
for which rspamd skips its network checks), no fuzzy servers.

Two test subjects drive the actions GTUBE cannot (multimap prefilters):
SOFT_SUBJECT gives "soft reject", GREY_SUBJECT "greylist". The GTUBE
variants (enable_test_patterns) give reject (X...), add header (Y...),
rewrite subject (Z...).

Start-up cost is mostly rspamd compiling its hyperscan databases, above
all the public suffix list (about 10 s on 2 idle cores, 50 s on busy ones):
this rspamd gets a three-line list instead (test, org, com: the tests'
domains), and starts in 1 to 4 s with nothing cached.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .support import free_ports

RSPAMD = "/usr/bin/rspamd"
RUN_AS = "_rspamd"  # the package's user: rspamd refuses to run as root
START_TIMEOUT = 90.0
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_ADD_HEADER = "Y" + GTUBE[1:]
GTUBE_REWRITE_SUBJECT = "Z" + GTUBE[1:]
SOFT_SUBJECT = "pbx-test-soft-reject"
GREY_SUBJECT = "pbx-test-greylist"

_CONF = """\
.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}
logging {
    type = "console";
    level = "error";
}
worker "normal" {
    bind_socket = "127.0.0.1:%(port)d";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}
"""

_OPTIONS = """\
dns { nameserver = ["%(nameserver)s"]; timeout = 0.2s; retransmits = 1; }
filters = "chartable,regexp";
url_tld = "$LOCAL_CONFDIR/tld.dat";
enable_test_patterns = true;
"""

_MULTIMAP = """\
PBX_TEST_SOFT {
  type = "header"; header = "Subject"; regexp = true;
  map = "${LOCAL_CONFDIR}/soft.map";
  action = "soft reject"; message = "Test soft reject"; prefilter = true;
}
PBX_TEST_GREY {
  type = "header"; header = "Subject"; regexp = true;
  map = "${LOCAL_CONFDIR}/grey.map";
  action = "greylist"; prefilter = true;
}
"""


def _owned_by(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


class RspamdServer:
    def __init__(self, root: Path, nameserver: str = "127.0.0.1:9") -> None:
        """`nameserver`: where rspamd asks (default: a port where nothing
        answers, so the tests never touch the network)."""
        self.root = root
        self.nameserver = nameserver
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self, user: pwd.struct_passwd | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        local = self.root / "local.d"
        local.mkdir(exist_ok=True)
        (self.root / "rspamd.conf").write_text(_CONF % {"port": self.port})
        (local / "options.inc").write_text(_OPTIONS % {"nameserver": self.nameserver})
        (self.root / "tld.dat").write_text("test\norg\ncom\n")
        (local / "multimap.conf").write_text(_MULTIMAP)
        (self.root / "soft.map").write_text(f"/{SOFT_SUBJECT}/\n")
        (self.root / "grey.map").write_text(f"/{GREY_SUBJECT}/\n")
        for p in (self.root, local, *self.root.rglob("*")):
            _owned_by(p, user)
        self.root.chmod(0o755)

    def start(self) -> None:
        user = pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None
        self.port = free_ports(1)[0]
        self._write_config(user)
        args = [RSPAMD, "-f", "-c", str(self.root / "rspamd.conf")]
        if user is not None:
            args += ["-u", RUN_AS, "-g", RUN_AS]
        for var in ("LOCAL_CONFDIR", "DBDIR", "RUNDIR", "LOGDIR"):
            args += ["--var", f"{var}={self.root}"]
        t0 = time.monotonic()
        with open(self.root / "rspamd.log", "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait_ready(time.monotonic() + START_TIMEOUT)
        self.startup_seconds = time.monotonic() - t0

    def _wait_ready(self, deadline: float) -> None:
        """Poll rspamd's /ping: each attempt blocks until the socket answers or
        refuses, so this is a wait on rspamd, not a sleep."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rspamd exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as r:
                    if r.read().strip() == b"pong":
                        return
            except (urllib.error.URLError, OSError):
                pass
            try:  # refused at once: give rspamd a moment (or notice it died)
                self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        self.stop()
        raise AssertionError(f"rspamd did not answer /ping in {START_TIMEOUT}s:\n"
                             f"{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.root / "rspamd.log").read_text(errors="replace")
                             .splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # the main process stops its workers
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)  # its own session: the workers go too
            self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
