"""Delivery to other domains over SMTP: routes or MX lookup, STARTTLS policy,
one transaction per destination carrying all its recipients, connection
reuse and a per-host concurrency limit.

`deliver` returns a result per recipient: None when the next hop accepted
it, else an error text that starts with the remote reply code (or, for
local conditions, an enhanced status code): "5..." is permanent and bounces,
anything else is retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from pillarbox import address
from pillarbox.config import Config, Route
from pillarbox.printable import escape
from pillarbox.resolver import make_resolver
from pillarbox.target import mta_sts

log = logging.getLogger("pillarbox.remote")

IDLE_KEEP = 30.0  # seconds an idle connection is kept for reuse
MAX_REUSE = 100  # transactions per connection


class TempFail(Exception):
    """A condition worth retrying (the message starts with a 4.x.x status)."""


class PermFail(Exception):
    """A condition that will not get better (the message starts with a 5.x.x status)."""


@dataclass
class Hop:
    """Where to connect: a host name (for TLS checks and logs), its port, policy."""

    host: str
    port: int
    tls: str  # none | opportunistic | required | verify
    auth: tuple[str, str] | None = None


@dataclass
class Trace:
    """What one delivery attempt did, for its log line; filled in as it goes."""

    relay: str = ""  # host[ip]:port of the last host tried
    tls: str | None = None  # protocol version/cipher
    connect: float = 0.0  # seconds to a usable connection: DNS, TCP, TLS, login
    transfer: float = 0.0  # seconds of MAIL, RCPT and DATA
    reply: str = ""  # the reply to DATA


@dataclass
class _Conn:
    smtp: aiosmtplib.SMTP
    key: tuple
    used: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    tls: bool = False
    tls_desc: str | None = None


class RemoteTarget:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.resolver = make_resolver(config.nameservers)
        self.helo = config.remote.helo or config.hostname
        self._idle: dict[tuple, list[_Conn]] = {}
        self._limits: dict[tuple, asyncio.Semaphore] = {}
        self.sts = mta_sts.PolicyCache(self.resolver) if config.remote.mta_sts else None

    def reconfigure(self, config: Config) -> None:
        """A reload: routes and [remote] apply to the next connections; idle
        pooled ones are keyed by hop, TLS mode and login, so none is reused
        for a route that changed."""
        old, self.config = self.config, config
        self.helo = config.remote.helo or config.hostname
        if old.remote.max_per_destination != config.remote.max_per_destination:
            self._limits = {}  # holders of the old semaphores let go in their time
        if (old.nameservers, old.remote.mta_sts) != (config.nameservers, config.remote.mta_sts):
            self.resolver = make_resolver(config.nameservers)
            self.sts = mta_sts.PolicyCache(self.resolver) if config.remote.mta_sts else None

    # -- next hops --------------------------------------------------------------

    def route_for(self, domain: str, sender: str) -> Route | None:
        for r in self.config.routes:
            if r.matches(domain, sender):
                return r
        return None

    async def hops(self, domain: str, sender: str) -> list[Hop]:
        route = self.route_for(domain, sender)
        if route is not None and route.host:
            auth = (route.auth_user, route.auth_password) if route.auth_user else None
            return [Hop(route.host, route.port, route.tls, auth)]
        tls = route.tls if route is not None else "opportunistic"
        if domain.startswith("["):  # an address literal: that host, no MX (RFC 5321 5.1)
            return [Hop(_literal_ip(domain), self.config.remote.port, tls)]
        hosts = await self.mx_hosts(domain)
        if self.sts is not None and tls != "none":
            policy = await self.sts.get(domain)
            if policy is not None and policy.mode == "enforce":
                allowed = [h for h in hosts if policy.allows(h)]
                if not allowed:
                    raise TempFail(f"4.7.5 no MX host of {domain} matches its MTA-STS policy")
                hosts, tls = allowed, "verify"
        return [Hop(h, self.config.remote.port, tls) for h in hosts]

    async def mx_hosts(self, domain: str) -> list[str]:
        """MX hosts by preference (random among equals); the domain itself if it has none."""
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise PermFail(f"5.1.2 domain {domain} does not exist") from None
        except dns.resolver.NoAnswer:
            return [domain]  # implicit MX (RFC 5321 5.1)
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as e:
            raise TempFail(f"4.4.3 DNS lookup of {domain} MX failed: {type(e).__name__}") from None
        except dns.exception.DNSException as e:  # not a name DNS can hold: never will be
            raise PermFail(f"5.1.2 bad domain {escape(domain)}: {type(e).__name__}") from None
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        hosts = [str(r.exchange).rstrip(".") for r in records]
        if hosts == [""] or hosts == ["."]:
            raise PermFail(f"5.1.10 domain {domain} accepts no mail (null MX)")
        return [h for h in hosts if h]

    async def addresses(self, host: str) -> list[str]:
        if _is_ip(host):
            return [host]
        ips: list[str] = []
        temp_error = None
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype)
                ips += [r.address for r in answer]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.resolver.NoNameservers, dns.exception.Timeout) as e:
                temp_error = e
        if not ips and temp_error is not None:
            raise TempFail(f"4.4.3 DNS lookup of {host} failed: {type(temp_error).__name__}")
        return ips

    # -- delivery -----------------------------------------------------------------

    async def deliver(self, domain: str, sender: str, rcpts: list[str],
                      message: bytes, trace: Trace | None = None) -> dict[str, str | None]:
        """Deliver one message to the recipients of one domain; `trace` records how."""
        trace = trace if trace is not None else Trace()
        started = time.monotonic()
        try:
            hops = await self.hops(domain, sender)
        except (TempFail, PermFail) as e:
            return dict.fromkeys(rcpts, str(e))
        errors: list[str] = []
        tried_any = False
        for hop in hops:
            try:
                ips = await self.addresses(hop.host)
            except TempFail as e:
                errors.append(str(e))
                continue
            for ip in ips:
                tried_any = True
                trace.relay = f"{hop.host}[{ip}]:{hop.port}"
                trace.tls, trace.connect, trace.transfer = None, 0.0, 0.0
                try:
                    return await self._transaction(hop, ip, sender, rcpts, message, trace,
                                                   started)
                except TempFail as e:
                    errors.append(f"{e} ({hop.host}[{ip}])")
                    log.info("remote hop failed host=%s ip=%s error=%r", hop.host, ip, str(e))
                except PermFail as e:
                    return dict.fromkeys(rcpts, f"{e} ({hop.host}[{ip}])")
        trace.connect = trace.connect or time.monotonic() - started
        if not tried_any and not errors:
            return dict.fromkeys(rcpts, f"5.1.2 no address for any mail host of {domain}")
        return dict.fromkeys(rcpts, errors[-1] if errors else "4.4.1 no host reachable")

    async def _transaction(self, hop: Hop, ip: str, sender: str, rcpts: list[str],
                           message: bytes, trace: Trace, started: float
                           ) -> dict[str, str | None]:
        key = (ip, hop.port, hop.tls, hop.auth)
        sem = self._limits.setdefault(
            (ip, hop.port), asyncio.Semaphore(self.config.remote.max_per_destination))
        async with sem:
            conn = self._take_idle(key)
            if conn is None:
                try:
                    conn = await self._connect(hop, ip, key)
                except TempFail as e:
                    if (hop.tls != "opportunistic" or hop.auth
                            or not str(e).startswith("4.7.5")):
                        raise  # never fall back to clear text with a password
                    # STARTTLS failed: opportunistic TLS falls back to clear text.
                    log.info("TLS failed, retrying in clear host=%s error=%r", hop.host, str(e))
                    clear = Hop(hop.host, hop.port, "none", hop.auth)
                    conn = await self._connect(clear, ip, key)
            ready = time.monotonic()
            trace.connect, trace.tls = ready - started, conn.tls_desc
            ok = False
            try:
                result = await self._send(conn, sender, rcpts, message, trace)
                ok = True
                return result
            except aiosmtplib.SMTPResponseException as e:
                code = e.code
                text = f"{code} {e.message}".strip()
                raise (PermFail if 500 <= code < 600 else TempFail)(text) from None
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                raise TempFail(f"4.4.2 connection to {hop.host} lost: {_why(e)}") from None
            finally:
                trace.transfer = time.monotonic() - ready
                if ok and conn.used < MAX_REUSE:
                    conn.idle_since = time.monotonic()
                    self._idle.setdefault(key, []).append(conn)
                else:
                    conn.smtp.close()

    def _take_idle(self, key: tuple) -> _Conn | None:
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if now - conn.idle_since < IDLE_KEEP and conn.smtp.is_connected:
                return conn
            conn.smtp.close()
        return None

    async def _connect(self, hop: Hop, ip: str, key: tuple) -> _Conn:
        cfg = self.config.remote
        smtp = aiosmtplib.SMTP(hostname=ip, port=hop.port, local_hostname=self.helo,
                               timeout=cfg.command_timeout, start_tls=False, use_tls=False)
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                await smtp.connect()
            await smtp.ehlo()
            tls = False
            if hop.tls != "none":
                if smtp.supports_extension("starttls"):
                    await smtp.starttls(tls_context=_tls_context(hop.tls),
                                        server_hostname=hop.host)
                    await smtp.ehlo()
                    tls = True
                elif hop.tls in ("required", "verify"):
                    raise TempFail(f"4.7.4 TLS is required for {hop.host} but it does not "
                                   "offer STARTTLS")
            if hop.auth:
                if not tls and hop.tls != "none":
                    raise TempFail(f"4.7.4 will not send the password for {hop.host} in clear")
                await smtp.login(*hop.auth)
        except aiosmtplib.SMTPAuthenticationError as e:
            # Our credentials are wrong: an operator's problem, not the recipient's.
            # Keep the mail (as Postfix's smtp_sasl_auth_soft_bounce does).
            smtp.close()
            raise TempFail(f"4.7.8 login to {hop.host} refused: {e.code} {e.message}") from None
        except aiosmtplib.SMTPResponseException as e:
            # A 5xx greeting or EHLO refusal says "not this host": try the next
            # one (Postfix's smtp_skip_5xx_greeting) rather than bounce.
            smtp.close()
            raise TempFail(f"{e.code} {e.message}") from None
        except (TempFail, PermFail):
            smtp.close()
            raise
        except ssl.SSLError as e:
            smtp.close()
            raise TempFail(f"4.7.5 TLS with {hop.host} failed: {_why(e)}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            smtp.close()
            raise TempFail(f"4.4.1 cannot connect to {hop.host}: {_why(e)}") from None
        ssl_obj = smtp.get_transport_info("ssl_object") if tls else None
        desc = f"{ssl_obj.version()}/{ssl_obj.cipher()[0]}" if ssl_obj is not None else None
        return _Conn(smtp, key, tls=tls, tls_desc=desc)

    async def _send(self, conn: _Conn, sender: str, rcpts: list[str],
                    message: bytes, trace: Trace) -> dict[str, str | None]:
        smtp = conn.smtp
        if conn.used:
            await smtp.rset()
        conn.used += 1
        options = []
        eight_bit = not message.isascii()
        utf8_envelope = not (sender.isascii() and all(r.isascii() for r in rcpts))
        if utf8_envelope:
            if not smtp.supports_extension("smtputf8"):
                raise PermFail("5.6.7 the receiving server does not support SMTPUTF8, "
                               "which these addresses need")
            options.append("SMTPUTF8")
        if eight_bit:
            if smtp.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
            else:
                # Downgrading MIME would alter signed content: refuse instead.
                raise PermFail("5.6.3 the receiving server does not accept 8-bit "
                               "messages (no 8BITMIME)")
        size = smtp.esmtp_extensions.get("size", "")
        if size.isdigit() and int(size) and len(message) > int(size):
            raise PermFail(f"552 5.3.4 message size {len(message)} exceeds the receiving "
                           f"server's limit of {size}")
        await smtp.mail(sender, options=options, encoding="utf-8" if utf8_envelope else "ascii")
        results: dict[str, str | None] = {}
        accepted = []
        for rcpt in rcpts:
            try:
                await smtp.rcpt(rcpt, encoding="utf-8" if utf8_envelope else "ascii")
                accepted.append(rcpt)
            except aiosmtplib.SMTPRecipientRefused as e:
                results[rcpt] = f"{e.code} {e.message}"
        if not accepted:
            await smtp.rset()
            return results
        resp = await smtp.data(message)
        trace.reply = f"{resp.code} {resp.message}"
        for rcpt in accepted:
            results[rcpt] = None
        return results

    async def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.smtp.close()
        self._idle.clear()


def _tls_context(mode: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if mode != "verify":
        # Opportunistic and "required" encrypt without authenticating the
        # peer (as most MTAs do); "verify" and MTA-STS check the certificate.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _literal_ip(domain: str) -> str:
    try:
        _, literal = address.split("x@" + domain)
    except address.AddressError:
        raise PermFail(f"5.1.2 bad address literal {escape(domain)}") from None
    return literal[1:-1].removeprefix("IPv6:")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _why(e: BaseException) -> str:
    return str(e) or type(e).__name__


# -- as a module (kind "remote") -----------------------------------------------------
# The queue's own remote delivery (per destination, with pooling) stays the
# default route; this target is the same delivery for rules that name it.


from pillarbox import module  # noqa: E402
from pillarbox.address import domain_of  # noqa: E402
from pillarbox.check import Reply  # noqa: E402


def _error(text: str) -> module.DeliveryError:
    code = 451 if text[:1] == "4" else 550
    return module.DeliveryError(Reply(code, text))


class _Delivery(module.BaseDelivery):
    def __init__(self, remote: RemoteTarget, envelope: module.Envelope) -> None:
        super().__init__(envelope)
        self.remote = remote

    async def commit(self) -> dict[str, module.DeliveryError | None]:
        assert self.message is not None
        data = await asyncio.to_thread(self.message.read)
        by_domain: dict[str, list[str]] = {}
        for r in self.rcpts:
            by_domain.setdefault(domain_of(r), []).append(r)
        out: dict[str, module.DeliveryError | None] = {}
        for domain, rcpts in by_domain.items():
            result = await self.remote.deliver(domain, self.envelope.mail_from, rcpts, data)
            out.update({r: None if e is None else _error(e) for r, e in result.items()})
        return out


class RemoteModule:
    def __init__(self, name: str, options: dict, env) -> None:
        self.name, self.env = name, env

    async def start(self, envelope: module.Envelope) -> _Delivery:
        return _Delivery(self.env.remote, envelope)


KIND = module.Kind(
    name="remote", role="target", options=(),
    make=RemoteModule,
    help="Delivers to the recipient domain's MX hosts (or a matching [[route]]), with "
         "STARTTLS, MTA-STS and the queue's retries.")
