"""Delta Chat against pillarbox in chatmail mode (issue 17), offline on
127.0.0.1: two profiles whose accounts the client itself makes by its first
login, a Securejoin between them, an encrypted message and reply, the
device token registered through IMAP METADATA (by the command the core
sends: the RPC server cannot be given a phone's push token) and a
notification POST on
delivery; cleartext from a plain SMTP client refused with 523; the stored
files do not hold the chat text."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from deltachat_rpc_client import DeltaChat, Rpc

from . import chatmail_messages as m
from .dns_server import DNSServer
from .imap_raw import RawIMAP
from .support import Server, token, wait_until
from .test_chatmail_push import PushService
from .test_deltachat import (
    Profile,
    assert_openpgp,
    bounded,
    chat_with,
    dc_rpc,  # noqa: F401 (the fixture)
    stored_files,
)

ALICE_DC, BOB_DC = "dcalice01@example.test", "dcbob0001@example.test"
DC_PASSWORD = "chat-pass-2026"


def transport(server: Server, addr: str) -> dict[str, Any]:
    return {"addr": addr, "password": DC_PASSWORD,
            "imapServer": "127.0.0.1", "imapPort": server.imaps_port, "imapSecurity": "ssl",
            "imapUser": addr, "smtpServer": "127.0.0.1", "smtpPort": server.submissions_port,
            "smtpSecurity": "ssl", "smtpUser": addr,
            "certificateChecks": "acceptInvalidCertificates"}


@pytest.fixture
def push():
    service = PushService()
    yield service
    service.stop()


@pytest.fixture
def dns():
    server = DNSServer().start()
    yield server
    server.stop()


def test_deltachat_on_a_chatmail_relay(make_server, dc_rpc: Rpc, push, dns) -> None:  # noqa: F811
    server = make_server({"mode": "chatmail", "dns.nameservers": [dns.address],
                          "chatmail.notify_url": f"http://127.0.0.1:{push.port}/notify",
                          "chatmail.notify_retry_base": 0.05})
    dc = DeltaChat(dc_rpc)
    alice = Profile(dc_rpc, dc.add_account(), "alice")
    bob = Profile(dc_rpc, dc.add_account(), "bob")
    for who, addr in ((alice, ALICE_DC), (bob, BOB_DC)):
        bounded(who.account.add_or_update_transport.future(transport(server, addr)),
                f"configuring {who.name}: its account made by the first login")
        assert who.account.is_configured()
    listed = server.cli_ok("user", "list").stdout
    assert ALICE_DC in listed and BOB_DC in listed
    for p in (alice, bob):
        p.account.start_io()
    for p in (alice, bob):
        p.wait("IMAP IDLE on INBOX", lambda e: e["kind"] == "ImapInboxIdle")

    # bob's device token, as the core registers it on a phone: SETMETADATA on the
    # server entry. (deltachat-rpc-server offers no call that gives the core a
    # push token, which comes from the phone's OS; so the test sends the
    # command the core would send, over bob's own login.)
    with RawIMAP(server.imaps_port, None) as c:
        c.ok(f'LOGIN "{BOB_DC}" "{DC_PASSWORD}"')
        assert "XDELTAPUSH" in c.ok("CAPABILITY")[0][0].decode()
        c.ok('SETMETADATA "" (/private/devicetoken "bob-device-token")')

    bob.account.secure_join(alice.account.get_qr_code())
    alice.wait("Securejoin success (inviter)",
               lambda e: e["kind"] == "SecurejoinInviterProgress" and e["progress"] == 1000)
    bob.wait("Securejoin success (joiner)",
             lambda e: e["kind"] == "SecurejoinJoinerProgress" and e["progress"] == 1000)

    texts = [f"hello bob {token()}", f"hello alice {token()}"]
    first = chat_with(alice, BOB_DC).send_text(texts[0])
    alice.delivered(first)
    got = bob.incoming().get_snapshot()
    assert got.text == texts[0] and got.show_padlock
    reply = got.chat.send_message(text=texts[1], quoted_msg=got.id)
    bob.delivered(reply)
    got = alice.incoming().get_snapshot()
    assert got.text == texts[1] and got.show_padlock

    # The token reached the server, and deliveries to bob were notified.
    wait_until(lambda: push.count("bob-device-token") >= 1, 15,
               "a notification POST for bob's device token")

    # Cleartext from a plain SMTP client: refused.
    with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname="client.test") as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("carol@example.net", [BOB_DC], m.plain("carol@example.net", BOB_DC))
        assert e.value.smtp_code == 523

    # Whatever is kept on disk is OpenPGP only, without the chat text.
    for addr in (ALICE_DC, BOB_DC):
        for name, raw in stored_files(server, addr).items():
            if b"Secure-Join: v" in raw and b"multipart/encrypted" not in raw:
                continue  # the handshake's first step is cleartext by design
            assert_openpgp(raw, f"{addr} {name}", texts)
    # ... nor anything else pillarbox keeps (indexes, queue, database).
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(t.encode() in data for t in texts), f"chat text in {path}"
    for p in (alice, bob):
        p.drain()
        p.assert_offline()
