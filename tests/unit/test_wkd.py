"""The WKD hash: the draft's own example, and only ASCII letters lower-cased."""

from pillarbox.endpoint.http.wkd import local_hash, zbase32


def test_the_drafts_example() -> None:
    # draft-koch-openpgp-webkey-service, section 3.1: Joe.Doe@Example.ORG
    assert local_hash("Joe.Doe") == "iy9q119eutrkn8s1mk4r39qejnbu3n5q"


def test_zbase32() -> None:
    assert zbase32(b"") == ""
    assert zbase32(b"\x00") == "yy"
    assert zbase32(b"\xff") == "9h"  # 11111 111(00): the last group padded with zeros
    assert len(zbase32(bytes(20))) == 32


def test_non_ascii_is_not_lower_cased() -> None:
    assert local_hash("JÖRG") == local_hash("jÖrg") != local_hash("jörg")
