"""Wiring: build the modules a config names, listen, run, stop gracefully."""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import os
import signal
import socket
import ssl
from typing import Any

from pillarbox import control, logs, privileges, registry, tls
from pillarbox.check.ratelimit import LoginThrottle
from pillarbox.config import Config, ConfigError, load, restart_needed
from pillarbox.directory.connect import open_directory
from pillarbox.directory.keys import Keys
from pillarbox.directory.users import Users
from pillarbox.endpoint import beside, smtp
from pillarbox.endpoint.http import wiring as http_wiring
from pillarbox.endpoint.imap import session as imap
from pillarbox.modify import arc, encryption_policy
from pillarbox.modify.dkim_sign import DKIMSigner
from pillarbox.modify.signing import Signing
from pillarbox.queue import public_drop, spool_keeper
from pillarbox.queue.public_pickup import PublicPickup
from pillarbox.queue.scheduler import Queue
from pillarbox.queue.spool import Spool, SpoolFull
from pillarbox.store import backend, datadir
from pillarbox.store.mailbox_index import StoreRegistry
from pillarbox.target import mailbox
from pillarbox.tasks import cancel_all

log = logging.getLogger("pillarbox.server")

SERVED_KINDS = ("smtp", "submission", "submissions", "imap", "imaps", *http_wiring.KINDS)
TLS_CLOSE_GRACE = 1.0  # seconds an implicit-TLS close waits for the peer's close_notify


class ServeError(Exception):
    """The server cannot start; the message is the one-line reason."""


def recount_usage(users: Users, mail_root) -> None:
    """Quota usage from the Maildirs themselves, so mail deleted by a client
    (or by hand) frees its space after a restart."""
    for user in users.list():
        root = mailbox.maildir_path(mail_root, user.address)
        # INBOX plus the Maildir++ folders IMAP clients fill (.Sent, .Archive, ...).
        folders = [p for p in root.glob(".*") if p.is_dir()] if root.is_dir() else []
        used = mailbox.usage(root) + sum(mailbox.usage(p) for p in folders)
        if used != user.used:
            try:
                users.set_used(user.address, used)
            except backend.errors() as e:  # disk full: the count catches up at the next start
                log.warning("quota usage not recounted user=%s error=%r", user.address, e)


def migrate_maildirs(users: Users, mail_root) -> None:
    """Move Maildirs named by the old, ambiguous address mapping (see
    mailbox.path_name) to their new names, before anything is served."""
    renamed, conflicts = mailbox.migrate_paths(mail_root, [u.address for u in users.list()])
    for old, new in renamed:
        log.warning("maildir renamed to the new address mapping old=%s new=%s", old, new)
    for old, owners in conflicts:
        log.warning("maildir %s was shared by users %s under the old address mapping; left "
                    "in place (its mail is mixed): move each user's messages to their "
                    "Maildir by hand", old, ",".join(owners))


