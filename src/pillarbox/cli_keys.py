"""`pillarbox user key import|show|del`: users' OpenPGP keys (directory/keys.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pillarbox.directory.keys import KeyRefused, Keys
from pillarbox.directory.openpgp import inspect
from pillarbox.printable import escape

ACTIONS = ("import", "show", "del")
USAGE = "user key import ADDRESS FILE | user key show ADDRESS | user key del ADDRESS"


class KeyCommandError(Exception):
    """A wrong `user key` command line: one line for the operator."""


def parse(words: list[str]) -> tuple[str, str, Path | None]:
    """The action, address and file of `user key ACTION ADDRESS [FILE]`."""
    if not words or words[0] not in ACTIONS:
        raise KeyCommandError(f"usage: pillarbox {USAGE}")
    need = 3 if words[0] == "import" else 2
    if len(words) != need:
        raise KeyCommandError(f"usage: pillarbox {USAGE}")
    return words[0], words[1], Path(words[2]) if need == 3 else None


def run(args: argparse.Namespace, cfg, db, local_address) -> int:
    """`args.address` holds the action, `args.rest` the rest (see cli.py)."""
    action, address, path = parse([args.address or "", *args.rest])
    address = local_address(cfg, address)
    keys = Keys(db)
    if action == "import":
        assert path is not None
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
        try:
            info = keys.put(address, data, any_uid=args.any_uid)
        except KeyRefused as e:
            print(f"error: key not imported: {e}", file=sys.stderr)
            return 1
        print(f"imported key {info.fingerprint.upper()} for {escape(address)}")
        return 0
    if action == "del":
        if not keys.delete(address):
            print(f"error: {escape(address)} has no key", file=sys.stderr)
            return 1
        print(f"deleted the key of {escape(address)}")
        return 0
    data = keys.get(address)
    record = keys.info(address)
    if data is None or record is None:
        print(f"error: {escape(address)} has no key", file=sys.stderr)
        return 1
    try:
        _, info = inspect(data)
        lines = info.lines()
    except KeyRefused as e:  # it expired or was revoked since it was stored
        lines = [f"fingerprint {record.fingerprint.upper()}", f"unusable    {e}"]
    print(f"address     {escape(address)}")
    for line in lines:
        print(escape(line))
    print(f"source      {record.source}")
    return 0
