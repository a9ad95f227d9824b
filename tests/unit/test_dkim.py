import base64
import re
import stat
import threading
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pillarbox.modify import dkim_sign
from pillarbox.modify.dkim_sign import DKIMSigner, generate_keys, txt_records

DOMAIN = "example.test"
MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@remote.test>\r\n"
    b"Cc: carol@remote.test\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <abc.123@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the numbers are attached.\r\n"
)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "dkim"
    assert len(generate_keys(d, DOMAIN)) == 2
    return d


def dnsfunc_for(dkim_dir: Path, domain: str = DOMAIN):
    published = {f"{name}.{domain}.": value.encode() for name, value in
                 txt_records(dkim_dir, domain)}
    asked = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        asked.append(name.decode())
        return published.get(name.decode())

    dnsfunc.asked = asked
    return dnsfunc


def verify_all(message: bytes, dnsfunc) -> list[bool]:
    d = dkim.DKIM(message)
    n = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    return [_verify(message, i, dnsfunc) for i in range(n)]


def _verify(message: bytes, idx: int, dnsfunc) -> bool:
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException:  # e.g. body hash mismatch (dkim.verify() does the same)
        return False


def tags(sig_field: bytes) -> dict[str, str]:
    value = sig_field.split(b":", 1)[1].decode()
    value = re.sub(r"\s+", "", value)
    return dict(p.split("=", 1) for p in value.split(";") if p)


def split_fields(header_block: bytes) -> list[bytes]:
    return [b"DKIM-Signature:" + f for f in header_block.split(b"DKIM-Signature:")[1:]]


# -- keys ---------------------------------------------------------------------

def test_generate_keys_makes_two_private_files(tmp_path: Path) -> None:
    d = tmp_path / "dkim"
    made = generate_keys(d, DOMAIN)
    assert len(made) == 2
    assert re.fullmatch(r"\d{6}e", made[0]) and re.fullmatch(r"\d{6}r", made[1])
    assert made[0][:6] == made[1][:6]
    for sel in made:
        f = d / DOMAIN / f"{sel}.key"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((d / DOMAIN).stat().st_mode) == 0o700
    kinds = {k.selector: k.kind for k in dkim_sign.load_keys(d, DOMAIN)}
    assert kinds == {made[0]: "ed25519", made[1]: "rsa"}
    rsa_key = serialization.load_pem_private_key((d / DOMAIN / f"{made[1]}.key").read_bytes(),
                                                 None)
    assert rsa_key.key_size == 2048
    assert not [p for p in (d / DOMAIN).iterdir() if p.name.startswith(".")], "temp file left"


def test_generate_keys_never_overwrites(tmp_path: Path) -> None:
    d = tmp_path / "dkim"
    made = generate_keys(d, DOMAIN)
    before = {p.name: p.read_bytes() for p in (d / DOMAIN).iterdir()}
    assert generate_keys(d, DOMAIN) == []
    assert {p.name: p.read_bytes() for p in (d / DOMAIN).iterdir()} == before

    # an unusable file that has the name a new key would take is left alone too
    other = tmp_path / "other"
    (other / DOMAIN).mkdir(parents=True)
    squatter = other / DOMAIN / f"{made[1]}.key"
    squatter.write_bytes(b"not a key\n")
    created = generate_keys(other, DOMAIN)
    assert created == [made[0]]
    assert squatter.read_bytes() == b"not a key\n"


def test_txt_records(keys: Path) -> None:
    recs = txt_records(keys, DOMAIN)
    assert len(recs) == 2
    by_kind = {}
    for name, value in recs:
        assert re.fullmatch(r"\d{6}[er]\._domainkey", name)
        m = re.fullmatch(r"v=DKIM1; k=(ed25519|rsa); p=([A-Za-z0-9+/=]+)", value)
        assert m, value
        by_kind[m.group(1)] = base64.b64decode(m.group(2))
    assert len(by_kind["ed25519"]) == 32
    serialization.load_der_public_key(by_kind["rsa"])  # a SubjectPublicKeyInfo
    assert txt_records(keys, "nokeys.test") == []


