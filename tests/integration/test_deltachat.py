"""Delta Chat, a real chat client, against a real pillarbox (issue 5).

Delta Chat profiles run in one `deltachat-rpc-server` (the Delta Chat core,
from PyPI), driven with `deltachat-rpc-client`. Each is configured by hand
against 127.0.0.1 (no autoconfig, no DNS, no internet; checked from the core's
own log events): alice over implicit TLS (IMAPS + submissions), bob over
STARTTLS (IMAP + submission), both accepting pillarbox's self-signed
certificate. They meet with a Securejoin QR code, whose handshake messages
carry the Autocrypt keys through pillarbox. Then:

- a message, a quoted reply and a further message: each shows the padlock in
  the client, and every file pillarbox stored is OpenPGP `multipart/encrypted`
  without the plaintext;
- alice on a second device: an attachment reaches both devices whole, a read
  receipt and a copy to self go through, and bob's client, which deletes what
  it downloaded, leaves his Maildir empty;
- pillarbox restarts under the clients, which reconnect and go on.

Every wait is bounded: events are read from the client's per-profile queue
with a timeout, and blocking RPC calls that talk to the network run with one.
"""
from __future__ import annotations

import concurrent.futures
import email
import email.message
import email.policy
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deltachat_rpc_client import Account, Chat, DeltaChat, Message, Rpc

from .support import ALICE, BOB, PASSWORD, Server, token

STEP_TIMEOUT = 30.0  # one network step of the client (configure, a message's round trip)
CLOSE_TIMEOUT = 15.0

# The client's own protocol trace goes to a file beside the test's server, shown
# when a test fails: IMAP and SMTP as the client saw them.
RUST_LOG = "async_imap=trace,async_smtp=debug,deltachat_rpc_server=info"


def rpc_server_path() -> str:
    """The deltachat-rpc-server installed beside this Python (the dev extra)."""
    found = (shutil.which("deltachat-rpc-server", path=str(Path(sys.executable).parent))
             or shutil.which("deltachat-rpc-server"))
    assert found, ("deltachat-rpc-server is not installed: pip install -e '.[dev]' "
                   "(pyproject.toml pins it)")
    return found


@pytest.fixture
def dc_rpc(tmp_path: Path) -> Iterator[Rpc]:
    """A running deltachat-rpc-server with its accounts in tmp_path."""
    trace = tmp_path / "deltachat-rpc-server.log"
    with open(trace, "wb") as err:
        rpc = Rpc(accounts_dir=str(tmp_path / "dc-accounts"), rpc_server_path=rpc_server_path(),
                  stderr=err, env={**os.environ, "RUST_LOG": RUST_LOG})
        rpc.start()
        try:
            yield rpc
        finally:
            closer = threading.Thread(target=rpc.close, daemon=True)
            closer.start()
            closer.join(CLOSE_TIMEOUT)
            if closer.is_alive():  # a hung core: end the process we started
                rpc.process.kill()
                closer.join(CLOSE_TIMEOUT)
            rpc.process.wait(CLOSE_TIMEOUT)
    # shown by pytest only when the test failed
    lines = trace.read_text(errors="replace").splitlines()
    print(f"--- {trace} (tail) ---")
    print("\n".join(re.sub(r"\x1b\[[0-9;]*m", "", line)[:400] for line in lines[-80:]))


