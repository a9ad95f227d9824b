"""Delivery status notifications (RFC 3464): tell the sender what failed.

A report lists recipients that failed for good (Action: failed) with their
status and the remote server's reply, or recipients still being retried
(Action: delayed, a warning), plus the original header. The queue decides
when to send which (queue/scheduler.py); each recipient is reported as
failed once. Never sent for a bounce (empty envelope sender), so bounces
cannot loop.

When an address or the original header is not ASCII (an SMTPUTF8 message),
the report is the internationalized kind of RFC 6533: a
message/global-delivery-status part whose non-ASCII addresses are typed
"utf-8", and the header as message/global-headers.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate, make_msgid

from pillarbox.queue.spool import Delivery, Envelope, State

_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_HOST_RE = re.compile(r"\(([^()\s\[]+)\[([^\]]+)\]\)\s*$")


def status_of(error: str) -> str:
    m = _STATUS_RE.search(error)
    if m:
        return ".".join(m.groups())
    return "5.0.0" if error.startswith("5") else "4.0.0"


# What the sender is told: (Subject, the explanation's lines) per report kind.
_FAILED = ("Undelivered Mail Returned to Sender",
           ["Your message could not be delivered to one or more recipients.",
            "It has been returned below (headers only)."])
_FAILED_SO_FAR = ("Undelivered Mail Returned to Sender",
                  ["Your message could not be delivered to the recipients below.",
                   "Delivery to its other recipients is still being tried;",
                   "you will hear again only if one of them fails too.",
                   "Its header is returned below."])
_DELAYED = ("Delayed Mail (still being retried)",
            ["Your message has not yet been delivered to the recipients below.",
             "This is a warning only: you do not need to send it again.",
             "The mail system keeps trying until {until}.",
             "Its header is returned below."])


def build(hostname: str, env: Envelope, failed: list[Delivery], original_header: bytes,
          boundary: str | None = None, *, action: str = "failed", others_pending: bool = False,
          retry_until: float | None = None) -> bytes:
    """The whole DSN message as bytes with CRLF line ends.

    `action` is the RFC 3464 Action of every listed recipient: "failed"
    (`others_pending` when the message still has recipients to try), or
    "delayed", with `retry_until` the time the queue gives up."""
    boundary = boundary or f"pbx-{env.id}-{int(time.time())}"
    utf8 = not (env.mail_from.isascii() and original_header.isascii()
                and all(d.rcpt.isascii() and d.to.isascii() for d in failed))
    report = "global-delivery-status" if utf8 else "delivery-status"
    arrival = format_datetime(datetime.fromtimestamp(env.received, UTC), usegmt=True)
    until = format_datetime(datetime.fromtimestamp(retry_until or 0, UTC), usegmt=True)
    if action == "delayed":
        subject, explanation = _DELAYED
    else:
        subject, explanation = _FAILED_SO_FAR if others_pending else _FAILED
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{env.mail_from}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False, usegmt=True)}",
        f"Message-ID: {make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={report}; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status report.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at {hostname}.",
        "",
        *(line.format(until=until) for line in explanation),
        "",
    ]
    for d in failed:
        lines.append(f"<{d.rcpt}>: {d.last_error}")
    lines += [
        "",
        f"--{boundary}",
        f"Content-Type: message/{report}",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Pillarbox-Queue-ID: {env.id}",
        f"Arrival-Date: {arrival}",
        "",
    ]
    for d in failed:
        final = d.to if d.kind == "remote" else d.rcpt
        lines.append(f"Final-Recipient: {_addr_type(final)}; {final}")
        if d.to != d.rcpt and d.kind == "remote":
            lines.append(f"Original-Recipient: {_addr_type(d.rcpt)}; {d.rcpt}")
        lines.append(f"Action: {action}")
        lines.append(f"Status: {status_of(d.last_error)}")
        m = _HOST_RE.search(d.last_error)
        if m:
            lines.append(f"Remote-MTA: dns; {m.group(1)}")
        diag = d.last_error
        kind = "smtp" if re.match(r"^[245]\d\d ", diag) else "x-pillarbox"
        lines.append(f"Diagnostic-Code: {kind}; {_one_line(diag)}")
        if action == "delayed":
            lines.append(f"Will-Retry-Until: {until}")
        lines.append("")
    text = "\r\n".join(lines).encode("utf-8")
    headers = "message/global-headers" if utf8 else "text/rfc822-headers"
    return (text + f"\r\n--{boundary}\r\nContent-Type: {headers}\r\n\r\n".encode()
            + original_header.rstrip(b"\r\n") + f"\r\n\r\n--{boundary}--\r\n".encode())


def _addr_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"


def _one_line(s: str) -> str:
    return " ".join(s.split())[:900]


def original_header(message_head: bytes) -> bytes:
    """The header block of a message, given its first bytes."""
    end = message_head.find(b"\r\n\r\n")
    return message_head[: end + 2] if end >= 0 else message_head


DELETED = "5.0.0 deleted by the postmaster"


def undelivered(env: Envelope, state: State | None) -> list[Delivery]:
    """The recipients a deleted message never reached and nobody was told about,
    marked failed as deleted by the postmaster (for `queue delete --bounce`)."""
    if state is None:  # never tried: the envelope recipients themselves
        return [Delivery(kind="", to=r, rcpt=r, state="failed", last_error=DELETED)
                for r in env.rcpts]
    out = []
    for d in state.deliveries:
        if d.state in ("pending", "deferred"):
            last = f"; last error: {d.last_error}" if d.last_error else ""
            out.append(Delivery(kind=d.kind, to=d.to, rcpt=d.rcpt, state="failed",
                                attempts=d.attempts, last_error=DELETED + last))
        elif d.state == "failed" and not d.reported:
            out.append(d)
    return out
