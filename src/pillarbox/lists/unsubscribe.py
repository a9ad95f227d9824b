"""One-click unsubscribe (RFC 8058): the per-member URL and its handler.

The token names the list and the member and carries an HMAC keyed with the
list's secret (made at `list create`), so no table of tokens is needed and a
token cannot be forged or moved to another member. The HTTP endpoint (not
built yet: another helper's work) answers `POST <unsubscribe_url>` with
`List-Unsubscribe=One-Click` in the body by calling `unsubscribe(token,
store)`; the URL is the `unsubscribe_url` option of the `mailing_list` module
with `{token}` replaced.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from pillarbox.lists.store import ListStore, MailingList


def _mac(secret: str, list_address: str, member: str) -> str:
    msg = f"{list_address.lower()}\0{member.lower()}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()[:32]


def make_token(lst: MailingList, member: str) -> str:
    ident = base64.urlsafe_b64encode(f"{lst.address}\0{member.lower()}".encode()).decode()
    return f"{ident.rstrip('=')}.{_mac(lst.secret, lst.address, member)}"


def read_token(token: str) -> tuple[str, str, str] | None:
    """(list, member, mac) from a token, without checking the mac; None if malformed."""
    ident, dot, mac = token.partition(".")
    if not dot or len(token) > 600:
        return None
    try:
        raw = base64.urlsafe_b64decode(ident + "=" * (-len(ident) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    lst, zero, member = raw.partition("\0")
    if not zero or "@" not in lst or "@" not in member:
        return None
    return lst, member, mac


def personal_fields(lst: MailingList, member: str, url: str) -> bytes:
    """The List-Unsubscribe and List-Unsubscribe-Post fields of one member's
    copy when one-click unsubscribe is on (`url` holds `{token}`)."""
    link = url.replace("{token}", make_token(lst, member))
    return (f"List-Unsubscribe: <{link}>, <mailto:{lst.at('-unsubscribe')}>\r\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode()


def unsubscribe(token: str, store: ListStore) -> tuple[str, str] | None:
    """Remove the member the token names from its list: (list, member), or
    None when the token is malformed, forged, or the member is gone already.
    Blocking (sqlite): call it from a worker thread."""
    parsed = read_token(token)
    if parsed is None:
        return None
    address, member, mac = parsed
    lst = store.get(address)
    if lst is None or not hmac.compare_digest(mac, _mac(lst.secret, address, member)):
        return None
    if store.remove_members(lst.address, [member]) == 0:
        return None
    return lst.address, member
