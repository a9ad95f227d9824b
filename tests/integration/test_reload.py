"""Reload without a restart: SIGHUP and `pillarbox reload`.

The new config (and its TLS pair) is read and checked in full before anything
changes; new connections get it, open sessions finish on the settings they
started with, and a config with an error is refused with the old one kept.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import threading
import time

from cryptography import x509
from cryptography.x509.oid import NameOID

from pillarbox import tls

from .support import ALICE, CLIENT_NAME, client_ssl_context, make_message, token, wait_until


def _size(client: smtplib.SMTP) -> int:
    client.ehlo()
    return int(client.esmtp_features["size"])


def _reloads(srv, word: str) -> int:
    return srv.log_text().count(f"reload {word}")


def _sighup(srv, word: str = "ok") -> None:
    """SIGHUP, then wait for the server to log its verdict."""
    before = _reloads(srv, word)
    os.kill(srv.pid, signal.SIGHUP)
    wait_until(lambda: _reloads(srv, word) > before, 10, f"'reload {word}' in the log")


def _peer_cn(sslsock) -> str:
    cert = x509.load_der_x509_certificate(sslsock.getpeercert(binary_form=True))
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _implicit_tls_cn(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_ssl_context().wrap_socket(raw) as s:
            return _peer_cn(s)


def _starttls_cn(srv) -> str:
    with smtplib.SMTP("127.0.0.1", srv.submission_port, local_hostname=CLIENT_NAME,
                      timeout=10) as s:
        s.ehlo()
        s.starttls(context=client_ssl_context())
        return _peer_cn(s.sock)


def test_sighup_applies_a_new_limit_to_new_sessions_open_ones_keep_theirs(make_server):
    srv = make_server(limits__max_message_size="25M")
    with srv.smtp() as before:
        assert _size(before) == 25 * 1024**2
        srv.config["limits"]["max_message_size"] = "1M"
        srv.write_config()
        _sighup(srv)
        with srv.smtp() as after:
            assert _size(after) == 1024**2
            code, msg = after.docmd("MAIL FROM:<x@client.test> SIZE=2000000")
            assert code == 552, msg
        # the session opened before the reload finishes on the old settings
        assert _size(before) == 25 * 1024**2
        code, msg = before.docmd("MAIL FROM:<x@client.test> SIZE=2000000")
        assert code == 250, msg
    assert "level=error" not in srv.log_text()


def test_pillarbox_reload_prints_ok_and_applies_the_config(make_server):
    srv = make_server(limits__max_recipients=100)
    srv.config["limits"]["max_recipients"] = 1
    srv.write_config()
    p = srv.cli("reload")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok"
    with srv.smtp() as s:
        s.mail("x@client.test")
        assert s.rcpt(ALICE)[0] == 250
        code, msg = s.rcpt("bob@example.test")
        assert code == 452, msg
    assert "reload ok" in srv.log_text()


def test_a_bad_config_is_refused_and_the_old_one_kept(make_server):
    srv = make_server(limits__max_message_size="25M")
    good = srv.cfg_path.read_text()
    srv.cfg_path.write_text(good.replace('max_message_size = "25M"',
                                         'max_message_size = "lots"'))
    _sighup(srv, "refused")
    refused = [line for line in srv.log_text().splitlines() if "reload refused" in line]
    assert "level=warning" in refused[0] and "limits.max_message_size" in refused[0], refused
    # `pillarbox reload` checks the file itself first: the error, exit 1
    p = srv.cli("reload")
    assert p.returncode == 1
    assert "limits.max_message_size" in p.stderr, p.stderr
    assert p.stdout == ""
    # SIGHUP with a config that is not TOML at all: refused as well
    srv.cfg_path.write_text("this is [not toml\n")
    _sighup(srv, "refused")
    assert "not valid TOML" in srv.log_text()
    with srv.smtp() as s:  # still serving, on the old settings
        assert _size(s) == 25 * 1024**2
        s.sendmail("x@client.test", [ALICE], make_message("x@client.test", ALICE, "after"))
    srv.wait_for_messages(ALICE, 1)
    # a good config after the bad ones is taken
    srv.cfg_path.write_text(good.replace('max_message_size = "25M"', 'max_message_size = "2M"'))
    assert srv.cli("reload").returncode == 0
    with srv.smtp() as s:
        assert _size(s) == 2 * 1024**2


def test_a_certificate_that_does_not_load_is_refused(make_server, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls.make_self_signed(cert, key, "first.example.test")
    srv = make_server(tls={"cert": str(cert), "key": str(key)})
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    p = srv.cli("reload")
    assert p.returncode == 1
    assert "tls" in p.stderr, p.stderr
    assert "reload refused error=" in srv.log_text()
    assert _implicit_tls_cn(srv.submissions_port) == "first.example.test"


def test_a_new_certificate_is_served_to_new_connections(make_server, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls.make_self_signed(cert, key, "first.example.test")
    srv = make_server(tls={"cert": str(cert), "key": str(key)})
    assert _implicit_tls_cn(srv.submissions_port) == "first.example.test"
    assert _implicit_tls_cn(srv.imaps_port) == "first.example.test"
    assert _starttls_cn(srv) == "first.example.test"
    # renewed in place, as certbot does
    tls.make_self_signed(cert, key, "second.example.test")
    assert srv.cli("reload").stdout.strip() == "ok"
    assert _implicit_tls_cn(srv.submissions_port) == "second.example.test"
    assert _implicit_tls_cn(srv.imaps_port) == "second.example.test"
    assert _starttls_cn(srv) == "second.example.test"
    c = srv.imap()  # IMAP STARTTLS
    try:
        assert _peer_cn(c.sock) == "second.example.test"
    finally:
        c.logout()


def test_reload_without_a_running_server_fails(make_server):
    srv = make_server(start=False)
    p = srv.cli("reload")
    assert p.returncode == 1
    assert "no server is running" in p.stderr, p.stderr


def test_a_changed_listen_address_is_refused_with_a_restart_hint(make_server):
    srv = make_server()
    old = srv.config["listen"]["smtp"]
    srv.config["listen"]["smtp"] = ["127.0.0.1:1"]
    srv.config["limits"]["max_message_size"] = "1M"
    srv.write_config()
    p = srv.cli("reload")
    assert p.returncode == 1
    assert "listen.smtp" in p.stderr and "restart" in p.stderr, p.stderr
    srv.config["listen"]["smtp"] = old
    srv.write_config()  # so the teardown's checks see the real ports
    with srv.smtp() as s:
        assert _size(s) == 25 * 1024**2


def test_reload_under_load_loses_and_refuses_nothing(make_server):
    """1,000 messages from four clients while reloading three times.

    A client may run at most one quarter ahead of the reloads, so messages are
    in flight during each one; clients reconnect every 25 messages, so new
    sessions start on every config in turn."""
    srv = make_server(limits__max_message_size="10M", queue__workers=8)
    total, clients, per_connection, quarter = 1000, 4, 25, 250
    sent: list[str] = []
    failures: list[str] = []
    gate = threading.Condition()
    issued = 0
    reloaded = 0

    def next_index() -> int | None:
        nonlocal issued
        with gate:
            while issued < total and issued >= (reloaded + 2) * quarter and reloaded < 3:
                gate.wait(20)
            if issued >= total:
                return None
            issued += 1
            return issued

    def client(n: int) -> None:
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", srv.smtp_port, local_hostname=CLIENT_NAME,
                                  timeout=20) as s:
                    for _ in range(per_connection):
                        i = next_index()
                        if i is None:
                            return
                        tok = f"load-{n}-{i}-{token()}"
                        refused = s.sendmail("load@client.test", [ALICE],
                                             make_message("load@client.test", ALICE, tok))
                        if refused:
                            failures.append(f"{tok}: {refused}")
                        sent.append(tok)
            except (smtplib.SMTPException, OSError) as e:
                failures.append(f"client {n}: {e!r}")
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    during = 0  # messages accepted while a reload was under way
    for i, size in enumerate(("11M", "12M", "13M")):
        wait_until(lambda i=i: issued >= (i + 1) * quarter or failures, 20,
                   f"{(i + 1) * quarter} messages under way")
        before = len(sent)
        srv.config["limits"]["max_message_size"] = size
        srv.write_config()
        if i == 1:
            _sighup(srv)
        else:
            p = srv.cli("reload")
            assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
        during += len(sent) - before
        with gate:
            reloaded += 1
            gate.notify_all()
    for t in threads:
        t.join(30)
    assert not failures, failures[:5]
    assert len(sent) == total
    assert during > 0
    assert _reloads(srv, "ok") == 3
    with srv.smtp() as s:  # the last setting is in effect
        assert _size(s) == 13 * 1024**2
    msgs = srv.wait_for_messages(ALICE, total, timeout=30)
    delivered = {line.split(b": ", 1)[1].strip().decode() for m in msgs
                 for line in m.split(b"\r\n") if line.startswith(b"Subject: load-")}
    assert delivered == set(sent)
    assert time.monotonic() - started < 20


def test_a_new_domain_and_its_aliases_are_served_after_reload(make_server):
    srv = make_server()
    srv.config["domains"] = ["example.test", "new.test"]
    srv.write_config()
    srv.add_alias("@new.test", ALICE)  # a catch-all; the CLI reads the new config already
    with srv.smtp() as s:
        s.mail("x@client.test")
        code, msg = s.rcpt("team@new.test")
        assert code >= 500, msg  # not yet a domain of the running server: relaying denied
    assert srv.cli("reload").stdout.strip() == "ok"
    with srv.smtp() as s:
        s.sendmail("x@client.test", ["team@new.test"],
                   make_message("x@client.test", "team@new.test", "to the new domain"))
    assert b"to the new domain" in srv.wait_for_messages(ALICE, 1)[0]
