"""Mailing lists as a target (issue 18): posts, moderation, subscription by
mail and bounces for every list in the directory (`pillarbox list ...`).

    [module.lists]
    kind = "mailing_list"

    [[rule]]
    rcpt = ["team@example.org", "team+*@example.org", "team-*@example.org"]
    targets = ["lists"]

At RCPT the SMTP session asks the target (`vet_rcpt`) about each recipient a
rule routes to it: an address that is no list's is refused (550 5.1.1), and
a post from an envelope sender that may not post to a members-only list is
refused in the dialogue (550 5.7.1), so no bounce goes to a forged sender.
After the queue, a post is held for a moderator or resent: ONE new queue
entry with every enabled member as a recipient, DKIM-signed by the list's
domain and ARC-sealed, whose sender the queue turns into a VERP address per
member (lists/addresses.py). Intake never waits for the members.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from pillarbox import module
from pillarbox.check import Reply
from pillarbox.lists import addresses, bounces, compose, unsubscribe
from pillarbox.lists.store import ListStore, MailingList
from pillarbox.printable import escape
from pillarbox.store import backend

log = logging.getLogger("pillarbox.lists")

NO_LIST = Reply(550, "5.1.1 No such mailing list here")
NOT_MEMBER = Reply(550, "5.7.1 Only members may post to this list")
NO_NULL = Reply(550, "5.7.1 Mail from the null sender is not taken at this list address")
BAD_TOKEN = Reply(550, "5.7.1 Unknown or used confirmation token")
STORE_DOWN = Reply(451, "4.3.0 Mailing list store unavailable, try again later")
_WORD = re.compile(r"[a-z]+")


class MailingListTarget:
    def __init__(self, name: str, options: dict[str, Any], env: Any) -> None:
        self.name = name
        self.config = env.config
        # The server's directory database (one pool with PostgreSQL); its own when
        # made without one.
        db = getattr(env.users, "db", None)
        self.store = (ListStore(db) if db is not None
                      else ListStore.open(env.config.storage_url, env.config.data_dir))
        self.queue = env.queue
        self.signing = env.signing
        self.resolver = env.resolver
        self.bounce_limit: int = options["bounce_limit"]
        self.bounce_window: int = options["bounce_window"]
        self.unsubscribe_url: str = options["unsubscribe_url"]
        self._lists: dict[str, tuple[float, MailingList | None]] = {}
        if self.queue is not None and self.unsubscribe_url:
            self.queue.personalize = self.personal_fields

    async def close(self) -> None:
        """A reload or stop dropped this instance: the queue forgets its hook
        (unless a newer instance set its own)."""
        if self.queue is not None and self.queue.personalize == self.personal_fields:
            self.queue.personalize = None

    # -- lookups --------------------------------------------------------------------

    def role(self, rcpt: str) -> addresses.Role | None:
        return addresses.parse(rcpt, lambda a: self.store.get(a) is not None)

    def personal_fields(self, list_sender: str, member: str) -> bytes:
        """For the queue: one member's one-click unsubscribe fields (b"" when
        the entry is no list post)."""
        if not addresses.is_bounce_sender(list_sender):
            return b""
        local, _, domain = list_sender.rpartition("@")
        address = f"{local[:-len('+bounces')]}@{domain}"
        now = time.monotonic()
        hit = self._lists.get(address)
        if hit is None or now - hit[0] > 10:
            hit = self._lists[address] = (now, self.store.get(address))
        lst = hit[1]
        return b"" if lst is None else unsubscribe.personal_fields(lst, member,
                                                                   self.unsubscribe_url)

    async def vet_rcpt(self, rcpt: str, sender: str) -> Reply | None:
        """At RCPT: None to accept `rcpt`, else the refusal. The envelope
        sender is what is checked (the From field is not known yet). The
        lookups are database round trips (PostgreSQL: over the network): in a
        worker thread, so no other session waits for them."""
        try:
            return await asyncio.to_thread(self._vet, rcpt, sender)
        except backend.errors() as e:  # PostgreSQL down: the sender retries
            log.warning("mailing list lookup failed rcpt=%s error=%s", escape(rcpt), e)
            return STORE_DOWN

    def _vet(self, rcpt: str, sender: str) -> Reply | None:
        role = self.role(rcpt)
        if role is None:
            return NO_LIST
        if role.kind == "bounces":
            return None
        if not sender:
            return NO_NULL
        if role.kind in ("approve", "reject") and self.store.held_one(role.arg) is None:
            return BAD_TOKEN
        if role.kind == "confirm" and not self.store.has_pending(role.arg):
            return BAD_TOKEN
        if role.kind == "post":
            lst = self.store.get(role.list)
            if lst is not None and lst.policy == "members" and not self._may_post(lst, sender):
                return NOT_MEMBER
        return None

    def _may_post(self, lst: MailingList, sender: str) -> bool:
        return sender.lower() in lst.staff() or self.store.is_member(lst.address, sender)

    async def start(self, envelope: module.Envelope) -> module.Delivery:
        return _ListDelivery(self, envelope)

    # -- what arrives ---------------------------------------------------------------

    async def handle(self, rcpt: str, sender: str, source: str, message: bytes) -> None:
        role = await asyncio.to_thread(self.role, rcpt)
        if role is None:
            raise module.DeliveryError(NO_LIST)
        lst = await asyncio.to_thread(self.store.get, role.list)
        assert lst is not None
        if role.kind == "post":
            await self.post(lst, sender, message)
        elif role.kind in ("approve", "reject"):
            await self.moderate(lst, role.kind, role.arg, sender, source)
        elif role.kind == "confirm":
            await self.confirm(lst, role.arg)
        elif role.kind == "bounces":
            await self.bounced(lst, role.arg, message)
        else:
            await self.request(lst, role.kind, sender, message)

    async def post(self, lst: MailingList, sender: str, message: bytes) -> None:
        fields, _ = compose.split(message)
        if compose.carries_list_id(fields, lst):
            log.info("list loop: dropped a post that went through the list already "
                     "list=%s from=<%s>", lst.address, escape(sender))
            return
        reason = ""
        if not sender:
            reason = "null sender"
        elif lst.policy == "moderated" and sender.lower() not in lst.staff():
            reason = "the list is moderated"
        elif lst.policy == "members" and not await asyncio.to_thread(self._may_post, lst,
                                                                      sender):
            reason = "not a member"  # reached us without RCPT (sendmail)
        elif lst.max_size and len(message) > lst.max_size:
            reason = f"larger than the list's max_size ({lst.max_size} bytes)"
        if reason:
            await self.hold(lst, sender, fields, message, reason)
            return
        await self.distribute(lst, message)

    async def hold(self, lst: MailingList, sender: str, fields: list[tuple[str, str]],
                   message: bytes, reason: str) -> None:
        subject = " ".join((compose.value(fields, "subject") or "").split())
        token = await asyncio.to_thread(self.store.hold, lst.address, sender, subject, reason,
                                        message)
        log.info("list post held list=%s from=<%s> token=%s reason=%r", lst.address,
                 escape(sender), token, reason)
        body = (f"A post to {lst.address} waits for approval.\n\n"
                f"From:    {sender or '<>'}\nSubject: {subject}\nReason:  {reason}\n\n"
                f"To approve it, reply to this message (it goes to\n"
                f"{lst.at('+approve-' + token)}).\n"
                f"To reject it, write to {lst.at('+reject-' + token)}.\n"
                f"Or on the server: pillarbox list approve {token}\n")
        for to in lst.moderators or lst.owners:
            await self.send_notice(lst, to, f"Approve post to {lst.address}: {subject[:80]}",
                                   body, reply_to=lst.at("+approve-" + token))

    async def moderate(self, lst: MailingList, action: str, token: str, sender: str,
                       source: str) -> None:
        held = await asyncio.to_thread(self.store.held_one, token)
        if held is None or held.list != lst.address:
            log.info("list moderation: unknown token list=%s token=%s", lst.address,
                     escape(token))
            return
        allowed = sender.lower() in lst.staff() or (held.approved and source == "sendmail")
        if not allowed:
            log.warning("list moderation refused: not a moderator list=%s from=<%s>",
                        lst.address, escape(sender))
            return
        taken = await asyncio.to_thread(self.store.take_held, token)
        if taken is None:
            return
        log.info("list post %s list=%s token=%s by=<%s>",
                 "approved" if action == "approve" else "rejected", lst.address, token,
                 escape(sender) if source != "sendmail" else "cli")
        if action == "approve":
            await self.distribute(lst, taken[1])

    async def request(self, lst: MailingList, kind: str, sender: str, message: bytes) -> None:
        fields, _ = compose.split(message)
        if not sender or compose.is_automatic(fields):
            return  # never answer a machine: no loops
        if kind == "request":
            words = _WORD.findall((compose.value(fields, "subject") or "").lower())
            kind = next((w for w in words if w in ("subscribe", "unsubscribe")), "help")
        if kind == "help":
            await self.send_notice(lst, sender, f"Help for {lst.address}", (
                f"To join {lst.address}, write to {lst.at('-subscribe')}.\n"
                f"To leave it, write to {lst.at('-unsubscribe')}.\n"
                "Each asks you to confirm by replying.\n"))
            return
        token = await asyncio.to_thread(self.store.pending, lst.address, sender, kind)
        confirm = lst.at("+confirm-" + token)
        verb = "join" if kind == "subscribe" else "leave"
        await self.send_notice(lst, sender, f"Confirm: {kind} {lst.address} ({token})", (
            f"Someone (maybe you) asked to {verb} the list {lst.address}\n"
            f"with the address {sender}.\n\n"
            f"To confirm, reply to this message (it goes to {confirm}).\n"
            "If you did not ask for this, ignore it.\n"), reply_to=confirm)

    async def confirm(self, lst: MailingList, token: str) -> None:
        pending = await asyncio.to_thread(self.store.take_pending, token)
        if pending is None or pending[0] != lst.address:
            return
        _, member, action = pending
        if action == "subscribe":
            await asyncio.to_thread(self.store.add_members, lst.address, [member])
            await asyncio.to_thread(self.store.set_enabled, lst.address, member, True)
            what = "joined"
        else:
            await asyncio.to_thread(self.store.remove_members, lst.address, [member])
            what = "left"
        log.info("list member %s list=%s member=<%s>", what, lst.address, escape(member))
        await self.send_notice(lst, member, f"You {what} {lst.address}",
                               f"Your address {member} {what} the list {lst.address}.\n")
        for owner in lst.owners:
            await self.send_notice(lst, owner, f"{member} {what} {lst.address}",
                                   f"{member} {what} the list {lst.address} "
                                   "(confirmed by mail).\n")

    async def bounced(self, lst: MailingList, member: str, message: bytes) -> None:
        about = [member] if member else bounces.failed_recipients(message)
        for m in about:
            if not await asyncio.to_thread(self.store.is_member, lst.address, m):
                continue
            n = await asyncio.to_thread(self.store.record_bounce, lst.address, m,
                                        float(self.bounce_window))
            log.info("list bounce list=%s member=<%s> count=%d", lst.address, escape(m), n)
            if n < self.bounce_limit:
                continue
            if not await asyncio.to_thread(self.store.disable, lst.address, m):
                continue  # disabled already (by a bounce handled at the same time)
            log.warning("list member disabled after bounces list=%s member=<%s> bounces=%d",
                        lst.address, escape(m), n)
            for owner in lst.owners:
                await self.send_notice(lst, owner, f"{m} disabled on {lst.address}", (
                    f"Mail to {m} bounced {n} times within {self.bounce_window} seconds;\n"
                    f"the member no longer gets posts to {lst.address}.\n"
                    f"To enable it again: pillarbox list set {lst.address} enable {m}\n"))

    # -- what leaves ------------------------------------------------------------------

    async def distribute(self, lst: MailingList, message: bytes) -> None:
        fields, _ = compose.split(message)
        _, author = compose.author(fields)
        rewrite = await self.dmarc_strict(lst, author)
        copy = compose.list_copy(lst, message, rewrite)
        if self.unsubscribe_url:  # the queue adds each member's one-click fields
            copy = _without_mailto_unsubscribe(copy)
        members = await asyncio.to_thread(self.store.recipients, lst.address)
        if not members:
            log.info("list post to no one list=%s: no enabled members", lst.address)
            return
        out = await self.finish(lst, copy)
        msg_id = await self.queue.enqueue(addresses.bounce_sender(lst.address), members,
                                          [out], len(out), source="list")
        log.info("list post resent list=%s id=%s members=%d from_rewritten=%s", lst.address,
                 msg_id, len(members), "yes" if rewrite else "no")

    async def dmarc_strict(self, lst: MailingList, author: str) -> bool:
        """Whether the author's domain asks receivers to refuse or quarantine
        mail that fails DMARC: then From must become the list's address."""
        from pillarbox.check import dmarc
        from pillarbox.check.lookup import DNSFailure

        domain = author.rpartition("@")[2].rstrip(".")
        if not domain or self.resolver is None:
            return False
        try:
            if dmarc.org_domain(domain) == dmarc.org_domain(lst.domain):
                return False  # our own signature aligns
            rec = await dmarc.discover(self.resolver, domain)
        except DNSFailure:
            return True  # rather a rewritten From than a copy rejected everywhere
        except Exception:  # a malformed record or name: no policy
            return False
        if rec is None:
            return False
        policy = rec.p if rec.domain == domain else rec.sp
        return policy in ("reject", "quarantine")

    async def finish(self, lst: MailingList, message: bytes) -> bytes:
        """DKIM-signed by the list's domain, then ARC-sealed."""
        if self.signing is not None:
            try:
                message = await self.signing.sign(message, lst.domain) + message
            except Exception as e:  # an unsigned copy beats none
                log.warning("list DKIM signing failed list=%s error=%r", lst.address, e)
        sealer = getattr(self.queue, "sealer", None)
        if sealer is not None and self.config.delivery.arc_seal and self.resolver is not None:
            from pillarbox.resolver import sync_lookup

            lookup = sync_lookup(self.resolver, asyncio.get_running_loop())
            try:
                message = await asyncio.to_thread(sealer.seal, message, [lst.domain],
                                                  self.config.hostname, lookup) + message
            except Exception as e:
                log.warning("list ARC sealing failed list=%s error=%r", lst.address, e)
        return message

    async def send_notice(self, lst: MailingList, to: str, subject: str, body: str,
                          reply_to: str = "") -> None:
        msg = await self.finish(lst, compose.notice(lst, to, subject, body, reply_to))
        await self.queue.enqueue(addresses.bounce_sender(lst.address), [to], [msg], len(msg),
                                 source="list")


