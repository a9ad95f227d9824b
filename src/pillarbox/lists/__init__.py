"""Mailing lists (issue 18): storage, addresses, the list copy, moderation,
subscription by mail, bounces and one-click unsubscribe.

The `mailing_list` target (target/mailing_list.py) ties these together; the
CLI (cli_lists.py) and, later, the HTTP endpoint (`unsubscribe.unsubscribe`)
use them directly. Nothing here imports an endpoint or the queue: the target
is handed the queue's `enqueue` by the server.
"""
