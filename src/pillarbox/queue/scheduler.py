"""Queue workers: replay each queued message through routing into its targets.

A message leaves the queue only when every delivery of it is done or has
failed for good. Deferred deliveries wait on a timer heap, so an idle queue
costs no CPU however many messages it holds.
"""

from __future__ import annotations

import asyncio
import heapq
import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from pillarbox import logs, metrics, module, pipelines, route, srs
from pillarbox.address import domain_of
from pillarbox.check import Reply
from pillarbox.config import Config
from pillarbox.directory.aliases import Aliases
from pillarbox.directory.users import Users
from pillarbox.lists import addresses as lists_addresses
from pillarbox.modify import pgp_encrypt
from pillarbox.printable import escape
from pillarbox.queue import bounce, sendmail_pipeline
from pillarbox.queue.spool import (
    SEGMENT_MAX_AGE,
    BodyBuffer,
    Delivery,
    Envelope,
    Spool,
    SpoolFull,
    State,
    disk_full,
    new_id,
)
from pillarbox.resolver import sync_lookup
from pillarbox.target import mailbox, pipe
from pillarbox.target.remote import RemoteTarget, Trace
from pillarbox.tasks import cancel_all

log = logging.getLogger("pillarbox.queue")

COMPACT_EVERY = 60.0
STOP_TIMEOUT = 10.0
PICKUP_RETRY = 30.0  # seconds; maildrop files wait this long when the disk was full
_DSN_RE = re.compile(r"(?:[245]\d\d[ -])?([245]\.\d{1,3}\.\d{1,3})\b")
# A delivery's outcome: (status, event name, level) for its log line.
_SENT = ("sent", "delivered", logging.INFO)
_DEFERRED = ("deferred", "delivery deferred", logging.INFO)
_BOUNCED = ("bounced", "delivery failed", logging.WARNING)



