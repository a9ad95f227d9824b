"""`pillarbox list ...`: mailing lists in the directory (issue 18).

    pillarbox list create team@example.org --name Team --owner alice@example.org
    pillarbox list add team@example.org bob@example.org carol@example.net
    pillarbox list set team@example.org policy moderated
    pillarbox list held
    pillarbox list approve TOKEN

The server reads lists from the database on every message, so changes apply
at once. `approve` hands the held post to the running server (a message to
the list's approve address, through the queue's maildrop): the server
resends it, signed and sealed, as a moderator's reply would.
"""

from __future__ import annotations

import argparse
import sys
import time

from pillarbox import address as addr
from pillarbox import config as configmod
from pillarbox.lists.store import SETTINGS, ListError, ListStore, MailingList
from pillarbox.printable import escape

ACTIONS = ("create", "del", "add", "remove", "members", "set", "show", "held", "approve",
           "reject")
# ADDR then what each action needs after it.
_NEEDS = {"create": 0, "del": 0, "add": 1, "remove": 1, "members": 0, "set": 2, "show": 0,
          "approve": 0, "reject": 0}


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("list", help="manage mailing lists: create, members, settings, "
                                    "held posts")
    s.add_argument("action", choices=ACTIONS,
                   help="create/del a list; add/remove/members; set/show its settings; "
                        "held, approve, reject held posts")
    s.add_argument("words", nargs="*", metavar="ARG",
                   help="the list's ADDRESS, then: add/remove MEMBER...; set KEY VALUE "
                        f"(KEY: {', '.join(SETTINGS)}, or enable/disable MEMBER); "
                        "approve/reject take a TOKEN instead; held an optional ADDRESS")
    s.add_argument("--name", default="", help="create: the list's display name")
    s.add_argument("--owner", action="append", default=[], metavar="ADDR",
                   help="create: an owner (told of subscriptions and disabled members); "
                        "repeatable")
    s.set_defaults(func=cmd_list)


def _store(cfg: configmod.Config) -> ListStore:
    return ListStore.open(cfg.storage_url, cfg.data_dir)


def cmd_list(args: argparse.Namespace) -> int:
    cfg = configmod.load(configmod.find_config_path(args.config))
    store = _store(cfg)
    words = list(args.words)
    need = _NEEDS.get(args.action)
    if need is not None and len(words) < need + 1:
        what = "a TOKEN" if args.action in ("approve", "reject") else "the list's ADDRESS"
        more = {1: " and at least one MEMBER", 2: " KEY VALUE"}.get(need, "")
        return _fail(f"list {args.action} needs {what}{more}")
    try:
        return _run(cfg, store, args, words)
    except (ListError, addr.AddressError) as e:
        return _fail(str(e))


def _fail(text: str) -> int:
    print(f"error: {text}", file=sys.stderr)
    return 1


def _list_address(cfg: configmod.Config, text: str) -> str:
    a = addr.normalize(text)
    if not cfg.is_local_domain(addr.domain_of(a)):
        raise ListError(f"{a} is not in a local domain ({', '.join(cfg.domains)})")
    if "+" in a.partition("@")[0]:
        raise ListError(f"{a}: a list address may not hold '+' (its +approve-, +confirm- and "
                        "+bounces addresses use it)")
    return a


