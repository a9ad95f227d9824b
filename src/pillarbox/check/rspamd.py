"""The `rspamd` check: each message is sent to an rspamd server, which says
what to do with it.

    [module.spam]
    kind = "rspamd"
    url = "http://127.0.0.1:11333"  # rspamd's normal worker
    timeout = 10
    fallback = "accept"             # or "defer": rspamd down or slow -> 451

    [pipeline.smtp]
    checks = ["relay", "recipient", "spam"]

The envelope is collected by the MAIL and RCPT hooks (the state lives for the
connection: MAIL starts each message afresh); at the body hook the
message goes to rspamd's HTTP protocol (`POST /checkv2`), streamed from the
reader in blocks, with the envelope in request headers (IP; Hostname, the
client's forward-confirmed reverse name; Helo, From, one Rcpt per
recipient, User when authenticated, MTA-Name, TLS-Version, TLS-Cipher).
rspamd's `action` decides the verdict (`RspamdCheck.verdict`); its score,
required score, action and symbols go into one header field.

Never a hang: one deadline (`timeout`) covers the DNS lookup and the whole
exchange, rspamd's answer is read up to MAX_REPLY bytes, and anything
unexpected (refused connection, timeout, a status other than 200, malformed
JSON, an unknown action) is "rspamd unavailable" and gives the fallback.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator
from email.message import Message
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import dns.exception

if TYPE_CHECKING:
    import aiohttp

from pillarbox import module
from pillarbox.check import Reply

log = logging.getLogger("pillarbox.check.rspamd")

BLOCK = 64 * 1024
MAX_REPLY = 1024 * 1024  # rspamd's JSON answer; a larger one is malformed
MAX_FIELD = 900  # the result field's value, on one line (RFC 5322: 998 per line)
MAX_TEXT = 200  # rspamd's SMTP message and new Subject, as we pass them on
HOSTNAME_SHARE = 0.3  # of `timeout`, at most, for the client's reverse DNS name
ACTIONS = ("no action", "greylist", "add header", "rewrite subject", "soft reject", "reject")
_FIELD_NAME_RE = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext
_SYMBOL_RE = re.compile(r"[^A-Za-z0-9_.:-]")


class Unavailable(Exception):
    """rspamd gave no usable answer; the text says why (for the header and the log)."""


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    """A server-chosen string made safe for an SMTP reply or a header field:
    printable ASCII on one line, bounded."""
    if not isinstance(value, str):
        return ""
    out = "".join(c if " " <= c <= "~" else " " for c in value)
    return " ".join(out.split())[:limit]


def _unicode_line(value: Any, limit: int = MAX_TEXT) -> str:
    """A new Subject from rspamd: any printable text (UTF-8 allowed), one line."""
    if not isinstance(value, str):
        return ""
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())[:limit]


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unavailable("malformed answer")
    return float(value)


def _score(x: float) -> str:
    """A score for the result field: bounded, so 1e300 cannot overflow the line."""
    return f"{max(-1e6, min(1e6, x)):.2f}"


def result_field(answer: dict[str, Any]) -> str:
    """rspamd's verdict on one line: score, required score, action, and the
    symbols by weight (the heaviest first, cut to fit MAX_FIELD)."""
    head = (f"score={_score(_number(answer.get('score')))}; "
            f"required={_score(_number(answer.get('required_score')))}; "
            f"action=\"{answer['action']}\"")
    symbols = answer.get("symbols")
    items: list[tuple[float, str]] = []
    if isinstance(symbols, dict):
        for name, sym in symbols.items():
            score = sym.get("score", 0.0) if isinstance(sym, dict) else 0.0
            if isinstance(score, bool) or not isinstance(score, int | float):
                score = 0.0
            items.append((float(score), _SYMBOL_RE.sub("_", str(name))[:64]))
    items.sort(key=lambda s: (-abs(s[0]), s[1]))
    out = head + "; symbols="
    room = MAX_FIELD - len(out)
    parts: list[str] = []
    for score, name in items:
        part = f"{name}({_score(score)})"
        if len(part) + 2 > room - 5:  # keep room for ", ..."
            parts.append("...")
            break
        parts.append(part)
        room -= len(part) + 2
    return out + ", ".join(parts)


def parse_answer(raw: bytes) -> dict[str, Any]:
    """rspamd's JSON reply, checked for the fields we act on."""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        raise Unavailable("malformed answer") from None
    if not isinstance(answer, dict) or answer.get("action") not in ACTIONS:
        raise Unavailable("malformed answer")
    _number(answer.get("score"))
    _number(answer.get("required_score"))
    return answer


