"""The `webhook` target: an HTTP POST of each message to a configured URL.

    [module.helpdesk]
    kind = "webhook"
    url = "https://helpdesk.example.test/inbound-mail"
    format = "json"                 # or "rfc822" (the default)
    secret_file = "/etc/pillarbox/helpdesk.secret"
    timeout = 30
    headers = { Authorization = "Bearer abc123" }

The body is the message as `message/rfc822`, or a JSON object with the
envelope, the header fields and the whole message in base64. Either way the
body is streamed from the message reader in blocks, never held whole in
memory: it is read once to sign it (when a secret is set) and once to send
it. The reader given to `body()` must therefore stay open until `commit()`
or `abort()` returns.

Outcomes: 2xx delivered; 408, 429, 5xx, redirects (not followed), a refused
connection and a timeout are temporary (the queue retries with its backoff);
every other status is permanent and the DSN quotes the status line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp

from pillarbox import module
from pillarbox.check import Reply

log = logging.getLogger("pillarbox.target.webhook")

SIGNATURE = "X-Pillarbox-Signature"  # "sha256=" + hex HMAC-SHA256 of the request body
MESSAGE_ID = "X-Pillarbox-Message-Id"  # the queue id: the same on every retry, for deduplication
BLOCK = 48 * 1024  # a multiple of 3, so each block encodes to base64 without padding
MAX_HEADER = 1024 * 1024  # JSON: header bytes parsed into "headers"; the rest stays in "message"
RETRIED = frozenset({408, 429})
# Set by the target itself: an operator's `headers` may not override them.
RESERVED = frozenset({"content-type", "content-length", "transfer-encoding", "host",
                      SIGNATURE.lower(), MESSAGE_ID.lower()})
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_NAME_RE = re.compile(rb"[!-9;-~]+")  # RFC 5322 ftext


def _printable(text: str, limit: int = 120) -> str:
    """A server-chosen reason phrase, safe for a DSN and a log line."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def _temporary(text: str) -> module.DeliveryError:
    return module.DeliveryError(Reply(451, f"4.4.1 {text}"))


def _permanent(text: str) -> module.DeliveryError:
    return module.DeliveryError(Reply(554, f"5.6.0 {text}"))


def outcome(status: int, reason: str) -> module.DeliveryError | None:
    """None for delivered, else the error the queue acts on."""
    line = f"webhook answered {status} {_printable(reason)}".rstrip()
    if 200 <= status < 300:
        return None
    if status in RETRIED or status >= 500 or 300 <= status < 400:
        return _temporary(line)
    return _permanent(line)


# -- the request body ----------------------------------------------------------------

def _blocks(message: BinaryIO, start: int = 0) -> Iterator[bytes]:
    message.seek(start)
    while block := message.read(BLOCK):
        yield block


def _size(message: BinaryIO) -> int:
    message.seek(0, 2)
    return message.tell()


