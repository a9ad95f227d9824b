"""`pillarbox dns`: the DNS records to publish for each domain, as a zone-file snippet.

Names are absolute (with the trailing dot), so each domain's block can be pasted
into that domain's zone file as it is, whatever its $ORIGIN.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pillarbox.config import Config
from pillarbox.modify import dkim_sign

TTL = 3600

# (record name, listen kind, the port clients are told to use); RFC 6186 and RFC 8314
SRV_SERVICES = (
    ("_submission._tcp", "submission", 587),
    ("_submissions._tcp", "submissions", 465),
    ("_imap._tcp", "imap", 143),
    ("_imaps._tcp", "imaps", 993),
)


def client_services(cfg: Config) -> list[tuple[str, str, int | None]]:
    """(SRV name, listen kind, the port clients are told, None when not offered):
    what the SRV records and the autoconfig files (endpoint/http) both say."""
    out = []
    for name, kind, standard in SRV_SERVICES:
        addrs = cfg.listen.get(kind)
        port = (standard if cfg.http.client_ports == "standard" else addrs[0][1]) if addrs else None
        out.append((name, kind, port))
    return out


def dkim_dir(cfg: Config) -> Path:
    return cfg.dkim_dir


def ensure_dkim_keys(cfg: Config) -> dict[str, list[str]]:
    """Create the DKIM keys of domains that have none yet: {domain: selectors created}."""
    made = {}
    for domain in cfg.domains:
        selectors = dkim_sign.generate_keys(dkim_dir(cfg), domain)
        if selectors:
            made[domain] = selectors
    return made


def txt_strings(value: str) -> str:
    """A TXT value as zone-file character strings of at most 255 bytes each."""
    data = value.encode("utf-8")
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    out = []
    for c in chunks:
        s = c.decode("ascii", "backslashreplace").replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'"{s}"')
    return " ".join(out)


def _fqdn(name: str) -> str:
    return dkim_sign.ascii_domain(name) + "."


def mta_sts_policy(cfg: Config) -> str:
    """The policy file served at https://mta-sts.<domain>/.well-known/mta-sts.txt
    (endpoint/http/mta_sts.py).

    "enforce" needs a certificate that senders accept for the MX hostname; with
    the self-signed pair made by `init` (no [tls] cert, no [acme]), it is
    "testing", unless http.mta_sts_mode says otherwise.
    """
    mode = cfg.http.mta_sts_mode or ("enforce" if cfg.tls_cert or cfg.acme.directory
                                     else "testing")
    return (f"version: STSv1\r\nmode: {mode}\r\nmx: {dkim_sign.ascii_domain(cfg.hostname)}\r\n"
            f"max_age: {cfg.http.mta_sts_max_age}\r\n")


def mta_sts_id(policy: str) -> str:
    """Changes exactly when the policy changes (RFC 8461 3.1: 1-32 alphanumerics)."""
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def domain_records(cfg: Config, domain: str) -> str:
    d = _fqdn(domain)
    mx = _fqdn(cfg.hostname)
    ascii_d = d.rstrip(".")
    postmaster = f"postmaster@{ascii_d}"
    policy = mta_sts_policy(cfg)
    rows: list[tuple[str, str, str]] = [
        (d, "MX", f"10 {mx}"),
        (d, "TXT", txt_strings("v=spf1 mx -all")),
    ]
    dkim_rows = dkim_sign.txt_records(dkim_dir(cfg), domain)
    for name, value in dkim_rows:
        rows.append((f"{name}.{d}", "TXT", txt_strings(value)))
    rows += [
        (f"_dmarc.{d}", "TXT", txt_strings(f"v=DMARC1; p=quarantine; rua=mailto:{postmaster}")),
        (f"_mta-sts.{d}", "TXT", txt_strings(f"v=STSv1; id={mta_sts_id(policy)}")),
        (f"_smtp._tls.{d}", "TXT", txt_strings(f"v=TLSRPTv1; rua=mailto:{postmaster}")),
    ]
    for name, _kind, port in client_services(cfg):
        if port is not None:
            rows.append((f"{name}.{d}", "SRV", f"0 1 {port} {mx}"))
        else:  # RFC 6186 3.4 / RFC 2782: "." says the service is not offered
            rows.append((f"{name}.{d}", "SRV", "0 0 0 ."))

    width = max(len(r[0]) for r in rows)
    lines = [f"; ---- {ascii_d} ----"]
    if not dkim_rows:
        lines.append(f"; no DKIM key for {ascii_d} in {dkim_dir(cfg)}: "
                     "`pillarbox dns` creates it, then publish its records")
    lines += [f"{name:<{width}} {TTL} IN {rtype:<3} {data}" for name, rtype, data in rows]
    lines += [
        ";",
        f"; MTA-STS: serve this policy at https://mta-sts.{ascii_d}/.well-known/mta-sts.txt",
        f"; with a certificate valid for mta-sts.{ascii_d}; point that name at the web",
        "; server, e.g.",
        f";   mta-sts.{d} {TTL} IN CNAME {mx}",
        "; (or A/AAAA records). Policy file content (CRLF line ends):",
        *[f";   {line}" for line in policy.splitlines()],
        ";",
        "; Mail clients' autoconfig and OpenPGP key discovery (WKD) ask these names of the",
        "; web server (listen.http/https, docs/HTTP.md):",
        *[f";   {name}.{d} {TTL} IN CNAME {mx}" for name in
          ("autoconfig", "autodiscover", "openpgpkey")],
    ]
    if not cfg.tls_cert:
        lines.append("; With a certificate from a public CA in [tls], the mode becomes "
                     "\"enforce\" (and the id above changes).")
    lines += [
        ";",
        f"; Reports (DMARC, TLS-RPT) go to {postmaster}: create that user or an alias.",
        f"; Also publish A (and AAAA) records for {mx} with this server's addresses,",
        f"; and have each address's reverse DNS (PTR) name {mx} (ask your hosting provider);",
        "; many receivers refuse mail from addresses without matching reverse DNS.",
    ]
    return "\n".join(lines) + "\n"


def records(cfg: Config) -> str:
    """The zone-file snippet for every configured domain."""
    head = (f"; DNS records for pillarbox at {_fqdn(cfg.hostname)} "
            "(each block goes into that domain's zone)\n")
    return head + "\n".join(domain_records(cfg, d) for d in cfg.domains)