class Profile:
    """One Delta Chat profile and the events it emitted, read with bounded waits."""

    def __init__(self, rpc: Rpc, account: Account, name: str) -> None:
        self.rpc = rpc
        self.account = account
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._queue = rpc.get_queue(account.id)

    def wait(self, what: str, pred: Callable[[dict[str, Any]], bool],
             timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        """Consume events until one matches `pred`; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {what} within {timeout:.0f}s;"
                                     f" last events:\n{self.tail()}")
            try:
                event = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.events.append(event)
            if event["kind"] == "Error":
                raise AssertionError(f"{self.name}: Delta Chat error while waiting for {what}:"
                                     f" {event.get('msg')}\nlast events:\n{self.tail()}")
            if pred(event):
                return event

    def seen_or_wait(self, since: int, what: str, pred: Callable[[dict[str, Any]], bool],
                     timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        """An event matching `pred` among those recorded from index `since` on
        (consumed by an earlier wait), or the next one to come."""
        for event in self.events[since:]:
            if pred(event):
                return event
        return self.wait(what, pred, timeout)

    def drain(self) -> None:
        """Record the events queued so far, without waiting."""
        while True:
            try:
                self.events.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def incoming(self, timeout: float = STEP_TIMEOUT) -> Message:
        event = self.wait("incoming message", lambda e: e["kind"] == "IncomingMsg", timeout)
        return self.account.get_message_by_id(event["msgId"])

    def delivered(self, msg: Message, timeout: float = STEP_TIMEOUT) -> None:
        """Wait until the core has handed `msg` to pillarbox's submission port."""
        def done(e: dict[str, Any]) -> bool:
            if e["kind"] == "MsgFailed" and e.get("msgId") == msg.id:
                raise AssertionError(f"{self.name}: sending failed: {msg.get_info()}")
            return e["kind"] == "MsgDelivered" and e.get("msgId") == msg.id

        self.wait(f"delivery of message {msg.id}", done, timeout)

    def problems(self) -> list[str]:
        return [f"{self.name} {e['kind']}: {e.get('msg')}" for e in self.events
                if e["kind"] in ("Warning", "Error")]

    def network_use(self) -> tuple[set[str], list[str]]:
        """The hosts the core connected to or resolved, and its HTTP fetches (the
        core logs each: "Attempting IMAP connection to H", "... DNS resolution
        for H ...", "Fetching URL")."""
        hosts: set[str] = set()
        fetches: list[str] = []
        for e in self.events:
            text = e.get("msg") or ""
            for m in re.finditer(r"Attempting (?:IMAP|SMTP) connection to (\S+)"
                                 r"|DNS resolution for (\S+?)[.,]?(?:\s|$)", text):
                hosts.add(m.group(1) or m.group(2))
            if re.search(r"\bFetching (?:stale )?\S", text):
                fetches.append(text)
        return hosts, fetches

    def assert_offline(self) -> None:
        hosts, fetches = self.network_use()
        assert hosts == {"127.0.0.1"}, f"{self.name} reached for {hosts}"
        assert not fetches, f"{self.name} fetched from the web: {fetches}"

    def tail(self, n: int = 25) -> str:
        return "\n".join(f"  {e['kind']}: {e.get('msg') or e}"[:300] for e in self.events[-n:])


def bounded(call: Callable[[], Any], what: str, timeout: float = STEP_TIMEOUT) -> Any:
    """Run a blocking RPC call (the client has no timeouts of its own) with a deadline."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout)
    except concurrent.futures.TimeoutError:
        raise AssertionError(f"{what}: no answer from the Delta Chat core within"
                             f" {timeout:.0f}s") from None
    finally:
        pool.shutdown(wait=False)


def transport(server: Server, addr: str, implicit_tls: bool) -> dict[str, Any]:
    """Explicit server settings (what a user types under "advanced" in the apps):
    no autoconfig look-up, and the self-signed certificate accepted."""
    imap_port = server.imaps_port if implicit_tls else server.imap_port
    smtp_port = server.submissions_port if implicit_tls else server.submission_port
    security = "ssl" if implicit_tls else "starttls"
    return {
        "addr": addr,
        "password": PASSWORD,
        "imapServer": "127.0.0.1",
        "imapPort": imap_port,
        "imapSecurity": security,
        "imapUser": addr,
        "smtpServer": "127.0.0.1",
        "smtpPort": smtp_port,
        "smtpSecurity": security,
        "smtpUser": addr,
        "certificateChecks": "acceptInvalidCertificates",
    }


def message_id(msg: Message) -> str:
    """The Message-ID the core gave an outgoing message (from its info text)."""
    info = msg.get_info()
    m = re.search(r"^Message-ID: ?<?([^>\s]+)>?\s*$", info, re.M | re.I)
    assert m, f"no Message-ID in the message info:\n{info}"
    return m.group(1)


def stored_files(server: Server, addr: str) -> dict[str, bytes]:
    """Every message file of a user's INBOX Maildir (new/ and cur/), by file name."""
    root = server.maildir(addr)
    for _ in range(20):  # a file may be renamed (flags, new/ -> cur/) while we list
        try:
            return {p.name: p.read_bytes() for sub in ("new", "cur") if (root / sub).is_dir()
                    for p in sorted((root / sub).iterdir())}
        except FileNotFoundError:
            continue
    raise AssertionError(f"{root}: files kept changing while being read")


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def assert_openpgp(raw: bytes, where: str, secrets: list[str]) -> None:
    """A stored file is an RFC 3156 encrypted message and shows none of the plaintexts."""
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/encrypted", (
        f"{where}: stored as {msg.get_content_type()}, not multipart/encrypted:\n"
        f"{raw[:1500].decode('utf-8', 'replace')}")
    assert msg.get_param("protocol") == "application/pgp-encrypted", where
    assert b"-----BEGIN PGP MESSAGE-----" in raw, f"{where}: no OpenPGP armour"
    for s in secrets:
        assert s.encode() not in raw, f"{where}: the plaintext {s!r} is readable on the server"


