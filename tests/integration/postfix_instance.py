"""A throwaway Postfix (Debian's package) for the tests of pillarbox beside it.

Its own config_directory, queue_directory and data_directory under one
temporary directory, its smtpd on a free port of 127.0.0.1, started with
`postfix -c DIR start` and stopped with `postfix -c DIR stop` (abort if that
fails). The system's own Postfix (/etc/postfix) is never read, written,
started or stopped. Postfix's daemons run as the `postfix` user, so the
directory is made under /tmp, readable by all (pytest's tmp_path is root's).
"""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
START_TIMEOUT = 30.0

# The daemons a delivery over SMTP to LMTP needs; none chrooted (the queue is
# not where a chroot would expect it).
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
lmtp      unix  - - n -    - lmtp
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.example.test
mydomain = example.test
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtputf8_enable = no
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtpd_banner = $myhostname ESMTP
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


class PostfixInstance:
    def __init__(self, smtp_port: int, main_cf_extra: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pbx-postfix-", dir="/tmp"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.config_dir.mkdir()
        (self.root / "queue").mkdir()  # postfix start makes its subdirectories
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix")
        self.port = smtp_port
        (self.config_dir / "main.cf").write_text(
            MAIN_CF.format(root=self.root) + main_cf_extra)
        (self.config_dir / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{smtp_port}"))
        self.started = False

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([POSTFIX, "-c", str(self.config_dir), *args],
                           capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"postfix {' '.join(args)} failed ({p.returncode}):\n"
                                 f"{p.stdout}{p.stderr}\n{self.log_tail()}")
        return p

    def start(self) -> None:
        self._postfix("start")
        self.started = True
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # serving once its smtpd greets
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as s:
                    s.noop()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"postfix did not listen on {self.port}:\n"
                                         f"{self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.started:
            if self._postfix("stop", check=False).returncode != 0:
                self._postfix("abort", check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def flush(self) -> None:
        """Deliver what is deferred now (`postqueue -f` for this instance)."""
        self._postfix("flush", check=False)

    def log_text(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def smtp(self, source: str = "127.0.0.1") -> smtplib.SMTP:
        """A client session; `source`: the address it connects from (the
        policy service's rate limit counts per address)."""
        s = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30,
                         source_address=(source, 0))
        s.ehlo()
        return s
