"""A receiving SMTP server for the outbound tests, built on aiosmtpd.

It plays the remote MX (or a smarthost) on 127.0.0.1: the test scripts its
replies, and it records what pillarbox sent.

    double = SMTPDouble().start()                # free port, STARTTLS offered
    double.script_rcpt("bob@remote.test", "451 4.3.0 try later")   # then 250
    double.script_data("550 5.7.1 content refused")
    double.rcpt_default = "550 5.1.1 no such user"                 # everyone else
    msgs = double.wait_for_messages(1, timeout=10)
    msgs[0].mail_from, msgs[0].rcpts, msgs[0].content, msgs[0].tls, msgs[0].auth_user

    SMTPDouble(starttls=False)                   # a server without STARTTLS
    SMTPDouble(auth=("user", "pw"))              # AUTH PLAIN/LOGIN, after STARTTLS only,
                                                 # and required before MAIL

Scripted replies are queues: each command takes the next reply, and when a
queue is empty the default (250) applies. Every transaction (MAIL FROM and
what followed) is recorded in `transactions`, every accepted message in
`messages`; `wait_for_messages` / `await_messages` wait for them with a
deadline. The server runs its own event loop in a thread, so tests that are
plain functions can use it as well as async ones.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import ipaddress
import logging
import shutil
import ssl
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

# aiosmtpd logs a deprecation warning on every AUTH (Session.login_data), and
# every connection at INFO: keep the test output for what matters.
logging.getLogger("mail.log").setLevel(logging.ERROR)

OK_MAIL = "250 2.1.0 OK"
OK_RCPT = "250 2.1.5 OK"
OK_DATA = "250 2.0.0 OK: queued"


@lru_cache(maxsize=1)
def tls_files() -> tuple[Path, Path]:
    """A self-signed certificate and key (made once per process) as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "double.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("double.test"), x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    d = Path(tempfile.mkdtemp(prefix="smtp-double-tls-"))
    atexit.register(shutil.rmtree, d, True)
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def server_tls_context() -> ssl.SSLContext:
    cert, key = tls_files()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Transaction:
    """One MAIL FROM and what followed it on the same connection."""

    connection: int
    mail_from: str
    mail_options: list[str]
    mail_reply: str
    tls: bool
    auth_user: str | None
    helo: str | None
    started: float = field(default_factory=time.time)
    rcpts: list[tuple[str, str]] = field(default_factory=list)  # (address, our reply)
    rcpt_times: list[float] = field(default_factory=list)  # when each reply was sent
    data_reply: str | None = None  # None: no DATA was sent

    @property
    def accepted_rcpts(self) -> list[str]:
        return [a for a, r in self.rcpts if r.startswith("2")]


@dataclass
class Message:
    """A message this double accepted (DATA got a 2xx)."""

    mail_from: str
    rcpts: list[str]
    content: bytes
    mail_options: list[str]
    tls: bool
    tls_version: str | None
    auth_user: str | None
    helo: str | None
    peer: str
    connection: int
    received: float = field(default_factory=time.time)


