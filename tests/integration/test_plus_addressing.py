"""Plus-addressing: alice+anything@ reaches alice, over SMTP.

[delivery] recipient_delimiter (default "+", "" off) splits the local part;
an existing user or alias with the full name wins. [delivery] detail_folder
(off | existing | create) files the message into the folder the detail names.
"""

from __future__ import annotations

import pytest

from .pg_server import BACKENDS
from .support import ALICE, BOB, assert_reply, make_message, parse, token, wait_until

# The directory (users, aliases) on SQLite and on PostgreSQL (issue 19).
pytestmark = pytest.mark.parametrize("storage", BACKENDS, indirect=True)

SENDER = "sender@remote.test"


def _send(server, rcpt: str) -> str:
    tok = token()
    with server.smtp() as s:
        refused = s.sendmail(SENDER, [rcpt], make_message(SENDER, rcpt, tok))
    assert refused == {}, refused
    return tok


def _rcpt(server, rcpt: str):
    with server.smtp() as s:
        s.mail(SENDER)
        return s.rcpt(rcpt)


def _files(path):
    out = []
    for sub in ("new", "cur"):
        if (path / sub).is_dir():
            out += [f.read_bytes() for f in sorted((path / sub).iterdir())]
    return out


def _subjects_in(path) -> list[str]:
    return [parse(raw)["Subject"] for raw in _files(path)]


def test_plus_address_reaches_the_user_and_keeps_delivered_to(server):
    tok = _send(server, "alice+shopping@example.test")
    (raw,) = server.wait_for_messages(ALICE, 1)
    msg = parse(raw)
    assert msg["Subject"] == tok
    assert msg["Delivered-To"] == "alice+shopping@example.test"
    # A detail on an address nobody has is still unknown; so is an empty base.
    assert_reply(_rcpt(server, "nobody+x@example.test"), 550, "5.1.1")
    assert_reply(_rcpt(server, "+x@example.test"), 550, "5.1.1")
    # Without detail_folder no folder is made.
    assert not (server.maildir(ALICE) / ".shopping").exists()


def test_an_exact_user_or_alias_wins_over_the_delimiter(server):
    server.add_user("alice+vip@example.test")
    server.add_alias("alice+team@example.test", BOB)
    tok_vip = _send(server, "alice+vip@example.test")
    tok_team = _send(server, "alice+team@example.test")
    (raw,) = server.wait_for_messages("alice+vip@example.test", 1)
    assert parse(raw)["Subject"] == tok_vip
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok_team
    wait_until(lambda: server.queue_list() == [], 10, "the queue to drain")
    assert server.messages(ALICE) == []


def test_plus_address_to_an_alias_follows_the_alias(server):
    server.add_alias("sales@example.test", BOB)
    tok = _send(server, "sales+web@example.test")
    (raw,) = server.wait_for_messages(BOB, 1)
    assert parse(raw)["Subject"] == tok


def test_delimiter_is_a_setting_and_empty_turns_it_off(make_server):
    srv = make_server({"delivery.recipient_delimiter": ""})
    assert_reply(_rcpt(srv, "alice+shopping@example.test"), 550, "5.1.1")
    srv2 = make_server({"delivery.recipient_delimiter": "-"})
    assert_reply(_rcpt(srv2, "alice+shopping@example.test"), 550, "5.1.1")
    tok = _send(srv2, "alice-shopping@example.test")
    (raw,) = srv2.wait_for_messages(ALICE, 1)
    assert parse(raw)["Subject"] == tok
    assert parse(raw)["Delivered-To"] == "alice-shopping@example.test"
    # A reload applies a new delimiter at once.
    srv.config["delivery"]["recipient_delimiter"] = "+"
    srv.write_config()
    assert srv.cli_ok("reload").stdout.strip() == "ok"
    assert_reply(_rcpt(srv, "alice+shopping@example.test"), 250, "2.1.5")


def test_detail_folder_existing_files_into_an_existing_folder_only(make_server):
    srv = make_server({"delivery.detail_folder": "existing"})
    c = srv.imap(ALICE)  # the first login makes INBOX and the special-use folders
    assert c.create("Shopping")[0] == "OK"
    c.logout()
    md = srv.maildir(ALICE)
    tok = _send(srv, "alice+shopping@example.test")  # matched case-insensitively
    wait_until(lambda: _subjects_in(md / ".Shopping") == [tok], 10, "mail in .Shopping")
    # No such folder, a special-use one, a name that is no mailbox name: INBOX.
    toks = [_send(srv, f"alice+{d}@example.test") for d in ("nosuch", "trash", "a/b")]
    srv.wait_for_messages(ALICE, 3)
    assert sorted(_subjects_in(md)) == sorted(toks)
    assert not (md / ".nosuch").exists()
    assert _subjects_in(md / ".Trash") == []
    # IMAP sees it there.
    c = srv.imap(ALICE)
    typ, data = c.select("Shopping")
    assert typ == "OK" and data == [b"1"], data
    c.logout()


def test_detail_folder_create_makes_the_folder(make_server):
    srv = make_server({"delivery.detail_folder": "create"})
    c = srv.imap(ALICE)
    c.select("INBOX")  # a session holds the store open while the folder is made
    tok = _send(srv, "alice+newsletters@example.test")
    md = srv.maildir(ALICE)
    wait_until(lambda: _subjects_in(md / ".newsletters") == [tok], 10, "mail in .newsletters")
    assert (md / ".newsletters" / "maildirfolder").exists()
    typ, data = c.list()
    assert typ == "OK" and any(b'"newsletters"' in d or d.endswith(b" newsletters")
                               for d in data), data
    typ, data = c.select("newsletters")
    assert typ == "OK" and data == [b"1"], data
    c.logout()


def test_plus_address_of_a_disabled_user_is_refused(server):
    server.cli_ok("user", "disable", ALICE)
    assert_reply(_rcpt(server, "alice+x@example.test"), 550, "5.2.1")


def test_plus_address_of_a_full_mailbox_is_deferred_at_rcpt(server):
    carol = "carol@example.test"
    server.add_user(carol, quota="1K")
    with server.smtp() as s:
        body = "x" * 900 + "\r\n" + "y" * 900
        s.sendmail(SENDER, [carol], make_message(SENDER, carol, "fill", body=body))
    server.wait_for_messages(carol, 1)
    # Usage is counted when the delivery is done; the RCPT check sees it then.
    wait_until(lambda: _rcpt(server, carol)[0] == 452, 10, "carol's mailbox to count as full")
    assert_reply(_rcpt(server, "carol+x@example.test"), 452, "4.2.2")
