from pathlib import Path

import pytest

from pillarbox import route
from pillarbox.directory.aliases import Aliases
from pillarbox.directory.users import DirectoryError, Users
from pillarbox.store.sqlite import Database


@pytest.fixture
def directory(tmp_path: Path) -> Aliases:
    db = Database(tmp_path / "db.sqlite")
    users = Users(db)
    for u in ("alice", "bob", "carol"):
        users.add(f"{u}@example.test", "pw")
    return Aliases(db, users, ["example.test"])


def test_plain_user_and_unknown(directory: Aliases) -> None:
    assert directory.expand("alice@example.test").local == ["alice@example.test"]
    x = directory.expand("nobody@example.test")
    assert x.empty and x.unknown == ["nobody@example.test"]


def test_fan_out_cascade_and_dedup(directory: Aliases) -> None:
    directory.add("team@example.test", ["alice@example.test", "staff@example.test"])
    directory.add("staff@example.test", ["bob@example.test", "alice@example.test"])
    x = directory.expand("team@example.test")
    assert sorted(x.local) == ["alice@example.test", "bob@example.test"]


def test_remote_and_command_targets(directory: Aliases) -> None:
    directory.add("fwd@example.test", ["someone@remote.test", "|cat > /dev/null"])
    x = directory.expand("fwd@example.test")
    assert x.remote == ["someone@remote.test"]
    assert x.commands == ["cat > /dev/null"]


def test_loop_is_detected(directory: Aliases) -> None:
    directory.add("a@example.test", ["b@example.test"])
    directory.add("b@example.test", ["a@example.test"])
    x = directory.expand("a@example.test")
    assert x.empty and x.loop


def test_loop_with_a_real_target_still_delivers(directory: Aliases) -> None:
    directory.add("a@example.test", ["b@example.test", "carol@example.test"])
    directory.add("b@example.test", ["a@example.test"])
    x = directory.expand("a@example.test")
    assert x.local == ["carol@example.test"]


def test_catch_all(directory: Aliases) -> None:
    directory.add("@example.test", ["carol@example.test"])
    assert directory.expand("anything@example.test").local == ["carol@example.test"]
    # A real user still gets its own mail.
    assert directory.expand("bob@example.test").local == ["bob@example.test"]


def test_disabled_user(directory: Aliases) -> None:
    directory.users.set_enabled("bob@example.test", False)
    x = directory.expand("bob@example.test")
    assert x.empty and x.disabled == ["bob@example.test"]


def test_route_expand_drops_dead_alias_targets_and_records_failures(directory: Aliases) -> None:
    directory.add("list@example.test", ["alice@example.test", "ghost@example.test",
                                        "bob@example.test"])
    directory.users.set_enabled("bob@example.test", False)
    ds = route.expand(directory, ["list@example.test", "x@remote.test", "gone@example.test"])
    kinds = {(d.kind, d.to, d.state) for d in ds}
    assert ("local", "alice@example.test", "pending") in kinds
    assert ("remote", "x@remote.test", "pending") in kinds
    # Behind an alias, an unknown or disabled target is dropped (no bounce to a
    # possibly forged sender); an accepted recipient that vanished still fails.
    assert not any(d.to in ("ghost@example.test", "bob@example.test") for d in ds), kinds
    assert ("local", "gone@example.test", "failed") in kinds


def test_bad_input(directory: Aliases) -> None:
    with pytest.raises(DirectoryError):
        directory.add("x@example.test", [])
    with pytest.raises(DirectoryError):
        directory.add("x@example.test", ["not an address"])
    for bad in ("|true\nrm -rf /", "|printf '\x1b[2J'", 'x"\x00"@example.test'):
        with pytest.raises(DirectoryError):
            directory.add("x@example.test", [bad])
    with pytest.raises(DirectoryError):
        directory.delete("nonexistent@example.test")
    with pytest.raises(DirectoryError):
        directory.users.add("alice@example.test", "pw")


def test_password_check(directory: Aliases) -> None:
    users = directory.users
    assert users.authenticate("Alice@Example.test", "pw") == "alice@example.test"
    assert users.authenticate("alice@example.test", "wrong") is None
    assert users.authenticate("nobody@example.test", "pw") is None
    assert users.authenticate("not an address", "pw") is None
    users.set_enabled("alice@example.test", False)
    assert users.authenticate("alice@example.test", "pw") is None


