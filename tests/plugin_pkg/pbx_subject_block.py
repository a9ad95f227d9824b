"""A third-party check module, as a plugin package ships it: installed into
the venv (tests/plugin_pkg/pyproject.toml declares the entry point)."""

from __future__ import annotations

from pillarbox import module
from pillarbox.check import Reply


class _State(module.BaseCheckState):
    def __init__(self, word: str, reply: str) -> None:
        self.word, self.reply = word.lower(), reply

    async def body(self, header, body) -> module.Verdict:
        if self.word in str(header.get("Subject", "")).lower():
            return module.Verdict(reject=Reply(550, self.reply))
        return module.Verdict(add_headers=[("X-Subject-Checked", "yes")],
                              auth_results=["x-subject=pass"])


class SubjectBlock:
    def __init__(self, name: str, options: dict, env) -> None:
        self.name, self.options = name, options

    def state(self, source: module.Source) -> _State:
        return _State(self.options["word"], self.options["reply"])


KIND = module.Kind(
    name="subject_block", role="check",
    options=(module.Option("word", str, required=True),
             module.Option("reply", str, "5.7.1 subject refused")),
    make=SubjectBlock, help="refuses mail whose Subject contains a word")