class _Handler:
    def __init__(self, double: SMTPDouble) -> None:
        self.d = double

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        drop = {x.upper() for x in self.d.drop_extensions}
        if not self.d.auth:
            drop.add("AUTH")
        return [r for r in responses
                if r[4:].split(" ", 1)[0].upper() not in drop]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        d = self.d
        reply = d._next(d._mail_script, d.mail_default)
        tls = server._tls_protocol is not None
        rec = Transaction(connection=_conn_no(session), mail_from=_null(address),
                          mail_options=list(mail_options), mail_reply=reply, tls=tls,
                          auth_user=_auth_user(session), helo=session.host_name)
        with d._cond:
            d.transactions.append(rec)
            d._cond.notify_all()
        if reply.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            envelope.pbx_record = rec
        return reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        d = self.d
        if d.rcpt_delay:
            await asyncio.sleep(d.rcpt_delay)
        with d._cond:
            queue = d._rcpt_script.get(address.lower())
            reply = queue.popleft() if queue else d.rcpt_default
            rec = getattr(envelope, "pbx_record", None)
            if rec is not None:
                rec.rcpts.append((address, reply))
                rec.rcpt_times.append(time.time())
            d._cond.notify_all()
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        d = self.d
        reply = d._next(d._data_script, d.data_default)
        tls = server._tls_protocol is not None
        ssl_obj = server.transport.get_extra_info("ssl_object") if tls else None
        with d._cond:
            rec = getattr(envelope, "pbx_record", None)
            if rec is not None:
                rec.data_reply = reply
            if reply.startswith("2"):
                content = envelope.original_content or envelope.content or b""
                d.messages.append(Message(
                    mail_from=_null(envelope.mail_from), rcpts=list(envelope.rcpt_tos),
                    content=bytes(content), mail_options=list(envelope.mail_options),
                    tls=tls, tls_version=ssl_obj.version() if ssl_obj else None,
                    auth_user=_auth_user(session), helo=session.host_name,
                    peer=str(session.peer[0]) if session.peer else "",
                    connection=_conn_no(session)))
            d._cond.notify_all()
        return reply


def _null(address: str) -> str:
    """aiosmtpd gives the null reverse-path as "<>" (and needs it so); we record ""."""
    return "" if address == "<>" else address


def _conn_no(session) -> int:
    return getattr(session, "pbx_conn", 0)


def _auth_user(session) -> str | None:
    if not session.authenticated:
        return None
    data = session.auth_data
    if isinstance(data, LoginPassword):
        return data.login.decode("utf-8", "replace")
    return str(data)


