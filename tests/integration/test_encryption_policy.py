"""Encryption at rest (issue 14): Autocrypt learning, the no-key policy, forwards."""

from __future__ import annotations

import base64

import pytest

from .pgp_keys import sequoia_decrypt, sequoia_key
from .smtp_double import SMTPDouble
from .support import ALICE, BOB, token, wait_until
from .test_encryption import ENCRYPTED, armored, entity, import_key, plain_message


def autocrypt_message(key, date: str, marker: str) -> bytes:
    data = base64.b64encode(bytes(key.extract_certificate())).decode()
    folded = "\r\n ".join(data[i:i + 76] for i in range(0, len(data), 76))
    return (f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: hi {marker}\r\nDate: {date}\r\n"
            f"Autocrypt: addr={ALICE}; prefer-encrypt=mutual; keydata=\r\n {folded}\r\n"
            "Content-Type: text/plain\r\n\r\nhello\r\n").encode()


def shown_fingerprint(server, address: str) -> str | None:
    p = server.cli("user", "key", "show", address)
    if p.returncode != 0:
        return None
    return p.stdout.split("fingerprint ", 1)[1].split()[0]


def test_autocrypt_key_is_learned_and_only_a_newer_one_replaces_it(make_server):
    server = make_server(encryption={**ENCRYPTED, "learn_autocrypt": ["example.test"]})
    first, second, third = (sequoia_key(f"Alice <{ALICE}>") for _ in range(3))
    with server.submission(ALICE) as s:
        s.sendmail(ALICE, [BOB], autocrypt_message(first, "Sun, 06 Dec 2026 03:00:00 +0000",
                                                   token()))
    fpr = first.extract_certificate().fingerprint.upper()
    wait_until(lambda: shown_fingerprint(server, ALICE) == fpr, 15, "key learned")
    assert "source      autocrypt" in server.cli_ok("user", "key", "show", ALICE).stdout
    with server.submission(ALICE) as s:  # older Date: ignored
        s.sendmail(ALICE, [BOB], autocrypt_message(second, "Sat, 05 Dec 2026 03:00:00 +0000",
                                                   token()))
        s.sendmail(ALICE, [BOB], autocrypt_message(third, "Sun, 06 Dec 2026 03:30:00 +0000",
                                                   token()))
    fpr3 = third.extract_certificate().fingerprint.upper()
    wait_until(lambda: shown_fingerprint(server, ALICE) == fpr3, 15, "newer key replaces")
    # mail to alice is now encrypted to the learned key
    marker = token()
    with server.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE], plain_message(marker))
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert sequoia_decrypt(third, armored(raw)) == entity(plain_message(marker))


def test_autocrypt_for_another_address_or_off_is_not_learned(make_server):
    server = make_server(encryption=ENCRYPTED)  # learn_autocrypt off
    key = sequoia_key(f"Alice <{ALICE}>")
    with server.submission(ALICE) as s:
        s.sendmail(ALICE, [BOB], autocrypt_message(key, "Sun, 06 Dec 2026 03:00:00 +0000",
                                                   token()))
        s.noop()
    server.wait_for_messages(BOB, 1)
    assert shown_fingerprint(server, ALICE) is None


def test_no_key_defer_refuses_at_rcpt_with_450(make_server, tmp_path):
    server = make_server(encryption={**ENCRYPTED, "no_key": "defer"})
    with server.smtp() as s:
        s.mail("s@remote.test")
        assert s.rcpt(ALICE) == (
            450, f"4.7.0 recipient has not set up an encryption key yet <{ALICE}>".encode())
        assert s.rcpt(BOB)[0] == 450  # bob has no key either
    assert import_key(server, ALICE, bytes(sequoia_key(ALICE).extract_certificate()),
                      tmp_path).returncode == 0
    with server.smtp() as s:
        s.mail("s@remote.test")
        assert s.rcpt(ALICE)[0] == 250


def test_no_key_hold_keeps_it_queued_until_a_key_is_imported(make_server, tmp_path):
    server = make_server(encryption={**ENCRYPTED, "no_key": "hold"})
    marker = token()
    with server.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE], plain_message(marker))

    def held():
        q = server.queue_list()
        return q and "4.7.0" in str(q)
    wait_until(held, 15, "message held with 4.7.0")
    assert server.messages(ALICE) == []
    key = sequoia_key(ALICE)
    assert import_key(server, ALICE, bytes(key.extract_certificate()), tmp_path).returncode == 0
    server.cli_ok("queue", "retry")
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert sequoia_decrypt(key, armored(raw)) == entity(plain_message(marker))


@pytest.fixture
def double():
    d = SMTPDouble(starttls=False).start()
    yield d
    d.stop()


def test_forward_of_a_user_with_a_key_is_the_encrypted_copy(make_server, tmp_path, double):
    server = make_server(encryption=ENCRYPTED, delivery={"arc_seal": False}, extra_toml=(
        f'[[route]]\ndomains = ["far.test"]\nhost = "127.0.0.1:{double.port}"\n'
        'tls = "none"\n'))
    key = sequoia_key(ALICE)
    assert import_key(server, ALICE, bytes(key.extract_certificate()), tmp_path).returncode == 0
    server.add_alias(ALICE, ALICE, "alice@far.test")
    marker = token()
    with server.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE], plain_message(marker))
    (msg,) = double.wait_for_messages(1, timeout=15)
    assert f"hello {marker}".encode() not in msg.content
    assert sequoia_decrypt(key, armored(msg.content)) == entity(plain_message(marker))
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert f"hello {marker}".encode() not in raw


def test_a_rule_to_the_mailbox_target_is_encrypted_too(make_server, tmp_path):
    server = make_server(encryption=ENCRYPTED, extra_toml=(
        f'[[rule]]\nrcpt = "{ALICE}"\ntargets = ["mailbox"]\n'))
    key = sequoia_key(ALICE)
    assert import_key(server, ALICE, bytes(key.extract_certificate()), tmp_path).returncode == 0
    marker = token()
    with server.smtp() as s:
        s.sendmail("sender@remote.test", [ALICE], plain_message(marker))
    (raw,) = server.wait_for_messages(ALICE, 1)
    assert f"hello {marker}".encode() not in raw
    assert sequoia_decrypt(key, armored(raw)) == entity(plain_message(marker))
