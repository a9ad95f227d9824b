"""The docs say what the program does: settings, reply texts, command lines.

Reads README.md and docs/*.md as an operator would see them and checks them
against the code itself: the settings tables against config.py, every SMTP
reply quoted in the docs against the reply literals of the SMTP endpoint (and
back: every reply the endpoint can send is in SMTP.md), every `pillarbox ...`
command line against the CLI's own argparse parser, and the IMAP response
codes in IMAP.md against the IMAP code. No server, no network.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pillarbox import cli, config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "pillarbox"


# -- reading markdown -----------------------------------------------------------

def _split(text: str) -> tuple[str, list[str]]:
    """(the prose with fenced code blocks blanked, the code blocks)."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if block is None:
                block = []
            else:
                blocks.append("\n".join(block))
                block = None
            prose.append("")
            continue
        if block is None:
            prose.append(line)
        else:
            block.append(line)
    return "\n".join(prose), blocks


def _spans(prose: str) -> list[str]:
    """Inline `code` spans, a span broken over two lines joined with a space."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]


@dataclass
class Table:
    heading: str
    header: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def _tables(text: str) -> list[Table]:
    prose, _ = _split(text)
    lines = prose.splitlines()
    out, heading, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if (line.startswith("|") and i + 1 < len(lines)
                and re.fullmatch(r"\|[\s|:-]+\|", lines[i + 1].strip())):
            table = Table(heading, [c.lower() for c in _cells(line)], [])
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                table.rows.append(_cells(lines[i]))
                i += 1
            out.append(table)
            continue
        i += 1
    return out


def _read(name: str) -> str:
    return (ROOT / name).read_text()


# -- settings -------------------------------------------------------------------

BASE = {"hostname": "mx.example.org", "domains": ["example.org"]}
CFG_PATH = Path("/nonexistent/pillarbox.toml")


def _known_keys() -> set[str]:
    # [module.*], [pipeline.*] and [[rule]] are documented in docs/MODULES.md
    # (tests/unit/test_modules_doc.py).
    keys = {k for k in config._TOP_KEYS
            if k not in config._SECTION_KEYS and k not in ("route", "module", "pipeline", "rule")}
    keys |= {f"{s}.{k}" for s, ks in config._SECTION_KEYS.items() for k in ks}
    keys |= {f"route.{k}" for k in config._ROUTE_KEYS}
    return keys


def _section_of(heading: str) -> str | None:
    """'`[limits]`' -> 'limits'; 'Limits (`[imap]`)' -> 'imap'; 'Top level' -> ''."""
    m = re.search(r"`\[\[?(\w+)\]\]?`", heading)
    if m:
        return m.group(1)
    return "" if heading == "Top level" else None


def _documented_settings() -> dict[str, list[tuple[str, str]]]:
    """Dotted key -> [(documented default, where)], from the settings tables of
    OPERATING.md, IMAP.md and OUTBOUND.md, and the [remote]/[dns] TOML example
    of OUTBOUND.md (whose values are the defaults)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name in ("docs/OPERATING.md", "docs/IMAP.md", "docs/OUTBOUND.md"):
        for t in _tables(_read(name)):
            col = next((i for i, h in enumerate(t.header) if h in ("key", "setting")), None)
            dcol = next((i for i, h in enumerate(t.header) if h.startswith("default")), None)
            if col is None or dcol is None:
                continue
            section = _section_of(t.heading)
            for row in t.rows:
                for key in re.findall(r"`([\w.]+)`", row[col]):
                    if "." not in key:
                        if section is None:
                            continue
                        key = f"{section}.{key}" if section else key
                    found.setdefault(key, []).append((row[dcol], f"{name} {t.heading!r}"))
    _, blocks = _split(_read("docs/OUTBOUND.md"))
    for block in blocks:
        if block.lstrip().startswith("[remote]"):
            for section, values in tomllib.loads(block).items():
                for key, value in values.items():
                    found.setdefault(f"{section}.{key}", []).append(
                        (f"`{_toml(value)}`", "docs/OUTBOUND.md [remote] example"))
    return found


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _value(cell: str) -> object | None:
    """A documented default as a config value: TOML if it parses (`"25M"`, `100`,
    `[]`, `true`), else the bare text (`25M`, `30m`); None for '(required)'."""
    m = re.fullmatch(r"`([^`]*)`", cell.strip())
    if not m:
        return None
    text = m.group(1)
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _with(key: str, value: object) -> config.Config:
    data = dict(BASE)
    if key.startswith("route."):
        route = {"domains": ["*"], key.split(".", 1)[1]: value}
        if key.endswith(("auth_user", "auth_password")) and value:
            route.update(auth_user=value, auth_password=value)
        data["route"] = [route]
    elif "." in key:
        section, k = key.split(".")
        data[section] = {k: value}
    else:
        data[key] = value
    return config.from_dict(data, CFG_PATH)