def ensure_tls(config: Config) -> None:
    if config.tls_cert is None and not config.cert_path.exists():
        tls.make_self_signed(config.cert_path, config.key_path, config.hostname)


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._servers: list[asyncio.AbstractServer] = []
        self._stop = asyncio.Event()
        self._bound: dict[tuple[str, str, int], list[socket.socket]] = {}  # bound as root
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task] = set()
        self._serving = False  # a SIGHUP before then waits for the start to finish
        self._hup_pending = False
        self._closing: asyncio.Task | None = None  # old modules closing after a reload
        self.public: PublicPickup | None = None
        self.chatmail: Any = None  # chatmail_service.ChatmailService in chatmail mode

    @property
    def serving(self) -> bool:
        return self._serving

    async def _listen(self, kind: str, factory, ssl_ctx=None) -> None:
        # Implicit TLS: the handshake has limits.command_timeout; after our
        # close_notify the peer's is awaited TLS_CLOSE_GRACE at most.
        tls = {"ssl": ssl_ctx, "ssl_handshake_timeout": self.config.limits.command_timeout,
               "ssl_shutdown_timeout": TLS_CLOSE_GRACE} if ssl_ctx else {}
        loop = asyncio.get_running_loop()
        for sock in await self._sockets(kind):
            srv = await loop.create_server(factory, sock=sock, **tls, backlog=1024,
                                           start_serving=False)
            self._servers.append(srv)

    async def _sockets(self, kind: str) -> list[socket.socket]:
        """Listening sockets for every address of listen.KIND (bound as root, or now)."""
        loop = asyncio.get_running_loop()
        out = []
        for host, port in self.config.listen.get(kind, []):
            try:
                # Bound and listening now, so a busy port (or two endpoints on
                # one address) fails the start at once; served only once the
                # queue has loaded: a message taken in meanwhile would race the
                # spool's rebuild of its index.
                socks = self._bound.pop((kind, host, port), None) or await loop.run_in_executor(
                    None, listening_sockets, host, port)
            except OSError as e:
                reason = ("address already in use" if e.errno == errno.EADDRINUSE
                          else e.strerror or str(e))
                raise ServeError(f"listen.{kind}: cannot listen on {host}:{port}: {reason}"
                                 ) from None
            out += socks
            log.info("listening endpoint=%s address=%s:%d", kind, host, port)
        return out

    def _become_service_user(self) -> None:
        """Started as root with `user` set: bind every listener, give data_dir and
        maildrop_dir to the user, then drop to it, before anything is opened."""
        cfg = self.config
        if not cfg.user:  # as root: a warning once started (a failed start says one line)
            return
        try:
            account = privileges.lookup(cfg.user)
        except privileges.PrivilegeError as e:
            raise ServeError(f"user: {e}") from None
        if not privileges.is_root():
            if os.geteuid() != account.uid:
                raise ServeError(f"user: serve runs as uid {os.geteuid()}, neither root nor "
                                 f"{account.name} (uid {account.uid})")
            return
        for kind in SERVED_KINDS:
            for host, port in cfg.listen.get(kind, []):
                try:
                    self._bound[(kind, host, port)] = listening_sockets(host, port)
                except OSError as e:
                    self._close_bound()
                    raise ServeError(f"listen.{kind}: cannot listen on {host}:{port}: "
                                     f"{e.strerror or e}") from None
        try:
            datadir.prepare(cfg.data_dir)
            changed = privileges.give_tree(cfg.data_dir, account)
            if changed:
                log.warning("data directory was not the service user's: gave it and its "
                            "%d entries to user=%s path=%s", changed - 1, account.name,
                            cfg.data_dir)
            if cfg.maildrop_dir is not None:  # the directory only: a drop's owner is its sender
                cfg.maildrop_dir.mkdir(parents=True, exist_ok=True)
                os.chown(cfg.maildrop_dir, account.uid, account.gid)
            backend.load_driver(cfg.storage_url)  # after the drop its files may be unreadable
            privileges.drop_to(account)
        except (OSError, privileges.PrivilegeError) as e:
            self._close_bound()
            raise ServeError(f"user: cannot become {account.name}: {e}") from None
        log.info("running as user=%s uid=%d gid=%d", account.name, account.uid, account.gid)

    def _close_bound(self) -> None:
        for socks in self._bound.values():
            for sock in socks:
                sock.close()
        self._bound.clear()

    async def run(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_exceptions)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._become_service_user()
        try:
            await asyncio.to_thread(datadir.prepare, cfg.data_dir)
            ensure_tls(cfg)
            self.tls = tls_ctx = tls.server_context(cfg.cert_path, cfg.key_path)
        except PermissionError as e:
            raise ServeError(f"data_dir: {e}") from None
        except (OSError, ValueError) as e:
            raise ServeError(f"tls: cannot load the certificate: {e}") from None
        if cfg.maildrop_dir is not None:
            try:
                public_drop.prepare(cfg.maildrop_dir)
            except OSError as e:
                raise ServeError(f"maildrop_dir: cannot use {cfg.maildrop_dir}: "
                                 f"{e.strerror or e}; make it (see docs/OPERATING.md, "
                                 "The sendmail command) or set maildrop_dir = \"\"") from None
        try:
            db, users, aliases = open_directory(cfg, cached=True)
        except (backend.SchemaTooNew, backend.StoreUnavailable) as e:
            raise ServeError(f"storage.url: {e}") from None
        self.users, self.aliases = users, aliases
        await asyncio.to_thread(migrate_maildirs, users, cfg.mail_root)
        # Before anything is served: an IMAP APPEND or EXPUNGE during the
        # recount would be counted twice or lost.
        await asyncio.to_thread(recount_usage, users, cfg.mail_root)
        spool = Spool(cfg.queue_root, cfg.queue.min_free_space)
        self.queue = queue = Queue(cfg, spool, users, aliases)
        keeper = spool_keeper.for_config(cfg, db, queue)  # nodes sharing spools
        self.signing = signing = Signing(cfg)
        queue.signing = signing
        queue.sealer = arc.Sealer(DKIMSigner(cfg.dkim_dir))
        queue.encryption = encryption_policy.Encryption(cfg.encryption, Keys(db))
        # one for SMTP and IMAP: failures add up
        self.throttle = throttle = LoginThrottle(cfg.limits)
        try:
            queue.modules = self._make_modules(cfg)
        except ValueError as e:
            raise ServeError(str(e)) from None
        self.smtp = ctx = smtp.SMTPContext(cfg, users, aliases, queue, tls_ctx, throttle, signing,
                                           modules=queue.modules)
        # New connections get the contexts of the latest reload (see reload()).
        implicit_tls = tls.following(lambda: self.tls)
        try:
            for kind in ("smtp", "submission", "submissions"):
                factory = functools.partial(self._smtp_protocol, kind)
                await self._listen(kind, factory, implicit_tls if kind == "submissions" else None)
            stores = StoreRegistry(cfg.mail_root)
            if db.kind == "postgresql" and cfg.shared_dir is not None:  # nodes share the index
                from pillarbox.store import pg_mailbox_index
                try:
                    pg_mailbox_index.attach(stores, db, loop)
                except (backend.SchemaTooNew, backend.StoreUnavailable) as e:
                    raise ServeError(f"storage.url: {e}") from None
            queue.maildir.on_delivered.append(stores.delivered)  # wakes IMAP IDLE
            self.imap = ictx = imap.IMAPContext(cfg, users, tls_ctx, stores, throttle)
            for kind in ("imap", "imaps"):
                factory = functools.partial(self._imap_protocol, kind)
                await self._listen(kind, factory, implicit_tls if kind == "imaps" else None)
            try:  # LMTP, tcp_table maps, policy service (docs/POSTFIX.md)
                self._servers += await beside.listen(cfg, lambda: self.smtp)
            except beside.ListenError as e:
                raise ServeError(str(e)) from None
            if cfg.mode == "chatmail":  # its services (and their HTTP client) only then
                from pillarbox import chatmail_service
                self.chatmail = chatmail_service.start(cfg, users, queue.maildir)
            await spool_keeper.start_queue(keeper, queue)
            self.web, self.acme, acme_task = await http_wiring.start(
                self, {k: await self._sockets(k) for k in http_wiring.KINDS}, implicit_tls)
            # What start-up built (a backlog's index: 100k deferred messages
            # made a full collection take 0.3 s) lives until the stop: keep it
            # out of the collector's scans, which would stall the event loop.
            gc.freeze()
            for srv in self._servers:
                await srv.start_serving()
            self._servers.append(await control.serve(cfg.data_dir, self._control))
        except BaseException:
            for s in self._servers:
                s.close()
            await spool_keeper.stop_queue(keeper, queue)
            raise
        sweeper = asyncio.create_task(smtp.sweep(ctx))
        imap_sweeper = asyncio.create_task(imap.sweep(ictx))
        self.public = public = (PublicPickup(cfg, queue, aliases)
                                if cfg.maildrop_dir is not None else None)
        public_task = asyncio.create_task(public.run()) if public is not None else None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._serving = True
        if self._hup_pending:
            self._on_sighup()
        log.warning("pillarbox started hostname=%s domains=%s", cfg.hostname,
                    ",".join(cfg.domains))
        if privileges.is_root():  # `user` unset (else it was dropped above)
            log.warning("running as root: set `user` in the config to run as a service "
                        "user; |command aliases are not run as root")
        await self._stop.wait()
        log.warning("pillarbox stopping")
        for s in self._servers:
            s.close()
        sweeper.cancel()
        imap_sweeper.cancel()
        acme_task.cancel()
        if self.web is not None:
            await self.web.stop()
        if public_task is not None:
            public_task.cancel()
            await asyncio.gather(public_task, return_exceptions=True)
            public.close()
        for conn in ctx.sessions:
            conn.close()
        for conn in ictx.sessions:  # RFC 3501 7.1.5: BYE announces a shutdown
            conn.close_saying(b"* BYE [UNAVAILABLE] Server shutting down\r\n")
        await spool_keeper.stop_queue(keeper, queue)
        if self.chatmail is not None:
            await self.chatmail.close()
        await registry.close_instances(queue.modules)
        await asyncio.to_thread(signing.close)
        stores.close_all()
        if users.cache is not None:
            users.cache.flush()
        control.socket_path(cfg.data_dir).unlink(missing_ok=True)

    async def _control(self, cmd: str, arg: str) -> str:
        if cmd == "status":  # live connections, as the connection limits count them
            return f"ok smtp={len(self.smtp.sessions)} imap={len(self.imap.sessions)}"
        if cmd == "reload-directory":
            if self.users.cache is not None:
                self.users.cache.invalidate()
            return "ok 1"
        if cmd == "reload":
            error = await self.reload()
            return "ok" if error is None else f"error {error}"
        if cmd == "pickup":
            return f"ok {await self.queue.pickup()}"
        if cmd == "retry":
            return f"ok {await self.queue.retry(arg or None)}"
        if cmd == "delete":  # "delete ID" or "delete ID bounce"
            msg_id, _, flag = arg.partition(" ")
            try:
                dsn = await self.queue.delete(msg_id, tell_sender=flag == "bounce")
            except (SpoolFull, OSError) as e:
                return f"error cannot queue the DSN ({e!r}); {msg_id} was not deleted"
            return f"ok 1 {dsn}" if dsn else f"error no such message {msg_id}"
        return f"error unknown command {cmd}"


    # -- reload ---------------------------------------------------------------

    def _smtp_protocol(self, kind: str) -> smtp.SMTPProtocol:
        return smtp.SMTPProtocol(self.smtp, kind)

    def _imap_protocol(self, kind: str) -> imap.IMAPProtocol:
        return imap.IMAPProtocol(self.imap, kind)

    def _on_sighup(self) -> None:
        if not self._serving:
            self._hup_pending = True
            return
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> str | None:
        """Read the config file again (SIGHUP, `pillarbox reload`); None when
        it is in effect, else why it was refused, with the old one kept.

        Everything that can fail (the file, its checks, the TLS pair) is done
        before anything changes. New connections then get new contexts; an
        open session keeps the context it started with, so finishes on the
        settings it started with."""
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(load, self.config.path)
                key = restart_needed(self.config, new)
                if key is not None:
                    raise ConfigError(key, "changed; this setting takes effect only at a "
                                      "restart (the old config stays in effect)")
                await asyncio.to_thread(ensure_tls, new)
                tls_ctx = await asyncio.to_thread(tls.server_context, new.cert_path, new.key_path)
                try:
                    instances = self._make_modules(new)
                except ValueError as e:
                    raise ConfigError("module", str(e)) from None
            except ConfigError as e:
                error = str(e)
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                error = f"tls: cannot load the certificate: {e}"
            else:
                old = self.queue.modules
                self._apply(new, tls_ctx, instances)
                # Sessions that started before keep theirs until they end.
                self._closing = asyncio.create_task(registry.close_instances(old))
                log.warning("reload ok config=%s", new.path)
                self.acme.wake()
                return None
            log.warning("reload refused error=%s", error)
            return error

    async def reload_tls(self) -> str | None:
        """Load the pair on disk (ACME renewed it) into every endpoint; None
        when done, else why not (the old pair stays)."""
        async with self._reload_lock:
            try:
                ctx = await asyncio.to_thread(tls.server_context, self.config.cert_path,
                                              self.config.key_path)
            except (OSError, ValueError) as e:
                return f"tls: cannot load the certificate: {e}"
            self._apply(self.config, ctx)
            log.warning("certificate reloaded path=%s", self.config.cert_path)
            return None

    def _make_modules(self, cfg: Config) -> dict[str, object]:
        """The module instances of a config (none for the default one); a
        ValueError says which option value a module refused."""
        env = registry.Env(config=cfg, users=self.users, aliases=self.aliases,
                           srs=self.queue.srs, signing=self.signing,
                           maildir=self.queue.maildir, mail_root=self.queue.mail_root,
                           remote=self.queue.remote, resolver=self.queue.remote.resolver,
                           queue=self.queue, encryption=self.queue.encryption)
        return registry.make_instances(cfg.modules, env)

    def _apply(self, new: Config, tls_ctx: ssl.SSLContext,
               instances: dict[str, object] | None = None) -> None:
        """Swap in a checked config; nothing here may fail halfway."""
        self.config, self.tls = new, tls_ctx
        if instances is not None:
            self.queue.modules = instances
        self.smtp = self.smtp.reconfigured(new, tls_ctx, self.queue.modules)
        self.imap = self.imap.reconfigured(new, tls_ctx)
        self.queue.reconfigure(new)
        self.signing.config = new
        self.aliases.local_domains = set(new.domains)
        self.aliases.delimiter = new.delivery.recipient_delimiter
        self.users.login_cache = new.limits.login_cache
        self.throttle.reconfigure(new.limits)
        if self.public is not None:
            self.public.config = new
        if self.users.cache is not None:  # users and aliases: read again at once
            self.users.cache.invalidate()
        logs.set_level(new.log_level)
        logs.set_format(new.log_format)


