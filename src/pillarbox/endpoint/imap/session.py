"""IMAP sessions: listen.imap (STARTTLS, LOGINDISABLED before it) and listen.imaps.

Like the SMTP endpoint, a thin asyncio Protocol feeds one coroutine per
connection; replies are collected and written in one go before the session
waits for input; one sweep per server closes idle connections. The session
speaks the protocol; mailboxes are reached only through
`pillarbox.store.mailbox_index.MailStore`, so another store can plug in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import functools
import ipaddress
import itertools
import logging
import os
import re
import sqlite3
import ssl
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from pillarbox import __version__, client_ip, logs, metrics
from pillarbox.check.ratelimit import LoginThrottle
from pillarbox.config import Config
from pillarbox.directory.users import Users
from pillarbox.endpoint import connection
from pillarbox.endpoint.connection import Connection, Disconnect, MemoryBudget, SessionTable
from pillarbox.endpoint.imap import (
    append,
    binary,
    catenate,
    compress,
    esearch,
    listing,
    mime,
    qresync,
    rev2,
    search,
    sort,
    thread,
    threadid,
)
from pillarbox.endpoint.imap import metadata as imap_metadata
from pillarbox.endpoint.imap.chatmail_metadata import ChatmailMetadata
from pillarbox.endpoint.imap.parser import (
    LITERAL_RE,
    MONTHS,
    Command,
    FetchAtt,
    ParseError,
    SeqSet,
    parse_command,
    parse_tag,
    seqset_from,
)
from pillarbox.store import backend
from pillarbox.store.mailbox_index import (
    SYSTEM_FLAGS,
    MailboxError,
    MailStore,
    Message,
    StoreRegistry,
    TmpMessage,
    disk_full,
    new_base,
)
from pillarbox.store.metadata import Limits, Metadata
from pillarbox.target import mailbox

log = logging.getLogger("pillarbox.imap")

MAX_AUTH_FAILURES = 5
FLUSH_AT = 256 * 1024  # write out long FETCH responses as they grow
THREAD_READ_AT = 256 * 1024  # read message files larger than this in a thread
STREAM_AT = 256 * 1024  # APPEND literals this large go to a tmp/ file, not to memory
PRE_AUTH_LITERALS = 8 * 1024  # octets of literals one command may carry before login
COPY_SLICE = 200  # messages linked and indexed between two turns of the event loop
LOOP_SLICE = 1000  # messages searched or flagged between two turns of the event loop
APPEND_RE = re.compile(rb"^\S+ +(?:UID +)?APPEND ", re.I)


@dataclass
class IMAPContext:
    config: Config
    users: Users
    tls: ssl.SSLContext | None
    stores: StoreRegistry
    throttle: LoginThrottle
    sessions: SessionTable = field(init=False)  # imap and imaps together
    per_user: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    literals: MemoryBudget = field(init=False)  # imap.max_literal_memory, all sessions

    def __post_init__(self) -> None:
        self.literals = MemoryBudget(self.config.imap.max_literal_memory)
        self.sessions = SessionTable(self.config.limits.max_connections,
                                     self.config.imap.max_connections_per_ip)

    def reconfigured(self, config: Config, tls: ssl.SSLContext) -> IMAPContext:
        """The context for sessions that start after a reload; open sessions
        keep this one. Shared with them: the session table (with the new
        limits), the logins per user, and the literal budget unless its size
        changed (then old sessions drain the old one)."""
        new = replace(self, config=config, tls=tls)  # per_user is carried over
        new.sessions = self.sessions
        self.sessions.limit = config.limits.max_connections
        self.sessions.per_ip_limit = config.imap.max_connections_per_ip
        if config.imap.max_literal_memory == self.literals.limit:
            new.literals = self.literals
        return new


class IMAPProtocol(Connection):
    """One IMAP connection, feeding the Session coroutine."""

    def __init__(self, ctx: IMAPContext, kind: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.kind = kind
        self.table = ctx.sessions
        self.implicit_tls = kind == "imaps"
        self.timeout = ctx.config.limits.command_timeout
        self.min_rate = ctx.config.limits.min_data_rate
        self.session: Session | None = None

    def refusal(self, why: str) -> bytes:
        if why == "address":
            return b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
        return b"* BYE [UNAVAILABLE] Too many connections, try later\r\n"

    def start(self) -> None:
        self.session = Session(self.ctx, self.kind, self)
        self._task = asyncio.get_running_loop().create_task(self.session.run_guarded())


def imap_date(ts: float) -> str:
    d = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return f"{d.day:02d}-{MONTHS[d.month - 1]}-{d.year:04d} {d:%H:%M:%S} +0000"


def flag_list(flags, recent: bool = False) -> bytes:
    if isinstance(flags, frozenset):  # as messages hold them: few distinct sets
        return _flag_list(flags, recent)
    return _flag_list.__wrapped__(flags, recent)


@functools.lru_cache(maxsize=4096)
def _flag_list(flags: frozenset[str], recent: bool) -> bytes:
    """A FLAGS list: system flags first, then keywords, each group sorted."""
    items = sorted(flags, key=lambda f: (not f.startswith("\\"), f))
    if recent:
        items.append("\\Recent")
    return ("(" + " ".join(items) + ")").encode()


class Session:
    def __init__(self, ctx: IMAPContext, kind: str, conn: IMAPProtocol) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.limits = ctx.config.imap
        self.literal_held = 0  # bytes of ctx.literals this session holds
        self.streamed: list[TmpMessage] = []  # this command's literals in tmp/ files
        self.kind = kind
        self.conn = conn
        self.peer_ip = conn.peer_ip
        self.buf = conn.buf
        self.out: list[bytes] = []
        self.out_size = 0
        self.tls = kind == "imaps"
        # imap.cleartext_login_networks: LOGIN without TLS allowed from this client
        self.cleartext_ok = _listed(self.peer_ip, self.limits.cleartext_login_networks)
        self.user: str | None = None
        self.store: MailStore | None = None
        self.selected: str | None = None
        self.readonly = False
        self.uids: list[int] = []
        self.vflags: dict[int, frozenset[str]] = {}
        self.recent: set[int] = set()  # UIDs \Recent in this session (RFC 3501 2.3.2)
        self.keywords: set[str] = set()  # the keywords FLAGS told this session of
        self.told: set[frozenset[str]] = set()  # flag sets whose keywords are all in keywords
        self.saved: list[int] = []  # UIDs of SEARCH RETURN (SAVE), `$` (RFC 5182)
        self.seen_modseq = 0
        self.condstore = False  # RFC 7162: flag FETCHes carry MODSEQ once a client asked
        self.qresync = False  # ENABLE QRESYNC: VANISHED instead of EXPUNGE from then on
        self.rev2 = False  # ENABLE IMAP4rev2: RFC 9051 rules from then on (see rev2.py)
        self.dirty = False
        self.idling = False
        self.errors = 0
        self.auth_failures = 0
        self.logout = False

    # -- I/O --------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    def untagged(self, text: str | bytes) -> None:
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.send(b"* " + text + b"\r\n")

    def tagged(self, tag: str, status: str, text: str) -> None:
        self.send(f"{tag} {status} {text}\r\n".encode())

    async def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            self.out_size = 0
            await self.conn.write(data)

    async def _fill(self) -> None:
        before = len(self.buf)
        await self.flush()
        if len(self.buf) == before:
            await self.conn.wait_data()

    async def read_line(self) -> bytes | None:
        """One line without its line end; None if it was too long (answered already)."""
        limit = self.limits.max_line_length
        too_long = False
        while True:
            idx = self.buf.find(b"\n")
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[: idx + 1]
                if too_long or len(line) > limit:
                    tag = parse_tag(line) if not too_long else None
                    text = f"Command line too long ({limit} octets at most)"
                    self.send(f"{tag} BAD {text}\r\n".encode() if tag else
                              f"* BAD {text}\r\n".encode())
                    return None
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > limit:
                too_long = True
                self.buf.clear()
            await self._fill()

    async def read_exact(self, n: int) -> bytes:
        self.conn.await_transfer(n)
        acc = bytearray()
        while len(acc) < n:
            if not self.buf:
                await self._fill()
                continue
            take = min(n - len(acc), len(self.buf))
            acc += self.buf[:take]
            del self.buf[:take]
        self.conn.working()  # the rest of the command
        return bytes(acc)

    async def read_to_tmp(self, n: int) -> TmpMessage:
        """Stream an n-octet literal into a new file in the user's Maildir tmp/."""
        assert self.store is not None
        msg = TmpMessage(self.store.path("INBOX") / "tmp" / f"{new_base()},S={n}", n)
        self.streamed.append(msg)
        self.conn.await_transfer(n)
        try:
            fd: int | None = os.open(msg.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            log.warning("imap literal to disk failed user=%s error=%r", self.user, e)
            msg.failed, fd = True, None
        left = n
        try:
            while left:
                if not self.buf:
                    await self._fill()
                    continue
                take = min(left, len(self.buf))
                if fd is not None:
                    try:
                        with memoryview(self.buf) as view:  # released before the del
                            done = 0
                            while done < take:  # page-cache writes; fsync runs in a thread
                                with view[done:take] as chunk:
                                    done += os.write(fd, chunk)
                    except OSError as e:  # disk full: keep reading, answer NO
                        log.warning("imap literal to disk failed user=%s error=%r",
                                    self.user, e)
                        msg.failed = True
                        os.close(fd)
                        fd = None
                del self.buf[:take]
                left -= take
        finally:
            if fd is not None:
                os.close(fd)
        self.conn.working()  # the rest of the command
        return msg

    async def read_command(self) -> tuple[list[bytes], list[bytes]] | None | bool:
        """A command's lines and literals; None if refused as bad input, False if
        refused otherwise (answered already in both cases)."""
        lines: list[bytes] = []
        literals: list[bytes] = []
        total = 0
        in_memory = 0  # octets of this command's literals held in memory
        while True:
            line = await self.read_line()
            if line is None:
                return None
            lines.append(line)
            total += len(line)
            m = LITERAL_RE.search(line)
            if m is None:
                return lines, literals
            n = int(m.group(1))
            sync = not m.group(2)
            tag = parse_tag(lines[0]) or "*"
            append = self.store is not None and APPEND_RE.match(lines[0]) is not None
            share = self.limits.max_literal_memory_per_session
            streamed = append and (n >= STREAM_AT or in_memory + n > share)
            text = ""
            if n > self.limits.max_literal_size or total + n > self.limits.max_literal_size * 2:
                text = f"[TOOBIG] Literal too large ({self.limits.max_literal_size} octets at most)"
            elif self.user is None and in_memory + n > PRE_AUTH_LITERALS:
                # Strangers get only a few KB, so they cannot take the shared budget.
                text = (f"[TOOBIG] Literals too large before login ({PRE_AUTH_LITERALS} "
                        "octets at most)")
            elif not streamed and in_memory + n > share:
                text = f"[TOOBIG] Literals too large to hold ({share} octets at most)"
            if text:
                if sync:
                    self.tagged(tag, "NO" if tag != "*" else "BAD", text)
                    return None
                self.untagged(f"BYE {text}")
                raise Disconnect()
            if len(lines) > 1000:
                self.untagged("BYE Too many literals in one command")
                raise Disconnect()
            if append and sync and self._over_quota(n):
                # Refused before the client sends it (RFC 3501 7.5 allows NO for "+").
                self.tagged(tag, "NO", "[OVERQUOTA] Mailbox quota exceeded")
                return False  # a full mailbox is no client error: not counted
            if streamed:
                # A large message goes straight to the Maildir's tmp/, not to memory.
                if sync:
                    self.send(b"+ Ready for literal data\r\n")
                literals.append(await self.read_to_tmp(n))
                total += n
                continue
            # Wait for a share of the literal budget before asking for (or
            # reading) the data; the client waits, or TCP holds what it sent.
            want = min(n, self.ctx.literals.limit - self.literal_held)
            if want > 0:
                self.conn.working()  # waiting for other sessions is not the client's time
                await self.flush()
                self.literal_held += await self.ctx.literals.acquire(want)
            if sync:
                self.send(b"+ Ready for literal data\r\n")
            literals.append(await self.read_exact(n))
            total += n
            in_memory += n

    # -- main loop ----------------------------------------------------------

    async def run_guarded(self) -> None:
        try:
            await self.run()
        except Exception:
            log.exception("IMAP session crashed peer=%s", self.peer_ip)
        finally:
            self._end_login()
            self.conn.close()

    def _idle_timeout(self) -> float:
        """Silence allowed between commands (before login no more than a command's time)."""
        idle = self.limits.idle_timeout
        return idle if self.user is not None else min(idle, self.cfg.limits.command_timeout)

    async def run(self) -> None:
        try:
            self.untagged(f"OK [CAPABILITY {self.capabilities()}] {self.cfg.hostname} "
                          "pillarbox IMAP ready")
            while not self.logout:
                try:
                    self.conn.await_command(self._idle_timeout())
                    got = await self.read_command()
                    self.conn.working()
                    if got is None:
                        if self._count_error():
                            return
                    elif got is not False:
                        await self.dispatch(*got)
                finally:  # the command's literals are done with, however it ended
                    self._release_literals()
        except Disconnect:
            pass
        except (ConnectionError, ssl.SSLError, OSError) as e:
            log.debug("connection lost peer=%s error=%r", self.peer_ip, e)
        finally:
            try:
                await self.flush()
            except (Disconnect, ConnectionError, ssl.SSLError, OSError, RuntimeError):
                pass

    def _release_literals(self) -> None:
        for msg in self.streamed:  # APPEND moved the ones it kept
            msg.discard()
        self.streamed.clear()
        if self.literal_held:
            self.ctx.literals.release(self.literal_held)
            self.literal_held = 0

    def _count_error(self) -> bool:
        self.errors += 1
        if self.errors >= self.limits.max_bad_commands:
            self.untagged("BYE Too many invalid commands")
            return True
        return False

    def _end_login(self) -> None:
        self._unselect()
        if self.store is not None:
            self.ctx.stores.release(self.store)
            self.store = None
        if self.user is not None:
            self.ctx.per_user[self.user] -= 1
            if not self.ctx.per_user[self.user]:
                del self.ctx.per_user[self.user]
            self.user = None

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE",
                "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE", "CHILDREN", "CONDSTORE",
                "QUOTA", "QUOTA=RES-STORAGE", f"APPENDLIMIT={self.limits.max_literal_size}",
                "QRESYNC", "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "METADATA",
                "OBJECTID", "SAVEDATE", "SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT",
                "THREAD=REFERENCES", "ESEARCH", "ESORT", "SEARCHRES", "MULTIAPPEND", "CATENATE",
                "BINARY", "UNAUTHENTICATE", "COMPRESS=DEFLATE"]
        if self.ctx.config.mode == "chatmail":  # what Delta Chat looks for (issue 17)
            caps += ["XDELTAPUSH", "XCHATMAIL"]
        if not self.tls and self.ctx.tls is not None:
            caps.append("STARTTLS")
        if not self.tls and not self.cleartext_ok:
            caps.append("LOGINDISABLED")
        elif self.user is None:
            caps.append("AUTH=PLAIN")
        return " ".join(caps)

    # -- dispatch -----------------------------------------------------------

    _ANY = {"CAPABILITY", "NOOP", "LOGOUT", "ID"}
    _NONAUTH = {"STARTTLS", "LOGIN", "AUTHENTICATE"}
    _SELECTED = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY",
                 "MOVE", "UID FETCH", "UID STORE", "UID COPY", "UID MOVE", "UID SEARCH",
                 "UID EXPUNGE", "SORT", "THREAD", "UID SORT", "UID THREAD"}
    # Sequence numbers must not shift under these (RFC 3501 7.4.1): no EXPUNGE after them.
    _NO_EXPUNGE = {"FETCH", "STORE", "SEARCH", "SORT", "THREAD"}
    # Their replies are FETCH responses that clients take as the answer (Delta Chat,
    # imaplib): flag changes of other messages wait for the next command (or IDLE).
    _NO_FLAG_UPDATES = {"FETCH", "STORE", "UID FETCH", "UID STORE"}

    async def dispatch(self, lines: list[bytes], literals: list[bytes]) -> None:
        try:
            cmd = parse_command(lines, literals)
        except ParseError as e:
            tag = getattr(e, "tag", None) or parse_tag(lines[0])
            if getattr(e, "resets_saved", False):
                self.saved = []
            self.send(f"{tag or '*'} BAD {e}\r\n".encode())
            if self._count_error():
                raise Disconnect() from None
            return
        name = cmd.name
        if name in self._NONAUTH and self.user is not None:
            return self._bad(cmd, "Already logged in")
        if name not in self._ANY and name not in self._NONAUTH and self.user is None:
            return self._bad(cmd, "Log in first")
        if name in self._SELECTED and self.selected is None:
            return self._bad(cmd, "No mailbox selected")
        if self.rev2:
            why = rev2.refusal(cmd)
            if why is not None:
                return self._bad(cmd, why)
            rev2.inbound(cmd)
        if esearch.uses_saved(cmd):  # `$`: the saved result, as this session sees it now
            esearch.resolve(cmd, self.saved, self.uids)
        handler = getattr(self, "cmd_" + name.replace(" ", "_"))
        if self.store is not None and self.store.shared:  # what other nodes did, first
            with contextlib.suppress(*backend.errors()):  # down: the command says so if it must
                self.store.refresh()
        try:
            result = await handler(cmd)
        except _Handled:
            return
        except MailboxError as e:
            result = ("NO", f"[{e.code}] {e}" if e.code else str(e))
        except (OSError, sqlite3.Error) as e:
            log.warning("IMAP %s failed user=%s error=%r", name, self.user, e)
            result = _storage_failure(e)
        except backend.errors() as e:  # the shared directory (PostgreSQL) is down: try later
            log.warning("IMAP %s failed user=%s error=%s", name, self.user, e)
            what = ("The mailbox index" if isinstance(e, backend.IndexUnavailable)
                    else "The user directory")
            result = ("NO", f"[UNAVAILABLE] {what} is unavailable, try again later")
        if result is None:
            result = ("OK", f"{name} completed")
        if self.selected is not None and not self.logout:
            self.poll(expunges=name not in self._NO_EXPUNGE,
                      flags=name not in self._NO_FLAG_UPDATES)
        self.tagged(cmd.tag, *result)

    def _bad(self, cmd: Command, text: str) -> None:
        self.tagged(cmd.tag, "BAD", text)
        if self._count_error():
            raise Disconnect()

    # -- mailbox view -------------------------------------------------------

    def notify(self) -> None:
        """The selected mailbox changed (another session, a delivery)."""
        self.dirty = True
        if self.idling:
            self.conn.wake()

    def poll(self, expunges: bool = True, flags: bool = True) -> None:
        """Bring this session's view up to date; queue EXISTS/EXPUNGE/FETCH.

        With flags=False, flag changes are not reported yet: the session stays
        dirty, so the next poll (a later command, or IDLE at once) reports them."""
        name, store = self.selected, self.store
        if name is None or store is None:
            return
        self.dirty = False
        if not store.exists(name):
            self.untagged("BYE The selected mailbox was deleted")
            self.logout = True
            return
        try:
            store.sync(name)
        except backend.errors() as e:  # the shared index is unreachable: the next poll
            if not store.shared:
                raise
            log.warning("IMAP poll failed user=%s error=%s", self.user, e)
            return
        self.dirty = False
        if not store.exists(name):  # deleted by another node, found out at this sync
            self.untagged("BYE The selected mailbox was deleted")
            self.logout = True
            return
        box = store.box(name)
        msgs = box.msgs
        if not self.keywords.issuperset(box.keywords):  # a STORE, APPEND or COPY brought one
            self._announce_keywords()
        if expunges and len(msgs) < len(self.uids) + (box.uidnext - self._last_uid() - 1):
            gone = {u for u in self.uids if u not in msgs}
            if gone:
                if self.qresync:  # RFC 7162 3.2.10.2: UIDs, not sequence numbers
                    self.untagged(f"VANISHED {seqset_from(list(gone))}")
                for i in range(len(self.uids) - 1, -1, -1):
                    if self.uids[i] in gone and not self.qresync:
                        self.untagged(f"{i + 1} EXPUNGE")
                self.uids = [u for u in self.uids if u not in gone]
                for u in gone:
                    self.vflags.pop(u, None)
                    self.recent.discard(u)
        last = self._last_uid()
        new = []
        for u in reversed(msgs):
            if u <= last:
                break
            new.append(u)
        if new:
            new.reverse()
            # Recent for the first session told of them (not taken by EXAMINE).
            mark = box.recent_uid if self.readonly else store.take_recent(name)
            self.recent.update(u for u in new if u > mark)
            self.uids.extend(new)
            for u in new:
                self.vflags[u] = msgs[u].flags
            self.untagged(f"{len(self.uids)} EXISTS")
            if not self.rev2:
                self.untagged(f"{len(self.recent)} RECENT")
        if box.highestmodseq != self.seen_modseq and not flags:
            self.dirty = True
        elif box.highestmodseq != self.seen_modseq:
            for i, u in enumerate(self.uids):
                m = msgs.get(u)
                if m is not None and m.flags != self.vflags.get(u):
                    self.vflags[u] = m.flags
                    self.send(b"* %d FETCH (UID %d %sFLAGS %s)\r\n"
                              % (i + 1, u, self._modseq_item(m), self._flags(m)))
            self.seen_modseq = box.highestmodseq

    def _flags(self, msg: Message) -> bytes:
        """The FLAGS list of a message as this session sees it; a keyword the
        session was not told of is announced first (RFC 3501 7.2.6)."""
        flags = msg.flags
        hashable = isinstance(flags, frozenset)
        if not hashable or flags not in self.told:
            for f in flags:
                if f not in self.keywords and not f.startswith("\\"):
                    self._announce_keywords(flags)
                    break
            if hashable:  # keywords only grow until _unselect clears both
                if len(self.told) >= 10_000:  # a bound for a mailbox of many flag sets
                    self.told.clear()
                self.told.add(flags)
        return flag_list(msg.flags, msg.uid in self.recent and not self.rev2)

    def _announce_keywords(self, more: frozenset[str] = frozenset()) -> None:
        assert self.store is not None and self.selected is not None
        box = self.store.box(self.selected)
        self.keywords |= box.keywords
        self.keywords.update(f for f in more if not f.startswith("\\"))
        self._send_flags()

    def _send_flags(self) -> None:
        """FLAGS and PERMANENTFLAGS: the system flags and the keywords known."""
        flags = " ".join([*SYSTEM_FLAGS, *sorted(self.keywords)])
        self.untagged(f"FLAGS ({flags})")
        self.untagged(f"OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted"
                      if not self.readonly else "OK [PERMANENTFLAGS ()] Read-only mailbox")

    def _modseq_item(self, msg: Message) -> bytes:
        """`MODSEQ (n) ` for a FETCH that reports a flag change, once CONDSTORE is on."""
        return b"MODSEQ (%d) " % msg.modseq if self.condstore else b""

    def _condstore_on(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 3.1) was used."""
        if self.condstore:
            return
        self.condstore = True
        if self.selected is not None and self.store is not None:
            modseq = self.store.box(self.selected).highestmodseq
            self.untagged(f"OK [HIGHESTMODSEQ {modseq}] Highest mod-sequence")

    def _last_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def _unselect(self) -> None:
        if self.store is not None:
            self.store.listeners.discard(self)
        self.selected = None
        self.uids, self.vflags, self.recent, self.keywords = [], {}, set(), set()
        self.told = set()
        self.saved = []  # RFC 5182 2.1: a new mailbox (or none) empties `$`

    def _targets(self, cmd: Command) -> list[tuple[int, int]]:
        """(sequence number, UID) of the messages a command's set names."""
        s: SeqSet = cmd.args["set"]
        uids = self.uids
        if not s.ranges:  # `$` with an empty saved result: no messages, no error
            return []
        if cmd.uid:
            if not uids:
                return []
            return [(i + 1, uids[i]) for i in s.merged(uids[-1]).indexes(uids)]
        n = len(uids)
        if n == 0:
            raise MailboxError("the mailbox is empty: no sequence numbers exist", "")
        ranges = s.merged(n)
        if ranges.highs[-1] > n:
            raise _Bad("Invalid message sequence number")
        return [(i + 1, uids[i]) for i in ranges.indexes(range(1, n + 1))]

    # -- any state ----------------------------------------------------------

    async def cmd_CAPABILITY(self, cmd: Command):
        self.untagged(f"CAPABILITY {self.capabilities()}")

    async def cmd_NOOP(self, cmd: Command):
        return None

    async def cmd_CHECK(self, cmd: Command):
        return None

    async def cmd_LOGOUT(self, cmd: Command):
        self.untagged("BYE Logging out")
        self.logout = True
        self._unselect()
        return ("OK", "LOGOUT completed")

    async def cmd_ID(self, cmd: Command):
        self.untagged(f'ID ("name" "pillarbox" "version" "{__version__}")')

    # -- not authenticated --------------------------------------------------

    async def cmd_STARTTLS(self, cmd: Command):
        if self.conn.codec is not None:  # TLS under DEFLATE would be useless and odd
            return ("BAD", "STARTTLS after COMPRESS is not allowed")
        if self.tls or self.ctx.tls is None:
            return ("BAD", "TLS is already active" if self.tls else "TLS is not available")
        self.tagged(cmd.tag, "OK", "Begin TLS negotiation now")
        await self.flush()
        await self.conn.start_tls(self.ctx.tls)  # drops what was sent in clear after STARTTLS
        self.tls = True
        raise _Handled()

    async def cmd_LOGIN(self, cmd: Command):
        if not self.tls and not self.cleartext_ok:
            return ("NO", "[PRIVACYREQUIRED] Use STARTTLS (or the IMAPS port) before LOGIN")
        return await self._login(cmd.args["user"], cmd.args["password"])

    async def cmd_AUTHENTICATE(self, cmd: Command):
        if not self.tls and not self.cleartext_ok:
            return ("NO", "[PRIVACYREQUIRED] Use STARTTLS (or the IMAPS port) before "
                          "AUTHENTICATE")
        if cmd.args["mechanism"] != "PLAIN":
            return ("NO", "[CANNOT] Unsupported mechanism; use PLAIN")
        resp = cmd.args["initial"]
        if resp is None:
            self.send(b"+ \r\n")
            line = await self.read_line()
            if line is None:
                return ("BAD", "Response line too long")
            resp = line.decode("ascii", "replace").strip()
            if resp == "*":
                return ("BAD", "Authentication cancelled")
        try:
            raw = base64.b64decode(resp, validate=True) if resp != "=" else b""
            parts = raw.split(b"\0")
            if len(parts) != 3:
                raise ValueError
            authz, user, password = (p.decode("utf-8") for p in parts)
        except (binascii.Error, ValueError):
            return ("BAD", "Cannot decode the PLAIN response")
        if authz and authz.lower() != user.lower():
            return ("NO", "[AUTHORIZATIONFAILED] Cannot log in as another user")
        return await self._login(user, password)

    async def _login(self, username: str, password: str):
        throttle = self.ctx.throttle
        why = throttle.refusal(self.peer_ip, username)
        if why is not None:  # before the password check: no argon2, no way in
            logs.event(log, logging.INFO, "auth refused", client=logs.client(self.peer_ip),
                       endpoint="imap", locked=why, user=username[:100])
            self.auth_failures += 1  # cheap for us, but no endless retries on one connection
            if self.auth_failures >= MAX_AUTH_FAILURES:
                self.untagged("BYE Too many failed logins")
                self.logout = True
            return ("NO", "[UNAVAILABLE] Too many failed logins, try again later")
        try:
            addr = await self.ctx.users.check_password(username, password)
        except backend.errors() as e:  # PostgreSQL down: nobody's fault, try later
            log.warning("imap login: user directory unavailable error=%s", e)
            return ("NO", "[UNAVAILABLE] The user directory is unavailable, try again later")
        if addr is None:
            self.auth_failures += 1
            logs.event(log, logging.INFO, "auth failed", client=logs.client(self.peer_ip),
                       endpoint="imap", user=username[:100])
            await throttle.failed(self.peer_ip, username)
            metrics.login("imap", False)
            if self.auth_failures >= MAX_AUTH_FAILURES:
                self.untagged("BYE Too many failed logins")
                self.logout = True
            return ("NO", "[AUTHENTICATIONFAILED] Invalid credentials")
        throttle.succeeded(self.peer_ip, username)
        metrics.login("imap", True)
        if self.ctx.per_user[addr] >= self.limits.max_connections_per_user:
            return ("NO", "[LIMIT] Too many connections for this user")
        path = mailbox.maildir_path(self.cfg.mail_root, addr)
        try:
            store = await asyncio.to_thread(_prepare, path)
            self.store = self.ctx.stores.open(store, addr)
        except (OSError, *backend.errors()) as e:  # disk full on a first login: not logged in
            log.warning("imap login cannot open the mailbox user=%s error=%r", addr, e)
            if disk_full(e):
                return ("NO", "[UNAVAILABLE] Not enough disk space to set up the mailbox, "
                              "try again later")
            return ("NO", "[UNAVAILABLE] Cannot open the mailbox, try again later")
        # One store per Maildir, so per user: its changes move that user's quota usage.
        self.store.usage_changed = functools.partial(self.ctx.users.add_used, addr)
        self.user = addr
        self.ctx.per_user[addr] += 1
        logs.event(log, logging.INFO, "auth ok", client=logs.client(self.peer_ip),
                   endpoint="imap", user=addr)
        return ("OK", f"[CAPABILITY {self.capabilities()}] Logged in")

    # -- authenticated ------------------------------------------------------

    async def cmd_ENABLE(self, cmd: Command):
        enabled = []
        if "CONDSTORE" in cmd.args["capabilities"] and not self.condstore:
            self._condstore_on()
            enabled.append("CONDSTORE")
        if "QRESYNC" in cmd.args["capabilities"] and not self.qresync:
            self._condstore_on()  # QRESYNC implies CONDSTORE (RFC 7162 3.2.3)
            self.qresync = True
            enabled.append("QRESYNC")
        if "IMAP4REV2" in cmd.args["capabilities"] and not self.rev2:
            self.rev2 = True  # RFC 9051: for the rest of this login
            enabled.append("IMAP4rev2")
        self.untagged(" ".join(["ENABLED", *enabled]))

    async def cmd_UNAUTHENTICATE(self, cmd: Command):
        """RFC 8437: back to the not-authenticated state, as on a new connection
        (the mailbox is left as UNSELECT leaves it; TLS and COMPRESS stay)."""
        self._end_login()
        self.condstore = self.qresync = self.rev2 = False  # ENABLEd ones end with the login
        return ("OK", "Not authenticated any more")

    async def cmd_COMPRESS(self, cmd: Command):
        if cmd.args["mechanism"] != "DEFLATE":
            return ("BAD", "Unknown compression mechanism; DEFLATE is supported")
        if self.conn.codec is not None:
            return ("NO", "[COMPRESSIONACTIVE] DEFLATE is active already")
        self.tagged(cmd.tag, "OK", "DEFLATE active")
        await self.flush()
        self.conn.start_codec(compress.Deflate())
        raise _Handled()

    async def cmd_NAMESPACE(self, cmd: Command):
        self.untagged('NAMESPACE (("" ".")) NIL NIL')

    async def _select(self, cmd: Command, readonly: bool):
        param = cmd.args["qresync"]
        if param is not None and not self.qresync:
            return ("BAD", "QRESYNC needs ENABLE QRESYNC first")
        if self.selected is not None:  # RFC 7162 3.2.11: replies from here are the new one's
            self.untagged("OK [CLOSED] Previous mailbox closed")
        self._unselect()
        store = self.store
        assert store is not None
        name = cmd.args["mailbox"]
        if cmd.args["condstore"]:
            self.condstore = True  # the SELECT reply below carries HIGHESTMODSEQ anyway
        store.box(name)
        store.sync(name)
        box = store.box(name)
        self.selected, self.readonly = name, readonly
        self.uids = list(box.msgs)
        # The messages no session was shown are \Recent here. SELECT takes them;
        # EXAMINE shows them but must not (RFC 3501 6.3.2), as Dovecot does.
        mark = box.recent_uid if readonly else store.take_recent(name)
        self.recent = set(itertools.takewhile(lambda u: u > mark, reversed(self.uids)))
        self.vflags = {u: m.flags for u, m in box.msgs.items()}
        self.seen_modseq = box.highestmodseq
        self.dirty = False
        store.listeners.add(self)
        self.keywords = set(box.keywords)
        self._send_flags()
        self.untagged(f"{len(self.uids)} EXISTS")
        if self.rev2:  # RFC 9051 6.3.2: a LIST response, no RECENT, no UNSEEN
            self._list_selected(name)
        else:
            self.untagged(f"{len(self.recent)} RECENT")
            first_unseen = next((i + 1 for i, u in enumerate(self.uids)
                                 if "\\Seen" not in box.msgs[u].flags), None)
            if first_unseen:
                self.untagged(f"OK [UNSEEN {first_unseen}] First unseen message")
        self.untagged(f"OK [UIDVALIDITY {box.uidvalidity}] UIDs valid")
        self.untagged(f"OK [UIDNEXT {box.uidnext}] Predicted next UID")
        self.untagged(f"OK [HIGHESTMODSEQ {box.highestmodseq}] Highest mod-sequence")
        self.untagged(f"OK [MAILBOXID ({box.mailboxid})] Ok")
        if param is not None:
            for line in qresync.select_replies(store, name, self.uids, param, self._flags):
                self.untagged(line)
        return ("OK", f"[{'READ-ONLY' if readonly else 'READ-WRITE'}] {cmd.name} completed")

    async def cmd_SELECT(self, cmd: Command):
        return await self._select(cmd, False)

    async def cmd_EXAMINE(self, cmd: Command):
        return await self._select(cmd, True)

    async def cmd_CREATE(self, cmd: Command):
        name = cmd.args["mailbox"].rstrip(".")
        use = cmd.args["use"]
        if len(use) > 1:
            return ("NO", "[USEATTR] One special-use attribute at most")
        special = use[0] if use else None
        if special and special.lower() not in {s.lower() for s in
                                                ("\\Sent", "\\Drafts", "\\Trash", "\\Junk",
                                                 "\\Archive", "\\All", "\\Flagged")}:
            return ("NO", f"[USEATTR] Unknown special-use attribute {special[:30]}")
        assert self.store is not None
        self.store.create(name, special)
        self._create_superiors(name)
        return ("OK", f"[MAILBOXID ({self.store.box(name).mailboxid})] CREATE completed")

    def _create_superiors(self, name: str) -> None:
        """RFC 3501 6.3.3 (and 6.3.5 for RENAME): the server SHOULD create the
        superior names a new name needs (`a` and `a.b` for `a.b.c`)."""
        assert self.store is not None
        parts = name.split(listing.DELIMITER)
        for n in range(1, len(parts)):
            parent = listing.DELIMITER.join(parts[:n])
            if parent.upper() != "INBOX" and not self.store.exists(parent):
                with contextlib.suppress(MailboxError):  # made meanwhile elsewhere
                    self.store.create(parent)

    async def cmd_DELETE(self, cmd: Command):
        assert self.store is not None
        name = cmd.args["mailbox"]
        if not self.store.exists(name) and any(n.startswith(name + listing.DELIMITER)
                                               for n in self.store.boxes):
            # Only a level of the hierarchy (\Noselect): RFC 3501 6.3.4 makes that an
            # error, RFC 9051 7.1 gives it this code.
            return ("NO", "[HASCHILDREN] Only the mailboxes below this name exist; "
                          "delete them first")
        if name == self.selected:
            self._unselect()
        self.store.delete(name)

    async def cmd_RENAME(self, cmd: Command):
        assert self.store is not None
        if cmd.args["old"] == "INBOX":
            return await self._rename_inbox(cmd.args["new"])
        if self.selected == cmd.args["old"]:
            self._unselect()
        self.store.rename(cmd.args["old"], cmd.args["new"])
        self._create_superiors(cmd.args["new"])

    async def _rename_inbox(self, new: str):
        """RFC 3501 6.3.5, RFC 9051 6.3.6: a new mailbox gets all of INBOX's messages,
        INBOX stays (empty, with its children). Moved in slices as MOVE does; a
        failure part way leaves the rest in INBOX."""
        store = self.store
        assert store is not None
        store.create(new, None)  # NO [ALREADYEXISTS] etc. before anything moves
        store.sync("INBOX")
        uids = list(store.box("INBOX").msgs)
        for i in range(0, len(uids), COPY_SLICE):
            store.copy("INBOX", uids[i:i + COPY_SLICE], new, True)
            if i + COPY_SLICE < len(uids):
                await asyncio.sleep(0)
        return ("OK", "RENAME completed; INBOX's messages were moved")

    async def cmd_SUBSCRIBE(self, cmd: Command):
        assert self.store is not None
        self.store.box(cmd.args["mailbox"])
        self.store.subscribe(cmd.args["mailbox"])

    async def cmd_UNSUBSCRIBE(self, cmd: Command):
        assert self.store is not None
        self.store.unsubscribe(cmd.args["mailbox"])

    async def cmd_LIST(self, cmd: Command):
        return self._list(cmd, lsub=False)

    async def cmd_LSUB(self, cmd: Command):
        return self._list(cmd, lsub=True)

    def _list(self, cmd: Command, lsub: bool):
        store = self.store
        assert store is not None
        args = cmd.args
        if self.rev2:  # RFC 9051: patterns match the UTF-8 names, which are sent
            internal = {rev2.shown(n): n for n in [*store.boxes, *store.subscriptions()]}
            tree = listing.Tree({rev2.shown(n): b.special for n, b in store.boxes.items()},
                                {rev2.shown(n) for n in store.subscriptions()})
        else:
            tree = listing.Tree({n: b.special for n, b in store.boxes.items()},
                                store.subscriptions())
        ref, patterns = args["reference"], args["patterns"]
        if lsub:
            found = tree.lsub(ref, patterns[0])
        elif args["extended"]:
            found = tree.extended(ref, patterns, args["select_opts"], args["return"])
        else:
            found = tree.plain(ref, patterns[0])
        items = args["status"]
        for item in found:
            if self.rev2:
                self.send(item.line("LSUB" if lsub else "LIST", rev2.quote_text))
                name = internal.get(item.name, item.name)
            else:
                self.send(item.line("LSUB" if lsub else "LIST"))
                name = item.name
            if items and item.selectable:  # RFC 5819: its STATUS right after it
                self._status(name, items)
        return None

    def _list_selected(self, name: str) -> None:
        """IMAP4rev2 SELECT/EXAMINE: the LIST response of the mailbox (RFC 9051 6.3.2)."""
        assert self.store is not None
        tree = listing.Tree({n: b.special for n, b in self.store.boxes.items()},
                            self.store.subscriptions())
        for item in tree.plain("", name):
            self.send(item.line("LIST", rev2.quote))

    def _quote_name(self, name: str) -> bytes:
        """A mailbox name in a response: UTF-8 for an IMAP4rev2 session."""
        return rev2.quote(name) if self.rev2 else mime.quote(name)

    async def cmd_STATUS(self, cmd: Command):
        self._status(cmd.args["mailbox"], cmd.args["items"])

    def _status(self, name: str, items: list[str]) -> None:
        assert self.store is not None
        if "HIGHESTMODSEQ" in items:
            self._condstore_on()
        if "HIGHESTMODSEQ" in items or "SIZE" in items:
            # Clients skip a mailbox whose HIGHESTMODSEQ did not move: take in
            # its deliveries first, so that they move it (and SIZE counts them).
            self.store.sync(name)
        st = self.store.status(name)
        if name == self.selected:
            self.poll(expunges=False)
            st = self.store.status(name)
        values = {**st, "APPENDLIMIT": self.limits.max_literal_size,  # RFC 7889
                  "MAILBOXID": f"({self.store.box(name).mailboxid})"}  # RFC 8474
        text = " ".join(f"{k} {values[k]}" for k in items)
        self.send(b"* STATUS " + self._quote_name(name) + f" ({text})\r\n".encode())

    def _metadata(self) -> Metadata:
        assert self.store is not None
        meta = Metadata(self.store, Limits(self.limits.metadata_max_size,
                                           self.limits.metadata_max_entries))
        if self.ctx.config.mode == "chatmail":  # push tokens, iroh relay (issue 17)
            return ChatmailMetadata(meta, self.ctx.users.db, self.user or "",
                                    self.ctx.config.chatmail.iroh_relay)  # type: ignore[return-value]
        return meta

    async def cmd_GETMETADATA(self, cmd: Command):
        line, result = imap_metadata.get(self._metadata(), cmd.args, self._quote_name)
        if line:
            self.send(line)
        return result

    async def cmd_SETMETADATA(self, cmd: Command):
        return imap_metadata.set_(self._metadata(), cmd.args)

    async def cmd_APPEND(self, cmd: Command):
        store = self.store
        assert store is not None and self.user is not None
        name = cmd.args["mailbox"]
        if not store.exists(name):
            return ("NO", f"[TRYCREATE] No mailbox named {name[:100]!r}")
        new = []
        budget = catenate.Budget.for_limit(self.limits.max_literal_size)  # the whole command's
        for m in cmd.args["messages"]:  # MULTIAPPEND: several, all or none
            data = m.data
            if m.parts is not None:  # CATENATE
                try:
                    data = await catenate.assemble(store, m.parts, self.user, self.selected,
                                                   budget)
                except catenate.BadURL as e:
                    return ("NO", f"[BADURL {e.text}] {e}")
                except catenate.TooBig:
                    return ("NO", "[TOOBIG] The catenated messages are too large "
                                  f"({self.limits.max_literal_size} octets at most, "
                                  f"{catenate.READ_FACTOR} times that read)")
            if not data:
                return ("NO", "Empty message")
            if isinstance(data, TmpMessage) and data.failed:  # its write to tmp/ failed
                return ("NO", f"[OVERQUOTA] {NO_SPACE}")
            date = m.date.timestamp() if m.date else None
            new.append(append.NewMessage(data, m.flags, date, m.binary))
        if self._over_quota(sum(len(n.data) for n in new)):
            return ("NO", "[OVERQUOTA] Mailbox quota exceeded")
        uids = await append.append_all(store, name, new)
        if uids is None:
            return ("NO", "[TRYCREATE] The mailbox was deleted")
        return ("OK", f"[APPENDUID {store.box(name).uidvalidity} {seqset_from(uids)}] "
                      "APPEND completed")

    async def cmd_IDLE(self, cmd: Command):
        self.send(b"+ idling\r\n")
        self.idling = True
        self.conn.await_command(self._idle_timeout())  # DONE may take that long to begin
        try:
            while True:
                if self.selected is not None and self.dirty:
                    self.poll(expunges=True)
                    if self.logout:
                        raise Disconnect()
                await self.flush()
                if b"\n" in self.buf or len(self.buf) > self.limits.max_line_length:
                    break
                await self.conn.wait_data()
        finally:
            self.idling = False
        line = await self.read_line()
        if line is None or line.strip().upper() != b"DONE":
            return ("BAD", "Expected DONE to end IDLE")
        return ("OK", "IDLE terminated")

    def _quota(self) -> tuple[int, int] | None:
        """(used, limit) in bytes, the figures SMTP checks too; None without a quota."""
        assert self.user is not None
        user = self.ctx.users.get(self.user)
        if user is None or not user.quota:
            return None
        return user.used, user.quota

    def _over_quota(self, adding: int) -> bool:
        q = self._quota()
        return q is not None and q[0] + adding > q[1]

    def _send_quota(self, used: int, limit: int) -> None:
        # RFC 9208 counts STORAGE in KiB; usage rounds up, so one byte shows.
        self.untagged(f'QUOTA "" (STORAGE {-(-used // 1024)} {limit // 1024})')

    async def cmd_GETQUOTAROOT(self, cmd: Command):
        assert self.store is not None
        self.store.box(cmd.args["mailbox"])
        q = self._quota()
        if q is None:
            self.send(b"* QUOTAROOT " + self._quote_name(cmd.args["mailbox"]) + b"\r\n")
            return None
        self.send(b"* QUOTAROOT " + self._quote_name(cmd.args["mailbox"]) + b' ""\r\n')
        self._send_quota(*q)
        return None

    async def cmd_GETQUOTA(self, cmd: Command):
        q = self._quota()
        if cmd.args["root"] != "" or q is None:
            return ("NO", "[NONEXISTENT] No such quota root")
        self._send_quota(*q)
        return None

    async def cmd_SETQUOTA(self, cmd: Command):
        return ("NO", "[NOPERM] Quotas are set by the administrator "
                      "(pillarbox user quota ADDRESS --quota SIZE)")

    # -- selected -----------------------------------------------------------

    async def cmd_CLOSE(self, cmd: Command):
        gone = [] if self.readonly else self._expunge(None)
        modseq = self._expunged_modseq(gone, cmd)
        self._unselect()
        return modseq

    async def cmd_UNSELECT(self, cmd: Command):
        self._unselect()

    def _expunge(self, uids: list[int] | None) -> list[int]:
        store, name = self.store, self.selected
        assert store is not None and name is not None
        return store.expunge(name, set(uids) if uids is not None else None)

    def _expunged_modseq(self, gone: list[int], cmd: Command):
        """RFC 7162 3.2.7: with QRESYNC on, the OK after an expunge tells the new MODSEQ."""
        if not (gone and self.qresync):
            return None
        assert self.store is not None and self.selected is not None
        modseq = self.store.box(self.selected).highestmodseq
        return ("OK", f"[HIGHESTMODSEQ {modseq}] {cmd.name} completed")

    async def cmd_EXPUNGE(self, cmd: Command):
        if self.readonly:
            return ("NO", "[READ-ONLY] The mailbox is read-only")
        return self._expunged_modseq(self._expunge(None), cmd)

    async def cmd_UID_EXPUNGE(self, cmd: Command):
        if self.readonly:
            return ("NO", "[READ-ONLY] The mailbox is read-only")
        return self._expunged_modseq(self._expunge([u for _, u in self._targets(cmd)]),
                                     cmd)

    async def cmd_FETCH(self, cmd: Command):
        if cmd.args["vanished"] and not self.qresync:
            return ("BAD", "VANISHED needs ENABLE QRESYNC first")
        try:
            targets = self._targets(cmd)
        except _Bad as e:
            return ("BAD", str(e))
        except MailboxError:
            return ("BAD", "Invalid message sequence number: the mailbox is empty")
        atts = self._fetch_atts(cmd)
        store, name = self.store, self.selected
        assert store is not None and name is not None
        box = store.box(name)
        since = cmd.args["changedsince"]
        if cmd.args["vanished"]:  # before any FETCH (RFC 7162 3.2.6)
            line = qresync.fetch_vanished(store, name, cmd.args["set"], since, self.uids)
            if line is not None:
                self.untagged(line)
        sets_seen = not self.readonly and any(
            (a.section is not None and not a.peek) or a.name in ("RFC822", "RFC822.TEXT")
            for a in atts)
        needs_file = any(a.section is not None or a.name in _FILE_ITEMS for a in atts)
        wanted = frozenset(a.name for a in atts if a.section is None) & _STRUCT_ITEMS
        needs_struct = bool(wanted)
        # A whole message (BODY[], RFC822) goes out as stored: parse only for the rest
        # (parsing was 39 % of a BODY.PEEK[] profile).
        needs_parse = any(not _whole(a) for a in atts
                          if a.section is not None or a.name in ("RFC822.HEADER", "RFC822.TEXT"))
        wants_binary = any(a.binary for a in atts)
        wants_thread = any(a.name == "THREADID" for a in atts)
        missing = False
        for i in range(0, len(targets), STRUCT_CHUNK):
            chunk = targets[i:i + STRUCT_CHUNK]
            cached = store.structures(name, [u for _, u in chunk], wanted) if needs_struct \
                else {}
            computed: dict[int, tuple[bytes, bytes, bytes]] = {}
            for seq, uid in chunk:
                msg = box.msgs.get(uid)
                if msg is None:
                    missing = True
                    continue
                if since is not None and msg.modseq <= since:
                    continue
                structs = cached.get(uid)
                part = None
                if needs_file or (needs_struct and structs is None):
                    try:
                        raw = await self._read(store.file(name, msg), msg.size)
                    except FileNotFoundError:
                        missing = True
                        continue
                    want = needs_struct and structs is None
                    if not (needs_parse or want):
                        part, made = _Whole(raw), None
                    elif len(raw) > THREAD_READ_AT or raw.count(b"\n--") > 100:
                        # Parsing costs by the part: one of thousands of parts (each
                        # needs a "--" delimiter line) is parsed off the event loop.
                        part, made = await asyncio.to_thread(_parse, raw, want)
                    else:
                        part, made = _parse(raw, want)
                    if made is not None:
                        structs = computed[uid] = made
                thread_id = None
                if wants_thread:  # from the header alone (threadid.py)
                    try:
                        header = (mime.split(part.raw)[0] if part is not None
                                  else sort.read_header(store.file(name, msg)))
                    except FileNotFoundError:
                        missing = True
                        continue
                    thread_id = threadid.of(header, msg.emailid)
                decoded = {}
                if wants_binary:
                    try:
                        decoded = await self._decode(part, msg.size, atts)
                    except binary.UnknownCTE as e:
                        return ("NO", f"[UNKNOWN-CTE] Cannot decode the {e} transfer encoding")
                self._fetch_one(seq, msg, atts, part, structs, sets_seen, decoded, thread_id)
                if self.out_size > FLUSH_AT:
                    await self.flush()
            store.save_structures(name, computed)
            await asyncio.sleep(0)  # others are served between two chunks
        if missing:
            return ("NO", "Some of the requested messages no longer exist")
        return None

    def _fetch_atts(self, cmd: Command) -> list[FetchAtt]:
        """The items to send: as asked, plus UID for UID FETCH and MODSEQ for CHANGEDSINCE."""
        atts: list[FetchAtt] = list(cmd.args["atts"])
        if cmd.uid and not any(a.name == "UID" for a in atts):
            atts.insert(0, FetchAtt("UID"))
        if cmd.args["changedsince"] is not None and not any(a.name == "MODSEQ" for a in atts):
            atts.append(FetchAtt("MODSEQ"))
        if any(a.name == "MODSEQ" for a in atts):
            self._condstore_on()
        return atts

    def _fetch_one(self, seq: int, msg: Message, atts: list[FetchAtt],
                   part: mime.Part | _Whole | None,
                   structs: tuple[bytes, bytes, bytes] | None, sets_seen: bool,
                   decoded: dict[tuple[int, ...], bytes], thread_id: str | None) -> None:
        flags_changed = False
        if sets_seen and "\\Seen" not in msg.flags:
            assert self.store is not None and self.selected is not None
            self.store.store_flags(self.selected, [msg.uid], "add", ["\\Seen"])
            self.vflags[msg.uid] = msg.flags
            flags_changed = True
        items = self._fetch_items(msg, atts, part, structs, decoded, thread_id)
        if flags_changed:  # the client learns the new flags (RFC 3501 6.4.5)
            names = {a.name for a in atts if a.section is None}
            if self.condstore and "UID" not in names:
                items.append(b"UID %d" % msg.uid)
            if self.condstore and "MODSEQ" not in names:
                items.append(b"MODSEQ (%d)" % msg.modseq)
            if "FLAGS" not in names:
                items.append(b"FLAGS " + self._flags(msg))
        line = b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"
        self.out.append(line)  # self.send, inlined: once per message
        self.out_size += len(line)

    async def cmd_UID_FETCH(self, cmd: Command):
        return await self.cmd_FETCH(cmd)

    @staticmethod
    async def _read(path: Path, size: int) -> bytes:
        if size > THREAD_READ_AT:
            return await asyncio.to_thread(path.read_bytes)
        return path.read_bytes()

    @staticmethod
    async def _decode(part: mime.Part | _Whole | None, size: int,
                      atts: list[FetchAtt]) -> dict[tuple[int, ...], bytes]:
        """BINARY contents; a large message's off the event loop (RFC 3516)."""
        if size > THREAD_READ_AT:
            return await asyncio.to_thread(binary.decode, part, atts)
        return binary.decode(part, atts)

    def _fetch_items(self, msg: Message, atts: list[FetchAtt], part: mime.Part | _Whole | None,
                     structs: tuple[bytes, bytes, bytes] | None,
                     decoded: dict[tuple[int, ...], bytes],
                     thread_id: str | None = None) -> list[bytes]:
        items = []
        for a in atts:
            n = a.name
            # The items of every sync first (this runs once per message and item);
            # none of them has a section, so the order of the tests is free.
            if n == "UID":
                items.append(b"UID %d" % msg.uid)
            elif n == "FLAGS":
                items.append(b"FLAGS " + self._flags(msg))
            elif n == "RFC822.SIZE":
                items.append(b"RFC822.SIZE %d" % msg.size)
            elif n == "ENVELOPE":
                assert structs is not None
                items.append(b"ENVELOPE " + structs[0])
            elif n in _BINARY_ITEMS:
                items.append(binary.item(a, decoded))
            elif a.section is not None:
                assert part is not None
                data = part.raw if _whole(a) else mime.section(part, a.section)
                if a.partial is not None:
                    off, count = a.partial
                    data = data[off:off + count]
                items.append(a.response_name().encode() + b" " + _literal(data))
            elif n == "INTERNALDATE":
                items.append(f'INTERNALDATE "{imap_date(msg.internaldate)}"'.encode())
            elif n == "MODSEQ":
                items.append(b"MODSEQ (%d)" % msg.modseq)
            elif n == "SAVEDATE":  # RFC 8514
                items.append(f'SAVEDATE "{imap_date(msg.savedate)}"'.encode())
            elif n == "EMAILID":  # RFC 8474
                items.append(b"EMAILID (%s)" % msg.emailid.encode())
            elif n == "THREADID":  # from the message's header (threadid.py)
                items.append(b"THREADID (%s)" % (thread_id or "").encode())
            elif n in _STRUCT_ITEMS:
                assert structs is not None
                envelope, bodystructure, body = structs
                items.append(n.encode() + b" " + (envelope if n == "ENVELOPE" else
                                                  bodystructure if n == "BODYSTRUCTURE" else body))
            else:
                assert part is not None
                if n == "RFC822":
                    items.append(b"RFC822 " + _literal(part.raw))
                elif n == "RFC822.HEADER":
                    items.append(b"RFC822.HEADER " + _literal(part.header))
                elif n == "RFC822.TEXT":
                    items.append(b"RFC822.TEXT " + _literal(part.body))
        return items

    async def cmd_STORE(self, cmd: Command):
        if self.readonly:
            return ("NO", "[READ-ONLY] The mailbox is read-only")
        try:
            targets = self._targets(cmd)
        except _Bad as e:
            return ("BAD", str(e))
        except MailboxError:
            return ("BAD", "Invalid message sequence number: the mailbox is empty")
        store, name = self.store, self.selected
        assert store is not None and name is not None
        args = cmd.args
        if args["unchangedsince"] is not None:
            self._condstore_on()
        # In slices, as COPY: a set of 100,000 messages must not hold the event loop.
        changed, failed = [], []
        uids = [u for _, u in targets]
        for i in range(0, len(uids), LOOP_SLICE):
            if i:
                await asyncio.sleep(0)
            c, f = store.store_flags(name, uids[i:i + LOOP_SLICE], args["mode"], args["flags"],
                                     args["unchangedsince"])
            changed += c
            failed += f
        refused = set(failed)
        self._store_replies(cmd, targets, {m.uid for m in changed}, refused)
        if failed:
            # RFC 7162 3.1.3: UIDs for UID STORE, sequence numbers for STORE.
            nums = failed if cmd.uid else [q for q, u in targets if u in refused]
            return ("OK", f"[MODIFIED {seqset_from(nums)}] Conditional STORE failed")
        return None

    def _store_replies(self, cmd: Command, targets: list[tuple[int, int]], changed: set[int],
                       failed: set[int]) -> None:
        """The untagged FETCHes after a STORE: the new flags (not for .SILENT); with
        CONDSTORE on, UID and MODSEQ too, and for .SILENT still the new MODSEQ."""
        assert self.store is not None and self.selected is not None
        box = self.store.box(self.selected)
        silent = cmd.args["silent"]
        for seq, uid in targets:
            msg = box.msgs.get(uid)
            if msg is None or uid in failed:
                continue
            if not silent:
                self.vflags[uid] = msg.flags
            else:  # the client knows its own change only: others' come with the next poll
                self.vflags[uid] = _applied(self.vflags.get(uid, frozenset()),
                                            cmd.args["mode"], cmd.args["flags"])
            uid_item = b"UID %d " % uid if cmd.uid or self.condstore else b""
            if not silent:
                self.send(b"* %d FETCH (%s%sFLAGS %s)\r\n"
                          % (seq, uid_item, self._modseq_item(msg),
                             self._flags(msg)))
            elif self.condstore and uid in changed:
                self.send(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, uid_item, msg.modseq))

    async def cmd_UID_STORE(self, cmd: Command):
        return await self.cmd_STORE(cmd)

    async def _copy(self, cmd: Command, move: bool):
        if move and self.readonly:
            return ("NO", "[READ-ONLY] The mailbox is read-only")
        try:
            targets = self._targets(cmd)
        except _Bad as e:
            return ("BAD", str(e))
        except MailboxError:
            return ("BAD", "Invalid message sequence number: the mailbox is empty")
        store, name = self.store, self.selected
        assert store is not None and name is not None and self.user is not None
        dst = cmd.args["mailbox"]
        if not store.exists(dst):
            return ("NO", f"[TRYCREATE] No mailbox named {dst[:100]!r}")
        uids = [u for _, u in targets]
        if not move and self._over_quota(store.size_of(name, uids)):
            return ("NO", "[OVERQUOTA] Mailbox quota exceeded")
        # On the event loop, in slices: in a thread, another session's look at the
        # folder could take the new links in before they are indexed (twice over).
        pairs = []
        for i in range(0, len(uids), COPY_SLICE):
            pairs += store.copy(name, uids[i:i + COPY_SLICE], dst, move)
            if i + COPY_SLICE < len(uids):
                await asyncio.sleep(0)
        verb = "MOVE" if move else "COPY"
        if not pairs:
            return ("OK", f"{verb} completed, nothing to do" if not uids else
                    f"{verb} completed; the messages no longer exist")
        code = (f"COPYUID {store.box(dst).uidvalidity} {seqset_from([p[0] for p in pairs])} "
                f"{seqset_from([p[1] for p in pairs])}")
        if move:
            self.untagged(f"OK [{code}] Moved")
            self.poll(expunges=True)
            return ("OK", "MOVE completed")
        return ("OK", f"[{code}] COPY completed")

    async def cmd_COPY(self, cmd: Command):
        return await self._copy(cmd, False)

    async def cmd_UID_COPY(self, cmd: Command):
        return await self._copy(cmd, False)

    async def cmd_MOVE(self, cmd: Command):
        return await self._copy(cmd, True)

    async def cmd_UID_MOVE(self, cmd: Command):
        return await self._copy(cmd, True)

    async def _search_hits(self, cmd: Command) -> list[tuple[int, int]]:
        """(sequence number, UID) of the messages matching a command's search keys,
        in mailbox order."""
        store, name = self.store, self.selected
        assert store is not None and name is not None
        box = store.box(name)
        folder = store.path(name) / "cur"
        cands = [(i + 1, u, box.msgs[u]) for i, u in enumerate(self.uids) if u in box.msgs]
        searcher = search.Searcher(cmd.args["keys"], folder, len(self.uids), self._last_uid(),
                                   self.recent)
        if searcher.needs_file:
            return await asyncio.to_thread(searcher.run, cands)
        hits = []  # on the event loop, in slices: others are served between two
        for i in range(0, len(cands), LOOP_SLICE):
            if i:
                await asyncio.sleep(0)
            hits += searcher.run(cands[i:i + LOOP_SLICE])
        return hits

    async def cmd_SEARCH(self, cmd: Command):
        ret = cmd.args.get("return")
        if ret is None and self.rev2:
            ret = ["ALL"]  # RFC 9051 6.4.4: ESEARCH, as RETURN (ALL)
        if ret is not None and "SAVE" in ret:
            self.saved = []  # RFC 5182 2.1: emptied should the search fail
        if cmd.args["charset"] not in ("US-ASCII", "UTF-8"):
            return ("NO", "[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
        hits = await self._search_hits(cmd)
        assert self.store is not None and self.selected is not None
        box = self.store.box(self.selected)
        nums = [u if cmd.uid else seq for seq, u in hits]
        # RFC 7162 3.1.5: a search on MODSEQ tells the highest MODSEQ of the hits.
        modseq = None
        if search.uses(cmd.args["keys"], {"MODSEQ"}):
            self._condstore_on()
            modseq = max((box.msgs[u].modseq for _, u in hits if u in box.msgs), default=None)
        if ret is not None:
            partial = cmd.args["partial"]
            if "SAVE" in ret:
                self.saved = esearch.to_save(ret, [u for _, u in hits], partial)
            text = esearch.response(cmd.tag, cmd.uid, ret, nums, modseq, partial)
            if text is not None:
                self.untagged(text)
        else:
            tail = [f"(MODSEQ {modseq})"] if modseq is not None else []
            self.untagged(" ".join(["SEARCH", *map(str, nums), *tail]))
        return None

    async def cmd_UID_SEARCH(self, cmd: Command):
        return await self.cmd_SEARCH(cmd)

    async def _facts(self, cmd: Command) -> list[sort.Facts] | tuple[str, str]:
        """What SORT and THREAD need of the matching messages: read off the event
        loop (one header per message), or the NO for an unknown charset."""
        if cmd.args["charset"] not in ("US-ASCII", "UTF-8"):
            return ("NO", "[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
        hits = await self._search_hits(cmd)
        assert self.store is not None and self.selected is not None
        box = self.store.box(self.selected)
        folder = self.store.path(self.selected) / "cur"
        found = [(seq, u, box.msgs[u]) for seq, u in hits if u in box.msgs]
        # SORT by ARRIVAL and SIZE only: the index has all; else a header per message.
        index_only = "criteria" in cmd.args and \
            {k for k, _ in cmd.args["criteria"]} <= {"ARRIVAL", "SIZE"}
        return await asyncio.to_thread(sort.read_facts, folder, found, not index_only)

    async def cmd_SORT(self, cmd: Command):
        ret = cmd.args["return"]
        if ret is not None and "SAVE" in ret:
            self.saved = []  # RFC 5182 2.1: emptied should the sort fail
        facts = await self._facts(cmd)
        if isinstance(facts, tuple):
            return facts
        ordered = await asyncio.to_thread(sort.sort, facts, cmd.args["criteria"])
        nums = [f.uid if cmd.uid else f.seq for f in ordered]
        top = None
        if search.uses(cmd.args["keys"], {"MODSEQ"}):  # RFC 7162 3.1.5, as for SEARCH
            self._condstore_on()
            assert self.store is not None and self.selected is not None
            msgs = self.store.box(self.selected).msgs
            top = max((msgs[f.uid].modseq for f in facts if f.uid in msgs), default=None)
        if ret is not None:  # ESORT (RFC 5267): an ESEARCH reply in sorted order
            partial = cmd.args["partial"]
            if "SAVE" in ret:
                self.saved = esearch.to_save(ret, [f.uid for f in ordered], partial)
            text = esearch.response(cmd.tag, cmd.uid, ret, nums, top, partial, ordered=True)
            if text is not None:
                self.untagged(text)
            return None
        tail = [f"(MODSEQ {top})"] if top is not None else []
        self.untagged(" ".join(["SORT", *map(str, nums), *tail]))
        return None

    async def cmd_UID_SORT(self, cmd: Command):
        return await self.cmd_SORT(cmd)

    async def cmd_THREAD(self, cmd: Command):
        facts = await self._facts(cmd)
        if isinstance(facts, tuple):
            return facts
        text = await asyncio.to_thread(thread.threads, facts, cmd.args["algorithm"], cmd.uid)
        self.untagged(f"THREAD {text}" if text else "THREAD")
        return None

    async def cmd_UID_THREAD(self, cmd: Command):
        return await self.cmd_THREAD(cmd)


NO_SPACE = "Not enough disk space, try again later"


def _listed(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the client address is in one of `networks` (an IPv4-mapped IPv6
    address, as a dual-stack socket reports IPv4 clients, counts as IPv4)."""
    if not networks:
        return False
    addr = client_ip.parse(ip)
    return addr is not None and any(addr in n for n in networks)


def _applied(flags: frozenset[str], mode: str, change: list[str]) -> frozenset[str]:
    """Flags after a STORE of `change` in `mode` (set, add, remove)."""
    if mode == "set":
        return frozenset(change)
    if mode == "add":
        return flags | set(change)
    return flags - set(change)


def _storage_failure(e: OSError | sqlite3.Error) -> tuple[str, str]:
    """The NO for a command that storage could not carry out."""
    if disk_full(e):  # as Dovecot: a full disk is OVERQUOTA, a temporary state
        return ("NO", f"[OVERQUOTA] {NO_SPACE}")
    return ("NO", "[SERVERBUG] Internal error, try again later")


def _prepare(path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


_STRUCT_ITEMS = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY"})  # cached in the index
_BINARY_ITEMS = frozenset({"BINARY", "BINARY.SIZE"})  # FetchAtt.binary, without the call
_FILE_ITEMS = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})
STRUCT_CHUNK = 256  # messages per look-up of cached structures


def _structures(part: mime.Part) -> tuple[bytes, bytes, bytes]:
    """The ENVELOPE, BODYSTRUCTURE and BODY of a message, computed together for the cache."""
    return (mime.envelope(part), mime.bodystructure(part),
            mime.bodystructure(part, extended=False))


def _parse(raw: bytes, structures: bool) -> tuple[mime.Part, tuple[bytes, bytes, bytes] | None]:
    """The MIME tree of a message, and its cached structures if asked for."""
    part = mime.Part(raw)
    return part, _structures(part) if structures else None


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


class _Bad(Exception):
    pass


class _Whole:
    """A message FETCH sends only whole (BODY[], RFC822): its MIME structure unparsed."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


def _whole(a: FetchAtt) -> bool:
    """BODY[] / BODY.PEEK[] (any partial): the message as stored."""
    return a.section is not None and not a.section.part and not a.section.text


class _Handled(Exception):
    """The handler already wrote its tagged reply (STARTTLS)."""


async def sweep(ctx: IMAPContext) -> None:
    """Close IMAP connections past their deadline (see endpoint.connection)."""
    await connection.sweep(ctx.sessions, b"* BYE Autologout; time limit exceeded\r\n",
                           connection.sweep_interval(min(ctx.config.limits.command_timeout,
                                                         ctx.config.imap.idle_timeout)))
