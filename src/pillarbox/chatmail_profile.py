"""The pipelines `mode = "chatmail"` gives the SMTP endpoints (docs/CHATMAIL.md).

An endpoint whose [pipeline.ENDPOINT] table the operator wrote keeps it;
the others get the chatmail profile:

- MX (smtp): relay, recipient, e2ee, strict DKIM (an "authentication"
  instance with `strict_dkim`, unless [chatmail] strict_dkim = false); a
  Received field.
- submission(s): sender, relay, recipient, a per-user send rate, e2ee; no
  Received field, the client's traces removed (minimal_metadata), then the
  usual missing fields and the DKIM signature.
"""

from __future__ import annotations

from typing import Any

from pillarbox import pipelines, registry

DKIM = "chatmail_dkim"
RATE = "chatmail_rate"


def apply(mods: pipelines.Modules, data: dict, settings: Any) -> None:
    kinds = registry.kinds()
    given = data.get("pipeline", {}) if isinstance(data.get("pipeline"), dict) else {}
    if DKIM not in mods.instances:
        kind = kinds["authentication"]
        opts = {"strict_dkim": True}
        mods.instances[DKIM] = pipelines.ModuleSpec(
            name=DKIM, kind=kind.name, role=kind.role,
            options=registry.validate_options(kind, DKIM, opts), given=opts)
    if RATE not in mods.instances:
        kind = kinds["rate_limit"]
        opts = {"per_ip": 0, "per_user": settings.max_user_send_per_minute,
                "burst": settings.max_user_send_burst}
        mods.instances[RATE] = pipelines.ModuleSpec(
            name=RATE, kind=kind.name, role=kind.role,
            options=registry.validate_options(kind, RATE, opts), given=opts)
    # e2ee before DKIM: cleartext is told "523 Encryption Needed" whatever its signature.
    mx_checks = ["relay", "recipient", "e2ee", *([DKIM] if settings.strict_dkim else [])]
    profile = {
        "smtp": (mx_checks, ["received"]),
        "submission": (["sender", "relay", "recipient", RATE, "e2ee"],
                       ["minimal_metadata", "submission_headers", "dkim_sign"]),
    }
    profile["submissions"] = profile["submission"]
    for endpoint, (checks, modifiers) in profile.items():
        if endpoint in given:
            continue
        mods.pipelines[endpoint] = pipelines.Pipeline(list(checks), list(modifiers))