def listening_sockets(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for every address `host` names.

    SO_REUSEADDR (a restart must not wait for TIME_WAIT) but never SO_REUSEPORT;
    listen() right after bind(): with SO_REUSEADDR two sockets may bind one
    address while neither listens, and uvloop, listening only at start_serving,
    then lost the clash without a word. IPv6 sockets are IPv6-only, so "[::]"
    and "0.0.0.0" on one port are two sockets, as config.py assumes."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def _quiet_exceptions(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    exc = context.get("exception")
    if context.get("message") == "SSL handshake failed":  # on an implicit-TLS port
        transport = context.get("transport")
        peer = transport.get_extra_info("peername") if transport is not None else None
        log.info("TLS handshake failed peer=%s error=%r", peer[0] if peer else "unknown", exc)
        return
    # A client that vanishes mid-handshake, or a session cut short by shutdown,
    # is not our error.
    if (isinstance(exc, ConnectionError | TimeoutError | asyncio.CancelledError)
            or "SSL" in type(exc).__name__):
        log.debug("asyncio: %s %r", context.get("message"), exc)
        return
    log.error("asyncio: %s %r", context.get("message"), exc)


def serve(config: Config) -> None:
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(Server(config).run())
        loop.run_until_complete(_end_leftovers())
    finally:
        loop.close()


async def _end_leftovers(timeout: float = 5.0) -> None:
    """Cancel what is still running after a stop, bounded in time.

    asyncio.run() would wait forever for a task that swallows its cancel;
    the spool is fsync'd, so leaving such a task behind loses nothing.
    """
    me = asyncio.current_task()
    pending = await cancel_all((t for t in asyncio.all_tasks() if t is not me), timeout)
    if pending:
        log.warning("stop: %d tasks did not end in %.0fs; exiting anyway", len(pending), timeout)