class Queue:
    def __init__(self, config: Config, spool: Spool, users: Users, aliases: Aliases) -> None:
        self.config = config
        self.spool = spool
        self.users = users
        self.aliases = aliases
        self.mail_root = config.mail_root
        self.maildir = mailbox.MaildirWriter()
        self._maildirs: dict[str, Path] = {}
        self.remote = RemoteTarget(config)
        self.signing = None  # modify.signing.Signing, set by the server
        self.sealer = None  # modify.arc.Sealer, set by the server
        self.modules: dict[str, object] = {}  # instances by name, set by the server
        # modify.encryption_policy.Encryption, set by the server: encryption at rest
        self.encryption = None
        self._sealed: set[str] = set()  # ids a copy of which was encrypted (scrub when done)
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._timers: list[tuple[float, str]] = []
        self._timer_wakeup = asyncio.Event()
        self._active: set[str] = set()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._pickup_retry: asyncio.Task | None = None
        self._stopping = False
        # Set by queue/spool_keeper.py on PostgreSQL with a shared directory:
        # workers start attempts only while it is set (this node holds the
        # spool's lease). None: always (one node, the SQLite path).
        self.gate: asyncio.Event | None = None
        self.intake: Queue = self  # where new mail (bounces) goes
        self.takeover = False  # another node's spool: deliver only, never append
        self._srs: srs.Srs | None = None
        # Set by the mailing_list target when one-click unsubscribe is on:
        # (entry's sender, member) -> header fields for that member's copy.
        self.personalize: Callable[[str, str], bytes] | None = None

    @property
    def srs(self) -> srs.Srs | None:
        """SRS ([delivery] srs); its key is made in data_dir on first use."""
        if not self.config.delivery.srs:
            return None
        if self._srs is None:
            # one secret for all nodes sharing a directory: any node takes the bounces
            self._srs = srs.Srs(srs.load_key(self.config.shared_dir or self.config.data_dir))
        return self._srs

    def _forward_sender(self, env: Envelope, d: Delivery) -> str:
        """The envelope sender for a remote delivery: SRS0 when an alias of ours
        forwards an outside sender's mail, so SPF passes at the next hop."""
        sender = env.mail_from
        if env.source == "list":  # a mailing list's copy: VERP, one sender per member
            return lists_addresses.verp(sender.replace("+bounces@", "@", 1), d.to)
        if (not sender or d.rcpt == d.to or self.config.is_local_domain(domain_of(sender))
                or not self.config.is_local_domain(domain_of(d.rcpt)) or self.srs is None):
            return sender
        rewritten = self.srs.forward(sender, self.config.delivery.srs_domain)
        if rewritten is None:
            log.info("sender not rewritten (too long for SRS) id=%s sender=%s", env.id, sender)
            return sender
        return rewritten

    def _seal_domains(self, env: Envelope, d: Delivery) -> tuple[str, ...]:
        """Whose key ARC-seals a remote delivery: () unless an alias of ours
        forwards mail that came in on the MX without a login (our users' mail
        is DKIM-signed instead; sendmail and bounces are ours too). The
        alias's domain, else the hostname's (as for bounces)."""
        if (self.sealer is None or not self.config.delivery.arc_seal or d.rcpt == d.to
                or env.auth is not None or env.source != "smtp"
                or not self.config.is_local_domain(domain_of(d.rcpt))):
            return ()
        return tuple(dict.fromkeys((domain_of(d.rcpt), self._host_domain())))

    def _host_domain(self) -> str:
        """The local domain the hostname belongs to, else the first one."""
        host = self.config.hostname
        return next((d for d in self.config.domains if host == d or host.endswith("." + d)),
                    self.config.domains[0])

    async def _arc_sealed(self, env: Envelope, message: bytes,
                          domains: tuple[str, ...]) -> bytes:
        """The message with an ARC set prepended; unsealed when sealing fails
        (logged): a forward without a seal beats no forward."""
        sealer = self.sealer
        assert sealer is not None  # _seal_domains gave domains
        lookup = sync_lookup(self.remote.resolver, asyncio.get_running_loop())
        try:
            fields = await asyncio.to_thread(sealer.seal, message, domains,
                                             self.config.hostname, lookup)
        except Exception as e:
            log.warning("ARC sealing failed, sent unsealed id=%s error=%r", env.id, e)
            return message
        return fields + message

    def reconfigure(self, config: Config) -> None:
        """A reload: retry schedule, lifetime, free-space floor, remote
        delivery and routes apply to the next attempts; workers stay."""
        self.config = config
        self.spool.min_free_space = config.queue.min_free_space
        self.remote.reconfigure(config)
        if self.encryption is not None:
            self.encryption.settings = config.encryption
            self._configure_encryption()

    # -- intake -----------------------------------------------------------

    async def enqueue(self, mail_from: str, rcpts: list[str], chunks: Iterable[bytes], size: int,
                      auth: str | None = None, source: str = "smtp",
                      msg_id: str | None = None, body: BodyBuffer | None = None,
                      quarantine: bool = False, client_ip: str = "") -> str:
        """Store durably (fsync'd) and schedule; return the queue id.

        Raises SpoolFull when the disk is too full; nothing is stored then.
        """
        if self.intake is not self:  # a spool taken over: new mail goes to our own
            return await self.intake.enqueue(mail_from, rcpts, chunks, size, auth=auth,
                                             source=source, msg_id=msg_id, body=body,
                                             quarantine=quarantine, client_ip=client_ip)
        env = Envelope(id=msg_id or new_id(), mail_from=mail_from, rcpts=rcpts,
                       received=time.time(), size=size, auth=auth, source=source,
                       client_ip=client_ip, quarantine=quarantine)
        await self.spool.append(env, chunks, body)
        self._schedule_now(env.id)
        return env.id

    def _schedule_now(self, msg_id: str) -> None:
        if msg_id not in self._queued:
            self._queued.add(msg_id)
            self._ready.put_nowait(msg_id)

    def _schedule_at(self, when: float, msg_id: str) -> None:
        heapq.heappush(self._timers, (when, msg_id))
        self._timer_wakeup.set()

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        envs = await asyncio.to_thread(self.spool.load, not self.takeover)
        if self._scrubs():
            self._configure_encryption()
            if not self.takeover:  # a spool taken over is read-only: its node scrubs at start
                # Finished before a kill, maybe before their delayed scrub: zero them now.
                await asyncio.to_thread(self.spool.scrub_now, self.spool.unscrubbed)
        now = time.time()
        for env in envs:
            msg_id = env.id
            state = self.spool.read_state(msg_id)
            due = self._wake_at(env, state) if state else now
            if due is None or due <= now:
                self._schedule_now(msg_id)
            else:
                self._schedule_at(due, msg_id)
        if not self.takeover:  # its sendmail drops wait for their own node
            await self.pickup()
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="queue-timers"))
        if not self.takeover:
            self._tasks.append(asyncio.create_task(self._compactor(), name="queue-compactor"))
        for i in range(self.config.queue.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"queue-worker-{i}"))
        logs.event(log, logging.INFO, "queue loaded", messages=len(envs),
                   due=self._ready.qsize())

    @property
    def pending(self) -> int:
        """Messages in the spool not finished yet."""
        return len(self.spool.index)

    async def idle(self) -> None:
        """Until no attempt runs (the gate closed: none starts)."""
        while self._active:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        # Anything not finished in time is still in the spool for the next start.
        self._stopping = True
        pending = await cancel_all(self._tasks, STOP_TIMEOUT)
        if pending:
            log.warning("queue stop: %d tasks did not end; their messages stay queued",
                        len(pending))
        await asyncio.to_thread(self.spool.flush_scrubs)  # no delayed scrub left undone
        await asyncio.to_thread(pgp_encrypt.stop_child)
        await self.remote.close()

    async def pickup(self) -> int:
        """Take messages that `pillarbox sendmail` dropped into maildrop/.

        On a full disk they stay there, and another pickup is tried later."""
        try:
            ids = await self.spool.pickup(self._admit_sendmail)
        except (SpoolFull, OSError) as e:
            log.warning("maildrop pickup failed, retrying in %.0fs error=%r", PICKUP_RETRY, e)
            if self._pickup_retry is None or self._pickup_retry.done():
                self._pickup_retry = asyncio.create_task(self._pickup_later())
                self._tasks.append(self._pickup_retry)
            return 0
        for msg_id in ids:
            self._schedule_now(msg_id)
        return len(ids)

    async def _admit_sendmail(self, env: Envelope, data: bytes) -> tuple[Envelope, bytes] | None:
        """A drop through a configured [pipeline.sendmail] (None: nothing left
        to queue); as it is with the default pipeline or for a bounce."""
        if env.source != "sendmail" or sendmail_pipeline.configured(
                self.config, self.modules) is None:
            return env, data
        out = await sendmail_pipeline.admit(self, env.id, env.mail_from, env.rcpts, data,
                                            sendmail_pipeline.uid_of(data))
        if out is None:
            return env, data
        if not out.rcpts:
            return None
        env.mail_from, env.rcpts, env.size = out.mail_from, out.rcpts, len(out.message)
        env.quarantine = env.quarantine or out.quarantine
        return env, out.message

    async def _pickup_later(self) -> None:
        await asyncio.sleep(PICKUP_RETRY)
        self._tasks.remove(asyncio.current_task())  # type: ignore[arg-type]
        self._pickup_retry = None
        await self.pickup()

    async def retry(self, msg_id: str | None = None) -> int:
        """Make deferred deliveries due now (one message, or all)."""
        ids = [msg_id] if msg_id else list(self.spool.index)
        n = 0
        for i in ids:
            if i not in self.spool.index:
                continue
            state = self.spool.read_state(i)
            if state:
                for d in state.deliveries:
                    if d.state == "deferred":
                        d.next_attempt = 0.0
                await asyncio.to_thread(self.spool.write_state, i, state)
            self._schedule_now(i)
            n += 1
        return n

    async def delete(self, msg_id: str, tell_sender: bool = False) -> str | None:
        """`queue delete`: forget a message, logged; with `tell_sender`, first tell the
        sender which recipients it never reached. None: no such message; else
        the DSN's queue id, or "-" when none was sent."""
        if msg_id not in self.spool.index:
            return None
        while msg_id in self._active:
            await asyncio.sleep(0.05)  # let a running attempt finish writing its state
        if msg_id not in self.spool.index:
            return None  # finished meanwhile
        self._active.add(msg_id)  # no worker starts an attempt while the DSN is queued
        try:
            env = self.spool.envelope(msg_id)
            left = bounce.undelivered(env, self.spool.read_state(msg_id))
            dsn_id = await self._report(env, left, "failed") if tell_sender and left else None
            log.warning("queue delete id=%s from=<%s> to=%s undelivered=%s bounce=%s",
                        msg_id, escape(env.mail_from), escape(",".join(env.rcpts)),
                        escape(",".join(d.to for d in left)),
                        f"yes dsn={dsn_id}" if dsn_id else "no")
            self._sealed.discard(msg_id)
            self.spool.done(msg_id, scrub=self._scrubs())
        finally:
            self._active.discard(msg_id)
        return dsn_id or "-"

    # -- workers ----------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            now = time.time()
            while self._timers and self._timers[0][0] <= now:
                _, msg_id = heapq.heappop(self._timers)
                self._schedule_now(msg_id)
            timeout = self._timers[0][0] - now if self._timers else None
            self._timer_wakeup.clear()
            try:
                await asyncio.wait_for(self._timer_wakeup.wait(), timeout)
            except TimeoutError:
                pass

    async def _compactor(self) -> None:
        while True:
            await asyncio.sleep(COMPACT_EVERY)
            if self.gate is not None and not self.gate.is_set():
                continue  # another node may be delivering from the spool
            try:
                moved = await self.spool.compact(self._active | self._queued)
            except (OSError, SpoolFull) as e:
                log.warning("queue compaction failed error=%r", e)
                continue
            if moved:
                log.info("queue compacted messages=%d", moved)

    async def _worker(self) -> None:
        while not self._stopping:
            if self.gate is not None:
                await self.gate.wait()
            msg_id = await self._ready.get()
            if self.gate is not None and not self.gate.is_set():
                self._ready.put_nowait(msg_id)  # after the lease is back
                continue
            self._queued.discard(msg_id)
            if msg_id in self._active:
                self._schedule_at(time.time() + 1, msg_id)
                continue
            self._active.add(msg_id)
            try:
                await self._process(msg_id)
            except FileNotFoundError:
                pass  # deleted by `queue delete` meanwhile
            except (SpoolFull, OSError) as e:
                # Disk full while writing the state or a bounce: all stays queued.
                log.warning("queue attempt not recorded id=%s error=%r", msg_id, e)
                self._schedule_at(time.time() + self.config.queue.retry_schedule[0], msg_id)
            except Exception:
                log.exception("queue attempt failed id=%s", msg_id)
                self._schedule_at(time.time() + self.config.queue.retry_schedule[0], msg_id)
            finally:
                self._active.discard(msg_id)

    async def _process(self, msg_id: str) -> None:
        env = self.spool.envelope(msg_id)
        state = self.spool.read_state(msg_id)
        if state is None:
            bounced = self.srs if any(srs.is_srs(r) for r in env.rcpts) else None
            state = State(deliveries=self._expand(env, bounced), expanded=True)
        now = started = time.time()
        expired = now - env.received > self.config.queue.max_lifetime
        due = [d for d in state.deliveries
               if d.state not in ("done", "failed") and d.next_attempt <= now]
        # (domain, sender, sealing domains): forwards go apart from direct mail
        remote: dict[tuple[str, str, tuple[str, ...], str], list[Delivery]] = {}
        jobs = []
        traces: dict[int, Trace] = {}  # how each attempt went, for its log line
        for d in due:
            d.attempts += 1
            if d.kind == "remote":
                key = (domain_of(d.to), self._forward_sender(env, d), self._seal_domains(env, d),
                       self._forward_encrypted_for(d))
                remote.setdefault(key, []).append(d)
            else:
                jobs.append(self._attempt_one(env, d, traces))
        if remote:
            message = await asyncio.to_thread(self._read_all, env.id)
            if any(owner for (_, _, _, owner) in remote):
                self._sealed.add(env.id)
            jobs += [self._attempt_remote(env, dom, ds,
                                          await self._encrypted_for(owner, message) if owner
                                          else message, sender, traces, seal)
                     for (dom, sender, seal, owner), ds in remote.items()]
        outcomes: dict[int, str | None] = {}
        # The common case, one mailbox, skips gather's task per job.
        results = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)
        for result in results:
            outcomes.update(result)
        now = time.time()  # backoff counts from the failure, not from the attempt's start
        for d in due:
            error = outcomes[id(d)]
            if error is None:
                d.state, d.last_error = "done", ""
                _log_attempt(env, d, _SENT, None, traces.get(id(d)), started, now)
            elif error.startswith("5") or expired:
                if not error.startswith("5"):
                    error = f"4.4.7 delivery time expired; last error: {error}"
                d.state, d.last_error = "failed", error
                _log_attempt(env, d, _BOUNCED, error, traces.get(id(d)), started, now)
            else:
                d.state, d.last_error = "deferred", error
                d.next_attempt = now + self._backoff(d)
                _log_attempt(env, d, _DEFERRED, error, traces.get(id(d)), started, now)
        # Each failed recipient is reported once, as soon as it failed (not when
        # the last deferred one ends, maybe days later); delivered ones never.
        unreported = [d for d in state.deliveries if d.state == "failed" and not d.reported]
        if all(d.state in ("done", "failed") for d in state.deliveries):
            if unreported:
                await self._report(env, unreported, "failed")
            # With encryption at rest on, the cleartext must not outlive the
            # delivery in a segment that deferred messages keep alive.
            self.spool.done(msg_id, scrub=self._was_encrypted(msg_id, state))
            return
        # Progress first, so that a failing DSN cannot make a delivery repeat;
        # "reported" only after the DSN is queued: rather twice than never.
        await asyncio.to_thread(self.spool.write_state, msg_id, state)
        if unreported:
            await self._report(env, unreported, "failed", others_pending=True)
            for d in unreported:
                d.reported = True
            await asyncio.to_thread(self.spool.write_state, msg_id, state)
        if self._delay_warning_due(env, state, now):
            waiting = [d for d in state.deliveries if d.state in ("pending", "deferred")]
            await self._report(env, waiting, "delayed")
            state.delay_warned = True
            await asyncio.to_thread(self.spool.write_state, msg_id, state)
        nxt = self._wake_at(env, state)
        if nxt is not None:
            self._schedule_at(nxt, msg_id)

    def _forward_encrypted_for(self, d: Delivery) -> str:
        """The local user whose key encrypts a forward (LEAP: forward only
        after encrypting): an alias of a user with encryption and a key; ""."""
        if self.encryption is None or d.rcpt == d.to:
            return ""
        decision = self.encryption.decide(d.rcpt)
        return d.rcpt if decision is not None and decision.cert is not None else ""

    async def _encrypted_for(self, owner: str, message: bytes) -> bytes:
        assert self.encryption is not None
        cert = self.encryption.keys.get(owner)
        if cert is None:  # deleted meanwhile: forwarding in clear would break the promise
            raise OSError(f"the key of {owner} is gone")
        reader = pgp_encrypt.EncryptingReader(io.BytesIO(message), cert, len(message),
                                              self.config.encryption.protect_subject)
        return await asyncio.to_thread(reader.read)

    def _scrubs(self) -> bool:
        return self.encryption is not None and self.encryption.enabled

    def _configure_encryption(self) -> None:
        """Maildir batches encrypted in the encryption child; delayed scrubs,
        and segments rotating three times within the delay: a segment whose
        messages are all delivered is deleted whole before their scrubs fall
        due, so steady traffic rewrites nothing."""
        on = self._scrubs()
        delay = self.config.encryption.scrub_delay
        # encrypted in a child, a batch at once
        self.maildir.prepare = pgp_encrypt.seal_batch if on else None
        self.spool.scrub_delay = delay  # also for the scrubs still pending after a reload
        self.spool.max_age = max(1.0, delay / 3) if on and delay > 0 else SEGMENT_MAX_AGE

    def _was_encrypted(self, msg_id: str, state: State) -> bool:
        """Was a copy encrypted (then its queue record is zeroed)? Mail stored
        in clear everywhere has no cleartext to hide. Asked again of the policy
        for deliveries done before a restart; module targets count as yes."""
        if msg_id in self._sealed:
            self._sealed.discard(msg_id)
            return True
        if not self._scrubs():
            return False
        assert self.encryption is not None
        for d in state.deliveries:
            if d.state != "done":
                continue
            if d.kind == "module":
                return True
            owner = d.to if d.kind == "local" else d.rcpt if d.kind == "remote" else ""
            decision = self.encryption.decide(owner) if owner else None
            if decision is not None and decision.cert is not None:
                return True
        return False

    def _warns(self, env: Envelope) -> bool:
        """Delay warnings go to senders we know: our users and local programs.
        Mail from the internet may have a forged sender (no backscatter)."""
        return (self.config.queue.delay_warning > 0 and bool(env.mail_from)
                and env.source != "bounce" and (env.auth is not None or env.source == "sendmail"))

    def _delay_warning_due(self, env: Envelope, state: State, now: float) -> bool:
        return (not state.delay_warned and self._warns(env)
                and now - env.received >= self.config.queue.delay_warning
                and any(d.state == "deferred" for d in state.deliveries))

    def _wake_at(self, env: Envelope, state: State) -> float | None:
        """When the message needs the queue next: a delivery due, or its delay warning."""
        nxt = _next_due(state)
        if nxt is not None and not state.delay_warned and self._warns(env):
            nxt = min(nxt, env.received + self.config.queue.delay_warning)
        return nxt

    def _backoff(self, d: Delivery) -> float:
        sched = self.config.queue.retry_schedule
        return sched[min(d.attempts - 1, len(sched) - 1)]

    def _expand(self, env: Envelope, bounced: srs.Srs | None) -> list[Delivery]:
        """Delivery rules first (per recipient, first match wins), then the
        default: aliases, local mailboxes, remote. Saved with the state, so a
        retry goes to the same targets even after the rules change."""
        rules = self.config.modules.rules
        if not rules:
            return route.expand(self.aliases, env.rcpts, bounced)
        out: list[Delivery] = []
        rest: list[str] = []
        for rcpt in env.rcpts:
            rule = pipelines.first_match(rules, rcpt, env.mail_from, env.source, env.auth,
                                         env.client_ip)
            if rule is None:
                rest.append(rcpt)
            elif rule.reply:  # mail that passed no RCPT (sendmail, bounces)
                out.append(Delivery(kind="module", to="", rcpt=rcpt, state="failed",
                                    last_error=rule.reply[4:]))
            else:
                out += [Delivery(kind="module", to=t, rcpt=rcpt) for t in rule.targets]
        return out + route.expand(self.aliases, rest, bounced)

    async def _deliver_module(self, env: Envelope, d: Delivery) -> str | None:
        target = self.modules.get(d.to)
        if target is None:  # dropped from the config since: wait for it to come back
            return f"4.3.5 no target module {escape(d.to)} configured"
        menv = module.Envelope(msg_id=env.id, mail_from=env.mail_from, rcpts=[d.rcpt],
                               source=module.Source(env.source, env.client_ip, auth=env.auth),
                               size=env.size)
        delivery = await target.start(menv)  # type: ignore[attr-defined]
        f = await asyncio.to_thread(self.spool.open_message_seekable, env.id)
        try:
            await delivery.add_rcpt(d.rcpt)
            await delivery.body(f)
            result = await delivery.commit()
        except module.DeliveryError as e:
            await delivery.abort()
            return _status(e)
        except BaseException:
            await delivery.abort()
            raise
        finally:
            f.close()
        error = result.get(d.rcpt, module.DeliveryError(
            module.Reply(451, "4.3.0 the target gave no result")))
        return None if error is None else _status(error)

    def _read_all(self, msg_id: str) -> bytes:
        with self.spool.open_message(msg_id) as f:
            return f.read()

    async def _attempt_one(self, env: Envelope, d: Delivery,
                           traces: dict[int, Trace]) -> dict[int, str | None]:
        t0 = time.monotonic()
        trace = traces[id(d)] = Trace(relay="mailbox" if d.kind == "local" else d.kind)
        try:
            return {id(d): await self._attempt(env, d)}
        except Exception as e:
            log.warning("delivery error id=%s to=%s error=%r", env.id, d.to, e)
            if disk_full(e):  # retried like any 4xx; never a bounce
                return {id(d): f"4.3.1 Mail system full: {e.strerror}"}
            return {id(d): _failure(e)}
        finally:
            trace.transfer = time.monotonic() - t0

    async def _attempt_remote(self, env: Envelope, domain: str, ds: list[Delivery],
                              message: bytes, sender: str, traces: dict[int, Trace],
                              seal: tuple[str, ...] = ()) -> dict[int, str | None]:
        trace = Trace()
        for d in ds:
            traces[id(d)] = trace
        if seal:
            message = await self._arc_sealed(env, message, seal)
        if env.source == "list" and self.personalize is not None and len(ds) == 1:
            message = self.personalize(env.mail_from, ds[0].to) + message
        try:
            results = await self.remote.deliver(domain, sender, [d.to for d in ds], message,
                                                trace)
        except Exception as e:
            log.warning("remote delivery error id=%s domain=%s error=%r", env.id, domain, e)
            return {id(d): _failure(e) for d in ds}
        return {id(d): results.get(d.to, "4.3.0 no result") for d in ds}

    async def report_refused(self, msg_id: str, mail_from: str, refused: dict[str, Reply],
                             message: bytes, others_pending: bool = False) -> str | None:
        """A DSN for recipients refused before the message was queued (the
        sendmail pipeline's checks): each fails with the check's reply."""
        env = Envelope(id=msg_id, mail_from=mail_from, rcpts=list(refused),
                       received=time.time(), size=len(message), source="sendmail")
        ds = [Delivery(kind="module", to=r, rcpt=r, state="failed", last_error=why.text)
              for r, why in refused.items()]
        return await self._report(env, ds, "failed", others_pending,
                                  header=bounce.original_header(message[:256 * 1024]))

    async def _report(self, env: Envelope, ds: list[Delivery], action: str,
                      others_pending: bool = False, header: bytes | None = None) -> str | None:
        """Send the sender a DSN about `ds`, unless the message is itself a
        bounce (no loops); return its queue id. `header`: the original
        header, when the message is not in the spool."""
        if not env.mail_from or env.source == "bounce":
            log.info("not bouncing id=%s: null sender", env.id)
            return None

        def head() -> bytes:
            if header is not None:
                return header
            with self.spool.open_message(env.id) as f:
                return bounce.original_header(f.read(256 * 1024))

        retry_until = env.received + self.config.queue.max_lifetime
        dsn = bounce.build(self.config.hostname, env, ds, await asyncio.to_thread(head),
                           action=action, others_pending=others_pending,
                           retry_until=retry_until)
        if self.signing is not None:
            # The bounce comes from MAILER-DAEMON@hostname: sign with the local
            # domain the hostname belongs to, else the first one.
            try:
                dsn = await self.signing.sign(dsn, self._host_domain()) + dsn
            except Exception as e:
                log.warning("DKIM signing of a bounce failed error=%r", e)
        dsn_id = await self.enqueue("", [env.mail_from], [dsn], len(dsn), source="bounce")
        logs.event(log, logging.INFO, "bounce", id=dsn_id, orig_id=env.id,
                   to=f"<{env.mail_from}>", action=action, nrcpt=len(ds))
        return dsn_id

    def _opener(self, env: Envelope, to: str) -> Callable[[], BinaryIO] | str:
        """How the Maildir writer reads the message for mailbox `to`: as
        queued, or encrypted to the user's key (in the writer's thread); a
        str is the error of a delivery held for want of a key."""
        def plain() -> BinaryIO:
            return self.spool.open_message(env.id)  # type: ignore[return-value]

        return plain if self.encryption is None else self.encryption.opener(to, plain, env.size)

    async def _attempt(self, env: Envelope, d: Delivery) -> str | None:
        """Deliver one; None on success, else an error starting with its status."""
        sender = env.mail_from
        if d.kind == "local":
            user = self.users.get(d.to)
            if user is None:
                return "5.1.1 no such user"
            if not user.enabled:
                return "5.2.1 mailbox disabled"
            if user.over_quota:
                return "4.2.2 mailbox full"
            prefix = f"Return-Path: <{sender}>\r\nDelivered-To: {d.via or d.to}\r\n".encode()
            if env.source == "list" and self.personalize is not None:
                prefix += self.personalize(env.mail_from, d.to)
            path = self._maildirs.get(d.to)
            if path is None:
                path = self._maildirs[d.to] = mailbox.maildir_path(self.mail_root, d.to)
            mode = self.config.delivery.detail_folder
            if env.quarantine:
                path = await asyncio.to_thread(mailbox.junk_folder, path)
            elif d.via and mode != "off":  # alice+shopping@: into her folder "shopping"
                detail = d.via.rpartition("@")[0][len(d.to.rpartition("@")[0]) + 1:]
                folder = await asyncio.to_thread(mailbox.detail_folder, path, detail,
                                                 mode == "create")
                path = folder or path
            opener = self._opener(env, d.to)
            if isinstance(opener, str):
                return opener
            if isinstance(opener, pgp_encrypt.Sealing):
                self._sealed.add(env.id)
            size = await self.maildir.deliver(path, prefix, opener)
            self.users.add_used(d.to, size)
            return None
        if d.kind == "pipe":
            prefix = f"Return-Path: <{sender}>\r\nDelivered-To: {d.rcpt}\r\n".encode()
            f = await asyncio.to_thread(self.spool.open_message, env.id)
            try:
                await pipe.deliver(d.to, prefix, f, sender, d.rcpt)
            except pipe.PipeFailed as e:
                return f"4.3.0 {e}"
            finally:
                f.close()
            return None
        if d.kind == "module":
            return await self._deliver_module(env, d)
        return f"5.3.0 unknown delivery kind {d.kind}"


