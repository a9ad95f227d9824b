"""The address-to-Maildir mapping is one-to-one and keeps ordinary names."""

from __future__ import annotations

import itertools
from pathlib import Path

from pillarbox.target.mailbox import maildir_path, migrate_paths, path_name

ROOT = Path("/m")


def test_ordinary_names_stay_as_they_are():
    assert maildir_path(ROOT, "Alice.Smith+tag@Example.org") == ROOT / "example.org" / \
        "alice.smith+tag"


def test_no_two_local_parts_share_a_directory():
    alphabet = ["a", "/", "%", "2", "f", ".", "\0", "5"]
    parts = {"".join(p) for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)}
    names = {}
    for part in parts:
        name = path_name(part)
        assert "/" not in name and "\0" not in name and name not in (".", ".."), part
        assert names.setdefault(name, part) == part, f"{part!r} and {names[name]!r} -> {name}"


def test_shared_old_directory_is_left_for_the_operator(tmp_path):
    mail = tmp_path / "mail"
    (mail / "example.org" / "a%2fb").mkdir(parents=True)  # a/b's and a%2fb's, mixed
    (mail / "example.org" / "c%d").mkdir()  # c%d's alone
    renamed, conflicts = migrate_paths(
        mail, ["a/b@example.org", "a%2fb@example.org", "c%d@example.org"])
    assert renamed == [(mail / "example.org" / "c%d", mail / "example.org" / "c%25d")]
    assert [old.name for old, _ in conflicts] == ["a%2fb"]
    assert (mail / "example.org" / "a%2fb").is_dir()
    assert migrate_paths(mail, ["c%d@example.org"]) == ([], [])  # done once
