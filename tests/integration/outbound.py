"""Fixtures and helpers for the outbound-delivery tests (test_outbound*.py).

Kept out of conftest.py on purpose (other sessions edit that file); a test
module brings the fixtures in with

    from .outbound import (  # noqa: F401 (fixtures: pytest finds them by their name=)
        fixture_dns, fixture_double, fixture_make_double, fixture_outbound)

(each `fixture_X` registers the fixture `X`; the different name keeps the
test functions' `X` parameters from shadowing an import.)

- `dns`: a DNSServer on a free 127.0.0.1 port (tests/integration/dns_server.py);
- `double`: an SMTPDouble on a free 127.0.0.1 port (tests/integration/smtp_double.py),
  with STARTTLS; it is where every MX host name of the tests points;
- `make_double(**kw)`: more doubles (a smarthost with AUTH, a server without
  STARTTLS, one on 127.0.0.3 at the main double's port, ...);
- `outbound(overrides, routes=[...], **kw)`: a running pillarbox (the harness's
  `make_server`) whose resolver is `dns` and whose `[remote] port` is the
  double's, so that an MX host resolving to 127.0.0.x is reached at the double
  (127.0.0.2: nothing listens there, a dead MX).

Mail goes out the way users send it: `submit(srv, ALICE, [rcpts])` logs in on
the submission port (STARTTLS, certificate not verified) and returns the
queue id from the 250 reply.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
import smtplib
import time

import pytest

from .dns_server import DNSServer
from .smtp_double import SMTPDouble
from .support import (
    ALICE,
    CLIENT_NAME,
    PASSWORD,
    Server,
    _toml_value,
    client_ssl_context,
    make_message,
    token,
)

REMOTE = "remote.test"
REMOTE_MX = "mx.remote.test"
DEAD_IP = "127.0.0.2"  # loopback, nothing listens there: connection refused at once


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(name="dns")
def fixture_dns():
    server = DNSServer().start()
    yield server
    server.stop()
    assert not server.errors, f"the test DNS server failed: {server.errors}"


@pytest.fixture(name="make_double")
def fixture_make_double():
    doubles: list[SMTPDouble] = []

    def factory(**kw) -> SMTPDouble:
        d = SMTPDouble(**kw).start()
        doubles.append(d)
        return d

    yield factory
    for d in doubles:
        d.stop()


@pytest.fixture(name="double")
def fixture_double(make_double) -> SMTPDouble:
    return make_double()


def routes_toml(routes: list[dict]) -> str:
    out = []
    for r in routes:
        out.append("[[route]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in r.items()]
        out.append("")
    return "\n".join(out)


@pytest.fixture(name="outbound")
def fixture_outbound(make_server, dns, double):
    """make_server for outbound tests: resolver = `dns`, MX port = `double`'s port."""

    def factory(overrides: dict | None = None, *, routes: list[dict] | None = None,
                start: bool = True, extra_toml: str = "", **kw) -> Server:
        merged = {
            "dns.nameservers": [dns.address],
            "remote.port": double.port,
            "remote.connect_timeout": "3s",
            "remote.command_timeout": "15s",
            "remote.helo": "out.example.test",
        }
        merged.update(overrides or {})
        merged.update(kw)
        toml = routes_toml(routes or [])
        if extra_toml:
            toml += "\n" + extra_toml
        return make_server(merged, start=start, extra_toml=toml)

    return factory


def point_mx(dns: DNSServer, domain: str = REMOTE, ip: str = "127.0.0.1",
             host: str | None = None) -> None:
    """domain MX 10 host (default mx.<domain>), host A ip."""
    host = host or f"mx.{domain}"
    dns.mx(domain, (10, host))
    dns.a(host, ip)


# --------------------------------------------------------------------------
# sending


