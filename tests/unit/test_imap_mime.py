"""mime: ENVELOPE and BODYSTRUCTURE of hostile messages (issue 9)."""

from __future__ import annotations

from pillarbox.endpoint.imap import mime


def test_eight_bit_and_nul_in_addresses_are_served_as_octets() -> None:
    p = mime.Part(b"From: Bob <bob@ex\xe4mple.org>\r\nTo: a@b\x00c\r\nSubject: x\x00y\r\n\r\n")
    env = mime.envelope(p)
    # The 8-bit host goes out as the same octets in a literal; NUL is dropped.
    assert b'(("Bob" NIL "bob" {11}\r\nex\xe4mple.org))' in env
    assert b'"xy"' in env and b"\x00" not in env


def test_a_message_is_cut_into_at_most_max_parts() -> None:
    body = b"--b\r\n\r\nx\r\n" * (mime.MAX_PARTS + 500) + b"--b--\r\n"
    p = mime.Part(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body)
    assert len(p.children) == mime.MAX_PARTS
    assert p.children[-1].raw.count(b"--b\r\n") == 500  # the rest stays in the last part


def test_a_multipart_past_the_depth_limit_still_has_a_body_part() -> None:
    raw = b"leaf\r\n"
    for i in range(mime.MAX_DEPTH + 5):
        raw = (b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) + raw
               + b"\r\n--b%d--\r\n" % i)
    bs = mime.bodystructure(mime.Part(raw))
    assert b"( " not in bs and b'(("TEXT" "PLAIN"' in bs
