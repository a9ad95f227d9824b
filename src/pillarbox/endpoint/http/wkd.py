"""OpenPGP Web Key Directory (draft-koch-openpgp-webkey-service): other
people's mail clients (GnuPG, Thunderbird, K-9, Delta Chat...) find a user's
key, the one `pillarbox user key import` stored or Autocrypt taught us.

Both forms are answered: the direct one at
https://DOMAIN/.well-known/openpgpkey/hu/HASH and the advanced one at
https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH, where HASH is
the z-base-32 encoded SHA-1 of the lower-cased local part (the draft's
section 3.1). The key goes out in binary form; a deleted key is gone at the
next request (nothing is cached here).
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

from pillarbox import address as addr
from pillarbox.endpoint.http.env import HTTPEnv

_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
_HEADERS = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-cache"}  # the draft asks CORS


def zbase32(data: bytes) -> str:
    """z-base-32 (the draft's encoding of the hash; 160 bits give 32 characters)."""
    bits, n = int.from_bytes(data, "big"), len(data) * 8
    pad = -n % 5
    bits <<= pad
    return "".join(_ZBASE32[(bits >> s) & 31] for s in range(n + pad - 5, -1, -5))


def local_hash(local_part: str) -> str:
    """The HASH of a local part: only ASCII letters are lower-cased."""
    lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in local_part)
    return zbase32(hashlib.sha1(lowered.encode("utf-8")).digest())


def _address(local: str, domain: str) -> str | None:
    try:
        return addr.normalize(f"{local}@{domain}")
    except addr.AddressError:
        return None


def routes(env: HTTPEnv) -> list[web.RouteDef]:
    def served_domain(request: web.Request, domain: str | None) -> str:
        cfg = env.config()
        host = (request.host or "").rsplit(":", 1)[0].lower().rstrip(".")
        if domain is None:  # direct: asked at the domain itself
            domain = host
        elif host != f"openpgpkey.{domain.lower()}":  # advanced: at openpgpkey.DOMAIN
            raise web.HTTPNotFound(text="no key directory here\n")
        domain = domain.lower()
        if not cfg.is_local_domain(domain) or env.keys() is None:
            raise web.HTTPNotFound(text="no key directory here\n")
        return domain

    def find(domain: str, hashed: str, local: str | None) -> bytes | None:
        """Blocking (the key store). With `l=` the address is known; else the
        users with a key are tried (a client that sends no l=)."""
        keys = env.keys()
        if local is not None:
            if local_hash(local) != hashed:
                return None
            return keys.get(_address(local, domain) or "")
        for a in keys.addresses(domain):
            if local_hash(a.rpartition("@")[0]) == hashed:
                return keys.get(a)
        return None

    async def key(request: web.Request) -> web.Response:
        domain = served_domain(request, request.match_info.get("domain"))
        hashed = request.match_info["hash"]
        local = request.query.get("l")
        if len(hashed) != 32 or set(hashed) - set(_ZBASE32) or (
                local is not None and _address(local, domain) is None):
            raise web.HTTPNotFound(text="no such key\n")
        cert = await asyncio.to_thread(find, domain, hashed, local)
        if cert is None:
            raise web.HTTPNotFound(text="no such key\n")
        return web.Response(body=cert, content_type="application/octet-stream",
                            headers=_HEADERS)

    async def policy(request: web.Request) -> web.Response:
        served_domain(request, request.match_info.get("domain"))
        return web.Response(text="", content_type="text/plain", headers=_HEADERS)

    base = "/.well-known/openpgpkey"
    return [web.get(f"{base}/hu/{{hash}}", key),
            web.get(f"{base}/{{domain}}/hu/{{hash}}", key),
            web.get(f"{base}/policy", policy),
            web.get(f"{base}/{{domain}}/policy", policy)]