def _route_default(key: str) -> config.Config:
    return config.from_dict({**BASE, "route": [{"domains": ["*"]}]}, CFG_PATH)


def test_every_setting_is_documented_and_every_documented_one_exists() -> None:
    documented = set(_documented_settings())
    known = _known_keys()
    assert not documented - known, f"documented but not a setting: {sorted(documented - known)}"
    assert not known - documented, f"settings missing from the docs: {sorted(known - documented)}"


def test_documented_defaults_are_the_defaults() -> None:
    default = config.from_dict(dict(BASE), CFG_PATH)
    wrong = []
    for key, cells in sorted(_documented_settings().items()):
        if key not in _known_keys():
            continue  # reported by the test above
        for cell, where in cells:
            value = _value(cell)
            if value is None:
                continue  # "(required)" and the like
            expected = _route_default(key) if key.startswith("route.") else default
            try:
                got = _with(key, value)
            except config.ConfigError as e:
                wrong.append(f"{key} = {cell} ({where}): not a valid value: {e}")
                continue
            if got != expected:
                wrong.append(f"{key}: documented default {cell} ({where}) is not the default")
    assert not wrong, "\n".join(wrong)


def test_init_template_shows_the_defaults() -> None:
    """The template says 'the value shown is the default, except in [listen]'
    (and [pipeline.smtp], which turns the MX's authentication check on)."""
    text = config.TEMPLATE.format(hostname="mx.example.org", domain="example.org")
    data = tomllib.loads(text)
    default = config.from_dict(dict(BASE), CFG_PATH)
    for key, value in data.items():
        if isinstance(value, dict):
            if key == "listen":
                continue
            if key == "pipeline":
                assert value == {"smtp": {"checks": ["relay", "recipient", "authentication"]}}
                continue
            for k, v in value.items():
                assert _with(f"{key}.{k}", v) == default, f"template: {key}.{k} = {v!r}"
        elif key not in BASE:
            assert _with(key, value) == default, f"template: {key} = {value!r}"


def test_listen_table_shows_what_init_writes() -> None:
    """OPERATING.md's [listen] table has an '`init` writes' column: the template's values."""
    text = config.TEMPLATE.format(hostname="mx.example.org", domain="example.org")
    written = tomllib.loads(text)["listen"]
    (table,) = [t for t in _tables(_read("docs/OPERATING.md"))
                if _section_of(t.heading) == "listen"]
    col = table.header.index("`init` writes")
    shown = {re.search(r"`(\w+)`", row[0]).group(1): _value(row[col]) for row in table.rows}
    assert shown == written


# -- SMTP replies -----------------------------------------------------------------

@dataclass(frozen=True)
class CodeReply:
    """A reply the code can send: `regex` matches a concrete rendering (each
    formatted value one word, or anything without <> between < and >);
    `sample` renders each formatted value as X."""

    code: int
    regex: str
    sample: str
    where: str

    @property
    def literal(self) -> str:
        return f"{self.code} {self.sample}"


