"""The messages a list writes: the copy of a post its members get, and the
notices it sends (moderation requests, confirmations, owner notes).

A post is changed as little as possible: the RFC 2369/2919 fields and
`Precedence: list` go on top and the body is never touched, so the author's
DKIM signature still verifies unless the list must rewrite From (DMARC,
decided by the caller) or adds a Subject prefix (a setting, empty by
default: most signers sign Subject, and a prefix breaks their signature).
"""

from __future__ import annotations

import email.header
import email.utils
import secrets
import time

from pillarbox.lists.store import MailingList

# Fields a post may carry from elsewhere (another list) that ours replace.
OURS = {"list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe",
        "list-unsubscribe-post", "list-archive", "list-owner", "precedence"}


def split(message: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """(header fields as (name, raw value), the rest from the blank line on)."""
    from pillarbox.stages import split_header

    end = message.find(b"\r\n\r\n")
    head = message[: end + 2] if end >= 0 else message
    fields, rest = split_header(head)
    return fields, rest + message[len(head):]


def join(fields: list[tuple[str, str]], rest: bytes) -> bytes:
    from pillarbox.stages import encode_field

    return b"".join(encode_field(f"{n}:{v}\r\n") for n, v in fields) + rest


def value(fields: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    for n, v in fields:
        if n.strip().lower() == name:
            return v.strip()
    return None


def author(fields: list[tuple[str, str]]) -> tuple[str, str]:
    """The From field's (display name, address), decoded; ("", "") if none."""
    raw = value(fields, "from")
    if not raw:
        return "", ""
    try:
        pairs = email.utils.getaddresses([raw.replace("\r\n", "")])
        name, address = pairs[0] if pairs else ("", "")
        name = str(email.header.make_header(email.header.decode_header(name))) if name else ""
    except Exception:  # hostile encodings: no name, the address as far as it parsed
        return "", ""
    return " ".join(name.split())[:100], address.strip().lower()


def list_fields(lst: MailingList, archive: str = "") -> list[tuple[str, str]]:
    """RFC 2369/2919 fields and Precedence; one-click unsubscribe is per member
    (see unsubscribe.personal_fields)."""
    name = lst.display.replace('"', "").replace("\\", "")
    out = [("List-Id", f' "{name}" <{lst.list_id}>'),
           ("List-Post", f" <mailto:{lst.address}>"),
           ("List-Help", f" <mailto:{lst.at('-request')}?subject=help>"),
           ("List-Subscribe", f" <mailto:{lst.at('-subscribe')}>"),
           ("List-Unsubscribe", f" <mailto:{lst.at('-unsubscribe')}>")]
    if archive or lst.archive:
        out.append(("List-Archive", f" <{archive or lst.archive}>"))
    out.append(("Precedence", " list"))
    return out


def carries_list_id(fields: list[tuple[str, str]], lst: MailingList) -> bool:
    """Whether the message went through this list already (loop prevention)."""
    want = f"<{lst.list_id}>"
    return any(n.strip().lower() == "list-id" and want in v.lower() for n, v in fields)


def list_copy(lst: MailingList, message: bytes, rewrite_from: bool) -> bytes:
    """The copy the members get (before DKIM signing and ARC sealing)."""
    fields, rest = split(message)
    name, addr = author(fields)
    original_from = value(fields, "from")
    kept: list[tuple[str, str]] = []
    for n, v in fields:
        key = n.strip().lower()
        if key in OURS:
            continue
        if rewrite_from and key == "from":
            shown = f"{name or addr or 'someone'} via {lst.display}"
            v = " " + _mailbox(shown, lst.address)
        elif key == "reply-to" and (rewrite_from or lst.reply_to == "list"):
            continue  # set below
        elif key == "subject" and lst.subject_prefix and lst.subject_prefix not in v:
            v = f" {lst.subject_prefix}{v if v.startswith(' ') else ' ' + v}"
        kept.append((n, v))
    if lst.subject_prefix and value(fields, "subject") is None:
        kept.append(("Subject", f" {lst.subject_prefix}"))
    if lst.reply_to == "list":
        kept.append(("Reply-To", f" <{lst.address}>"))
    elif rewrite_from and original_from:
        kept.append(("Reply-To", " " + (value(fields, "reply-to") or original_from)))
    return join(list_fields(lst) + kept, rest)


def _mailbox(name: str, address: str) -> str:
    """`"Alice via Team" <team@d>`: the name always quoted (encoded when not ASCII)."""
    if not name.isascii():
        return email.utils.formataddr((name, address), charset="utf-8")
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>'


def notice(lst: MailingList, to: str, subject: str, body: str, reply_to: str = "") -> bytes:
    """A message from the list's -request address (auto-generated: no one
    should auto-reply to it)."""
    head = [
        ("From", " " + email.utils.formataddr((f"{lst.display} list", lst.at("-request")))),
        ("To", f" <{to}>"),
        ("Subject", " " + email.header.Header(subject, "utf-8").encode()
         if not subject.isascii() else " " + subject),
        ("Date", " " + email.utils.formatdate(time.time(), usegmt=True)),
        ("Message-ID", f" <{secrets.token_hex(12)}@{lst.domain}>"),
        ("Auto-Submitted", " auto-generated"),
        ("List-Id", f" <{lst.list_id}>"),
        ("MIME-Version", " 1.0"),
        ("Content-Type", " text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", " 8bit"),
    ]
    if reply_to:
        head.append(("Reply-To", f" <{reply_to}>"))
    text = body.replace("\r\n", "\n").replace("\n", "\r\n")
    if not text.endswith("\r\n"):
        text += "\r\n"
    return join(head, b"\r\n" + text.encode("utf-8"))


def is_automatic(fields: list[tuple[str, str]]) -> bool:
    """Auto-Submitted other than "no", or a Precedence of bulk/junk/list:
    nothing to answer (RFC 3834)."""
    auto = (value(fields, "auto-submitted") or "no").lower()
    prec = (value(fields, "precedence") or "").lower()
    return not auto.startswith("no") or prec in ("bulk", "junk", "list")