def online_pair(server: Server, rpc: Rpc, multi_device: tuple[bool, bool]
                ) -> tuple[Profile, Profile]:
    """alice (IMAPS + submissions) and bob (IMAP + submission, STARTTLS),
    configured at once, online, and introduced by a Securejoin QR code whose
    handshake (and so the Autocrypt keys) goes through pillarbox.

    Multi-device mode (`bcc_self`) makes the core leave messages on the server
    and send a copy of its own messages to itself; in single-device mode it
    deletes each message from the server after download."""
    dc = DeltaChat(rpc)
    alice = Profile(rpc, dc.add_account(), "alice")
    bob = Profile(rpc, dc.add_account(), "bob")
    configuring = [
        alice.account.add_or_update_transport.future(transport(server, ALICE, True)),
        bob.account.add_or_update_transport.future(transport(server, BOB, False)),
    ]
    for who, done in zip((alice, bob), configuring, strict=True):
        bounded(done, f"configuring {who.name} against pillarbox")
        assert who.account.is_configured(), f"{who.name} is not configured"
    for p, multi in zip((alice, bob), multi_device, strict=True):
        p.account.set_config("bcc_self", "1" if multi else "0")
        p.account.start_io()
    for p in (alice, bob):
        p.wait("IMAP IDLE on INBOX", lambda e: e["kind"] == "ImapInboxIdle")
    bob.account.secure_join(alice.account.get_qr_code())
    alice.wait("Securejoin success (inviter)",
               lambda e: e["kind"] == "SecurejoinInviterProgress" and e["progress"] == 1000)
    bob.wait("Securejoin success (joiner)",
             lambda e: e["kind"] == "SecurejoinJoinerProgress" and e["progress"] == 1000)
    return alice, bob


def chat_with(p: Profile, addr: str) -> Chat:
    contact = p.account.get_contact_by_addr(addr)
    assert contact, f"{p.name} has no contact for {addr}"
    chat = contact.create_chat()
    assert chat.get_basic_snapshot().is_encrypted, f"{p.name}'s chat with {addr} is not encrypted"
    return chat


