"""The example configs of docs/MODULES.md by their heading, so that a test runs
the doc's own text and the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "MODULES.md"


def example(title: str) -> str:
    """The ```toml block under the heading `### Example: TITLE`."""
    text = DOC.read_text()
    m = re.search(rf"^### Example: {re.escape(title)}\n(.*?)(?=^#)", text, re.S | re.M)
    assert m, f"docs/MODULES.md has no section '### Example: {title}'"
    blocks = re.findall(r"```toml\n(.*?)```", m.group(1), re.S)
    assert len(blocks) == 1, f"'### Example: {title}' should hold one toml block"
    return blocks[0]


def replaced(text: str, old: str, new: str) -> str:
    """`text` with `old` (which must be there) made `new`: the doc's placeholder
    host or address pointed at the test's own server."""
    assert old in text, f"the example no longer says {old!r}:\n{text}"
    return text.replace(old, new)
