"""The mailing list pieces without a server: addresses and VERP, DSN reading,
the list copy, one-click tokens, the store."""

from __future__ import annotations

from pathlib import Path

from pillarbox.lists import addresses, bounces, compose, unsubscribe
from pillarbox.lists.store import ListError, ListStore
from pillarbox.store.sqlite import Database

LISTS = {"team@example.org"}


def _role(rcpt: str):
    return addresses.parse(rcpt, LISTS.__contains__)


def test_addresses_of_a_list() -> None:
    assert _role("Team@Example.org") == addresses.Role("team@example.org", "post")
    assert _role("team-request@example.org").kind == "request"
    assert _role("team-unsubscribe@example.org").kind == "unsubscribe"
    assert _role("team+approve-ab12@example.org") == addresses.Role(
        "team@example.org", "approve", "ab12")
    assert _role("team+bounces-a=b=example.net@example.org").arg == "a=b@example.net"
    assert _role("team+bounces@example.org") == addresses.Role("team@example.org", "bounces")
    for other in ("bob@example.org", "team+x@example.org", "team+approve-@example.org",
                  "team+confirm-a.b@example.org", "@example.org", "team@", "", "team-x@example.org",
                  "team+bounces-nodomain@example.org"):
        role = _role(other)
        assert role is None or (role.kind == "bounces" and role.arg == ""), other


def test_verp_round_trip_and_fallback() -> None:
    v = addresses.verp("team@example.org", "alice@example.net")
    assert v == "team+bounces-alice=example.net@example.org"
    assert _role(v).arg == "alice@example.net"
    long = "x" * 60 + "@example.net"
    assert addresses.verp("team@example.org", long) == "team+bounces@example.org"


def test_dsn_final_recipients() -> None:
    dsn = (b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
           b"Final-Recipient: rfc822; Bob@Example.net\r\nAction: failed\r\n\r\n"
           b"Final-Recipient: rfc822;carol@example.net\r\nAction: delayed\r\n")
    assert bounces.failed_recipients(dsn) == ["bob@example.net"]
    assert bounces.failed_recipients(b"\xff" * 1000) == []


def _store(tmp_path: Path) -> ListStore:
    s = ListStore(Database(tmp_path / "db.sqlite"))
    s.create("team@example.org", "Team", ["alice@example.org"])
    return s


def test_copy_keeps_the_message_and_adds_list_fields(tmp_path: Path) -> None:
    lst = _store(tmp_path).get("team@example.org")
    post = (b"From: Bob <bob@example.net>\r\nSubject: hi\r\nList-Id: <other.example>\r\n"
            b"\r\nbody\r\n")
    out = compose.list_copy(lst, post, rewrite_from=False)
    assert out.endswith(b"From: Bob <bob@example.net>\r\nSubject: hi\r\n\r\nbody\r\n")
    assert b'List-Id: "Team" <team.example.org>\r\n' in out
    assert b"other.example" not in out
    rewritten = compose.list_copy(lst, post, rewrite_from=True)
    assert b'From: "Bob via Team" <team@example.org>\r\n' in rewritten
    assert b"Reply-To: Bob <bob@example.net>\r\n" in rewritten
    quoted = compose.list_copy(lst, b'From: "A \\"q\\"" <a@x.test>\r\n\r\n', True)
    assert b'From: "A \\"q\\" via Team" <team@example.org>' in quoted
    assert compose.carries_list_id(compose.split(out)[0], lst)


def test_one_click_tokens(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_members("team@example.org", ["bob@example.net"])
    lst = store.get("team@example.org")
    tok = unsubscribe.make_token(lst, "bob@example.net")
    moved = unsubscribe.make_token(lst, "eve@example.net").split(".")[0] + "." + \
        tok.split(".")[1]  # bob's mac on eve's name
    store.add_members("team@example.org", ["eve@example.net"])
    assert unsubscribe.unsubscribe(moved, store) is None
    store.remove_members("team@example.org", ["eve@example.net"])
    assert unsubscribe.unsubscribe(tok[:-1] + ("a" if tok[-1] != "a" else "b"), store) is None
    for junk in ("", ".", "\x00.\x00", "a" * 1000, "!!!.x"):
        assert unsubscribe.unsubscribe(junk, store) is None
    assert unsubscribe.unsubscribe(tok, store) == ("team@example.org", "bob@example.net")
    assert store.members("team@example.org") == []


def test_settings_are_validated(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for key, value in (("policy", "everyone"), ("max_size", "-1"), ("nope", "1"),
                       ("reply_to", "sender"), ("name", "a\r\nb")):
        try:
            store.set("team@example.org", key, value)
        except ListError:
            continue
        raise AssertionError(f"{key}={value!r} was taken")
    store.set("team@example.org", "moderators", "A@example.org, b@example.org")
    assert store.get("team@example.org").moderators == ["a@example.org", "b@example.org"]


def test_only_one_of_two_bounces_handled_at_once_disables_a_member(tmp_path: Path) -> None:
    """Bounces are handled in worker threads: two for one member may both reach the
    limit; only the one that changes the row disables the member and tells the
    owners (the other would send a second notice)."""
    store = _store(tmp_path)
    store.add_members("team@example.org", ["carol@example.net"])
    assert store.disable("team@example.org", "carol@example.net") is True
    assert store.disable("team@example.org", "carol@example.net") is False
    assert dict(store.members("team@example.org"))["carol@example.net"] is False
    assert store.disable("team@example.org", "nobody@example.net") is False
    store.set_enabled("team@example.org", "carol@example.net", True)
    assert store.disable("team@example.org", "carol@example.net") is True
