"""directory/chatmail_accounts.py: who may be made on login, new_account()
(for the HTTP endpoint's POST /new), device tokens, the last login's day."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from pillarbox.config import ChatmailSettings
from pillarbox.directory import chatmail_accounts as ca
from pillarbox.directory.users import DirectoryError, Users
from pillarbox.store.sqlite import Database


@pytest.fixture
def env(tmp_path):
    db = Database(tmp_path / "pillarbox.db")
    config = SimpleNamespace(chatmail=ChatmailSettings(), domains=["example.test"],
                             data_dir=tmp_path, is_local_domain=lambda d: d == "example.test")
    return Users(db), config


def test_who_may_be_made(env):
    users, config = env
    acc = ca.Accounts(users, config)
    assert acc.why_not("abcdefg12@example.test", "123456789") is None
    assert acc.why_not("abcdefg12@example.net", "123456789") == "not a served domain"
    assert acc.why_not("abcdefg1@example.test", "123456789") == "local part length"
    assert acc.why_not("abcd+fg12@example.test", "123456789") == "local part characters"
    assert acc.why_not("abcdefg12@example.test", "12345678") == "password too short"
    config.chatmail.min_free_disk = 1 << 62
    assert acc.why_not("abcdefg12@example.test", "123456789") == "too little free disk"


def test_new_account(env):
    users, config = env
    address, password = ca.new_account(users, config)
    assert re.fullmatch(r"[a-z0-9]{9}@example\.test", address)
    assert len(password) >= 20
    assert users.authenticate(address, password) == address
    assert users.get(address).quota == 500 * 1024**2
    assert ca.last_logins(users.db)[address] % 86400 == 0
    config.chatmail.min_free_disk = 1 << 62
    with pytest.raises(DirectoryError):
        ca.new_account(users, config)


def test_tokens(env):
    users, _ = env
    db, a = users.db, "abcdefg12@example.test"
    for i in range(ca.MAX_TOKENS + 5):
        ca.add_token(db, a, f"t{i}", 1000 + i)
    found = ca.tokens(db, a, 2000)
    assert len(found) == ca.MAX_TOKENS and "t0" not in found and f"t{ca.MAX_TOKENS + 4}" in found
    assert ca.tokens(db, a, 1000 + ca.TOKEN_LIFETIME + 10) == [
        f"t{i}" for i in range(11, ca.MAX_TOKENS + 5)]
    ca.remove_token(db, a, "t24")
    assert "t24" not in ca.tokens(db, a, 2000)
    ca.forget(db, a)
    assert ca.tokens(db, a, 2000) == []


def test_login_day_written_once_a_day(env):
    users, config = env
    now = [86400 * 100 + 5000.0]
    acc = ca.Accounts(users, config, clock=lambda: now[0])
    acc.logged_in("abcdefg12@example.test")
    assert ca.last_logins(users.db)["abcdefg12@example.test"] == 86400 * 100
    now[0] += 86400
    acc.logged_in("abcdefg12@example.test")
    assert ca.last_logins(users.db)["abcdefg12@example.test"] == 86400 * 101
