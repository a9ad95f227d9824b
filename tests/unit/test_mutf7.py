"""Modified UTF-7 (RFC 3501 5.1.3) both ways, as IMAP4rev2 sessions use it."""

from __future__ import annotations

from pillarbox.endpoint.imap import mutf7
from pillarbox.store.mailbox_index import valid_name


def test_rfc3501_example_and_round_trips():
    assert mutf7.encode("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert mutf7.decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    for name in ("INBOX", "Entwürfe", "a&b", "&", "äö.x", "😀x", "Ölfässer.日本語", "a-b&-"):
        encoded = mutf7.encode(name)
        assert encoded.isascii() and valid_name(encoded) is None, (name, encoded)
        assert mutf7.decode(encoded) == name
    assert mutf7.encode("a&b") == "a&-b" and mutf7.encode("Entwürfe") == "Entw&APw-rfe"


def test_invalid_input_comes_back_unchanged():
    for name in ("a&b", "&Jjo", "&Jjo!-", "&A-", "&AOQ"):  # not modified UTF-7
        assert mutf7.decode(name) == name
    # Control characters stay as they are, so the name check still sees them.
    assert mutf7.encode("a\x01ä") == "a\x01&AOQ-"
    assert valid_name(mutf7.encode("a\x01ä")) is not None
