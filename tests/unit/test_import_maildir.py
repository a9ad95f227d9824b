"""store/import_maildir.py: Dovecot's uidlist, keywords and subscriptions files."""

from __future__ import annotations

from pathlib import Path

from pillarbox.store.import_maildir import read_keywords, read_subscriptions, read_uidlist


def test_uidlist_version_3_with_extension_fields(tmp_path: Path) -> None:
    p = tmp_path / "dovecot-uidlist"
    p.write_text("3 V1796511413 N9 G51a5bc20b396146bf205000083ecc375\n"
                 "1 :1796511411.M553631P1522.vm,S=147,W=153\n"
                 "4 W153 G0123 :1796511412.M1P2.vm,S=147,W=153:2,S\n"
                 "junk line\n")
    assert read_uidlist(p) == (1796511413, 9, {"1796511411.M553631P1522.vm,S=147,W=153": 1,
                                               "1796511412.M1P2.vm,S=147,W=153": 4})


def test_uidlist_version_1(tmp_path: Path) -> None:
    p = tmp_path / "dovecot-uidlist"
    p.write_text("1 1100000000 7\n3 1099999999.M1P1.host\n6 1099999999.M2P1.host\n")
    assert read_uidlist(p) == (1100000000, 7, {"1099999999.M1P1.host": 3,
                                               "1099999999.M2P1.host": 6})
    assert read_uidlist(tmp_path / "missing") is None


def test_keywords_and_subscriptions(tmp_path: Path) -> None:
    (tmp_path / "dovecot-keywords").write_text("0 Project\n1 $Forwarded\n30 TooFar\n")
    assert read_keywords(tmp_path / "dovecot-keywords") == {"a": "Project", "b": "$Forwarded"}
    (tmp_path / "subscriptions").write_text("V\t2\n\nLists\tpillarbox\nArchive\n")
    assert read_subscriptions(tmp_path / "subscriptions") == ["Lists.pillarbox", "Archive"]
    (tmp_path / "courier").write_text("INBOX.Sent\nWork\n")
    assert read_subscriptions(tmp_path / "courier") == ["Sent", "Work"]
