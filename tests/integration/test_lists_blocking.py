"""A mailing list's RCPT check asks the directory database; on PostgreSQL that
is a network round trip, which must not stop the other sessions meanwhile.
A table lock held by another connection makes the round trip as slow as we
like: while it is held, another SMTP session is still answered."""

from __future__ import annotations

import psycopg
import pytest

from .support import BOB, RawSMTP

TEAM = "team@example.test"
_LISTS_TOML = ('[module.lists]\nkind = "mailing_list"\n\n'
               f'[[rule]]\nrcpt = ["{TEAM}", "team+*@example.test", '
               '"team-*@example.test"]\ntargets = ["lists"]\n')


@pytest.mark.parametrize("storage", ["postgresql"], indirect=True)
def test_a_slow_list_lookup_does_not_stop_other_sessions(make_server):
    srv = make_server(extra_toml=_LISTS_TOML)
    srv.cli_ok("list", "create", TEAM, "--owner", BOB)
    with psycopg.connect(srv.config["storage"]["url"], autocommit=True) as pg, \
            RawSMTP(srv.smtp_port) as waiting, RawSMTP(srv.smtp_port) as other:
        for s in (waiting, other):
            s.reply()
            s.expect("EHLO client.test", 250)
        waiting.expect(f"MAIL FROM:<{BOB}>", 250)
        pg.execute("BEGIN")
        pg.execute("LOCK TABLE lists IN ACCESS EXCLUSIVE MODE")
        waiting.send(f"RCPT TO:<{TEAM}>\r\n")  # its lookup now waits for the lock
        with pytest.raises(TimeoutError):  # no answer while the lock is held
            waiting.read_line(timeout=0.5)
        # the other session goes on meanwhile
        assert other.cmd("NOOP", timeout=3).code == 250
        other.expect(f"MAIL FROM:<{BOB}>", 250)
        assert other.cmd("RSET", timeout=3).code == 250
        pg.execute("COMMIT")
        assert waiting.reply(timeout=5).code == 250
