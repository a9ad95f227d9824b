"""Delta Chat finds pillarbox's servers through pillarbox's own autoconfig (issue 16).

A Delta Chat profile (the real core, `deltachat-rpc-server`) is given only an
address and a password and runs `configure()`: the core fetches
https://autoconfig.example.test/mail/config-v1.1.xml from pillarbox's HTTPS
endpoint, reads the servers it names and logs in there; a second profile then
meets it by Securejoin and its encrypted message arrives.

Two things stand between the core and a server on 127.0.0.1, and the test
handles each with a client option, without touching the machine:

- Names and port 443: the core resolves names with the system resolver and
  fetches autoconfig from port 443 only. It is given an HTTP CONNECT proxy
  (its `proxy_url` setting, tests/integration/connect_proxy.py) that plays the
  internet: `autoconfig.example.test:443` and `example.test:443` lead to
  pillarbox's HTTPS port, `mx.example.test:PORT` to pillarbox's PORT, anything
  else is refused (and recorded, so the test sees every host the core asked for).
  TLS runs end to end through the tunnels.
- The self-signed certificate: with strict checks the core trusts only its
  built-in web PKI roots, so the profile accepts invalid certificates
  (`imap_certificate_checks` = 2, "accept invalid certificates" in the apps),
  which the core applies to the autoconfig fetch as to IMAP and SMTP. (The
  core skips the CA check for host names starting with `_`, but the autoconfig
  host is `autoconfig.DOMAIN` and mail domains have no `_`.)

pillarbox advertises its listening ports (`http.client_ports = "listen"`):
random test ports no client could guess, so a configured port proves the
autoconfig was read.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
from deltachat_rpc_client import DeltaChat, Rpc

from .connect_proxy import ConnectProxy
from .support import ALICE, BOB, DOMAIN, HOSTNAME, PASSWORD, Server, free_ports, token
from .test_deltachat import Profile, bounded, dc_rpc, transport  # noqa: F401 (dc_rpc: fixture)

ACCEPT_INVALID_CERTIFICATES = "2"  # EnteredCertificateChecks::AcceptInvalidCertificates


@pytest.fixture
def mail_and_web(make_server: Callable[..., Server]) -> Iterator[tuple[Server, ConnectProxy]]:
    """pillarbox with HTTPS, and the proxy that maps its names to it."""
    (https,) = free_ports(1)
    server = make_server({"listen.https": [f"127.0.0.1:{https}"],
                          "http.client_ports": "listen"})
    routes = {(f"autoconfig.{DOMAIN}", 443): https, (DOMAIN, 443): https}
    for port in (server.imaps_port, server.imap_port, server.submissions_port,
                 server.submission_port):
        routes[(HOSTNAME, port)] = port
    proxy = ConnectProxy(routes)
    proxy.start()
    try:
        yield server, proxy
    finally:
        proxy.stop()


def test_deltachat_configures_from_address_and_password_through_autoconfig(
        mail_and_web: tuple[Server, ConnectProxy], dc_rpc: Rpc) -> None:  # noqa: F811
    """alice's profile is given her address and password only (and the proxy and
    certificate options above); configure() succeeds, with the servers and
    ports pillarbox's autoconfig named; then bob (a second profile, configured
    by hand) meets her with a Securejoin QR code and his encrypted message
    reaches her client."""
    started = time.monotonic()
    server, proxy = mail_and_web
    dc = DeltaChat(dc_rpc)
    alice = Profile(dc_rpc, dc.add_account(), "alice")
    bob = Profile(dc_rpc, dc.add_account(), "bob")
    for key, value in (("proxy_url", proxy.url), ("proxy_enabled", "1"),
                       ("imap_certificate_checks", ACCEPT_INVALID_CERTIFICATES),
                       ("addr", ALICE), ("mail_pw", PASSWORD)):
        alice.account.set_config(key, value)
    configuring = [alice.account.configure.future(),
                   bob.account.add_or_update_transport.future(transport(server, BOB, True))]
    for who, done in zip((alice, bob), configuring, strict=True):
        bounded(done, f"configuring {who.name}")
        assert who.account.is_configured(), f"{who.name} is not configured"

    # -- alice's core fetched pillarbox's autoconfig first, and went nowhere else
    alice.drain()
    assert proxy.requests[0] == f"autoconfig.{DOMAIN}:443", proxy.requests
    ours = {f"{HOSTNAME}:{p}" for p in (server.imaps_port, server.imap_port,
                                        server.submissions_port, server.submission_port)}
    assert set(proxy.requests) <= {f"autoconfig.{DOMAIN}:443"} | ours, proxy.requests
    fetches = [e["msg"] for e in alice.events if re.search(r"\bFetching\b", e.get("msg") or "")]
    assert fetches and all(f"https://autoconfig.{DOMAIN}/mail/config-v1.1.xml?emailaddress="
                           in f for f in fetches), fetches

    # -- the servers it configured are the ones pillarbox's autoconfig describes:
    #    "imap:[mx.example.test:PORT:tls, ...] smtp:[...]" in the core's own info
    used = alice.account.get_info()["used_transport_settings"]
    imap = re.search(r"imap:\[([^\]]*)\]", used)
    smtp = re.search(r"smtp:\[([^\]]*)\]", used)
    assert imap and smtp, used
    assert imap.group(1).split(", ") == [f"{HOSTNAME}:{server.imaps_port}:tls",
                                         f"{HOSTNAME}:{server.imap_port}:starttls"], used
    assert smtp.group(1).split(", ") == [f"{HOSTNAME}:{server.submissions_port}:tls",
                                         f"{HOSTNAME}:{server.submission_port}:starttls"], used

    # -- and the account works: bob meets alice, his encrypted message reaches her
    for p in (alice, bob):
        p.account.start_io()
    for p in (alice, bob):
        p.wait("IMAP IDLE on INBOX", lambda e: e["kind"] == "ImapInboxIdle")
    bob.account.secure_join(alice.account.get_qr_code())
    bob.wait("Securejoin success (joiner)",
             lambda e: e["kind"] == "SecurejoinJoinerProgress" and e["progress"] == 1000)
    text = f"hello alice {token()}"
    sent = bob.account.get_contact_by_addr(ALICE).create_chat().send_text(text)
    bob.delivered(sent)
    got = alice.seen_or_wait(0, "bob's message",
                             lambda e: e["kind"] == "IncomingMsg"
                             and alice.account.get_message_by_id(e["msgId"]).get_snapshot().text
                             == text)
    snap = alice.account.get_message_by_id(got["msgId"]).get_snapshot()
    assert snap.show_padlock, snap
    assert snap.sender.get_snapshot().address == BOB, snap

    alice.drain()
    assert not alice.problems(), "\n".join(alice.problems())
    assert set(proxy.requests) <= {f"autoconfig.{DOMAIN}:443"} | ours, proxy.requests
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"autoconfig, Securejoin and a message took {elapsed:.0f}s"