def test_deltachat_encrypted_chat(make_server: Callable[..., Server], dc_rpc: Rpc) -> None:
    """A message, a quoted reply and a further message, all end-to-end
    encrypted in the client and OpenPGP-only on pillarbox's disk."""
    started = time.monotonic()
    server = make_server()
    alice, bob = online_pair(server, dc_rpc, multi_device=(True, True))
    alice_chat = chat_with(alice, BOB)

    # -- a message, a quoted reply, a further message; all end-to-end encrypted
    texts = [f"first from alice {token()}", f"reply from bob {token()}",
             f"further from alice {token()}"]
    sent: list[tuple[Message, str]] = []  # (the sender's message, recipient address)

    first = alice_chat.send_text(texts[0])
    alice.delivered(first)
    sent.append((first, BOB))
    got = bob.incoming().get_snapshot()
    assert got.text == texts[0] and got.show_padlock, got
    assert got.chat.get_basic_snapshot().is_encrypted
    assert not got.chat.get_basic_snapshot().is_contact_request

    reply = got.chat.send_message(text=texts[1], quoted_msg=got.id)
    bob.delivered(reply)
    sent.append((reply, ALICE))
    got = alice.incoming().get_snapshot()
    assert got.text == texts[1] and got.show_padlock, got
    assert got.quote and got.quote.text == texts[0], got.quote
    assert got.chat_id == alice_chat.id

    further = alice_chat.send_text(texts[2])
    alice.delivered(further)
    sent.append((further, BOB))
    got = bob.incoming().get_snapshot()
    assert got.text == texts[2] and got.show_padlock, got

    # -- what pillarbox stored: OpenPGP only, the plaintext nowhere
    for msg, rcpt in sent:
        mid = message_id(msg)
        files = stored_files(server, rcpt)
        mine = [(name, raw) for name, raw in files.items()
                if (parse(raw).get("Message-ID") or "").strip("<> ") == mid]
        assert len(mine) == 1, (f"{rcpt}: expected one stored file with Message-ID <{mid}>,"
                                f" found {len(mine)} among {sorted(files)}")
        name, raw = mine[0]
        assert_openpgp(raw, f"{rcpt} {name}", texts)
    for addr in (ALICE, BOB):
        files = stored_files(server, addr)
        assert files, f"{addr}: no messages kept on the server"
        for name, raw in files.items():
            assert_openpgp(raw, f"{addr} {name}", texts)

    # -- the client saw nothing wrong, and used no network but 127.0.0.1
    for p in (alice, bob):
        p.drain()
        assert not p.problems(), "\n".join(p.problems())
        p.assert_offline()
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the Delta Chat exchange took {elapsed:.0f}s"


def test_deltachat_second_device_attachment_and_deletion(
        make_server: Callable[..., Server], dc_rpc: Rpc, tmp_path: Path) -> None:
    """Alice on two devices (the second made from a backup file, so two IDLE
    sessions of one user), bob on one: a 300 KB attachment reaches both of
    alice's devices byte for byte, alice's read receipt reaches bob, what alice
    sends from one device shows on the other, and bob's client, which deletes
    each message after download in single-device mode, leaves his Maildir
    empty on disk."""
    started = time.monotonic()
    server = make_server()
    alice, bob = online_pair(server, dc_rpc, multi_device=(True, False))
    dc = alice.account.manager

    # -- alice's second device, from a backup file (no network needed)
    backups = tmp_path / "backup"
    backups.mkdir()
    alice.account.stop_io()
    bounded(lambda: alice.account.export_backup(backups), "exporting alice's backup")
    [backup] = list(backups.iterdir())
    alice2 = Profile(dc_rpc, dc.add_account(), "alice2")
    bounded(lambda: alice2.account.import_backup(backup), "importing alice's backup")
    for p in (alice, alice2):
        p.account.start_io()
    for p in (alice, alice2):
        p.wait("IMAP IDLE on INBOX", lambda e: e["kind"] == "ImapInboxIdle")

    # -- bob sends a file; both of alice's devices get it, encrypted, whole
    payload = os.urandom(300_000)
    attachment = tmp_path / "payload.bin"
    attachment.write_bytes(payload)
    caption = f"a file for alice {token()}"
    sent = chat_with(bob, ALICE).send_message(text=caption, file=str(attachment))
    bob.delivered(sent)
    received: dict[str, Message] = {}
    for p in (alice, alice2):
        msg = p.incoming()
        snap = msg.get_snapshot()
        # before the download, the text names the file: "caption [payload.bin – 292.97 KiB]"
        assert snap.text.startswith(caption) and snap.show_padlock, snap
        assert snap.file_bytes == len(payload), snap

        def downloaded(e: dict[str, Any], p: Profile = p, msg: Message = msg) -> bool:
            return (e["kind"] == "MsgsChanged" and e.get("msgId") == msg.id
                    and p.account.get_message_by_id(msg.id).get_snapshot().download_state
                    == "Done")

        if snap.download_state != "Done":  # the full post-message follows the pre-message
            p.wait("the attachment's download", downloaded)
        snap = msg.get_snapshot()
        assert snap.text == caption and snap.show_padlock, snap
        assert snap.file and Path(snap.file).read_bytes() == payload, f"{p.name}: file differs"
        received[p.name] = msg

    # -- alice reads it: a read receipt goes back to bob through pillarbox
    alice.account.mark_seen_messages([received["alice"]])
    bob.wait("alice's read receipt",
             lambda e: e["kind"] == "MsgRead" and e.get("msgId") == sent.id)

    # -- what alice sends from one device shows on the other (the copy to self)
    text = f"from alice's first device {token()}"
    out = chat_with(alice, BOB).send_text(text)
    alice.delivered(out)

    def on_second_device(e: dict[str, Any]) -> bool:
        if e["kind"] != "MsgsChanged" or not e.get("msgId"):
            return False
        snap = alice2.account.get_message_by_id(e["msgId"]).get_snapshot()
        return snap.text == text and snap.from_id == 1  # 1: the profile itself (SELF)

    alice2.wait("alice's own message on her second device", on_second_device)
    got = bob.incoming().get_snapshot()
    assert got.text == text and got.show_padlock, got

    # -- bob (single device) deleted what he downloaded: expunged on disk too
    bob.wait("bob's client expunging INBOX",
             lambda e: "Close/expunge succeeded" in (e.get("msg") or ""))
    left = stored_files(server, BOB)
    assert not left, f"{BOB}: files still in the Maildir after the client deleted them: {left}"
    for name, raw in stored_files(server, ALICE).items():
        assert_openpgp(raw, f"{ALICE} {name}", [caption, text])

    for p in (alice, alice2, bob):
        p.drain()
        assert not p.problems(), "\n".join(p.problems())
        p.assert_offline()
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the Delta Chat exchange took {elapsed:.0f}s"


