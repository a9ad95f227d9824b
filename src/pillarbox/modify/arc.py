"""ARC sealing (RFC 8617) of mail an alias forwards to another domain.

A forward keeps the message as it came (its DKIM signatures stay valid) but
leaves from our address, so SPF and DMARC alignment fail at the next hop. An
ARC set tells the next hop what we saw on arrival: the
ARC-Authentication-Results copy our own `Authentication-Results` field (the
topmost one whose authserv-id is our hostname) plus the `arc=` state of the
chain the message came with; the ARC-Message-Signature signs the message as
it leaves, the ARC-Seal the chain.

Sealing uses the forwarding domain's RSA DKIM key (ARC knows rsa-sha256
only): the newest `<selector>.key` of `data_dir/dkim/<domain>/` whose kind is
RSA, the one outbound DKIM signing uses, so its `_domainkey` record is
already published. Chain validation of a message that arrives with ARC sets
asks DNS through the server's shared resolver.

dkimpy does the work: `arc_verify` for the chain state (cv=none without ARC
fields, pass or fail otherwise; a chain an earlier hop already marked
failed is not sealed again, RFC 8617 5.1.2), `arc_sign` for the new set.
Both are CPU work and may wait on DNS: call `Sealer.seal` from a worker
thread, never on the event loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import authres
import dkim
import dns.exception
import dns.resolver

from pillarbox.authserv import claims_host
from pillarbox.modify.dkim_sign import DKIMSigner, ascii_domain, include_headers

log = logging.getLogger("pillarbox.arc")
# dkimpy logs what it finds wrong in a hostile message at ERROR; the verdict
# (cv=fail) is what counts, so its own lines go nowhere.
_dkimpy_log = logging.getLogger("pillarbox.arc.dkimpy")
_dkimpy_log.addHandler(logging.NullHandler())
_dkimpy_log.propagate = False

#: RFC 8617 4.2.1: instances run from 1 to 50.
MAX_INSTANCE = 50

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")
_CV = {dkim.CV_None: "none", dkim.CV_Pass: "pass", dkim.CV_Fail: "fail"}


def txt_func(lookup: Callable[[str, str], dns.resolver.Answer]
             ) -> Callable[..., bytes | None]:
    """dkimpy's `dnsfunc(name, timeout=...)` over a `resolver.sync_lookup`:
    the TXT strings joined, None when there is no record. Other DNS errors
    (timeouts, SERVFAIL) propagate: the seal is skipped, not made on a guess."""

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        qname = name.decode("ascii") if isinstance(name, bytes) else name
        try:
            answer = lookup(qname, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        for rd in answer:
            return b"".join(rd.strings)
        return None

    return dnsfunc


def split_fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """The header block (CRLF line ends, no blank line) as (lowercased name,
    whole field with its continuation lines and CRLF)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line + b"\r\n")
            continue
        m = _FIELD_NAME.match(line)
        fields.append((m.group(1).lower() if m else b"", line + b"\r\n"))
    return fields


def our_results(fields: list[tuple[bytes, bytes]], authserv_id: str) -> list[str]:
    """The results (`dkim=pass header.d=...`) of the topmost Authentication-Results
    field whose authserv-id is ours, without any `arc=` result (ours replaces
    it) and without `none`. [] when there is none, or it cannot be parsed."""
    for name, raw in fields:
        if name != b"authentication-results":
            continue
        value = raw.split(b":", 1)[1].decode("utf-8", "replace")
        value = " ".join(value.split())
        if not claims_host(value, authserv_id):
            continue  # another host's verdicts (a version after the id is allowed)
        try:
            parsed = authres.AuthenticationResultsHeader.parse(
                "Authentication-Results: " + value)
        except Exception as e:  # authres raises several kinds on bad input
            log.warning("arc: our Authentication-Results field is unreadable, "
                        "sealing without it error=%r", str(e))
            return []
        return [str(r) for r in parsed.results if r.method.lower() != "arc"]
    return []


class Sealer:
    """Makes the ARC set for a forwarded message. Thread-safe; keys are read
    through a DKIMSigner (cached, reloaded when the key directory changes)."""

    def __init__(self, signer: DKIMSigner) -> None:
        self.signer = signer

    def seal(self, message: bytes, domains: Sequence[str], authserv_id: str,
             lookup: Callable[[str, str], dns.resolver.Answer]) -> bytes:
        """The ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results
        fields (in that order, CRLF line ends) to prepend to `message`, sealed
        by the first of `domains` that has an RSA key; b"" when none has one
        or the chain must not be extended. `lookup` is a
        `resolver.sync_lookup`. dkimpy's and DNS errors propagate."""
        key, domain = None, ""
        for domain in domains:
            key = next((k for k in self.signer.keys(domain) if k.kind == "rsa"), None)
            if key is not None:
                break
        if key is None:
            return b""
        dnsfunc = txt_func(lookup)
        end = message.find(b"\r\n\r\n")
        header, body = (message[:end + 2], message[end + 2:]) if end >= 0 else (message, b"")
        fields = split_fields(header)
        cv = "none"
        if any(name == b"arc-seal" for name, _ in fields):
            state, _, reason = dkim.arc_verify(message, logger=_dkimpy_log,
                                                dnsfunc=dnsfunc)
            if state is None:
                log.info("arc: chain already failed upstream, not sealed reason=%r", reason)
                return b""
            cv = _CV.get(state, "fail")
        host = authserv_id.lower()
        results = [f"arc={cv}"] + our_results(fields, host)
        # dkimpy takes the AAR from the Authentication-Results fields named
        # srv_id: it gets exactly one, ours, with the arc= state above. The
        # copy it signs differs from the message only in Authentication-Results
        # fields, which neither the AMS (it may not sign them) nor the AS covers.
        ar = ("Authentication-Results: " + host + "".join(
            ";\r\n " + r for r in results) + "\r\n").encode("utf-8")
        rest = b"".join(raw for name, raw in fields if name != b"authentication-results")
        h = include_headers([name for name, _ in fields if name])
        out = dkim.arc_sign(ar + rest + body, key.selector.encode(),
                            ascii_domain(domain).encode(), key.private,
                            host.encode(), include_headers=h, logger=_dkimpy_log)
        return b"".join(out)