def test_password_check_cache(directory: Aliases, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated good login skips argon2; a changed password or a disabled user does not."""
    import asyncio

    from pillarbox.directory import passwords

    calls: list[str] = []
    real_verify = passwords.verify

    def counting_verify(password_hash: str | None, password: str) -> bool:
        calls.append(password)
        return real_verify(password_hash, password)

    monkeypatch.setattr(passwords, "verify", counting_verify)
    users = directory.users
    alice = "alice@example.test"

    async def run() -> None:
        assert await users.check_password("Alice@Example.test", "pw") == alice
        assert await users.check_password(alice, "pw") == alice
        assert calls == ["pw"]  # the second login came from the cache
        assert await users.check_password(alice, "wrong") is None
        assert await users.check_password(alice, "wrong") is None
        assert calls.count("wrong") == 2  # failures are never cached
        users.set_password(alice, "new")
        assert await users.check_password(alice, "pw") is None
        assert await users.check_password(alice, "new") == alice
        users.set_enabled(alice, False)
        assert await users.check_password(alice, "new") is None
        assert await users.check_password("nobody@example.test", "pw") is None
        assert await users.check_password("not an address", "pw") is None

    asyncio.run(run())


def test_older_password_hashes_still_work_and_are_replaced(directory: Aliases) -> None:
    """A hash with argon2-cffi's parameters (p=4, as written before) verifies, and
    a good login replaces it with the current one-lane hash."""
    import asyncio

    from argon2 import PasswordHasher

    from pillarbox.directory import passwords

    users = directory.users
    alice = "alice@example.test"
    old = PasswordHasher().hash("pw")
    assert ",p=4$" in old and passwords.needs_rehash(old)
    users.db.execute("UPDATE users SET password_hash = ? WHERE address = ?", (old, alice))
    assert users.authenticate(alice, "pw") == alice
    assert asyncio.run(users.check_password(alice, "wrong")) is None
    assert users._password_row(alice)[0] == old  # a failed login changes nothing
    assert asyncio.run(users.check_password(alice, "pw")) == alice
    new = users._password_row(alice)[0]
    assert new.startswith("$argon2id$v=19$m=65536,t=3,p=1$") and not passwords.needs_rehash(new)
    assert users.authenticate(alice, "pw") == alice
    assert users.authenticate(alice, "wrong") is None
    assert passwords.verify(None, "pw") is False


def test_bare_names_resolve_through_local_aliases(directory: Aliases) -> None:
    directory.add("ROOT", ["alice@example.test", "ops"])
    directory.add("mailer-daemon", ["postmaster"])
    directory.add("postmaster", ["root"])
    directory.add("loop-a", ["loop-b"])
    directory.add("loop-b", ["loop-a"])
    r = directory.resolve_local
    assert r("bob", "example.test") == ["bob@example.test"]
    assert r("Root", "example.test") == ["alice@example.test", "ops@example.test"]
    assert r("MAILER-DAEMON", "example.test") == ["alice@example.test", "ops@example.test"]
    assert r("Carol@Example.TEST", "example.test") == ["carol@example.test"]
    assert r("loop-a", "example.test") == ["loop-a@example.test"]
    # a local alias is not an address: SMTP mail to root@ is not affected
    assert directory.expand("root@example.test").unknown == ["root@example.test"]
    with pytest.raises(DirectoryError):
        directory.add("cron", ["|/bin/sh"])


def test_etc_aliases_format() -> None:
    from pillarbox.directory import aliases_file

    parsed = aliases_file.parse(
        "# comment\n\nroot: alice@example.test, \"bob\"\n"
        "  ,carol\n"
        "logs: |/usr/bin/logger, /var/log/mail, :include:/etc/list, dave\n"
        "not an entry\n"
        "bad name: x\n")
    assert parsed.aliases == {"root": ["alice@example.test", "bob", "carol"], "logs": ["dave"]}
    assert len(parsed.skipped) == 5, parsed.skipped


def test_plus_addressing_base_and_catch_all_order(directory: Aliases) -> None:
    x = directory.expand("alice+shop+more@example.test")
    assert x.local == ["alice@example.test"]
    assert x.via == {"alice@example.test": "alice+shop+more@example.test"}
    directory.add("@example.test", ["bob@example.test"])
    # The base comes before the catch-all; an unknown base falls to it.
    assert directory.expand("alice+x@example.test").local == ["alice@example.test"]
    assert directory.expand("nobody+x@example.test").local == ["bob@example.test"]
    assert directory.expand("nobody+x@example.test").via == {}
    directory.delimiter = "-+"
    assert directory.base_address("a-b+c@example.test") == "a@example.test"
    assert directory.base_address("+c@example.test") is None
    directory.delimiter = ""
    assert directory.expand("alice+x@example.test").local == ["bob@example.test"]
    deliveries = route.expand(directory, ["alice@example.test"])
    assert [d.via for d in deliveries] == [""]
