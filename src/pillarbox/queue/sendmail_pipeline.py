"""`[pipeline.sendmail]` when it is not the default: the configured checks
and modifiers run over mail from `pillarbox sendmail` as it is picked up
(from queue/maildrop for root and the server's user, from maildrop_dir for
everyone else), before it is queued.

Sendmail has already said yes to its user, so a refusal cannot be a reply:
each refused recipient is logged and reported to the sender in a DSN, the
way the queue reports a recipient a delivery rule refuses. The default
pipeline never comes here: pickup queues as it always did.
"""

from __future__ import annotations

import logging
import pwd
import re
from typing import Any

from pillarbox import logs, module, pipelines, stages
from pillarbox.check.recipient import RecipientCheck

log = logging.getLogger("pillarbox.queue.sendmail")

# Our own Received field, first in a drop: who ran sendmail.
_UID_RE = re.compile(rb"Received: by [^\r\n]*\(pillarbox sendmail, uid (\d+)\)")


def configured(config: Any, instances: dict[str, Any]) -> tuple[list, list] | None:
    """The sendmail pipeline's check and modifier instances; None by default."""
    p = config.modules.pipelines["sendmail"]
    if p.is_default("sendmail"):
        return None
    return [instances[n] for n in p.checks], [instances[n] for n in p.modifiers]


def uid_of(message: bytes) -> int | None:
    m = _UID_RE.match(message)
    return int(m.group(1)) if m else None


def login_of(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


async def admit(queue: Any, msg_id: str, mail_from: str, rcpts: list[str], message: bytes,
                uid: int | None) -> stages.Outcome | None:
    """Run the configured pipeline; None when it is the default (queue as is).
    Refused recipients are logged and sent to the sender as a DSN here."""
    found = configured(queue.config, queue.modules)
    if found is None:
        return None
    checks, modifiers = found
    rules = queue.config.modules.rules

    def routed(rcpt: str) -> bool:  # a rule's targets take it: no mailbox needed
        rule = pipelines.first_match(rules, rcpt, mail_from, "sendmail", None, "")
        return rule is not None and not rule.reply

    def applies(check: Any, rcpt: str) -> bool:
        return not (isinstance(check, RecipientCheck) and rules and routed(rcpt))

    source = module.Source(endpoint="sendmail", auth=login_of(uid))
    out = await stages.run(checks, modifiers, source, msg_id, mail_from, rcpts, message,
                           queue.config.hostname, applies=applies)
    if out.refused:
        for rcpt, reply in out.refused.items():
            logs.event(log, logging.INFO, "sendmail refused", id=msg_id, uid=uid,
                       **{"from": f"<{mail_from}>"}, to=f"<{rcpt}>",
                       reason=f"{reply.code} {reply.text}")
        await queue.report_refused(msg_id, mail_from, out.refused, message,
                                   others_pending=bool(out.rcpts))
    return out

