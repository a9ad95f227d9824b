"""RFC 8437 UNAUTHENTICATE: back to the not-authenticated state on the same
connection, the selected mailbox left without an expunge."""

from __future__ import annotations

from .imap_raw import RawIMAP
from .support import ALICE, BOB, PASSWORD, make_message


def test_unauthenticate_then_log_in_as_another_user(server):
    with RawIMAP(server.imaps_port, ALICE) as c:
        untagged, _ = c.ok("CAPABILITY")
        assert b"UNAUTHENTICATE" in untagged[0].split()
        c.append("INBOX", make_message(BOB, ALICE, "kept"), "\\Deleted")
        c.ok("SELECT INBOX")
        _, tagged = c.ok("UNAUTHENTICATE")
        # not authenticated: commands of that state only
        _, tagged = c.cmd("SELECT INBOX")
        assert tagged.startswith(b"BAD"), tagged
        _, tagged = c.cmd("FETCH 1 FLAGS")
        assert tagged.startswith(b"BAD"), tagged
        untagged, _ = c.ok("CAPABILITY")
        assert b"AUTH=PLAIN" in untagged[0].split()
        c.ok(f'LOGIN "{BOB}" "{PASSWORD}"')
        untagged, _ = c.ok("STATUS INBOX (MESSAGES)")
        assert b"MESSAGES 0" in untagged[0]  # bob's mailbox, not alice's
        _, tagged = c.ok("UNAUTHENTICATE")
        c.ok(f'LOGIN "{ALICE}" "{PASSWORD}"')
        untagged, _ = c.ok("STATUS INBOX (MESSAGES)")
        assert b"MESSAGES 1" in untagged[0]  # no expunge when it left the mailbox


def test_unauthenticate_needs_a_login_and_no_arguments(server):
    with RawIMAP(server.imaps_port) as c:
        _, tagged = c.cmd("UNAUTHENTICATE")
        assert tagged.startswith(b"BAD"), tagged
    with RawIMAP(server.imaps_port, ALICE) as c:
        _, tagged = c.cmd("UNAUTHENTICATE now")
        assert tagged.startswith(b"BAD"), tagged
        c.ok("NOOP")  # still logged in
        c.ok("SELECT INBOX")
