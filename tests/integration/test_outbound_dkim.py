"""DKIM signatures on outbound mail, verified by dkimpy against the records that
`pillarbox dns` tells the operator to publish, served by the test DNS server.
"""

from __future__ import annotations

import email
import os
import re
from pathlib import Path

import dkim

from .dns_server import DNSServer, query_txt
from .outbound import (  # noqa: F401 (fixture_*: the fixtures dns, double, ...)
    DSN,
    REMOTE,
    fixture_dns,
    fixture_double,
    fixture_make_double,
    fixture_outbound,
    point_mx,
    submit,
    wait_queue_empty,
)
from .support import ALICE, DOMAIN, HOSTNAME, make_message, token, wait_until

CAROL = f"carol@{REMOTE}"


def _publish(srv, dns: DNSServer) -> list[str]:
    """Run `pillarbox dns` (it makes the keys if needed), serve its zone; the DKIM names."""
    zone = srv.cli_ok("dns").stdout
    assert dns.load_zone(zone) > 0, zone
    names = re.findall(r"^(\S+\._domainkey\.\S+)\s", zone, re.M)
    assert len(names) == 2, f"expected an ed25519 and an RSA DKIM record:\n{zone}"
    return [n.rstrip(".") for n in names]


def _signatures(content: bytes) -> list[dict[str, str]]:
    """The tags of each DKIM-Signature field, in order."""
    fields = email.message_from_bytes(content).get_all("DKIM-Signature", [])
    out = []
    for f in fields:
        value = re.sub(r"\s+", "", str(f))
        out.append(dict(t.split("=", 1) for t in value.split(";") if "=" in t))
    return out


def _verify_all(content: bytes, dns: DNSServer) -> list[bool]:
    d = dkim.DKIM(content)
    sigs = _signatures(content)

    def dnsfunc(name, timeout=5):
        return query_txt(dns, name, timeout)

    return [d.verify(idx=i, dnsfunc=dnsfunc) for i in range(len(sigs))]


def test_submitted_mail_carries_dkim_signatures_that_verify(outbound, dns, double):
    srv = outbound(start=False)
    names = _publish(srv, dns)
    point_mx(dns)
    srv.start()
    subject = f"signed {token()}"
    submit(srv, CAROL, message=make_message(ALICE, CAROL, subject, "Signed body.\r\n"))

    (msg,) = double.wait_for_messages(1)
    wait_queue_empty(srv)
    sigs = _signatures(msg.content)
    assert len(sigs) == 2, f"expected two DKIM-Signature fields, got {len(sigs)}:\n" + (
        msg.content.split(b"\r\n\r\n", 1)[0].decode(errors="replace"))
    assert sorted(s.get("a") for s in sigs) == ["ed25519-sha256", "rsa-sha256"], sigs
    for s in sigs:
        assert s.get("d") == DOMAIN, s
        assert s.get("c") == "relaxed/relaxed", s
        assert f"{s.get('s')}._domainkey.{DOMAIN}" in names, (s, names)
        signed = [h.lower() for h in s.get("h", "").split(":")]
        for h in ("from", "to", "subject", "date"):
            assert signed.count(h) >= 2, f"{h} is not oversigned: h={s.get('h')}"
    results = _verify_all(msg.content, dns)
    assert results == [True, True], f"dkimpy verification results: {results}"
    for n in names:
        assert dns.queried(n, "TXT"), f"the verifier did not look up {n}"

    # The check has teeth: a changed Subject breaks both signatures.
    tampered = msg.content.replace(subject.encode(), b"changed in transit", 1)
    assert _verify_all(tampered, dns) == [False, False]


def test_bounce_to_a_remote_sender_is_dkim_signed(outbound, dns, double):
    srv = outbound(start=False)
    _publish(srv, dns)
    point_mx(dns)
    point_mx(dns, "sender.test")
    double.script_rcpt(CAROL, "550 5.1.1 carol left")
    srv.start()
    srv.add_alias("fwd@example.test", CAROL)
    with srv.smtp() as s:
        s.sendmail("ext@sender.test", ["fwd@example.test"],
                   make_message("ext@sender.test", "fwd@example.test", f"fwd {token()}"))

    (msg,) = double.wait_for_messages(1, timeout=20)
    wait_queue_empty(srv)
    assert msg.mail_from == "" and msg.rcpts == ["ext@sender.test"]
    DSN(msg.content)  # it is a delivery report
    sigs = _signatures(msg.content)
    assert len(sigs) == 2, sigs
    assert {s.get("d") for s in sigs} == {DOMAIN}, (sigs, HOSTNAME)
    assert _verify_all(msg.content, dns) == [True, True]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def test_signing_processes_end_with_a_killed_server(outbound, dns, double):
    """The DKIM workers (under a forkserver) must not outlive a server killed
    with SIGKILL: they watch it and exit."""
    srv = outbound(start=False)
    _publish(srv, dns)
    point_mx(dns)
    srv.start()
    submit(srv, CAROL)  # starts the signing processes
    double.wait_for_messages(1)
    helpers = _descendants(srv.pid)
    assert helpers, "no signing processes under the server"
    srv.kill9()
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in helpers), 10,
               f"the signing processes {sorted(helpers)} to end after the server's SIGKILL")