def header_fields(message: BinaryIO) -> list[list[str]]:
    """The header fields as [name, value] (unfolded, UTF-8 with errors replaced), read
    line by line up to the empty line or MAX_HEADER bytes."""
    message.seek(0)
    lines: list[bytes] = []
    read = 0
    while read < MAX_HEADER:
        line = message.readline(MAX_HEADER - read)
        if not line or line in (b"\r\n", b"\n"):
            break
        read += len(line)
        lines.append(line.rstrip(b"\r\n"))
    fields: list[list[str]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:  # a continuation line (folded value)
            fields[-1][1] += line.decode("utf-8", "replace")
            continue
        name, colon, value = line.partition(b":")
        if colon and _FIELD_NAME_RE.fullmatch(name):
            fields.append([name.decode("ascii"), value.lstrip(b" \t").decode("utf-8", "replace")])
    return fields


class _Body:
    """One request body: a prefix, the message (raw or base64) and a suffix."""

    def __init__(self, fmt: str, envelope: module.Envelope, message: BinaryIO) -> None:
        self._message = message
        self._base64 = fmt == "json"
        n = _size(message)
        if self._base64:
            meta = {
                "envelope": {
                    "msg_id": envelope.msg_id,
                    "mail_from": envelope.mail_from,
                    "rcpts": list(envelope.rcpts),
                    "size": n,
                    "source": {"endpoint": envelope.source.endpoint,
                               "client_ip": envelope.source.client_ip,
                               "helo": envelope.source.helo,
                               "auth": envelope.source.auth,
                               "tls": envelope.source.tls},
                },
                "headers": header_fields(message),
            }
            head = json.dumps(meta)
            self._prefix = (head[:-1] + ', "message": "').encode()
            self._suffix = b'"}'
            n = 4 * ((n + 2) // 3)
        else:
            self._prefix = self._suffix = b""
        self.length = len(self._prefix) + n + len(self._suffix)

    def chunks(self) -> Iterator[bytes]:
        if self._prefix:
            yield self._prefix
        if not self._base64:
            yield from _blocks(self._message)
        else:
            rest = b""  # a short read leaves bytes that must wait for a multiple of 3
            for block in _blocks(self._message):
                block = rest + block
                cut = len(block) - len(block) % 3
                rest = block[cut:]
                if cut:
                    yield base64.b64encode(block[:cut])
            if rest:
                yield base64.b64encode(rest)
        if self._suffix:
            yield self._suffix

    def signature(self, secret: bytes) -> str:
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        for chunk in self.chunks():
            mac.update(chunk)
        return "sha256=" + mac.hexdigest()

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk


# -- target and delivery ----------------------------------------------------------------

class _Post(module.BaseDelivery):
    """The message is read at commit: nothing is sent before it."""

    def __init__(self, target: WebhookTarget, envelope: module.Envelope) -> None:
        super().__init__(envelope)
        self._target = target

    async def commit(self) -> Mapping[str, module.DeliveryError | None]:
        if not self.rcpts:
            return {}
        if self.message is None:
            raise _temporary("webhook: no message body was given")
        error = await self._target.post(self.envelope, self.message)
        if error is not None:
            raise error
        return dict.fromkeys(self.rcpts)


class WebhookTarget:
    def __init__(self, name: str, url: str, fmt: str, secret: bytes, timeout: float,
                 headers: dict[str, str]) -> None:
        import aiohttp  # here: loading the config (every CLI call) need not load it
        self.name = name
        self.url = url
        self.format = fmt
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    async def start(self, envelope: module.Envelope) -> module.Delivery:
        return _Post(self, envelope)

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop, and kept for its connection pool.
        import aiohttp  # here: loading the config (every CLI call) need not load it
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"User-Agent": "pillarbox-webhook"})
        return self._session

    async def post(self, envelope: module.Envelope,
                   message: BinaryIO) -> module.DeliveryError | None:
        import aiohttp  # here: loading the config (every CLI call) need not load it
        try:
            body = _Body(self.format, envelope, message)
            headers = dict(self._headers)
            headers["Content-Type"] = ("application/json" if self.format == "json"
                                       else "message/rfc822")
            headers["Content-Length"] = str(body.length)
            headers[MESSAGE_ID] = envelope.msg_id
            if self._secret:
                # A pass over the whole message: off the event loop.
                headers[SIGNATURE] = await asyncio.to_thread(body.signature, self._secret)
        except (OSError, ValueError) as e:  # a closed or failing reader: try again later
            log.warning("webhook message unreadable id=%s target=%s error=%r",
                        envelope.msg_id, self.name, e)
            return _temporary("webhook: the message could not be read")
        try:
            async with self._client().post(self.url, data=body.stream(), headers=headers,
                                           allow_redirects=False) as response:
                error = outcome(response.status, response.reason or "")
        except TimeoutError:
            error = _temporary(f"webhook did not answer within {self._timeout_s:g}s")
        except (aiohttp.ClientError, OSError) as e:
            error = _temporary(f"webhook unreachable: {_printable(type(e).__name__)}")
        log.info("webhook post id=%s target=%s url=%s rcpts=%d result=%s", envelope.msg_id,
                 self.name, self.url, len(envelope.rcpts),
                 "delivered" if error is None else f"{error.reply.code} {error.reply.text}")
        return error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- options -------------------------------------------------------------------------

def _url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("url: required, an http:// or https:// URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or value != value.strip() \
            or any(not " " < c <= "~" for c in value):
        raise ValueError(f"url: expected an http:// or https:// URL with a host, got {value!r}")
    return value


def _secret(options: dict[str, Any]) -> bytes:
    secret, path = options.get("secret") or "", options.get("secret_file") or ""
    if secret and path:
        raise ValueError("secret, secret_file: give one of them, not both")
    if path:
        try:
            secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeError) as e:
            raise ValueError(f"secret_file: cannot read {path!r}: {e.__class__.__name__}") \
                from None
        if not secret:
            raise ValueError(f"secret_file: {path!r} is empty")
    return secret.encode()


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("headers: expected a table of header name = value")
    headers: dict[str, str] = {}
    for name, v in value.items():
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not a valid HTTP header name")
        if name.lower() in RESERVED:
            raise ValueError(f"headers: {name} is set by the webhook target itself")
        if not isinstance(v, str) or any(c in v for c in "\r\n\0"):
            raise ValueError(f"headers: the value of {name} must be a string without CR, LF, NUL")
        headers[name] = v
    return headers


def _make(name: str, options: dict[str, Any], env: Any) -> WebhookTarget:
    fmt = options.get("format", "rfc822")
    if fmt not in ("rfc822", "json"):
        raise ValueError(f"format: expected \"rfc822\" or \"json\", got {fmt!r}")
    timeout = options.get("timeout", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    return WebhookTarget(name, _url(options.get("url")), fmt, _secret(options), float(timeout),
                         _headers(options.get("headers", {})))


KIND = module.Kind(
    "webhook", "target",
    (
        module.Option("url", str, required=True, help="the http:// or https:// URL to POST to"),
        module.Option("format", str, "rfc822",
                      help="\"rfc822\": the message as the body; \"json\": envelope, header "
                           "fields and the message in base64"),
        module.Option("secret", str, "",
                      help="HMAC-SHA256 key for the X-Pillarbox-Signature header; none if empty"),
        module.Option("secret_file", str, "",
                      help="a file holding the secret (instead of `secret`)"),
        module.Option("timeout", (int, float), 30,
                      help="seconds for the whole request; then retried through the queue"),
        module.Option("headers", dict, {}, help="extra HTTP request headers, name = value"),
    ),
    _make,
    help="POST each message to an HTTP endpoint; 2xx delivers, 408/429/5xx retry, "
         "other 4xx bounce",
)
