"""Delivery status notifications (RFC 3464): tell the sender what failed.

One report per message, listing every recipient that failed for good with
its status and the remote server's reply, plus the original header. Never
sent for a bounce (empty envelope sender), so bounces cannot loop.

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

from pillarbox.queue.spool import Delivery, Envelope

_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_HOST_RE = re.compile(r"\(([^()\s\[]+)\[([^\]]+)\]\)\s*$")


def status_of(error: str) -> str:
    m = _STATUS_RE.search(error)
    if m:
        return ".".join(m.groups())
    return "5.0.0" if error.startswith("5") else "4.0.0"


def build(hostname: str, env: Envelope, failed: list[Delivery], original_header: bytes,
          boundary: str | None = None) -> bytes:
    """The whole DSN message as bytes with CRLF line ends."""
    boundary = boundary or f"pbx-{env.id}-{int(time.time())}"
    utf8 = not (env.mail_from.isascii() and original_header.isascii()
                and all(d.rcpt.isascii() and d.to.isascii() for d in failed))
    report = "global-delivery-status" if utf8 else "delivery-status"
    arrival = format_datetime(datetime.fromtimestamp(env.received, UTC), usegmt=True)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{env.mail_from}>",
        "Subject: Undelivered Mail Returned to Sender",
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
        "Your message could not be delivered to one or more recipients.",
        "It has been returned below (headers only).",
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
        lines.append("Action: failed")
        lines.append(f"Status: {status_of(d.last_error)}")
        m = _HOST_RE.search(d.last_error)
        if m:
            lines.append(f"Remote-MTA: dns; {m.group(1)}")
        diag = d.last_error
        kind = "smtp" if re.match(r"^[245]\d\d ", diag) else "x-pillarbox"
        lines.append(f"Diagnostic-Code: {kind}; {_one_line(diag)}")
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
