"""What every load generator here needs: progress lines, the client side of TLS
against a throwaway server, figures in text, a Debian package installed for a
comparison, and a section of docs/BENCHMARKS.md written."""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "BENCHMARKS.md"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False  # the throwaway server has a self-signed certificate
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fmt(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def bullet(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 92, initial_indent="- ",
                         subsequent_indent="  ", break_on_hyphens=False)


def para(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), 92, break_on_hyphens=False)


def os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return "unknown OS"


def write_section(section: str, text: str) -> None:
    """Replace `## {section}` in docs/BENCHMARKS.md with text (or append it)."""
    old = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pat = re.compile(rf"(?ms)^## {re.escape(section)}\n.*?(?=^## |\Z)")
    if pat.search(old):
        new = pat.sub(lambda _: text.rstrip("\n") + "\n\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    DOCS.write_text(new.rstrip("\n") + "\n")
    print(f"wrote {DOCS.relative_to(REPO)}")


def apt_install(package: str, by: str) -> subprocess.CompletedProcess:
    """`apt-get install` with service starts denied (as Debian's container images
    do), retrying once after `apt-get update`; `by` names the script in policy-rc.d."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text(f"#!/bin/sh\n# added by pillarbox {by}\nexit 101\n")
        policy.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "--no-install-recommends", package]
        r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=900)
            r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        return r
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


def median(xs: list[float | None]) -> float | None:
    """The median of the runs that gave a figure (None: none did)."""
    got = [x for x in xs if x is not None]
    return statistics.median(got) if got else None
