"""The HTTP face (issue 16): autoconfig, Autodiscover, MTA-STS, health, headers
and limits, with a real HTTP client (aiohttp) against a real `pillarbox serve`."""

from __future__ import annotations

import asyncio
import imaplib
import re
import smtplib
import socket
import ssl
import xml.etree.ElementTree as ET

import aiohttp
import dns.zone

from .support import ALICE, DOMAIN, HOSTNAME, PASSWORD, free_ports


def http_server(make_server, **overrides):
    http, https, metrics = free_ports(3)
    srv = make_server({"listen.http": [f"127.0.0.1:{http}"],
                       "listen.https": [f"127.0.0.1:{https}"],
                       "listen.metrics": [f"127.0.0.1:{metrics}"], **overrides})
    srv.http_port, srv.https_port, srv.metrics_port = http, https, metrics
    return srv


async def _get(url: str, method: str = "GET", **kw) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, url, ssl=False, **kw) as r:
        return r.status, dict(r.headers), await r.read()


def get(url: str, method: str = "GET", **kw) -> tuple[int, dict, bytes]:
    return asyncio.run(_get(url, method, **kw))


def test_autoconfig_describes_the_endpoints_and_agrees_with_the_srv_records(make_server):
    srv = http_server(make_server, **{"http.client_ports": "listen"})
    zone = dns.zone.from_text(srv.cli_ok("dns").stdout, origin=".", check_origin=False)
    srv_ports = {}
    for name in ("_submission._tcp", "_submissions._tcp", "_imap._tcp", "_imaps._tcp"):
        (rd,) = zone.find_rdataset(f"{name}.{DOMAIN}.", "SRV")
        srv_ports[name] = (rd.port, str(rd.target).rstrip("."))
    for path in ("/mail/config-v1.1.xml?emailaddress=alice%40example.test",
                 "/.well-known/autoconfig/mail/config-v1.1.xml"):
        status, headers, body = get(f"http://127.0.0.1:{srv.http_port}{path}",
                                    headers={"Host": f"autoconfig.{DOMAIN}"})
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/xml")
        root = ET.fromstring(body)
        assert root.tag == "clientConfig" and root.get("version") == "1.1"
        (provider,) = root.findall("emailProvider")
        assert provider.get("id") == DOMAIN
        assert [d.text for d in provider.findall("domain")] == [DOMAIN]
        assert provider.findtext("displayName") and provider.findtext("displayShortName")
        got = {}
        for el in provider.findall("incomingServer") + provider.findall("outgoingServer"):
            # every element Thunderbird reads
            assert el.findtext("hostname") == HOSTNAME
            assert el.findtext("authentication") == "password-cleartext"
            assert el.findtext("username") == "%EMAILADDRESS%"
            got[(el.get("type"), el.findtext("socketType"))] = int(el.findtext("port"))
        assert got == {
            ("imap", "SSL"): srv.imaps_port, ("imap", "STARTTLS"): srv.imap_port,
            ("smtp", "SSL"): srv.submissions_port, ("smtp", "STARTTLS"): srv.submission_port}
        # implicit TLS first (RFC 8314)
        assert provider.find("incomingServer").findtext("socketType") == "SSL"
    assert srv_ports == {
        "_imaps._tcp": (got[("imap", "SSL")], HOSTNAME),
        "_imap._tcp": (got[("imap", "STARTTLS")], HOSTNAME),
        "_submissions._tcp": (got[("smtp", "SSL")], HOSTNAME),
        "_submission._tcp": (got[("smtp", "STARTTLS")], HOSTNAME)}
    # the servers it names really take the login it describes
    with imaplib.IMAP4_SSL("127.0.0.1", got[("imap", "SSL")],
                           ssl_context=ssl._create_unverified_context()) as imap:
        imap.login(ALICE, PASSWORD)
    with smtplib.SMTP_SSL("127.0.0.1", got[("smtp", "SSL")],
                          context=ssl._create_unverified_context()) as smtp:
        smtp.login(ALICE, PASSWORD)
    # a domain that is not ours: nothing
    status, _, _ = get(f"http://127.0.0.1:{srv.http_port}/mail/config-v1.1.xml"
                       "?emailaddress=x%40other.test")
    assert status == 404