async def client_hostname(resolver: Any, ip: str, budget: float) -> str | None:
    """The client's reverse DNS name confirmed by a forward lookup, for
    rspamd's Hostname header (as Postfix gives it): "unknown" when there is
    none or DNS fails within `budget` seconds; None without a resolver."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if addr.is_loopback:
        return "localhost"
    if resolver is None:
        return None
    try:
        async with asyncio.timeout(budget):
            ptr = await resolver.resolve_address(ip)
            for rr in list(ptr)[:4]:  # a name with many PTRs: the first few are enough
                name = rr.target.to_text(omit_final_dot=True).lower()
                fwd = await resolver.resolve(name, "A" if addr.version == 4 else "AAAA",
                                             search=False)
                if any(ipaddress.ip_address(r.address) == addr for r in fwd):
                    return name
    except (TimeoutError, dns.exception.DNSException, ValueError):
        pass
    return "unknown"


class RspamdCheck:
    def __init__(self, name: str, url: str, timeout: float, fallback: str, header: str,
                 flag_header: str, password: str, hostname: str, resolver: Any = None) -> None:
        self.name = name
        self.url = url.rstrip("/") + "/checkv2"
        self.timeout = timeout
        self.fallback = fallback
        self.header = header
        self.flag_header = flag_header
        self._password = password
        self._hostname = hostname
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def state(self, source: module.Source) -> _State:
        return _State(self, source)

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop; kept for its connection pool.
        import aiohttp  # here: loading the config (every CLI call) need not load it
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "pillarbox"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the exchange ------------------------------------------------------------

    def request_headers(self, source: module.Source, helo: str, mail_from: str,
                        rcpts: list[str], size: int,
                        client_name: str | None = None) -> list[tuple[str, str]]:
        """rspamd's protocol headers for one message (repeated Rcpt: a list of pairs)."""
        h = [("Content-Length", str(size)), ("MTA-Name", self._hostname)]
        if source.client_ip:
            h.append(("IP", source.client_ip))
        if client_name:
            h.append(("Hostname", client_name))
        if helo:
            h.append(("Helo", helo))
        h.append(("From", mail_from or "<>"))
        h += [("Rcpt", r) for r in rcpts]
        if source.auth:
            h.append(("User", source.auth))
        if source.tls:
            version, _, cipher = source.tls.partition(" ")
            h += [("TLS-Version", version)] + ([("TLS-Cipher", cipher)] if cipher else [])
        if self._password:
            h.append(("Password", self._password))
        # Values came from the dialogue: no CR/LF/NUL may reach the request.
        return [(k, _one_line(v)) for k, v in h]

    async def ask(self, headers: list[tuple[str, str]], body: BinaryIO,
                  timeout: float) -> dict[str, Any]:
        """rspamd's answer, or Unavailable."""
        import aiohttp  # here: loading the config (every CLI call) need not load it
        try:
            async with asyncio.timeout(timeout):  # the whole exchange, whatever happens
                async with self._client().post(self.url, data=_blocks(body), headers=headers,
                                               allow_redirects=False) as response:
                    if response.status != 200:
                        raise Unavailable(f"status {response.status}")
                    raw = bytearray()
                    async for chunk in response.content.iter_chunked(BLOCK):
                        raw += chunk
                        if len(raw) > MAX_REPLY:
                            raise Unavailable("answer too large")
        except TimeoutError:
            raise Unavailable("timeout") from None
        except (aiohttp.ClientError, OSError) as e:
            raise Unavailable(f"unreachable ({type(e).__name__})") from None
        return parse_answer(bytes(raw))

    async def scan(self, source: module.Source, helo: str, mail_from: str, rcpts: list[str],
                   body: BinaryIO) -> module.Verdict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout  # one deadline: DNS and rspamd together
        name = await client_hostname(self._resolver, source.client_ip,
                                     self.timeout * HOSTNAME_SHARE)
        try:
            size = _size(body)
            headers = self.request_headers(source, helo, mail_from, rcpts, size, name)
            answer = await self.ask(headers, body, max(0.0, deadline - loop.time()))
        except (Unavailable, ValueError) as e:  # ValueError: a closed reader
            return self._fallback(str(e) or "unreadable message")
        except Exception as e:  # whatever went wrong, the session goes on with the fallback
            log.warning("rspamd check=%s failed", self.name, exc_info=True)
            return self._fallback(f"error ({type(e).__name__})")
        verdict = self.verdict(answer)
        log.info("rspamd check=%s action=%s score=%s from=<%s> rcpts=%d", self.name,
                 answer["action"], answer["score"], _text(mail_from, 200), len(rcpts))
        return verdict

    def _fallback(self, why: str) -> module.Verdict:
        log.warning("rspamd unavailable check=%s url=%s reason=%s fallback=%s",
                    self.name, self.url, why, self.fallback)
        if self.fallback == "defer":
            return module.Verdict(reject=Reply(451, "4.7.1 Spam filter unavailable, "
                                                    "try again later"))
        return module.Verdict(add_headers=[(self.header, f"unavailable; reason=\"{why}\"")])

    def verdict(self, answer: dict[str, Any]) -> module.Verdict:
        """What rspamd's action means for the message."""
        action = answer["action"]
        messages = answer.get("messages")
        said = _text(messages.get("smtp_message")) if isinstance(messages, dict) else ""
        fields = [(self.header, result_field(answer))]
        if action == "reject":
            return module.Verdict(reject=Reply(550, f"5.7.1 {said}") if said
                                  else Reply(550, "5.7.1 Message refused as spam"))
        if action == "soft reject":
            return module.Verdict(reject=Reply(451, f"4.7.1 {said}") if said
                                  else Reply(451, "4.7.1 Try again later"))
        if action == "greylist":
            return module.Verdict(reject=Reply(451, "4.7.1 Greylisted, please try again later"))
        if action == "add header":
            return module.Verdict(add_headers=[(self.flag_header, "Yes"), *fields])
        if action == "rewrite subject":
            subject = _unicode_line(answer.get("subject")) or None
            return module.Verdict(add_headers=[(self.flag_header, "Yes"), *fields],
                                  subject=subject)
        return module.Verdict(add_headers=fields)