def _run(cfg: configmod.Config, store: ListStore, args: argparse.Namespace,
         words: list[str]) -> int:
    action = args.action
    if action == "held":
        for h in store.held(_list_address(cfg, words[0]) if words else None):
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(h.created))
            print(f"{h.token}\t{h.list}\t<{escape(h.sender)}>\t{when}\t{escape(h.reason)}\t"
                  f"{escape(h.subject)}")
        return 0
    if action in ("approve", "reject"):
        return _moderate(cfg, store, action, words[0])
    address = _list_address(cfg, words[0])
    if action == "create":
        owners = [addr.normalize(o) for o in args.owner]
        store.create(address, args.name, owners)
        print(f"list {address} created")
        if not _routed(cfg, address):
            print(f"note: no [[rule]] routes {address} to a mailing_list module yet; add\n"
                  f"  [module.lists]\n  kind = \"mailing_list\"\n\n  [[rule]]\n"
                  f"  rcpt = [\"{address}\", \"{_glob(address, '+*')}\", "
                  f"\"{_glob(address, '-*')}\"]\n  targets = [\"lists\"]\n"
                  "to the config (docs/LISTS.md)", file=sys.stderr)
        return 0
    if action == "del":
        store.delete(address)
        print(f"list {address} deleted")
        return 0
    if action in ("add", "remove"):
        members = [addr.normalize(m) for m in words[1:]]
        if action == "add":
            n = store.add_members(address, members)
            print(f"{n} member(s) added to {address}")
        else:
            n = store.remove_members(address, members)
            print(f"{n} member(s) removed from {address}")
        return 0
    if action == "members":
        for m, enabled in store.members(address):
            print(m if enabled else f"{m}\tdisabled")
        return 0
    if action == "set":
        key, value = words[1], " ".join(words[2:]) if len(words) > 2 else ""
        if key in ("enable", "disable"):
            member = addr.normalize(value)
            if not store.is_member(address, member):
                raise ListError(f"{member} is no member of {address}")
            store.set_enabled(address, member, key == "enable")
            print(f"{member} {key}d on {address}")
            return 0
        store.set(address, key, value)
        print(f"{address}: {key} = {value}")
        return 0
    lst = store.get(address)
    if lst is None:
        raise ListError(f"no list {address}")
    _show(lst, store)
    return 0


def _show(lst: MailingList, store: ListStore) -> None:
    members = store.members(lst.address)
    print(f"address         {lst.address}")
    print(f"list-id         {lst.list_id}")
    for key in SETTINGS:
        value = getattr(lst, key)
        if isinstance(value, list):
            value = " ".join(value)
        print(f"{key:<15} {escape(str(value))}")
    print(f"members         {len(members)} ({sum(1 for _, e in members if not e)} disabled)")
    print(f"held            {len(store.held(lst.address))}")


def _moderate(cfg: configmod.Config, store: ListStore, action: str, token: str) -> int:
    held = store.held_one(token)
    if held is None:
        raise ListError(f"no held post with token {token}")
    if action == "reject":
        store.take_held(token)
        print(f"rejected {token} (to {held.list}, from <{escape(held.sender)}>)")
        return 0
    store.mark_approved(token)
    _drop_approval(cfg, held.list, token)
    print(f"approved {token}: the server resends it to {held.list}")
    return 0


def _drop_approval(cfg: configmod.Config, list_address: str, token: str) -> None:
    """A message to the list's approve address, queued as `pillarbox
    sendmail` queues one; the server takes it at once (pickup) or at start."""
    from pillarbox import control
    from pillarbox.queue.spool import Envelope, Spool, new_id

    local, _, domain = list_address.rpartition("@")
    rcpt = f"{local}+approve-{token}@{domain}"
    data = (f"From: <postmaster@{domain}>\r\nTo: <{rcpt}>\r\n"
            f"Subject: approved with pillarbox list approve\r\n\r\n").encode()
    msg_id = new_id()
    env = Envelope(id=msg_id, mail_from="", rcpts=[rcpt], received=time.time(),
                   size=len(data), source="sendmail")
    Spool(cfg.queue_root, cfg.queue.min_free_space).drop(env, data)
    control.request(cfg.data_dir, "pickup")


def _glob(address: str, tail: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}{tail}@{domain}"


def _routed(cfg: configmod.Config, address: str) -> bool:
    kinds = {n for n, spec in cfg.modules.instances.items() if spec.kind == "mailing_list"}
    kinds.add("mailing_list")
    for rule in cfg.modules.rules:
        if set(rule.targets) & kinds and rule.matches(address, "x@y.test", "smtp", None, ""):
            return True
    return False
