"""Who sent this message, by DKIM, SPF, DMARC and ARC, and what the From
domain's policy asks for (kind "authentication", for the MX pipeline).

It gives one verdict per message: the results as Authentication-Results
entries (the SMTP session writes the one field naming this host), and a
refusal or Junk when a policy says so. SPF runs at MAIL; DKIM, ARC and DMARC
need the whole message and run after DATA, in worker threads, at most
`max_concurrent` messages at once per instance (each holds a message in
memory). Authenticated mail (submission) is not judged.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from email.utils import getaddresses
from functools import lru_cache
from typing import Any, BinaryIO

from pillarbox import module
from pillarbox.check import Reply
from pillarbox.check import arc as arc_check
from pillarbox.check import dkim as dkim_check
from pillarbox.check import dmarc as dmarc_check
from pillarbox.check import spf as spf_check
from pillarbox.printable import escape

DMARC_POLICIES = ("enforce", "quarantine", "record")
SPF_FAIL = ("record", "reject")
DKIM_LENGTH = ("ignore", "refuse")

def from_domains(header: Message) -> list[str]:
    """The distinct domains of the From field's addresses ([] if none)."""
    return list(_domains_of(tuple(str(v) for v in header.get_all("From", []))))


@lru_cache(maxsize=4096)  # a sender's From repeats; the address parser is slow
def _domains_of(values: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for _, a in getaddresses(values):
        d = a.rpartition("@")[2].strip().rstrip(".").lower() if "@" in a else ""
        if d and d not in out:
            out.append(d)
    return tuple(out)


def _strictest(results: list[dmarc_check.DMARCResult]) -> dmarc_check.DMARCResult:
    """Several From domains: the one whose verdict weighs most."""
    order = {"reject": 0, "quarantine": 1}
    return min(results, key=lambda r: (order.get(r.disposition, 2),
                                       ["temperror", "fail", "permerror", "none",
                                        "pass"].index(r.result)))


class _State(module.BaseCheckState):
    def __init__(self, check: AuthenticationCheck, source: module.Source) -> None:
        self.check, self.source = check, source
        self.helo_name = source.helo or ""
        self.spf: spf_check.SPFResult | None = None
        self.spf_helo: spf_check.SPFResult | None = None

    @property
    def judged(self) -> bool:
        return not self.source.auth  # submission is signed, not judged

    async def helo(self, name: str) -> module.Verdict:
        self.helo_name = name or self.helo_name
        # RFC 7208 2.3: the HELO identity is checked too, once per EHLO; only a
        # domain name has a policy (not an address literal).
        self.spf_helo = None
        if name and self.judged and "." in name and not name.startswith("["):
            self.spf_helo = await spf_check.check(self.check.resolver, self.source.client_ip,
                                                  "", name, self.check.hostname,
                                                  self.check.executor, self.check.spf_results)
        return module.ACCEPT

    async def mail(self, sender: str) -> module.Verdict:
        if not self.judged:
            return module.ACCEPT
        self.spf = await spf_check.check(self.check.resolver, self.source.client_ip, sender,
                                         self.helo_name, self.check.hostname,
                                         self.check.executor, self.check.spf_results)
        if self.check.spf_fail == "reject":
            if self.spf.result == "fail":
                return module.Verdict(reject=Reply(
                    550, f"5.7.23 SPF policy of {escape(self.spf.domain)} does not allow "
                         f"mail from {self.source.client_ip}"))
            if self.spf.result == "temperror":
                return module.Verdict(reject=Reply(
                    451, f"4.4.3 SPF record of {escape(self.spf.domain)} could not be "
                         "looked up; try again later"))
        return module.ACCEPT

    async def body(self, header: Message, body: BinaryIO) -> module.Verdict:
        if not self.judged:
            return module.ACCEPT
        async with self.check.slots:  # bounds the messages held in memory at once
            message = body.read() if isinstance(body, io.BytesIO) else \
                await asyncio.to_thread(body.read)  # a spilled body: read off the loop
            return await self.check.judge(message, header, self.spf, self.spf_helo)


class AuthenticationCheck:
    def __init__(self, name: str, options: dict[str, Any], env: Any) -> None:
        self.name = name
        self.resolver = env.resolver
        self.hostname = env.config.hostname
        self.dmarc_policy: str = options["dmarc_policy"]
        self.spf_fail: str = options["spf_fail"]
        self.strict_dkim: bool = options["strict_dkim"]
        self.dkim_length: str = options["dkim_length"]
        self.min_key_bits: int = options["dkim_min_key_bits"]
        self.slots = asyncio.Semaphore(options["max_concurrent"])
        self.spf_results = spf_check.ResultCache()
        # Its own threads: SPF at MAIL for many sessions, DKIM and ARC for the
        # messages in `slots`; the server's default pool stays free.
        self.executor = ThreadPoolExecutor(2 * options["max_concurrent"] + 4,
                                           thread_name_prefix=f"check-{name}")

    def state(self, source: module.Source) -> _State:
        return _State(self, source)

    async def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def judge(self, message: bytes, header: Message, spf: spf_check.SPFResult | None,
                    spf_helo: spf_check.SPFResult | None = None) -> module.Verdict:
        # One after the other: both run on the event loop for all but large
        # messages, and two tasks per message cost more than they overlap.
        sigs = await dkim_check.verify(message, self.resolver, self.min_key_bits, self.executor)
        arc = await arc_check.verify(message, self.resolver, self.executor)
        passed = [s.domain for s in sigs if s.result == "pass"]
        spf_domain = spf.domain if spf is not None and spf.result == "pass" else None
        domains = from_domains(header)
        if domains:
            dmarc = _strictest([await dmarc_check.evaluate(self.resolver, d, passed, spf_domain)
                                for d in domains])
        else:
            dmarc = dmarc_check.DMARCResult("permerror", "", reason="no From address")
        entries = ([spf.entry()] if spf is not None else [])
        if spf_helo is not None and spf is not None and spf.identity == "mailfrom":
            entries.append(spf_helo.entry())  # (for the null sender `spf` is HELO's)
        entries += [s.entry() for s in sigs] or ["dkim=none"]
        entries += [dmarc.entry(), arc.entry()]
        # Aligned in every mode, so DMARC would pass whatever the record says.
        surely_aligned = bool(domains) and all(d in passed or d == spf_domain for d in domains)
        refusal = self._refusal(sigs, dmarc, domains, surely_aligned)
        if refusal is not None:
            return module.Verdict(reject=refusal)
        junk = self.dmarc_policy != "record" and dmarc.result == "fail" and (
            dmarc.disposition == "quarantine"
            or (dmarc.disposition == "reject" and self.dmarc_policy == "quarantine"))
        return module.Verdict(quarantine=junk, auth_results=entries)

    def _refusal(self, sigs: list[dkim_check.Signature], dmarc: dmarc_check.DMARCResult,
                 domains: list[str], surely_aligned: bool) -> Reply | None:
        if self.dkim_length == "refuse" and any(s.length for s in sigs):
            return Reply(550, "5.7.1 DKIM signatures with l= are not accepted here")
        if self.dmarc_policy != "record":
            if (dmarc.result == "fail" and dmarc.disposition == "reject"
                    and self.dmarc_policy == "enforce"):
                return Reply(550, f"5.7.1 DMARC policy of {escape(dmarc.from_domain)} "
                                  "rejects this message")
            if dmarc.result == "temperror" and not surely_aligned:
                return Reply(451, f"4.4.3 DMARC policy of {escape(dmarc.from_domain)} could "
                                  "not be looked up; try again later")
        if self.strict_dkim:
            if len(domains) == 1 and any(s.result == "pass" and s.domain == domains[0]
                                         for s in sigs):
                return None
            if any(s.result == "temperror" for s in sigs):
                return Reply(451, "4.4.3 DKIM key could not be looked up; try again later")
            return Reply(554, "5.7.1 No valid DKIM signature found")
        return None


def _validate(options: dict[str, Any]) -> None:
    for key, allowed in (("dmarc_policy", DMARC_POLICIES), ("spf_fail", SPF_FAIL),
                         ("dkim_length", DKIM_LENGTH)):
        if options[key] not in allowed:
            raise ValueError(f"{key}: must be one of {', '.join(allowed)}, "
                             f"got {options[key]!r}")
    if not 1 <= options["max_concurrent"] <= 64:
        raise ValueError("max_concurrent: must be from 1 to 64")
    if not 512 <= options["dkim_min_key_bits"] <= 8192:
        raise ValueError("dkim_min_key_bits: must be from 512 to 8192")


def _make(name: str, options: dict[str, Any], env: Any) -> AuthenticationCheck:
    _validate(options)
    return AuthenticationCheck(name, options, env)


KIND = module.Kind(
    name="authentication", role="check",
    options=(
        module.Option("dmarc_policy", str, "enforce",
                      help='"enforce": a DMARC failure under p=reject is refused (550 5.7.1), '
                           'under p=quarantine filed in Junk; "quarantine": both filed in Junk; '
                           '"record": only recorded'),
        module.Option("spf_fail", str, "record",
                      help='"record": an SPF fail is only recorded; "reject": refused at MAIL '
                           "(550 5.7.23)"),
        module.Option("strict_dkim", bool, False,
                      help="require a valid DKIM signature whose d= is the From domain, else "
                           "554 5.7.1 No valid DKIM signature found"),
        module.Option("dkim_length", str, "ignore",
                      help='signatures with l=: "ignore" (recorded as dkim=policy, they count '
                           'for nothing) or "refuse" (550 5.7.1)'),
        module.Option("dkim_min_key_bits", int, 1024,
                      help="RSA DKIM keys shorter than this do not verify"),
        module.Option("max_concurrent", int, 2,
                      help="messages verified at once by this instance (each is held in "
                           "memory while it is)"),
    ),
    make=_make, validate=_validate,
    help="DKIM, SPF, DMARC and ARC verification with the From domain's policy, for the MX: "
         "one Authentication-Results field, refusal or Junk as the options say.")