def _render(node: ast.expr) -> list[tuple[str, str]]:
    """(regex, sample) for each text a str expression can be."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        s = node.value.decode() if isinstance(node.value, bytes) else node.value
        return [(re.escape(s), s)]
    if isinstance(node, ast.JoinedStr):
        rx, sample, prev = "", "", ""
        for part in node.values:
            if isinstance(part, ast.Constant):
                rx += re.escape(part.value)
                sample += part.value
                prev = part.value
            else:
                rx += r"[^<>]*" if prev.endswith("<") else r"\S+"
                sample += "X"
        return [(rx, sample)]
    if isinstance(node, ast.IfExp):
        return _render(node.body) + _render(node.orelse)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "encode"):
        return _render(node.func.value)
    return []


_LINE = re.compile(r"(\d{3}) (.*?)(?:\\r\\n|\r\n)?")


def _code_replies(paths: list[Path]) -> list[CodeReply]:
    out = []
    for path in paths:
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(ROOT))
        in_fstring = {id(p) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr)
                      for p in j.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in ("reply", "Reply", "reply_lines") and len(node.args) == 2:
                    code, text = node.args
                    if not (isinstance(code, ast.Constant) and isinstance(code.value, int)):
                        continue
                    if name == "reply_lines":
                        if not (isinstance(text, ast.List) and text.elts):
                            continue
                        text = text.elts[0]
                    for rx, sample in _render(text):
                        out.append(CodeReply(code.value, rx, sample,
                                             f"{where}:{node.lineno}"))
            elif isinstance(node, ast.Constant | ast.JoinedStr) and id(node) not in in_fstring:
                for rx, sample in _render(node):
                    m = re.fullmatch(r"(\d{3}) (\d\.\d{1,3}\.\d{1,3} .*?)(\r\n)?", sample,
                                     re.S)
                    if m:
                        body = rx[len(m.group(1)) + 2:]  # after "NNN\ "
                        body = re.sub(r"\\r\\n$|\\\r\\\n$", "", body)
                        out.append(CodeReply(int(m.group(1)), body, m.group(2),
                                             f"{where}:{node.lineno}"))
    return out


def _reply_codes(paths: list[Path]) -> set[int]:
    """Codes of every reply call, also those with a computed text (the 334 prompts)."""
    codes = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "reply"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                codes.add(node.args[0].value)
    return codes


def _smtp_sources() -> list[Path]:
    return [SRC / "endpoint" / "smtp.py", *sorted((SRC / "check").glob("*.py"))]


# Documented examples whose placeholder is more than one word: what a real
# reply to that situation looks like.
EXAMPLES = {
    "250-HOSTNAME Hello <the name the client gave>": "250 HOSTNAME Hello client.example",
}

# Replies in the code that SMTP.md deliberately does not show, and why.
UNDOCUMENTED = {
    # STARTTLS without a TLS context: `serve` always has one (a self-signed
    # pair is made when [tls] is empty), so no client can get this reply.
    "503 5.5.1 TLS not available",
}


def _documented_smtp(name: str, code_blocks: bool) -> list[str]:
    """Every `NNN ...` reply quoted in a doc, as written (NNN- made NNN )."""
    prose, blocks = _split(_read(name))
    found = [s for s in _spans(prose) if re.match(r"[2-5]\d{2}([ -]|$)", s)]
    if code_blocks:
        for block in blocks:
            found += [ln for ln in block.splitlines()
                      if re.match(r"\d{3}[ -]\d\.\d{1,3}\.\d{1,3} ", ln)]
    out = []
    for s in found:
        s = EXAMPLES.get(s, s)
        s = re.sub(r"^(\d{3})-", r"\1 ", s)
        out.append(s)
    return out


def _matches(doc: str, r: CodeReply) -> bool:
    m = re.fullmatch(r"(\d{3})(?: (.*))?", doc)
    assert m, doc
    if int(m.group(1)) != r.code:
        return False
    text = m.group(2)
    if text is None:  # just the code: `503`
        return True
    if re.fullmatch(r"\d\.\d{1,3}\.\d{1,3}", text):  # code and status: `552 5.3.4`
        text += " ..."
    if "..." in text:  # an abbreviation: `421 4.7.0 ... too many connections, try later`
        pattern = ".*".join(re.escape(p) for p in text.split("..."))
        return re.fullmatch(pattern, r.sample) is not None
    return re.fullmatch(r.regex, text) is not None


@pytest.mark.parametrize("doc", ["docs/SMTP.md", "docs/OPERATING.md"])
def test_every_documented_smtp_reply_is_one_the_code_sends(doc: str) -> None:
    replies = _code_replies(_smtp_sources())
    assert len(replies) > 40, "the reply literals were not found in the code"
    # OPERATING.md's code blocks show other servers' replies too (queue list).
    shown = _documented_smtp(doc, code_blocks=doc == "docs/SMTP.md")
    assert shown
    codes = _reply_codes(_smtp_sources())
    unknown = [s for s in shown if not any(_matches(s, r) for r in replies)
               and not (s.isdigit() and int(s) in codes)]
    assert not unknown, f"{doc} quotes replies the code does not send:\n" + "\n".join(unknown)


def test_every_smtp_reply_in_the_code_is_documented() -> None:
    shown = [s for s in _documented_smtp("docs/SMTP.md", code_blocks=True)
             if not re.fullmatch(r"\d{3}( \d\.\d{1,3}\.\d{1,3})?", s)]
    missing = []
    for r in _code_replies(_smtp_sources()):
        if r.literal in UNDOCUMENTED:
            continue
        if not any(_matches(s, r) for s in shown):
            missing.append(f"{r.where}: {r.literal}")
    assert not missing, "replies the code sends but docs/SMTP.md does not show:\n" + "\n".join(
        missing)


def test_undocumented_list_is_still_in_the_code() -> None:
    literals = {r.literal for r in _code_replies(_smtp_sources())}
    assert UNDOCUMENTED <= literals, UNDOCUMENTED - literals


# -- command lines ------------------------------------------------------------------

DOC_FILES = ["README.md", "docs/OPERATING.md", "docs/SMTP.md", "docs/IMAP.md",
             "docs/OUTBOUND.md", "docs/MODULES.md"]

# Values for the placeholders of a synopsis (`user add ADDRESS [--quota SIZE]`).
PLACEHOLDERS = {
    "ADDRESS": "alice@example.org", "ALIAS": "team@example.org",
    "TARGET": "bob@example.org", "RCPT": "bob@example.org", "FROM": "alice@example.org",
    "DIR": "/tmp/pillarbox", "DOMAIN": "example.org", "FQDN": "mx.example.org",
    "SIZE": "1G", "ID": "18ea47cca7f762a1679c0507", "FILE": "/tmp/pillarbox.toml",
}

# `pillarbox` where a shell runs it: at the start of a line (after a `$ `
# prompt or `next:`), after a pipe, `;`, `&&`, `exec`, `sudo -u USER` or an
# `ExecStart=`, or called by path (`/opt/pillarbox/bin/pillarbox`); not as an
# argument (`useradd ... pillarbox`, `journalctl -u pillarbox`) or in a log line.
_PILLARBOX = re.compile(
    r"(?:(?:^\s*(?:\$\s+|next:\s+)?|[|;&]\s*|\bExec\w*=|\bexec\s+|\bsudo\s+-u\s+\S+\s+)pillarbox"
    r"|\S*/bin/pillarbox)(?=\s+[-a-z])")
_SHELL_STOP = set("|;&<>()")


def _synopsis(line: str) -> list[list[str]]:
    """`pillarbox queue list [--json] | show ID` -> each argv it stands for."""
    line = line.split("#", 1)[0].strip()
    words = line.split()
    command = words[1]
    argvs = []
    for i, alt in enumerate(re.split(r"\s+\|\s+", " ".join(words[1:]))):
        alt_words = alt.split()
        if i and alt_words[0] != command:
            alt_words = [command, *alt_words]
        expanded: list[list[str]] = [[]]
        for w in alt_words:
            w = w.strip("[]").removesuffix("...")
            choices = w.split("|") if "|" in w else [w]
            choices = [PLACEHOLDERS.get(c, c) for c in choices]
            expanded = [a + [c] for a in expanded for c in choices]
        argvs += expanded
    return argvs


def _shell(line: str) -> list[list[str]]:
    """The argv of each `pillarbox` in a shell line, up to a pipe, redirection or comment."""
    out = []
    for m in _PILLARBOX.finditer(line):
        lex = shlex.shlex(line[m.end():], posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        argv = []
        try:
            for tok in lex:
                if set(tok) <= _SHELL_STOP or tok.startswith("`"):
                    break
                argv.append(tok)
        except ValueError:  # an unbalanced quote further on
            pass
        if argv and argv[0] != "pillarbox":  # `sudo -u pillarbox pillarbox ...`
            out.append(argv)
    return out


def _logical_lines(block: str) -> list[str]:
    return block.replace("\\\n", " ").splitlines()


def _command_lines(name: str) -> list[tuple[str, list[str]]]:
    _, blocks = _split(_read(name))
    out = []
    for block in blocks:
        for line in _logical_lines(block):
            text = line.strip().removeprefix("$ ")
            if text.startswith(("error:", "#")) or "sendmail" in text.split("pillarbox")[0]:
                continue  # an error message quoting a command; a sendmail link
            if text.startswith("pillarbox ") and re.search(r"\b[A-Z]{2,}\b|\[", text):
                out += [(line, a) for a in _synopsis(text)]
            else:
                out += [(line, a) for a in _shell(line)]
    return out


def _parse(argv: list[str]) -> str | None:
    """None if the CLI accepts argv as far as parsing goes, else why not."""
    argv = cli._sendmail_compat(argv)
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as e:
        return None if e.code == 0 else "argparse refused it"  # 0: --help
    try:
        cli.check_args(args)
    except cli.CLIError as e:
        return str(e)
    return None


@pytest.mark.parametrize("name", DOC_FILES)
def test_documented_command_lines_parse(name: str, capsys) -> None:
    lines = _command_lines(name)
    bad = []
    for line, argv in lines:
        why = _parse(argv)
        if why:
            bad.append(f"{line.strip()!r} -> {argv}: {why}")
    capsys.readouterr()
    assert not bad, f"{name}: command lines the CLI does not accept:\n" + "\n".join(bad)


def test_command_lines_are_found() -> None:
    """The extraction above sees the commands (else the test would prove nothing)."""
    argvs = [a for n in DOC_FILES for _, a in _command_lines(n)]
    commands = {a[a.index(w)] for a in argvs for w in a if w in
                ("init", "serve", "check", "dns", "user", "alias", "queue", "sendmail")}
    assert commands == {"init", "serve", "check", "dns", "user", "alias", "queue", "sendmail"}
    assert ["queue", "retry", PLACEHOLDERS["ID"]] in argvs
    assert len(argvs) > 60


def _subparsers() -> dict[str, object]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {"": parser, **action.choices}


# Inline spans that start like a command but quote a log line.
LOG_LINES = {"pillarbox stopping", "pillarbox started"}


@pytest.mark.parametrize("name", DOC_FILES)
def test_inline_commands_name_real_subcommands_and_options(name: str) -> None:
    """`pillarbox user add|quota --quota` in prose: the command and each option exist."""
    prose, _ = _split(_read(name))
    subs = _subparsers()
    bad = []
    for span in _spans(prose):
        if not re.match(r"pillarbox [-a-z]", span) or span in LOG_LINES:
            continue
        words = span.split()[1:]
        if words[0] in ("-c", "--config"):
            words = words[2:]
        command = words[0]
        if command not in subs:
            bad.append(f"{span!r}: no command {command!r}")
            continue
        options = set(subs[command]._option_string_actions) | set(
            subs[""]._option_string_actions)
        for w in words[1:]:
            if w.startswith("-") and w.split("=")[0] not in options | {"-oi"}:
                bad.append(f"{span!r}: {command} has no option {w}")
        positional = [a for a in subs[command]._actions if a.choices and not a.option_strings]
        if positional and len(words) > 1 and not words[1].startswith("-"):
            for choice in words[1].split("|"):
                if choice.strip("[]") not in positional[0].choices and choice != "...":
                    bad.append(f"{span!r}: {command} has no {choice!r}")
    assert not bad, "\n".join(bad)


# -- IMAP response codes ---------------------------------------------------------------

_STATUS = ("OK", "NO", "BAD", "BYE")


def _imap_pairs() -> set[tuple[str, str]]:
    """(status, response code) pairs the IMAP code can send: a status word and a
    [CODE] literal in one function, or a MailboxError code (answered NO)."""
    pairs: set[tuple[str, str]] = set()
    paths = [*sorted((SRC / "endpoint" / "imap").glob("*.py")), SRC / "server.py",
             *sorted((SRC / "store").glob("*.py"))]
    for path in paths:
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            statuses, codes = set(), set()
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "MailboxError":
                    if len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
                        if node.args[1].value:
                            pairs.add(("NO", node.args[1].value))
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)):
                    continue
                s = node.value.decode() if isinstance(node.value, bytes) else node.value
                if s in _STATUS:
                    statuses.add(s)
                m = re.match(r"(?:\* )?(BYE|BAD|NO|OK)\b", s.split("} ", 1)[-1])
                if m:
                    statuses.add(m.group(1))
                codes |= set(re.findall(r"\[([A-Z][A-Z-]*)", s))
            pairs |= {(st, c) for st in statuses for c in codes}
    return pairs


def test_imap_response_codes_in_the_docs_are_sent() -> None:
    prose, _ = _split(_read("docs/IMAP.md"))
    pairs = _imap_pairs()
    source = "\n".join(p.read_text() for p in (SRC / "endpoint" / "imap").glob("*.py"))
    shown = []
    for span in _spans(prose):
        m = re.fullmatch(r"(?:\* )?(OK|NO|BAD|BYE)?\s*\[([A-Z][A-Z-]*)[^\]]*\].*", span)
        if m:
            shown.append((span, m.group(1), m.group(2)))
    assert len(shown) >= 8, shown
    bad = [span for span, status, code in shown
           if (status and (status, code) not in pairs)
           or (not status and not re.search(rf"\b{code}\b", source))]
    assert not bad, "docs/IMAP.md names responses the IMAP code does not send:\n" + "\n".join(bad)
