"""Header hygiene: Received on everything; Message-ID and Date on submission."""

from __future__ import annotations

import email.utils

from .support import ALICE, BOB, HOSTNAME, make_message, parse, token


def test_submission_adds_message_id_and_date_when_missing(server):
    tok = token()
    bare = make_message(ALICE, BOB, tok, date_and_id=False)
    assert b"Message-ID" not in bare and b"Date:" not in bare
    with server.submission(user=ALICE) as s:
        s.sendmail(ALICE, [BOB], bare)
    (raw,) = server.wait_for_messages(BOB, 1)
    msg = parse(raw)
    assert msg["Subject"] == tok
    ids = msg.get_all("Message-ID") or []
    assert len(ids) == 1, f"expected one Message-ID, got {ids}"
    assert ids[0].strip().startswith("<") and "@" in ids[0] and ids[0].strip().endswith(">"), ids
    dates = msg.get_all("Date") or []
    assert len(dates) == 1, f"expected one Date, got {dates}"
    assert email.utils.parsedate_to_datetime(dates[0]) is not None, dates
    received = msg.get_all("Received") or []
    assert received and HOSTNAME in received[0], received


def test_submission_keeps_existing_message_id_and_date(server):
    tok = token()
    orig = make_message(ALICE, BOB, tok, date_and_id=False,
                        headers={"Date": "Tue, 02 Jan 2024 03:04:05 +0000",
                                 "Message-ID": f"<{tok}@alice.example.test>"})
    with server.submissions(user=ALICE) as s:
        s.sendmail(ALICE, [BOB], orig)
    (raw,) = server.wait_for_messages(BOB, 1)
    msg = parse(raw)
    assert msg.get_all("Message-ID") == [f"<{tok}@alice.example.test>"]
    assert msg.get_all("Date") == ["Tue, 02 Jan 2024 03:04:05 +0000"]