def _status(e: module.DeliveryError) -> str:
    """A target's refusal as the queue's error text: it starts with an
    enhanced status whose class (4 retry, 5 bounce) agrees with the code."""
    text = e.reply.text
    cls = "4" if e.temporary else "5"
    if re.match(r"[245]\.\d{1,3}\.\d{1,3} ", text) and text[0] == cls:
        return text
    return f"{cls}.0.0 {text}"


def _failure(e: Exception) -> str:
    """The status of an unexpected target error. A ValueError (a bad address, a
    character a protocol cannot carry) fails the same way on every retry: it
    is permanent, so it bounces now instead of after max_lifetime. Anything
    else (I/O, a full disk) may pass: temporary."""
    status = "5.3.0" if isinstance(e, ValueError) else "4.3.0"
    return f"{status} {type(e).__name__}: {escape(str(e))}"


def _log_attempt(env: Envelope, d: Delivery, outcome: tuple[str, str, int],
                 error: str | None, trace: Trace | None, started: float, now: float) -> None:
    """One line per recipient per attempt, as Postfix writes them: where it went,
    how long it took (in the queue before this attempt / connecting /
    transferring), the DSN code, the outcome and the reply."""
    status, name, level = outcome
    metrics.delivery(d.to if d.kind == "module" else d.kind, status, now - env.received)
    if not logs.enabled(log, level):
        return
    tr = trace or Trace()
    if error is None:
        m = _DSN_RE.match(tr.reply)
        dsn = m.group(1) if m else "2.0.0"
    else:
        m = _DSN_RE.match(error)
        dsn = m.group(1) if m else ("5.0.0" if error.startswith("5") else "4.0.0")
    pipe_ = d.kind == "pipe"
    logs.event(log, level, name, id=env.id, to=f"<{d.rcpt if pipe_ else d.to}>",
               orig_to=f"<{d.rcpt}>" if d.rcpt != d.to and not pipe_ else None,
               command=d.to if pipe_ else None, relay=tr.relay or "none",
               delay=max(0.0, now - env.received),
               delays="/".join(logs.seconds(x) for x in (max(0.0, started - env.received),
                                                         tr.connect, tr.transfer)),
               dsn=dsn, status=status, attempt=d.attempts, tls=tr.tls,
               reply=error if error is not None else tr.reply or None)


def _next_due(state: State) -> float | None:
    times = [d.next_attempt for d in state.deliveries if d.state in ("pending", "deferred")]
    return min(times) if times else None


__all__ = ["Queue", "new_id"]