class _SMTP(SMTP):
    """aiosmtpd's server, numbering connections for the records."""

    def __init__(self, double: SMTPDouble, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._double = double

    def connection_made(self, transport) -> None:
        after_starttls = self._original_transport is not None
        number = getattr(self.session, "pbx_conn", 0)
        super().connection_made(transport)  # a new session, also after STARTTLS
        if after_starttls:
            self.session.pbx_conn = number
            return
        with self._double._cond:
            self._double.connections += 1
            self._double.open_connections += 1
            self._double.max_open_connections = max(self._double.max_open_connections,
                                                    self._double.open_connections)
            self.session.pbx_conn = self._double.connections
            self._counted = True
            self._double._cond.notify_all()

    def connection_lost(self, exc) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            with self._double._cond:
                self._double.open_connections -= 1
                self._double._cond.notify_all()
        super().connection_lost(exc)


class SMTPDouble:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, starttls: bool = True,
                 auth: tuple[str, str] | None = None, hostname: str = "double.test",
                 drop_extensions: tuple[str, ...] = ()) -> None:
        self.host = host
        self.port = port
        self.starttls = starttls
        self.auth = auth
        self.hostname = hostname
        self.drop_extensions = drop_extensions  # EHLO keywords not to advertise
        self.mail_default = OK_MAIL
        self.rcpt_default = OK_RCPT
        self.data_default = OK_DATA
        self.rcpt_delay = 0.0  # seconds to wait before each RCPT reply (a slow server)
        self._mail_script: deque[str] = deque()
        self._data_script: deque[str] = deque()
        self._rcpt_script: dict[str, deque[str]] = {}
        self.transactions: list[Transaction] = []
        self.messages: list[Message] = []
        self.auth_attempts: list[tuple[str, str, bool]] = []  # (mechanism, login, ok)
        self.connections = 0  # connections accepted so far
        self.open_connections = 0
        self.max_open_connections = 0  # the most open at one time
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ----------------------------------------------------------------

    def script_mail(self, *replies: str) -> None:
        with self._cond:
            self._mail_script.extend(replies)

    def script_rcpt(self, address: str, *replies: str) -> None:
        """Replies for RCPT TO:<address>, one per attempt; then `rcpt_default`."""
        with self._cond:
            self._rcpt_script.setdefault(address.lower(), deque()).extend(replies)

    def script_data(self, *replies: str) -> None:
        """Replies to the end of DATA, one per message; then `data_default`."""
        with self._cond:
            self._data_script.extend(replies)

    def _next(self, queue: deque[str], default: str) -> str:
        with self._cond:
            return queue.popleft() if queue else default

    # -- observing ----------------------------------------------------------------

    def wait_for(self, predicate, timeout: float, what: str):
        """Wait until predicate() (called under the lock) is true; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"SMTP double on {self.host}:{self.port}: timed out after "
                        f"{timeout:.0f}s waiting for {what}; {self.summary()}")
                self._cond.wait(min(remaining, 0.5))

    def wait_for_messages(self, n: int, timeout: float = 10) -> list[Message]:
        return self.wait_for(lambda: len(self.messages) >= n and list(self.messages),
                             timeout, f"{n} message(s)")

    def wait_for_transactions(self, n: int, timeout: float = 10) -> list[Transaction]:
        def done():
            finished = [t for t in self.transactions
                        if t.data_reply is not None or t.rcpts and not t.accepted_rcpts]
            return len(finished) >= n and list(self.transactions)

        return self.wait_for(done, timeout, f"{n} finished transaction(s)")

    async def await_messages(self, n: int, timeout: float = 10) -> list[Message]:
        return await asyncio.to_thread(self.wait_for_messages, n, timeout)

    def rcpt_attempts(self, address: str) -> list[tuple[float, str]]:
        """(when we replied, our reply) of every RCPT TO for this address, oldest first."""
        with self._cond:
            return [(when, reply) for t in self.transactions
                    for (a, reply), when in zip(t.rcpts, t.rcpt_times, strict=True)
                    if a.lower() == address.lower()]

    def summary(self) -> str:
        with self._cond:
            tx = [f"<{t.mail_from}> {t.rcpts} data={t.data_reply!r} tls={t.tls}"
                  for t in self.transactions[-10:]]
            return (f"connections={self.connections} transactions={len(self.transactions)} "
                    f"messages={len(self.messages)} last: {tx}")

    # -- lifecycle ----------------------------------------------------------------

    def _authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = False
        login = ""
        if isinstance(auth_data, LoginPassword) and self.auth:
            login = auth_data.login.decode("utf-8", "replace")
            ok = (login, auth_data.password.decode("utf-8", "replace")) == self.auth
        with self._cond:
            self.auth_attempts.append((mechanism, login, ok))
        # handled=False: aiosmtpd then sends the 535 itself
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _factory(self) -> SMTP:
        return _SMTP(
            self, _Handler(self), hostname=self.hostname, ident="pillarbox test double",
            tls_context=server_tls_context() if self.starttls else None,
            auth_required=bool(self.auth), auth_require_tls=True,
            authenticator=self._authenticator, enable_SMTPUTF8=True, decode_data=False,
            data_size_limit=50 * 1024 * 1024, timeout=30, loop=self._loop,
        )

    def start(self) -> SMTPDouble:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(self._factory, self.host, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: BLE001 - reported to start()
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="smtp-double", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("SMTP double did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or loop.is_closed():
            return

        async def shutdown() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await asyncio.sleep(0)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def __enter__(self) -> SMTPDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class GreetingServer:
    """A server that only greets (e.g. "554 5.7.1 go away") and then hangs up.

    aiosmtpd always greets with 220, so a refusing greeting needs this.
    """

    def __init__(self, greeting: str, host: str = "127.0.0.1", port: int = 0) -> None:
        import socketserver

        self.greeting = greeting
        self.connections = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with owner._lock:
                    owner.connections += 1
                self.request.sendall(owner.greeting.encode() + b"\r\n")
                self.request.settimeout(2)
                try:  # read whatever the client says (QUIT) until it hangs up
                    while self.request.recv(4096):
                        self.request.sendall(b"221 2.0.0 bye\r\n")
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, port), Handler)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> GreetingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
