"""stages.run: a configured pipeline over one whole message (the sendmail
pipeline at pickup), and who ran sendmail, from our own Received field."""

from __future__ import annotations

import asyncio
import os

from pillarbox import module, stages
from pillarbox.check import Reply
from pillarbox.queue import sendmail_pipeline

MESSAGE = (b"Received: by mx.example.test (pillarbox sendmail, uid 0) id X; date\r\n"
           b"From: a@example.test\r\nSubject: hello\r\nUser-Agent: test\r\n\r\nbody\r\n")


class _Check:
    """Refuses one recipient, or the message at the body; records what it saw."""

    name = "probe"

    def __init__(self, refuse_rcpt: str = "", refuse_body: bool = False) -> None:
        self.refuse_rcpt, self.refuse_body = refuse_rcpt, refuse_body
        self.sources: list[module.Source] = []
        self.rcpts: list[str] = []

    def state(self, source: module.Source) -> module.BaseCheckState:
        self.sources.append(source)
        outer = self

        class _State(module.BaseCheckState):
            async def rcpt(self, rcpt: str) -> module.Verdict:
                outer.rcpts.append(rcpt)
                if rcpt == outer.refuse_rcpt:
                    return module.Verdict(reject=Reply(550, "5.7.1 not this one"))
                return module.Verdict(add_headers=[("X-Probe", "seen\r\nInjected: no")])

            async def body(self, header, body) -> module.Verdict:
                if outer.refuse_body:
                    return module.Verdict(reject=Reply(554, "5.7.1 not this message"))
                return module.Verdict(auth_results=["x-probe=pass"])

        return _State()


class _Rewrite:
    name = "rewrite"

    def state(self, envelope: module.Envelope) -> module.BaseModifierState:
        class _State(module.BaseModifierState):
            async def rcpt(self, rcpt: str) -> list[str]:
                return [rcpt.replace("@old.test", "@example.test")]

            async def header(self, fields):
                return [(n, v) for n, v in fields if n.lower() != "user-agent"]

        return _State()


def _run(check, modifiers=(), rcpts=("a@old.test", "b@example.test")):
    src = module.Source(endpoint="sendmail", auth="root")
    return asyncio.run(stages.run([check], list(modifiers), src, "X", "a@example.test",
                                  list(rcpts), MESSAGE, "mx.example.test"))


def test_a_refused_recipient_is_left_out_and_the_rest_rewritten_and_modified():
    check = _Check(refuse_rcpt="b@example.test")
    out = _run(check, [_Rewrite()])
    assert out.rcpts == ["a@example.test"]
    assert out.refused == {"b@example.test": Reply(550, "5.7.1 not this one")}
    assert check.rcpts == ["a@example.test", "b@example.test"]  # judged as rewritten
    assert check.sources[0].endpoint == "sendmail" and check.sources[0].auth == "root"
    head = out.message.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0].startswith(b"Received: by mx.example.test")
    assert head[1:4] == [b"Authentication-Results: mx.example.test;", b"\tx-probe=pass",
                         b"X-Probe: seen Injected: no"]
    assert b"User-Agent" not in out.message and out.message.endswith(b"\r\n\r\nbody\r\n")


def test_a_body_refusal_refuses_every_recipient_and_changes_nothing():
    out = _run(_Check(refuse_body=True), [_Rewrite()])
    assert out.rcpts == []
    assert set(out.refused) == {"a@old.test", "b@example.test"}
    assert out.message == MESSAGE


def test_who_ran_sendmail_comes_from_our_received_field():
    assert sendmail_pipeline.uid_of(MESSAGE) == 0
    assert sendmail_pipeline.uid_of(b"Received: from evil (uid 0)\r\n") is None
    assert sendmail_pipeline.login_of(os.getuid()) is not None
    assert sendmail_pipeline.login_of(None) is None