def test_other_key_formats_are_read(tmp_path: Path) -> None:
    d = tmp_path / "dkim" / DOMAIN
    d.mkdir(parents=True)
    pk8 = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (d / "rsa8.key").write_bytes(pk8)
    ed_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (d / "edpem.key").write_bytes(ed_pem)
    (d / "broken.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n"
                                   b"-----END PRIVATE KEY-----\n")
    (d / "notes.txt").write_text("ignored")
    keys = dkim_sign.load_keys(tmp_path / "dkim", DOMAIN)
    assert {(k.selector, k.kind) for k in keys} == {("rsa8", "rsa"), ("edpem", "ed25519")}
    msg = DKIMSigner(tmp_path / "dkim").sign(MESSAGE, DOMAIN)
    assert verify_all(msg + MESSAGE, dnsfunc_for(tmp_path / "dkim")) == [True, True]


# -- signing ------------------------------------------------------------------

def test_sign_both_algorithms_and_verify(keys: Path) -> None:
    header = DKIMSigner(keys).sign(MESSAGE, DOMAIN)
    fields = split_fields(header)
    assert len(fields) == 2
    t = [tags(f) for f in fields]
    assert [x["a"] for x in t] == ["ed25519-sha256", "rsa-sha256"]
    for x in t:
        assert x["c"] == "relaxed/relaxed"
        assert x["d"] == DOMAIN
    dnsfunc = dnsfunc_for(keys)
    assert verify_all(header + MESSAGE, dnsfunc) == [True, True]
    selectors = {x["s"] for x in t}
    assert {a.split(".")[0] for a in dnsfunc.asked} == selectors


def test_signed_header_list_and_oversigning(keys: Path) -> None:
    header = DKIMSigner(keys).sign(MESSAGE, DOMAIN)
    h = tags(split_fields(header)[0])["h"].split(":")
    for name in ("from", "to", "subject", "date"):
        assert h.count(name) == 2, name  # present once, signed twice
    for name in ("cc", "message-id", "mime-version", "content-type"):
        assert h.count(name) == 1, name
    assert "x-mailer" not in h
    assert h.count("reply-to") == 0  # absent and not oversigned


def test_crlf_line_ends(keys: Path) -> None:
    header = DKIMSigner(keys).sign(MESSAGE, DOMAIN)
    assert header.startswith(b"DKIM-Signature: ") and header.endswith(b"\r\n")
    assert b"\n" not in header.replace(b"\r\n", b"")
    assert b"\r" not in header.replace(b"\r\n", b"")
    for line in header.split(b"\r\n")[:-1]:
        assert line.startswith((b"DKIM-Signature:", b" ", b"\t")), line


@pytest.mark.parametrize("change", [
    lambda m: m.replace(b"Subject: quarterly numbers", b"Subject: quarterly numberz"),
    lambda m: m.replace(b"the numbers", b"THE numbers"),
    lambda m: m.replace(b"\r\n\r\n", b"\r\nSubject: injected\r\n\r\n", 1),
    lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: ceo@example.test\r\n\r\n", 1),
    lambda m: m.replace(b"\r\n\r\n", b"\r\nTo: eve@remote.test\r\n\r\n", 1),
    lambda m: m.replace(b"\r\n\r\n", b"\r\nDate: Tue, 03 Nov 2026 10:00:00 +0000\r\n\r\n", 1),
], ids=["subject", "body", "added-subject", "added-from", "added-to", "added-date"])
def test_tampering_fails_both(keys: Path, change) -> None:
    header = DKIMSigner(keys).sign(MESSAGE, DOMAIN)
    tampered = change(header + MESSAGE)
    assert tampered != header + MESSAGE
    assert verify_all(tampered, dnsfunc_for(keys)) == [False, False]


def test_relaxed_survives_harmless_changes(keys: Path) -> None:
    header = DKIMSigner(keys).sign(MESSAGE, DOMAIN)
    m = header + MESSAGE
    m = m.replace(b"Subject: quarterly numbers", b"subject:   quarterly\r\n   numbers")
    m = b"Received: from relay\r\n\tby next.hop; Mon, 2 Nov 2026 10:00:01 +0000\r\n" + m
    m = m.replace(b"\r\n\r\n", b"\r\nX-Spam-Score: 0\r\n\r\n", 1)  # unsigned field added
    m += b"\r\n\r\n"  # trailing empty lines
    assert verify_all(m, dnsfunc_for(keys)) == [True, True]


