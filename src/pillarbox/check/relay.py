"""No open relay: mail to other domains only from authenticated users."""

from __future__ import annotations

from pillarbox.check import Reply


def check(rcpt_is_local: bool, authenticated: str | None) -> Reply | None:
    if rcpt_is_local or authenticated:
        return None
    return Reply(554, "5.7.1 Relaying denied: authenticate on the submission port to send "
                      "to other domains")
