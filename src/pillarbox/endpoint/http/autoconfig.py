"""Mail client set-up: Thunderbird autoconfig (config-v1.1.xml) and Microsoft Autodiscover (POX).

Both describe the endpoints of the running config, with the hostname and the
ports that `pillarbox dns` puts in the SRV records (dnsrecords.client_services),
implicit TLS first (RFC 8314). Users log in with their full address.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from aiohttp import web

from pillarbox.address import AddressError, normalize_domain
from pillarbox.config import Config
from pillarbox.dnsrecords import client_services
from pillarbox.endpoint.http.env import HTTPEnv

XML = "application/xml"
# Outlook's request is tiny; its address is all we read from it (no XML parser
# on hostile input).
_ADDRESS = re.compile(rb"<EMailAddress>\s*([^<>\s]{3,320})\s*</EMailAddress>", re.I)

# (listen kind, autoconfig element, type, socketType)
_KINDS = (("imaps", "incomingServer", "imap", "SSL"),
          ("imap", "incomingServer", "imap", "STARTTLS"),
          ("submissions", "outgoingServer", "smtp", "SSL"),
          ("submission", "outgoingServer", "smtp", "STARTTLS"))


def servers(cfg: Config) -> list[tuple[str, str, str, int]]:
    """(element, type, socketType, port) for each offered endpoint, preferred first."""
    ports = {kind: port for _, kind, port in client_services(cfg)}
    return [(el, typ, sock, ports[kind]) for kind, el, typ, sock in _KINDS
            if ports.get(kind) is not None]


def _domain_of(cfg: Config, address: str | None, host: str | None) -> str | None:
    """The domain asked about: the address's, else the Host's (autoconfig.D or D);
    None when it is not one of ours."""
    candidates = []
    if address:
        candidates.append(address.rpartition("@")[2])
    elif host:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        candidates += [name.removeprefix("autoconfig."), name.removeprefix("autodiscover.")]
    else:
        return cfg.domains[0]
    for c in candidates:
        try:
            d = normalize_domain(c)
        except AddressError:
            continue
        if cfg.is_local_domain(d):
            return d
    return None


def config_v11(cfg: Config, domain: str) -> str:
    host = escape(cfg.hostname)
    d = escape(domain)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<clientConfig version="1.1">',
             f'  <emailProvider id="{d}">', f"    <domain>{d}</domain>",
             f"    <displayName>{d} mail</displayName>",
             f"    <displayShortName>{d}</displayShortName>"]
    for element, typ, sock, port in servers(cfg):
        lines += [f'    <{element} type="{typ}">', f"      <hostname>{host}</hostname>",
                  f"      <port>{port}</port>", f"      <socketType>{sock}</socketType>",
                  "      <authentication>password-cleartext</authentication>",
                  "      <username>%EMAILADDRESS%</username>", f"    </{element}>"]
    lines += ["  </emailProvider>", "</clientConfig>", ""]
    return "\n".join(lines)


def autodiscover(cfg: Config, address: str) -> str:
    """The POX answer: the preferred IMAP and SMTP endpoint."""
    a = escape(address)
    lines = ['<?xml version="1.0" encoding="utf-8"?>',
             '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/'
             'responseschema/2006">',
             '  <Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
             'responseschema/2006a">',
             "    <Account>", "      <AccountType>email</AccountType>",
             "      <Action>settings</Action>"]
    done = set()
    for _, typ, sock, port in servers(cfg):
        if typ in done:
            continue
        done.add(typ)
        tls = "<SSL>on</SSL>" if sock == "SSL" else "<Encryption>TLS</Encryption>"
        lines += ["      <Protocol>", f"        <Type>{typ.upper()}</Type>",
                  f"        <Server>{escape(cfg.hostname)}</Server>",
                  f"        <Port>{port}</Port>", f"        <LoginName>{a}</LoginName>",
                  "        <DomainRequired>off</DomainRequired>", "        <SPA>off</SPA>",
                  f"        {tls}", "        <AuthRequired>on</AuthRequired>",
                  "      </Protocol>"]
    lines += ["    </Account>", "  </Response>", "</Autodiscover>", ""]
    return "\n".join(lines)


def routes(env: HTTPEnv) -> list[web.RouteDef]:
    async def thunderbird(request: web.Request) -> web.Response:
        cfg = env.config()
        address = request.query.get("emailaddress")
        if address is not None and (len(address) > 320 or "@" not in address):
            raise web.HTTPBadRequest(text="emailaddress: expected an address\n")
        domain = _domain_of(cfg, address, request.host)
        if domain is None:
            raise web.HTTPNotFound(text="not a domain of this server\n")
        return web.Response(text=config_v11(cfg, domain), content_type=XML, charset="utf-8")

    async def outlook(request: web.Request) -> web.Response:
        cfg = env.config()
        m = _ADDRESS.search(await request.read())
        if m is None:
            raise web.HTTPBadRequest(text="expected an Autodiscover request with EMailAddress\n")
        address = m.group(1).decode("ascii", "replace")
        if "@" not in address or _domain_of(cfg, address, None) is None:
            raise web.HTTPNotFound(text="not a domain of this server\n")
        return web.Response(text=autodiscover(cfg, address), content_type=XML, charset="utf-8")

    return [web.get("/mail/config-v1.1.xml", thunderbird),
            web.get("/.well-known/autoconfig/mail/config-v1.1.xml", thunderbird),
            web.post("/autodiscover/autodiscover.xml", outlook),
            web.post("/Autodiscover/Autodiscover.xml", outlook)]
