"""Delta Chat and encryption at rest (issue 14): pillarbox learns the key of a
Delta Chat account from the Autocrypt header of the account's own sent mail,
and a cleartext message from a plain SMTP client, encrypted to that key at
delivery, shows in the client. Offline, against 127.0.0.1, as
test_deltachat.py.

Delta Chat 2.x by default (`force_encryption`) sends only encrypted mail,
whose Autocrypt header is inside the encrypted part where no server can read
it, and drops incoming mail it does not count as end-to-end encrypted. With
`force_encryption` off, as a classic-email user has it, it sends to a
contact without a key in clear, Autocrypt header outside."""

from __future__ import annotations

from collections.abc import Callable

from deltachat_rpc_client import DeltaChat, Rpc

from .support import ALICE, BOB, Server, token, wait_until
from .test_deltachat import Profile, bounded, dc_rpc, stored_files, transport  # noqa: F401


def test_deltachat_key_learned_from_autocrypt_decrypts_mail_encrypted_at_rest(
        make_server: Callable[..., Server], dc_rpc: Rpc) -> None:  # noqa: F811
    server = make_server(encryption={"domains": ["example.test"],
                                     "learn_autocrypt": ["example.test"]})
    alice = Profile(dc_rpc, DeltaChat(dc_rpc).add_account(), "alice")
    bounded(alice.account.add_or_update_transport.future(transport(server, ALICE, True)),
            "configuring alice against pillarbox")
    alice.account.set_config("bcc_self", "1")  # keep messages on the server
    alice.account.set_config("force_encryption", "0")
    alice.account.start_io()
    alice.wait("IMAP IDLE on INBOX", lambda e: e["kind"] == "ImapInboxIdle")
    # Her own mail to bob (no key known: sent in clear) carries her Autocrypt header.
    chat = alice.account.create_contact(BOB).create_chat()
    alice.delivered(chat.send_text(f"hello bob {token()}"))

    def learned() -> bool:
        p = server.cli("user", "key", "show", ALICE)
        return p.returncode == 0 and "source      autocrypt" in p.stdout
    wait_until(learned, 30, "pillarbox learned alice's Autocrypt key")

    secret, mid = f"cleartext from a plain client {token()}", f"<{token()}@example.test>"
    msg = (f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: plain\r\n"
           f"Message-ID: {mid}\r\n"
           "Date: Sun, 06 Dec 2026 04:00:00 +0000\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\n"
           f"{secret}\r\n").encode()
    with server.smtp() as s:
        s.sendmail("carol@remote.test", [ALICE], msg)
    (raw,) = wait_until(lambda: [r for r in stored_files(server, ALICE).values()
                                 if mid.encode() in r], 15, "the message in alice's Maildir")
    assert b"multipart/encrypted" in raw and secret.encode() not in raw, raw[:3000]
    got = alice.incoming().get_snapshot()
    assert secret in got.text, got
    for name, raw in stored_files(server, ALICE).items():
        assert secret.encode() not in raw, f"{name} holds the cleartext"