def _without_mailto_unsubscribe(message: bytes) -> bytes:
    fields, rest = compose.split(message)
    return compose.join([(n, v) for n, v in fields
                         if n.strip().lower() != "list-unsubscribe"], rest)


class _ListDelivery(module.BaseDelivery):
    def __init__(self, target: MailingListTarget, envelope: module.Envelope) -> None:
        super().__init__(envelope)
        self.target = target

    async def commit(self) -> Mapping[str, module.DeliveryError | None]:
        assert self.message is not None
        reader = self.message
        data = await asyncio.to_thread(reader.read)
        out: dict[str, module.DeliveryError | None] = {}
        for rcpt in self.rcpts:
            try:
                await self.target.handle(rcpt, self.envelope.mail_from,
                                         self.envelope.source.endpoint, data)
                out[rcpt] = None
            except module.DeliveryError as e:
                out[rcpt] = e
            except backend.errors() as e:  # the queue retries with its backoff
                log.warning("mailing list store failed rcpt=%s error=%s", escape(rcpt), e)
                out[rcpt] = module.DeliveryError(STORE_DOWN)
        return out


def _make(name: str, options: dict[str, Any], env: Any) -> MailingListTarget:
    return MailingListTarget(name, options, env)


def _validate(options: dict[str, Any]) -> None:
    url = options["unsubscribe_url"]
    if url and (not url.startswith("https://") or "{token}" not in url):
        raise ValueError("unsubscribe_url: expected an https:// URL holding {token}, "
                         f"got {url!r}")
    if options["bounce_limit"] < 1:
        raise ValueError("bounce_limit: expected 1 or more")
    if options["bounce_window"] < 1:
        raise ValueError("bounce_window: expected a number of seconds, 1 or more")


KIND = module.Kind(
    "mailing_list", "target",
    (module.Option("bounce_limit", int, 5,
                   help="bounces within bounce_window that disable a member"),
     module.Option("bounce_window", int, 604800,
                   help="seconds over which a member's bounces are counted"),
     module.Option("unsubscribe_url", str, "",
                   help="https URL with {token} for RFC 8058 one-click unsubscribe; "
                        "empty: mailto only")),
    _make,
    help="mailing lists of the directory: posts, moderation, subscription, bounces",
    validate=_validate,
)