def test_deltachat_survives_a_restart(make_server: Callable[..., Server], dc_rpc: Rpc) -> None:
    """pillarbox restarts under two online clients: they are told (BYE),
    reconnect, keep their place (same UIDVALIDITY, nothing fetched twice), and
    a message sent after the restart arrives, encrypted."""
    started = time.monotonic()
    server = make_server()
    alice, bob = online_pair(server, dc_rpc, multi_device=(True, True))
    chat = chat_with(alice, BOB)
    before = f"before the restart {token()}"
    alice.delivered(chat.send_text(before))
    got = bob.incoming().get_snapshot()
    assert got.text == before and got.show_padlock, got
    for p in (alice, bob):
        p.drain()
        assert not p.problems(), "\n".join(p.problems())
    seen = {p.name: len(p.events) for p in (alice, bob)}

    server.restart()
    for p in (alice, bob):  # told by BYE, both reconnect and IDLE again
        p.seen_or_wait(seen[p.name], "IMAP reconnection after the restart",
                       lambda e: e["kind"] == "ImapConnected")
        p.seen_or_wait(seen[p.name], "IMAP IDLE after the restart",
                       lambda e: e["kind"] == "ImapInboxIdle")
    after = f"after the restart {token()}"
    out = chat.send_text(after)
    # The core sends over the SMTP connection it kept open, which the restart
    # closed: that attempt fails and the core plans the next one 30 s later,
    # unless woken. maybe_network() is the call the apps make to wake it when
    # connectivity returns; it makes the core reconnect at once.
    woken = False

    def delivered_after_restart(e: dict[str, Any]) -> bool:
        nonlocal woken
        if (e["kind"] == "Warning" and "send_smtp_messages failed" in (e.get("msg") or "")
                and not woken):
            woken = True
            dc_rpc.maybe_network()
        if e["kind"] == "MsgFailed" and e.get("msgId") == out.id:
            raise AssertionError(f"sending after the restart failed: {out.get_info()}")
        return e["kind"] == "MsgDelivered" and e.get("msgId") == out.id

    alice.wait("delivery after the restart", delivered_after_restart)
    got = bob.incoming().get_snapshot()
    assert got.text == after and got.show_padlock, got
    assert [m.get_snapshot().text for m in got.chat.get_messages()
            if m.get_snapshot().text in (before, after)] == [before, after]

    for p in (alice, bob):
        p.drain()
        since = p.events[seen[p.name]:]
        assert not [e for e in since if e["kind"] == "Error"], p.tail()
        changed = [e["msg"] for e in since if "UID validity for folder" in (e.get("msg") or "")]
        assert not changed, f"{p.name}: {changed}"
        p.assert_offline()
    files = stored_files(server, BOB)
    assert len([raw for raw in files.values()
                if b"-----BEGIN PGP MESSAGE-----" in raw]) == len(files) >= 2, sorted(files)
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the Delta Chat exchange took {elapsed:.0f}s"