def test_autodiscover_pox(make_server):
    srv = http_server(make_server)
    req = ('<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft'
           '.com/exchange/autodiscover/outlook/requestschema/2006"><Request>'
           f'<EMailAddress>{ALICE}</EMailAddress><AcceptableResponseSchema>http://schemas.'
           'microsoft.com/exchange/autodiscover/outlook/responseschema/2006a'
           '</AcceptableResponseSchema></Request></Autodiscover>')
    status, _, body = get(f"https://127.0.0.1:{srv.https_port}/autodiscover/autodiscover.xml",
                          "POST", data=req)
    assert status == 200, body
    ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
    protocols = ET.fromstring(body).findall(".//r:Protocol", ns)
    got = {p.findtext("r:Type", namespaces=ns): (p.findtext("r:Server", namespaces=ns),
                                                 int(p.findtext("r:Port", namespaces=ns)),
                                                 p.findtext("r:LoginName", namespaces=ns))
           for p in protocols}
    # client_ports = "standard": what the SRV records say too
    assert got == {"IMAP": (HOSTNAME, 993, ALICE), "SMTP": (HOSTNAME, 465, ALICE)}
    status, _, _ = get(f"https://127.0.0.1:{srv.https_port}/autodiscover/autodiscover.xml",
                       "POST", data="<nothing/>")
    assert status == 400


def test_mta_sts_policy_matches_the_txt_id_and_follows_the_config(make_server):
    srv = http_server(make_server)

    def published() -> tuple[str, bytes]:
        out = srv.cli_ok("dns").stdout
        (sts_id,) = re.findall(r'_mta-sts\.\S+\s+\d+\s+IN\s+TXT\s+"v=STSv1; id=(\w+)"', out)
        status, headers, body = get(f"https://127.0.0.1:{srv.https_port}/.well-known/"
                                    "mta-sts.txt", headers={"Host": f"mta-sts.{DOMAIN}"})
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        import hashlib
        assert hashlib.sha256(body).hexdigest()[:20] == sts_id
        return sts_id, body

    first, body = published()
    assert body == (f"version: STSv1\r\nmode: testing\r\nmx: {HOSTNAME}\r\n"
                    "max_age: 604800\r\n").encode()
    srv.config["http"] = {"mta_sts_mode": "enforce", "mta_sts_max_age": "2d"}
    srv.write_config()
    srv.cli_ok("reload")
    second, body = published()
    assert body == (f"version: STSv1\r\nmode: enforce\r\nmx: {HOSTNAME}\r\n"
                    "max_age: 172800\r\n").encode()
    assert second != first
    # only for mta-sts.<our domain>, only over HTTPS
    assert get(f"https://127.0.0.1:{srv.https_port}/.well-known/mta-sts.txt",
               headers={"Host": "mta-sts.other.test"})[0] == 404
    assert get(f"http://127.0.0.1:{srv.http_port}/.well-known/mta-sts.txt",
               headers={"Host": f"mta-sts.{DOMAIN}"})[0] == 404


def test_health_and_headers(make_server):
    srv = http_server(make_server)
    for port in (srv.http_port, srv.metrics_port):
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        status, _, body = get(f"http://127.0.0.1:{port}/readyz")
        assert (status, body) == (200, b"ready\n")
    status, headers, _ = get(f"https://127.0.0.1:{srv.https_port}/healthz")
    assert status == 200
    assert headers["Server"] == "pillarbox"
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, _ = get(f"http://127.0.0.1:{srv.http_port}/nothing/here")
    assert status == 404 and headers["Server"] == "pillarbox"
    assert "Strict-Transport-Security" not in headers  # not over plain HTTP
    # chatmail's account making exists only in chatmail mode
    assert get(f"http://127.0.0.1:{srv.http_port}/new", "POST")[0] == 404


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out and b"Connection: close" in out:
                break
        return out


def test_hostile_requests_get_400_or_413_and_mail_goes_on(make_server):
    srv = http_server(make_server)
    smtp = smtplib.SMTP("127.0.0.1", srv.smtp_port)  # a mail session open throughout
    smtp.ehlo("client.test")
    status, headers, _ = get(f"http://127.0.0.1:{srv.http_port}/autodiscover/autodiscover.xml",
                             "POST", data=b"<" * (65 * 1024))
    assert status == 413
    reply = _raw(srv.http_port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10000
                 + b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", reply), reply[:200]
    reply = _raw(srv.http_port, b"\x16\x03\x01garbage that is no HTTP\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", reply), reply[:200]
    assert b"aiohttp" not in reply and b"Python" not in reply
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    reply = _raw(srv.http_port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", reply), reply[:200]
    # mail service undisturbed
    assert smtp.noop()[0] == 250
    smtp.sendmail("someone@remote.test", [ALICE], b"Subject: hi\r\n\r\nstill here\r\n")
    smtp.quit()
    assert get(f"http://127.0.0.1:{srv.http_port}/healthz")[0] == 200
