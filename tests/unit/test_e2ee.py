"""The E2EE classifier (check/e2ee.py) on crafted OpenPGP packet streams and
MIME shapes: what passes, what does not, and bounded work on hostile input."""

from __future__ import annotations

import time

from tests.integration import chatmail_messages as m

from pillarbox.check import e2ee

A, B = "alice@example.test", "bob@example.test"


def new(tag: int, body: bytes) -> bytes:
    assert len(body) < 192
    return bytes([0xC0 | tag, len(body)]) + body


def old(tag: int, body: bytes, length_type: int = 0) -> bytes:
    size = 1 << length_type if length_type < 3 else 0
    head = bytes([0x80 | tag << 2 | length_type])
    return head + (len(body).to_bytes(size, "big") if size else b"") + body


SEIPD1 = new(18, b"\x01" + b"x" * 40)
SEIPD2 = new(18, b"\x02" + b"x" * 40)


def test_session_keys_then_one_seipd_pass():
    assert e2ee.openpgp_payload_ok(new(1, b"k" * 30) + SEIPD1)
    assert e2ee.openpgp_payload_ok(new(3, b"k" * 30) + new(1, b"k" * 20) + SEIPD2)
    assert e2ee.openpgp_payload_ok(old(1, b"k" * 30) + old(3, b"s" * 300, 1) + SEIPD1)
    assert e2ee.openpgp_payload_ok(old(1, b"k" * 30, 2) + SEIPD1)


def test_other_packets_and_orders_fail():
    assert not e2ee.openpgp_payload_ok(b"")
    assert not e2ee.openpgp_payload_ok(new(1, b"k" * 30))  # no SEIPD
    assert not e2ee.openpgp_payload_ok(SEIPD1 + SEIPD1)  # two SEIPD
    assert not e2ee.openpgp_payload_ok(new(11, b"literal"))  # literal data
    assert not e2ee.openpgp_payload_ok(new(1, b"k") + new(11, b"x") + SEIPD1)
    assert not e2ee.openpgp_payload_ok(new(18, b"\x03" + b"x" * 10))  # SEIPD v3
    assert not e2ee.openpgp_payload_ok(new(20, b"\x01" + b"x" * 10))  # AEAD packet
    assert not e2ee.openpgp_payload_ok(SEIPD1 + b"\x00")  # trailing junk
    assert not e2ee.openpgp_payload_ok(b"\x40" + SEIPD1)  # no packet bit
    assert not e2ee.openpgp_payload_ok(old(1, b"k" * 30, 3) + SEIPD1)  # indeterminate PKESK


def test_truncated_headers_fail_cleanly():
    for data in (b"\xc1", b"\xc1\xc0", b"\xc1\xff\x00\x00", b"\x85", b"\x85\x01",
                 new(1, b"k" * 30) + b"\xd2\xff\x00\x00\x00\xff", b"\xd2\xe3"):
        assert not e2ee.openpgp_payload_ok(data)


def test_partial_body_lengths():
    # SEIPD in chunks: 512 (partial), 512 (partial), then a final 2-octet length.
    body = b"\x01" + b"x" * 1400
    data = bytes([0xD2, 0xE0 | 9]) + body[:512] + bytes([0xE0 | 9]) + body[512:1024]
    rest = body[1024:]
    n = len(rest) - 192
    data += bytes([(n >> 8) + 192, n & 0xFF]) + rest
    assert e2ee.openpgp_payload_ok(new(1, b"k" * 30) + data)
    assert not e2ee.openpgp_payload_ok(new(1, b"k" * 30) + data[:-1])


def test_hostile_chunks_stay_within_the_budget():
    # 1-octet partial chunks over 3 MB: refused after PACKET_BUDGET headers, fast.
    data = bytes([0xD2]) + (b"\xe0\x01") * 1_500_000 + b"\x00"
    start = time.monotonic()
    assert not e2ee.openpgp_payload_ok(data)
    many_keys = new(1, b"k") * 10_000 + SEIPD1
    assert not e2ee.openpgp_payload_ok(many_keys)
    assert time.monotonic() - start < 1.0


