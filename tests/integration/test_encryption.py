"""Encryption at rest (issue 14): keys, encryption at delivery, no cleartext left.

Keys are made by pysequoia and by GnuPG; mail goes in over SMTP; the stored
file is decrypted with the private key and compared with the original MIME
entity byte for byte."""

from __future__ import annotations

import email
import email.policy
import os
import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from .pgp_keys import gpg_home, gpg_key, sequoia_decrypt, sequoia_key
from .support import ALICE, BOB, free_ports, token, wait_until

ENCRYPTED = {"domains": ["example.test"]}
_ARMOR = re.compile(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----\r?\n", re.S)


# -- helpers ---------------------------------------------------------------------------

def import_key(server, address: str, data: bytes, tmp: Path, *extra: str):
    path = tmp / f"{address}-{token()}.key"
    path.write_bytes(data)
    return server.cli("user", "key", "import", address, path, *extra)


def entity(message: bytes) -> bytes:
    """The MIME entity of a message as sent: its Content-* fields, blank line, body."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields, current = [], b""
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            current += line + b"\r\n"
            continue
        if current:
            fields.append(current)
        current = line + b"\r\n"
    fields.append(current)
    inner = [f for f in fields if f.lower().startswith(b"content-")]
    return b"".join(inner) + b"\r\n" + body


def armored(stored: bytes) -> bytes:
    m = _ARMOR.search(stored)
    assert m, f"no PGP message in the stored file: {stored[:600]!r}"
    return m.group(0)


def plain_message(marker: str, to: str = ALICE) -> bytes:
    return (f"From: Sender <sender@remote.test>\r\nTo: {to}\r\n"
            f"Subject: plain {marker}\r\nDate: Sun, 06 Dec 2026 04:00:00 +0000\r\n"
            f"Message-ID: <{marker}@remote.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n"
            f"hello {marker}\r\nsecond line\r\n").encode()


def multipart_message(marker: str) -> bytes:
    m = EmailMessage(policy=email.policy.SMTP)
    m["From"], m["To"], m["Subject"] = "sender@remote.test", ALICE, f"parts {marker}"
    m["Message-ID"] = f"<{marker}.mp@remote.test>"
    m.set_content(f"see the attachment {marker}\n")
    m.add_attachment(os.urandom(3000), maintype="application", subtype="octet-stream",
                     filename="blob.bin")
    return m.as_bytes()


def eightbit_message(marker: str) -> bytes:
    return (f"From: sender@remote.test\r\nTo: {ALICE}\r\nSubject: 8bit {marker}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"Grüße, {marker} — ünïcödé\r\n").encode()


def utf8_message(marker: str) -> bytes:
    return (f"From: Jörg <jörg@remote.test>\r\nTo: {ALICE}\r\nSubject: Grüße {marker}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"SMTPUTF8 body {marker} ✓\r\n").encode()


@pytest.fixture(scope="module")
def alice_key():
    return sequoia_key(f"Alice <{ALICE}>")


@pytest.fixture(scope="module")
def gpg(tmp_path_factory):
    home = gpg_home(tmp_path_factory.mktemp("gnupg") / "home")
    gpg_key(home, f"Bob <{BOB}>")
    return home


# -- keys ------------------------------------------------------------------------------

def test_key_import_show_delete_sequoia_v4_v6_and_gpg(make_server, tmp_path, gpg):
    server = make_server()
    v6 = sequoia_key(ALICE, v6=True)
    p = import_key(server, ALICE, str(v6.extract_certificate()).encode(), tmp_path)
    assert p.returncode == 0, p.stderr
    fpr = v6.extract_certificate().fingerprint.upper()
    assert p.stdout.strip() == f"imported key {fpr} for {ALICE}"
    show = server.cli_ok("user", "key", "show", ALICE).stdout
    assert f"fingerprint {fpr}" in show and "version     v6" in show
    assert f"user ID     {ALICE}" in show and "X25519 encryption" in show
    assert "expires     never" in show
    # binary, from gpg, replacing nothing for bob
    p = import_key(server, BOB, gpg.export(BOB, armor=False), tmp_path)
    assert p.returncode == 0, p.stderr
    show = server.cli_ok("user", "key", "show", BOB).stdout
    assert f"fingerprint {gpg.fingerprint(BOB)}" in show and "version     v4" in show
    assert "ECDH encryption" in show and f"user ID     Bob <{BOB}>" in show
    assert server.cli_ok("user", "key", "del", ALICE).stdout.strip() == \
        f"deleted the key of {ALICE}"
    p = server.cli("user", "key", "show", ALICE)
    assert p.returncode == 1 and p.stderr.strip() == f"error: {ALICE} has no key"


def test_key_refusals_on_the_command_line(make_server, tmp_path):
    """Each refusal's exact text: tests/unit/test_openpgp_keys.py; here the CLI's."""
    server = make_server()
    home = gpg_home(tmp_path / "gnupg")
    # expired: made in 2020, valid one day
    home.run("--faked-system-time", "20200101T000000!", "--quick-gen-key",
             f"Old <{ALICE}>", "default", "default", "1d")
    fpr = home.fingerprint("Old")
    p = import_key(server, ALICE, home.export("Old"), tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: key not imported: key {fpr} expired on 2020-01-02"
    assert server.cli("user", "key", "show", ALICE).returncode == 1  # nothing was stored
    # no user ID with the address: accepted with --any-uid only
    other = sequoia_key("Someone <someone@elsewhere.test>").extract_certificate()
    p = import_key(server, ALICE, bytes(other), tmp_path)
    assert p.returncode == 1 and "has no user ID with <alice@example.test>" in p.stderr
    p = import_key(server, ALICE, bytes(other), tmp_path, "--any-uid")
    assert p.returncode == 0, p.stderr


# -- delivery ----------------------------------------------------------------------------

def test_delivered_messages_decrypt_to_the_original_entity_byte_for_byte(
        make_server, tmp_path, alice_key):
    server = make_server(encryption=ENCRYPTED)
    assert import_key(server, ALICE, bytes(alice_key.extract_certificate()),
                      tmp_path).returncode == 0
    marker = token()
    sent = [(plain_message(marker + "p"), []),
            (multipart_message(marker + "m"), []),
            (eightbit_message(marker + "e"), ["BODY=8BITMIME"]),
            (utf8_message(marker + "u"), ["SMTPUTF8", "BODY=8BITMIME"])]
    with server.smtp() as s:
        for msg, opts in sent:
            s.sendmail("sender@remote.test", [ALICE], msg, mail_options=opts)
    stored = server.wait_for_messages(ALICE, len(sent))
    by_id = {}
    for raw in stored:
        assert marker.encode() not in raw.split(b"\r\n\r\n", 1)[1]  # the body is sealed
        outer = email.message_from_bytes(raw, policy=email.policy.compat32)
        assert outer.get_content_type() == "multipart/encrypted"
        assert outer.get_param("protocol") == "application/pgp-encrypted"
        parts = outer.get_payload()
        assert [p.get_content_type() for p in parts] == ["application/pgp-encrypted",
                                                         "application/octet-stream"]
        assert parts[0].get_payload().strip() == "Version: 1"
        by_id[raw.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]] = raw
    for msg, _ in sent:
        subject = msg.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
        raw = by_id[subject]  # the outer Subject is the original one
        inner = sequoia_decrypt(alice_key, armored(raw))
        assert inner == entity(msg)


def test_large_message_is_encrypted_as_a_stream(make_server, tmp_path, alice_key):
    server = make_server(encryption=ENCRYPTED)
    assert import_key(server, ALICE, bytes(alice_key.extract_certificate()),
                      tmp_path).returncode == 0
    marker = token()
    line = (marker + "x" * 60 + "\r\n").encode()
    msg = (f"From: sender@remote.test\r\nTo: {ALICE}\r\nSubject: big\r\n"
           "Content-Type: text/plain\r\n\r\n").encode() + line * (10 * 1024 * 1024 // len(line))
    with server.smtp(timeout=60) as s:
        s.sendmail("sender@remote.test", [ALICE], msg)
    (raw,) = server.wait_for_messages(ALICE, 1, timeout=60)
    assert marker.encode() not in raw
    assert sequoia_decrypt(alice_key, armored(raw)) == entity(msg)


def test_gpg_decrypts_mail_for_a_gpg_key_and_subject_can_be_protected(make_server, tmp_path,
                                                                       gpg):
    server = make_server(encryption={"users": [BOB], "protect_subject": True})
    assert import_key(server, BOB, gpg.export(BOB), tmp_path).returncode == 0
    marker = token()
    msg = plain_message(marker, to=BOB)
    with server.smtp() as s:
        s.sendmail("sender@remote.test", [BOB, ALICE], msg)
    (raw,) = server.wait_for_messages(BOB, 1)
    assert f"hello {marker}".encode() not in raw and f"plain {marker}".encode() not in raw
    assert re.search(rb"(?m)^Subject: \.\.\.\r$", raw)
    assert gpg.decrypt(armored(raw)) == f"Subject: plain {marker}\r\n".encode() + entity(msg)
    (clear,) = server.wait_for_messages(ALICE, 1)  # alice is not in users: clear
    assert marker.encode() in clear


PGP_MIME = (b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";"
            b" boundary=\"b\"\r\n\r\n--b\r\nContent-Type: application/pgp-encrypted\r\n\r\n"
            b"Version: 1\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n"
            b"-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n--b--\r\n")
INLINE = (b"Content-Type: text/plain\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n"
          b"-----END PGP MESSAGE-----\r\n")
SMIME = (b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAxggE\r\n")


def test_already_encrypted_mail_is_stored_unchanged(make_server, tmp_path, alice_key):
    server = make_server(encryption=ENCRYPTED)
    assert import_key(server, ALICE, bytes(alice_key.extract_certificate()),
                      tmp_path).returncode == 0
    sent = []
    with server.smtp() as s:
        for i, body in enumerate((PGP_MIME, INLINE, SMIME)):
            msg = f"From: s@remote.test\r\nTo: {ALICE}\r\nSubject: enc {i}\r\n".encode() + body
            s.sendmail("s@remote.test", [ALICE], msg)
            sent.append(msg)
    stored = server.wait_for_messages(ALICE, 3)
    for msg in sent:
        assert any(raw.endswith(msg) and raw.count(b"BEGIN PGP MESSAGE") <= 1
                   for raw in stored), msg[:80]


def files_holding(root: Path, markers: list[str]) -> dict[str, list[str]]:
    """For each marker, the files under `root` whose bytes hold it."""
    found: dict[str, list[str]] = {m: [] for m in markers}
    for parent, _, files in os.walk(root):
        for name in files:
            path = Path(parent, name)
            try:
                if not path.is_file():
                    continue  # the control socket
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # a segment or temporary file deleted meanwhile
            for m in markers:
                if m.encode() in data:
                    found[m].append(str(path))
    return found


def send_deferred(server, kept: str) -> None:
    """A message that stays queued (its relay refuses connections), in the same
    queue segment as what is sent next."""
    with server.submission(ALICE) as s:
        s.sendmail(ALICE, ["x@far.test"], plain_message(token(), to="x@far.test")
                   .replace(b"second line", kept.encode()).replace(b"Sender <sender@remote.test>",
                                                                ALICE.encode()))


def send_secret(server, secret: str, to: str = ALICE, nth: int = 1) -> bytes:
    """Deliver a message holding `secret`, the `nth` in `to`'s mailbox; its stored form."""
    with server.smtp() as s:
        s.sendmail("sender@remote.test", [to],
                   plain_message(token(), to=to).replace(b"second line", secret.encode()))
    return server.wait_for_messages(to, nth)[-1]


def far_route(port: int) -> str:
    return f'[[route]]\ndomains = ["far.test"]\nhost = "127.0.0.1:{port}"\ntls = "none"\n'


def test_no_cleartext_left_under_the_data_dir_with_a_deferred_message_alongside(
        make_server, tmp_path, alice_key):
    (closed,) = free_ports(1)
    server = make_server(encryption={**ENCRYPTED, "scrub_delay": 1}, extra_toml=far_route(closed))
    assert import_key(server, ALICE, bytes(alice_key.extract_certificate()),
                      tmp_path).returncode == 0
    kept, secret, clear = "KEPT" + token(), "SECRET" + token(), "CLEAR" + token()
    send_deferred(server, kept)
    # Bob has no key ([encryption] no_key = "clear"): his copy is stored in clear.
    assert clear.encode() in send_secret(server, clear, to=BOB)
    assert secret.encode() not in send_secret(server, secret)
    assert [m["id"] for m in server.queue_list()]  # the deferred one is still queued
    wait_until(lambda: not files_holding(server.data_dir, [secret])[secret], 10,
               "the encrypted message's cleartext gone from every file")
    holding = files_holding(server.data_dir, [kept, clear])
    assert holding[kept], "the deferred message should still be in the queue"
    # Only messages that were encrypted are scrubbed: Bob's is in his Maildir
    # anyway, and its queue record (delivered before Alice's) is left as it was.
    assert [p for p in holding[clear] if "/queue/" in p], holding[clear]
    assert secret not in server.log_text()
    # the scrubbed record keeps its segment readable: the deferred one survives a restart
    server.restart()
    assert len(server.queue_list()) == 1


def test_a_stop_or_a_crash_before_the_scrub_is_due_leaves_no_cleartext(
        make_server, tmp_path, alice_key):
    """With the scrub delayed (scrub_delay = 30), a stop does the pending
    scrubs before it ends, and a start after a kill -9 does the ones it missed."""
    (closed,) = free_ports(1)
    server = make_server(encryption={**ENCRYPTED, "scrub_delay": 30}, extra_toml=far_route(closed))
    assert import_key(server, ALICE, bytes(alice_key.extract_certificate()),
                      tmp_path).returncode == 0
    kept, crashed, stopped = "KEPT" + token(), "CRASH" + token(), "STOP" + token()
    send_deferred(server, kept)
    send_secret(server, crashed)
    server.kill9()
    server.start()
    wait_until(lambda: not files_holding(server.data_dir, [crashed])[crashed], 10,
               "the cleartext a kill -9 left in the queue zeroed at start")
    send_secret(server, stopped, nth=2)
    server.stop()
    holding = files_holding(server.data_dir, [kept, stopped])
    assert holding[kept] and holding[stopped] == [], holding
    server.start()
    assert len(server.queue_list()) == 1


def test_imap_search_outer_headers_only_and_bodystructure(make_server, tmp_path, alice_key):
    server = make_server(encryption=ENCRYPTED)
    assert import_key(server, ALICE, bytes(alice_key.extract_certificate()),
                      tmp_path).returncode == 0
    marker = token()
    with server.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE], plain_message(marker))
    server.wait_for_messages(ALICE, 1)
    with server.imapclient(ALICE) as c:
        c.select_folder("INBOX")
        assert c.search(["SUBJECT", f"plain {marker}"]) == [1]
        assert c.search(["BODY", f"hello {marker}"]) == []
        assert c.search(["TEXT", "second line"]) == []
        bs = c.fetch([1], ["BODYSTRUCTURE"])[1][b"BODYSTRUCTURE"]
        assert bs.is_multipart
        parts, subtype = bs[0], bs[1]
        assert subtype.lower() == b"encrypted"
        assert [(p[0].lower(), p[1].lower()) for p in parts] == [
                                                (b"application", b"pgp-encrypted"),
                                                 (b"application", b"octet-stream")]