class Submission:
    """An authenticated submission session (STARTTLS, then AUTH) that sends messages.

        with Submission(srv) as sub:
            ids = [sub.send(f"r{i}@remote.test") for i in range(5)]

    One login for many messages: argon2 makes each login cost real time.
    """

    def __init__(self, srv: Server, frm: str = ALICE, password: str = PASSWORD) -> None:
        self.frm = frm
        self.smtp = smtplib.SMTP("127.0.0.1", srv.submission_port, local_hostname=CLIENT_NAME,
                                 timeout=15)
        try:
            self.smtp.ehlo()
            self.smtp.starttls(context=client_ssl_context())
            self.smtp.ehlo()
            self.smtp.login(frm, password)
        except BaseException:
            self.smtp.close()
            raise

    def send(self, rcpts: str | list[str], *, subject: str | None = None,
             body: str = "Hello from the outbound tests.\r\n",
             message: bytes | None = None, mail_options: tuple[str, ...] = ()) -> str:
        """Send one message; return the queue id from the 250 reply."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        if message is None:
            message = make_message(self.frm, rcpts, subject or f"outbound {token()}", body)
        s = self.smtp
        code, msg = s.mail(self.frm, list(mail_options))
        assert code == 250, f"MAIL FROM:<{self.frm}> refused: {code} {msg!r}"
        for r in rcpts:
            code, msg = s.rcpt(r)
            assert code == 250, f"RCPT TO:<{r}> refused: {code} {msg!r}"
        code, msg = s.data(message)
        assert code == 250, f"DATA refused: {code} {msg!r}"
        m = re.search(r"queued as (\S+)", msg.decode())
        assert m, f"no queue id in the DATA reply {msg!r}"
        return m.group(1)

    def close(self) -> None:
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            self.smtp.close()

    def __enter__(self) -> Submission:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def submit(srv: Server, rcpts: str | list[str], *, frm: str = ALICE, subject: str | None = None,
           body: str = "Hello from the outbound tests.\r\n", message: bytes | None = None,
           password: str = PASSWORD, mail_options: tuple[str, ...] = ()) -> str:
    """Send one message over authenticated submission; return its queue id."""
    with Submission(srv, frm, password) as sub:
        return sub.send(rcpts, subject=subject, body=body, message=message,
                        mail_options=mail_options)


# --------------------------------------------------------------------------
# the queue, seen through `pillarbox queue list --json`


def queue_entry(srv: Server, msg_id: str) -> dict | None:
    for e in srv.queue_list():
        if e["id"] == msg_id:
            return e
    return None


def wait_queue(srv: Server, predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `queue list --json` until predicate(entries) is true; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        entries = srv.queue_list()
        value = predicate(entries)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; queue: {entries!r};"
                f" server stderr tail:\n{srv.log_tail(30)}")
        time.sleep(interval)


def wait_deferred(srv: Server, msg_id: str, timeout: float = 15, attempts: int = 1) -> dict:
    """The queue entry once every recipient left is deferred after >= `attempts` tries."""
    def ready(entries):
        for e in entries:
            if e["id"] == msg_id and e["rcpts"] and all(
                    r["state"] == "deferred" and r["attempts"] >= attempts for r in e["rcpts"]):
                return e
        return None

    return wait_queue(srv, ready, timeout, f"{msg_id} deferred after {attempts} attempt(s)")


def wait_all_deferred(srv: Server, ids: list[str], timeout: float = 30) -> dict[str, dict]:
    """{id: entry} once every one of `ids` is deferred after at least one attempt."""
    def ready(entries):
        by_id = {e["id"]: e for e in entries}
        if all(i in by_id and by_id[i]["rcpts"] and all(
                r["state"] == "deferred" and r["attempts"] >= 1 for r in by_id[i]["rcpts"])
               for i in ids):
            return by_id
        return None

    return wait_queue(srv, ready, timeout, f"{len(ids)} message(s) deferred")


def wait_queue_empty(srv: Server, timeout: float = 15) -> None:
    wait_queue(srv, lambda entries: not entries or None, timeout, "an empty queue")


# --------------------------------------------------------------------------
# delivery status notifications


class DSN:
    """A parsed RFC 3464 report: the message, its parts, and the status blocks."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        # the modern policy: header values are str even when they hold raw UTF-8
        self.msg = email.message_from_bytes(raw, policy=email.policy.default)
        msg = self.msg
        assert msg.get_content_type() == "multipart/report", (
            f"a DSN must be multipart/report, got {msg.get_content_type()}:\n{_head(raw)}")
        self.report_type = msg.get_param("report-type")
        assert self.report_type in ("delivery-status", "global-delivery-status"), (
            f"report-type must be (global-)delivery-status, got {self.report_type!r}")
        parts = msg.get_payload()
        assert isinstance(parts, list) and len(parts) >= 2, f"too few parts: {parts!r}"
        self.human = parts[0]
        # RFC 6522: the first part is the human-readable explanation
        assert self.human.get_content_maintype() == "text", self.human.get_content_type()
        status = [p for p in parts if p.get_content_type() == f"message/{self.report_type}"]
        assert len(status) == 1, f"expected one message/{self.report_type} part, got {status}"
        if self.report_type == "delivery-status":
            blocks = status[0].get_payload()
        else:  # RFC 6533: the email package does not split these into blocks itself
            text = status[0].as_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
            blocks = [email.message_from_bytes(b, policy=email.policy.default)
                      for b in text.split(b"\n\n") if b.strip()]
        assert isinstance(blocks, list) and len(blocks) >= 2, (
            f"message/delivery-status needs a per-message block and per-recipient blocks:"
            f" {blocks!r}")
        self.per_message: email.message.Message = blocks[0]
        self.recipients: list[email.message.Message] = blocks[1:]
        originals = [p for p in parts if p.get_content_type() in
                     ("text/rfc822-headers", "message/rfc822", "message/rfc822-headers",
                      "message/global-headers")]
        assert originals, "the DSN does not return the original message or its headers"
        self.original = originals[0]

    def recipient(self, addr: str) -> email.message.Message:
        for block in self.recipients:
            final = block.get("Final-Recipient", "")
            if final.split(";", 1)[-1].strip().lower() == addr.lower():
                return block
        raise AssertionError(f"no Final-Recipient {addr} in the DSN; blocks: "
                             f"{[str(b) for b in self.recipients]}")

    def final_recipients(self) -> list[str]:
        return [b.get("Final-Recipient", "").split(";", 1)[-1].strip().lower()
                for b in self.recipients]

    def original_headers(self) -> email.message.Message:
        if self.original.get_content_type() == "text/rfc822-headers":
            payload = self.original.get_payload(decode=True)
            return email.message_from_bytes(payload, policy=email.policy.default)
        inner = self.original.get_payload()
        return inner[0] if isinstance(inner, list) else inner


def _head(raw: bytes) -> str:
    return raw[:1500].decode("utf-8", "replace")


def dsns_in(srv: Server, addr: str) -> list[bytes]:
    """Messages in addr's Maildir that are delivery reports."""
    return [m for m in srv.messages(addr) if b"multipart/report" in m.split(b"\r\n\r\n", 1)[0]
            or b"multipart/report" in m.split(b"\n\n", 1)[0]]


def wait_dsn(srv: Server, addr: str = ALICE, timeout: float = 15) -> DSN:
    deadline = time.monotonic() + timeout
    while True:
        found = dsns_in(srv, addr)
        if found:
            assert len(found) == 1, f"expected one DSN in {addr}'s mailbox, got {len(found)}"
            return DSN(found[0])
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no DSN in {addr}'s mailbox after {timeout:.0f}s; mailbox holds "
                f"{len(srv.messages(addr))} message(s); queue: {srv.queue_list()!r};"
                f" server stderr tail:\n{srv.log_tail(30)}")
        time.sleep(0.05)