def test_armor():
    assert e2ee.armored_payload_ok(m.armor(new(1, b"k" * 30) + SEIPD1))
    with_headers = m.armor(new(1, b"k" * 30) + SEIPD1).replace(
        "\r\n\r\n", "\r\nVersion: x\r\nComment: y\r\n\r\n", 1)
    assert e2ee.armored_payload_ok(with_headers)
    assert not e2ee.armored_payload_ok("-----BEGIN PGP MESSAGE-----\r\n\r\n"
                                       "-----END PGP MESSAGE-----\r\n")
    assert not e2ee.armored_payload_ok(m.armor(new(1, b"k") + SEIPD1).replace("MESSAGE",
                                                                             "SIGNATURE"))
    assert not e2ee.armored_payload_ok(m.armor(SEIPD1) + "trailing text\r\n")
    assert not e2ee.armored_payload_ok(m.literal_armored())
    assert e2ee.armored_payload_ok(m.sequoia_armored())
    assert e2ee.armored_payload_ok(m.gpg_armored())
    assert e2ee.armored_payload_ok(m.gpg_symmetric_armored())


def judge(raw: bytes, rcpts=(B,), login: str | None = A, mail_from: str = A, ok=None):
    return e2ee.judge(raw, mail_from, list(rcpts), login, ok)


def test_mime_structure():
    good = m.pgp_mime(A, B, m.sequoia_armored())
    assert judge(good) is None
    assert judge(good.replace(b"Version: 1", b"Version: 2")) == e2ee.ENCRYPTION_NEEDED
    assert judge(good.replace(b"multipart/encrypted", b"multipart/mixed")) \
        == e2ee.ENCRYPTION_NEEDED
    assert judge(good.replace(b"Content-Type: application/octet-stream",
                              b"Content-Type: text/plain")) == e2ee.ENCRYPTION_NEEDED
    third = good.replace(f"--{m.BOUNDARY}--".encode(),
                         f"--{m.BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                         f"--{m.BOUNDARY}--".encode())
    assert judge(third) == e2ee.ENCRYPTION_NEEDED


def test_exceptions_by_direction():
    assert judge(m.securejoin(A, B)) is None
    assert judge(m.securejoin(A, B, "vg-request")) is None
    assert judge(m.securejoin(A, B, text="Buy cheap pills!")) == e2ee.ENCRYPTION_NEEDED
    assert judge(m.setup_message(A, A), rcpts=[A]) is None
    assert judge(m.setup_message(A, B)) == e2ee.ENCRYPTION_NEEDED
    assert judge(m.setup_message(A, A), rcpts=[A], login=None) == e2ee.ENCRYPTION_NEEDED
    report = m.mailer_daemon_report("MAILER-DAEMON@example.net", A)
    assert judge(report, rcpts=[A], login=None, mail_from="") is None
    assert judge(report.replace(b"Auto-Submitted: auto-replied\r\n", b""), rcpts=[A],
                 login=None, mail_from="") == e2ee.ENCRYPTION_NEEDED
    assert judge(m.mdn(A, B)) == e2ee.ENCRYPTION_NEEDED


def test_outgoing_from_must_be_the_sender():
    refusal = judge(m.pgp_mime("carol@example.test", B, m.sequoia_armored()))
    assert refusal is not None and refusal.code == 553
    two = m.pgp_mime(A, B, m.sequoia_armored()).replace(b"From: <alice@example.test>",
                                                        b"From: <alice@example.test>, <c@x.y>")
    assert judge(two).code == 553


def test_cleartext_opt_in_is_per_recipient():
    raw = m.plain("eve@example.net", A)
    assert judge(raw, [A, B], None, "eve@example.net", lambda r: r == B) \
        == e2ee.ENCRYPTION_NEEDED
    assert judge(raw, [B], None, "eve@example.net", lambda r: r == B) is None


def test_garbage_never_raises():
    for raw in (b"", b"\x00\xff" * 100, b"Content-Type: multipart/encrypted; boundary=\r\n\r\n",
                b"From: \x80\r\nContent-Type: multipart/encrypted; boundary=x\r\n\r\n--x\r\n"):
        assert judge(raw, login=None) == e2ee.ENCRYPTION_NEEDED