def test_lf_only_message_and_missing_headers(keys: Path) -> None:
    msg = b"From: a@example.test\nSubject: x\n\nbody\n"
    header = DKIMSigner(keys).sign(msg, DOMAIN)
    assert len(split_fields(header)) == 2
    wire = header + msg.replace(b"\n", b"\r\n")
    assert verify_all(wire, dnsfunc_for(keys)) == [True, True]
    # To and Date were absent: signed as absent, so adding one breaks the signature
    added = wire.replace(b"\r\n\r\n", b"\r\nTo: x@y.test\r\n\r\n", 1)
    assert verify_all(added, dnsfunc_for(keys)) == [False, False]


def test_no_keys_no_signature(tmp_path: Path, keys: Path) -> None:
    assert DKIMSigner(keys).sign(MESSAGE, "other.test") == b""
    assert DKIMSigner(tmp_path / "missing").sign(MESSAGE, DOMAIN) == b""


def test_keys_added_later_are_picked_up(tmp_path: Path) -> None:
    d = tmp_path / "dkim"
    signer = DKIMSigner(d)
    assert signer.sign(MESSAGE, DOMAIN) == b""
    generate_keys(d, DOMAIN)
    header = signer.sign(MESSAGE, DOMAIN)
    assert verify_all(header + MESSAGE, dnsfunc_for(d)) == [True, True]


def test_cache_and_newest_key_per_kind(keys: Path) -> None:
    signer = DKIMSigner(keys)
    first = signer.keys(DOMAIN)
    assert signer.keys(DOMAIN) is first  # cached
    assert [k.kind for k in first] == ["ed25519", "rsa"]
    newer = ed25519.Ed25519PrivateKey.generate().private_bytes_raw()
    (keys / DOMAIN / "999912e.key").write_bytes(base64.b64encode(newer))
    second = signer.keys(DOMAIN)
    assert [k.selector for k in second] == ["999912e", first[1].selector]
    t = [tags(f) for f in split_fields(signer.sign(MESSAGE, DOMAIN))]
    assert [x["s"] for x in t] == ["999912e", first[1].selector]


def test_malformed_message_is_left_unsigned(keys: Path) -> None:
    assert DKIMSigner(keys).sign(b"this is not a header\r\n\r\nbody\r\n", DOMAIN) == b""


def test_unicode_domain_signs_with_a_label(tmp_path: Path) -> None:
    d = tmp_path / "dkim"
    generate_keys(d, "bücher.test")
    header = DKIMSigner(d).sign(MESSAGE, "bücher.test")
    assert {tags(f)["d"] for f in split_fields(header)} == {"xn--bcher-kva.test"}
    published = {f"{n}.xn--bcher-kva.test.": v.encode() for n, v in txt_records(d, "bücher.test")}
    assert verify_all(header + MESSAGE,
                      lambda name, timeout=5: published.get(name.decode())) == [True, True]


def test_thread_safe(keys: Path) -> None:
    signer = DKIMSigner(keys)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                msg = MESSAGE.replace(b"quarterly", f"q{i}-{j}".encode())
                results.append(signer.sign(msg, DOMAIN) + msg)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 40
    dnsfunc = dnsfunc_for(keys)
    assert all(verify_all(m, dnsfunc) == [True, True] for m in results)


def test_plain_dkimpy_rsa_signing_unchanged(keys: Path) -> None:
    """The OpenSSL shortcut applies to our keys only; dkimpy's own path still works."""
    rsa_sel = next(k.selector for k in dkim_sign.load_keys(keys, DOMAIN) if k.kind == "rsa")
    pem = bytes((keys / DOMAIN / f"{rsa_sel}.key").read_bytes())
    sig = dkim.sign(MESSAGE, rsa_sel.encode(), DOMAIN.encode(), pem,
                    canonicalize=(b"relaxed", b"relaxed"))
    assert verify_all(sig + MESSAGE, dnsfunc_for(keys)) == [True]


def test_sign_with_in_a_worker_process(keys: Path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1) as pool:
        header = pool.submit(dkim_sign.sign_with, str(keys), MESSAGE, DOMAIN).result(timeout=60)
    assert verify_all(header + MESSAGE, dnsfunc_for(keys)) == [True, True]
