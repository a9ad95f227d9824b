"""A small authoritative DNS server on 127.0.0.1 for the integration tests.

pillarbox is pointed at it with `[dns] nameservers = ["127.0.0.1:PORT"]`, so a
test decides what every name resolves to:

    dns.mx("remote.test", (10, "mx.remote.test"))
    dns.a("mx.remote.test", "127.0.0.1")
    dns.txt("_mta-sts.remote.test", "v=STSv1; id=1")
    dns.servfail("broken.test")
    dns.load_zone(srv.cli_ok("dns").stdout)     # what `pillarbox dns` publishes

Answers: the records set for the (name, type); NOERROR with an empty answer
for a name that has records of other types only; NXDOMAIN for an unknown
name; SERVFAIL for names marked so. Names are case-insensitive. It serves
UDP and TCP on the same port (a reply too large for UDP is sent truncated,
so resolvers retry over TCP, as with a real server). Every query is logged
in `queries` as (name, type) for tests that check what was looked up.

Only the standard library and dnspython; one thread per transport.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.zone

TTL = 60


def _name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name.canonicalize()
    return dns.name.from_text(name.rstrip(".") + ".").canonicalize()


class DNSServer:
    """Authoritative answers from an in-memory table; start() binds a free port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._records: dict[dns.name.Name, dict[int, list[dns.rdata.Rdata]]] = {}
        self._servfail: set[dns.name.Name] = set()
        self._lock = threading.Lock()
        self.queries: list[tuple[str, str]] = []
        self.errors: list[str] = []  # internal faults of this server (a test should fail)
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.TCPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- the table ----------------------------------------------------------

    @property
    def address(self) -> str:
        """The value for `[dns] nameservers`."""
        return f"{self.host}:{self.port}"

    def add(self, name: str, rdtype: str, *values: str | dns.rdata.Rdata) -> None:
        """Add records in zone-file text form (absolute names in rdata need no dot)."""
        n = _name(name)
        t = dns.rdatatype.from_text(rdtype)
        rdatas = []
        for v in values:
            if isinstance(v, dns.rdata.Rdata):
                rdatas.append(v)
            else:
                rdatas.append(dns.rdata.from_text(dns.rdataclass.IN, t, v, origin=dns.name.root,
                                                  relativize=False))
        with self._lock:
            self._records.setdefault(n, {}).setdefault(t, []).extend(rdatas)

    def mx(self, domain: str, *records: tuple[int, str]) -> None:
        """MX records as (preference, host); a host of "." is a null MX."""
        self.add(domain, "MX", *(f"{pref} {host.rstrip('.')}." for pref, host in records))

    def a(self, name: str, *ips: str) -> None:
        self.add(name, "A", *ips)

    def aaaa(self, name: str, *ips: str) -> None:
        self.add(name, "AAAA", *ips)

    def txt(self, name: str, value: str | bytes) -> None:
        """One TXT record; values over 255 bytes are split into several strings."""
        data = value.encode() if isinstance(value, str) else value
        strings = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        self.add(name, "TXT", dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT,
                                                      strings))

    def servfail(self, name: str) -> None:
        """Answer every query for `name` with SERVFAIL."""
        with self._lock:
            self._servfail.add(_name(name))

    def remove(self, name: str, rdtype: str | None = None) -> None:
        n = _name(name)
        with self._lock:
            if rdtype is None:
                self._records.pop(n, None)
                self._servfail.discard(n)
            else:
                self._records.get(n, {}).pop(dns.rdatatype.from_text(rdtype), None)

    def load_zone(self, text: str) -> int:
        """Serve every record of a zone-file snippet with absolute names; returns the count."""
        zone = dns.zone.from_text(text, origin=dns.name.root, relativize=False,
                                  check_origin=False)
        n = 0
        for name, rdataset in zone.iterate_rdatasets():
            self.add(str(name), dns.rdatatype.to_text(rdataset.rdtype), *rdataset)
            n += len(rdataset)
        return n

    def queried(self, name: str, rdtype: str | None = None) -> bool:
        key = str(_name(name))
        return any(q == key and (rdtype is None or t == rdtype) for q, t in self.queries)

    # -- answering --------------------------------------------------------------

    def answer(self, wire: bytes, max_size: int | None) -> bytes | None:
        """The reply to one query in wire form; None if the query is garbage."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        try:
            return self._answer(query, max_size)
        except Exception as e:  # a bug here must show, not look like a slow server
            self.errors.append(repr(e))
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    def _answer(self, query: dns.message.Message, max_size: int | None) -> bytes:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        for q in query.question:
            name = q.name.canonicalize()
            self.queries.append((str(name), dns.rdatatype.to_text(q.rdtype)))
            with self._lock:
                if name in self._servfail:
                    response.set_rcode(dns.rcode.SERVFAIL)
                    break
                types = self._records.get(name)
                if types is None:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                    break
                rdatas = types.get(q.rdtype, [])
                if rdatas:
                    rrset = dns.rrset.RRset(q.name, dns.rdataclass.IN, q.rdtype)
                    for rd in rdatas:
                        rrset.add(rd, TTL)
                    response.answer.append(rrset)
        if max_size is None:
            return response.to_wire()
        limit = max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer = []
            response.flags |= dns.flags.TC
            return response.to_wire()

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> DNSServer:
        owner = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = owner.answer(data, max_size=512)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(5)
                try:
                    while True:
                        head = _recv_exact(sock, 2)
                        if head is None:
                            return
                        (length,) = struct.unpack("!H", head)
                        data = _recv_exact(sock, length)
                        if data is None:
                            return
                        reply = owner.answer(data, max_size=None)
                        if reply is None:
                            return
                        sock.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

        class UDP(socketserver.ThreadingUDPServer):
            daemon_threads = True
            allow_reuse_address = False

        class TCP(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        # UDP on a free port, then TCP on the same number (retry if that one is taken).
        for _ in range(20):
            udp = UDP((self.host, 0), UDPHandler)
            port = udp.server_address[1]
            try:
                tcp = TCP((self.host, port), TCPHandler)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("no free port for the test DNS server")
        self._udp, self._tcp, self.port = udp, tcp, port
        for srv in (udp, tcp):
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                 name=f"test-dns-{port}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for t in self._threads:
            t.join(5)
        self._threads.clear()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def query_txt(server: DNSServer, name: str | bytes, timeout: float = 5.0) -> bytes | None:
    """A TXT lookup against `server` (UDP, TCP when truncated), the strings joined.

    Shaped like dkimpy's `dnsfunc(name, timeout=5)`: None when there is no record.
    """
    import dns.query

    if isinstance(name, bytes):
        name = name.decode("ascii")
    q = dns.message.make_query(name, "TXT")
    deadline = time.monotonic() + timeout
    r = dns.query.udp(q, server.host, port=server.port, timeout=timeout)
    if r.flags & dns.flags.TC:
        r = dns.query.tcp(q, server.host, port=server.port,
                          timeout=max(0.1, deadline - time.monotonic()))
    for rrset in r.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            for rd in rrset:
                return b"".join(rd.strings)
    return None
