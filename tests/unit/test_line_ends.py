"""line_ends: bare LF found and converted across chunk boundaries."""

from __future__ import annotations

import os
import re

import pytest

from pillarbox.store import line_ends


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_conversion_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(line_ends, "CHUNK", chunk)
    for sub in ("cur", "tmp"):
        (tmp_path / sub).mkdir()
    raw = b"a\r\nb\nc\r\r\n\n\r\nd\r\n\ne"
    f = tmp_path / "cur" / "1.x,S=17:2,S"
    f.write_bytes(raw)
    os.utime(f, (1000, 1000))
    assert line_ends.has_bare_lf(f)
    name, st = line_ends.to_crlf(tmp_path, f.name, f.stat())
    want = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    got = (tmp_path / "cur" / name).read_bytes()
    assert got == want
    assert name == f"1.x,S={len(want)}:2,S" and not f.exists()
    assert st.st_mtime == 1000 and st.st_size == len(want)
    assert not line_ends.has_bare_lf(tmp_path / "cur" / name)
    assert line_ends.to_crlf(tmp_path, name, st) is None
    assert os.listdir(tmp_path / "tmp") == []
