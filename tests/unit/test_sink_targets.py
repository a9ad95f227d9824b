"""The `reject` and `discard` targets (pillarbox.target.sink)."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest

from pillarbox import module
from pillarbox.target import sink

KINDS = {k.name: k for k in sink.KINDS}


def envelope() -> module.Envelope:
    return module.Envelope("MSGID1", "a@example.test", ["b@example.test", "c@example.test"],
                           module.Source("queue"))


def test_kinds_are_targets_with_their_options():
    assert set(KINDS) == {"reject", "discard"}
    assert all(k.role == "target" for k in KINDS.values())
    (reply,) = KINDS["reject"].options
    assert reply.name == "reply" and reply.required


def test_reject_refuses_every_recipient_with_the_configured_reply():
    target = KINDS["reject"].make("gone", {"reply": "550 5.1.1 retired, write to x@y.test"}, None)
    assert target.name == "gone"

    async def run():
        d = await target.start(envelope())
        errors = []
        for rcpt in envelope().rcpts:
            with pytest.raises(module.DeliveryError) as e:
                await d.add_rcpt(rcpt)
            errors.append(e.value)
        await d.abort()
        return errors

    errors = asyncio.run(run())
    assert [(e.reply.code, e.reply.text) for e in errors] == \
        [(550, "5.1.1 retired, write to x@y.test")] * 2
    assert not errors[0].temporary


def test_reject_takes_a_temporary_reply_too():
    target = KINDS["reject"].make("later", {"reply": "450 4.2.1 try later"}, None)

    async def run():
        d = await target.start(envelope())
        with pytest.raises(module.DeliveryError) as e:
            await d.add_rcpt("b@example.test")
        return e.value

    assert asyncio.run(run()).temporary


@pytest.mark.parametrize("reply", [
    "", "550", "250 2.0.0 ok", "550 4.7.1 class mismatch", "550 text without code",
    "550 5.7.1 line\r\n250 ok", "55 5.7.1 short", "550 5.7.1 caf\u00e9",
])
def test_reject_refuses_a_malformed_reply_at_make_time(reply):
    with pytest.raises(ValueError, match="^reply: "):
        KINDS["reject"].make("bad", {"reply": reply}, None)


def test_reject_needs_a_reply():
    with pytest.raises(ValueError, match="^reply: required"):
        KINDS["reject"].make("bad", {}, None)


def test_discard_accepts_every_recipient_and_logs_one_line(caplog):
    target = KINDS["discard"].make("hole", {}, None)
    assert target.name == "hole"

    async def run():
        d = await target.start(envelope())
        for rcpt in envelope().rcpts:
            await d.add_rcpt(rcpt)
        await d.body(io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"))
        return await d.commit()

    with caplog.at_level(logging.INFO, logger="pillarbox.target.sink"):
        results = asyncio.run(run())
    assert results == {"b@example.test": None, "c@example.test": None}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "id=MSGID1" in lines[0] and "target=hole" in lines[0]
