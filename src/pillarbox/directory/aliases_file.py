"""Read an /etc/aliases file (aliases(5)) into local aliases.

`name: target, target, ...`; a line starting with white space continues the
one before; `#` at the start of a line is a comment. Targets that are
addresses or bare names are kept; `|command`, `/file` and `:include:`
targets are returned as skipped, for the caller to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pillarbox.address import AddressError, is_bare_name, normalize


@dataclass
class Parsed:
    aliases: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "name: target (why)" lines


def _entries(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) with continuations joined and comments gone."""
    out: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        else:
            out.append((n, line.strip()))
    return out


def parse(text: str) -> Parsed:
    result = Parsed()
    for n, entry in _entries(text):
        name, colon, rest = entry.partition(":")
        name = name.strip().strip('"')
        if not colon or not is_bare_name(name):
            result.skipped.append(f"line {n}: {entry[:60]} (not NAME: TARGETS)")
            continue
        for raw in rest.split(","):
            target = raw.strip().strip('"')
            if not target:
                continue
            if target.startswith(("|", "/", ":include:")):
                result.skipped.append(f"{name}: {target} (pipes, files and includes "
                                      "are not imported)")
                continue
            try:
                target = target.lower() if is_bare_name(target) else normalize(target)
            except AddressError:
                result.skipped.append(f"{name}: {target} (not an address or a name)")
                continue
            result.aliases.setdefault(name.lower(), []).append(target)
    return result