def _one_line(value: str) -> str:
    """A request header's value: UTF-8 allowed (SMTPUTF8 addresses), no control characters."""
    return "".join(c for c in value if c.isprintable())[:998]


def _size(body: BinaryIO) -> int:
    body.seek(0, 2)
    n = body.tell()
    body.seek(0)
    return n


async def _blocks(body: BinaryIO) -> AsyncIterator[bytes]:
    """The message in blocks; a body spilled to disk is read off the event loop."""
    body.seek(0)
    in_memory = isinstance(body, io.BytesIO)
    while block := (body.read(BLOCK) if in_memory else await asyncio.to_thread(body.read, BLOCK)):
        yield block


class _State(module.BaseCheckState):
    """One connection's state: collects each message's envelope (MAIL starts
    a message), asks rspamd at its body."""

    def __init__(self, check: RspamdCheck, source: module.Source) -> None:
        self.check, self.source = check, source  # the session fills in helo, auth, tls
        self.mail_from = ""
        self.rcpts: list[str] = []

    async def mail(self, sender: str) -> module.Verdict:
        self.mail_from, self.rcpts = sender, []
        return module.ACCEPT

    async def rcpt(self, rcpt: str) -> module.Verdict:
        if rcpt not in self.rcpts:
            self.rcpts.append(rcpt)
        return module.ACCEPT

    async def body(self, header: Message, body: BinaryIO) -> module.Verdict:
        return await self.check.scan(self.source, self.source.helo or "", self.mail_from,
                                     self.rcpts, body)


# -- options -----------------------------------------------------------------------

def _url(value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.query or parts.fragment or any(not " " < c <= "~" for c in value):
        raise ValueError(f"url: expected rspamd's http:// address like "
                         f"http://127.0.0.1:11333, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"url: bad port in {value!r}") from None
    return value


def _field_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _FIELD_NAME_RE.fullmatch(value) or len(value) > 76:
        raise ValueError(f"{key}: expected a header field name like X-Spam-Result, got {value!r}")
    return value


def _check(options: dict[str, Any]) -> dict[str, Any]:
    timeout = options["timeout"]
    if not 0 < timeout <= 600:
        raise ValueError(f"timeout: expected seconds between 0 and 600, got {timeout!r}")
    if options["fallback"] not in ("accept", "defer"):
        raise ValueError(f"fallback: expected \"accept\" or \"defer\", got {options['fallback']!r}")
    password = options["password"]
    if any(not " " <= c <= "~" for c in password):
        raise ValueError("password: printable ASCII only")
    return {"url": _url(options["url"]), "timeout": float(timeout),
            "fallback": options["fallback"], "password": password,
            "header": _field_name("header", options["header"]),
            "flag_header": _field_name("flag_header", options["flag_header"])}


def _validate(options: dict[str, Any]) -> None:
    _check(options)


def _make(name: str, options: dict[str, Any], env: Any) -> RspamdCheck:
    o = _check(options)
    hostname = getattr(getattr(env, "config", None), "hostname", "") or "localhost"
    return RspamdCheck(name, o["url"], o["timeout"], o["fallback"], o["header"],
                       o["flag_header"], o["password"], hostname,
                       getattr(env, "resolver", None))


KIND = module.Kind(
    name="rspamd", role="check",
    options=(
        module.Option("url", str, "http://127.0.0.1:11333",
                      help="rspamd's normal worker (or controller), http:// or https://"),
        module.Option("timeout", (int, float), 10,
                      help="seconds for the whole exchange with rspamd; then the fallback"),
        module.Option("fallback", str, "accept",
                      help='rspamd down, slow or answering nonsense: "accept" (with the '
                           'result field saying so) or "defer" (451 4.7.1)'),
        module.Option("header", str, "X-Spam-Result",
                      help="the header field that records rspamd's score, action and symbols"),
        module.Option("flag_header", str, "X-Spam",
                      help='the field set to "Yes" when rspamd says add header or rewrite '
                           "subject"),
        module.Option("password", str, "",
                      help="sent as rspamd's Password header (the controller's password); "
                           "none if empty"),
    ),
    make=_make, validate=_validate,
    help="Spam filtering by an rspamd server: reject, defer, greylist, mark or pass as "
         "rspamd says.")
