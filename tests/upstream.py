"""A small upstream DNS server for tests, on a free loopback port (UDP + TCP), with fault behaviours.

Records are given as {(name, qtype): [rdata text, ...]}. Names under `silent.` never get an
answer; names under `tc.` are always truncated over UDP (full answer over TCP).
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time

from dnslib import QTYPE, RCODE, RR, DNSRecord

from dnstcp import read_frame


class FakeUpstream:
    def __init__(self, records: dict[tuple[str, str], list[str]], ttl: int = 60,
                 silent_suffixes: tuple[str, ...] = (".silent",), servfail_suffixes: tuple[str, ...] = (".servfail",)):
        self.ttl = ttl
        self.servfail_suffixes = servfail_suffixes
        self.silent_suffixes = silent_suffixes
        self.down = False  # answer nothing at all (a dead upstream)
        self.records = {(n.rstrip(".").lower(), t): v for (n, t), v in records.items()}
        self.queries: list[tuple[str, str, str]] = []  # (transport, name, type)
        self._lock = threading.Lock()
        outer = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                reply = outer.answer(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(5)
                try:
                    reply = outer.answer(read_frame(self.request), "tcp")
                except (OSError, EOFError):
                    return
                if reply is not None:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        for _ in range(50):  # UDP and TCP on one free port: retry when TCP finds that port taken
            self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), UDPHandler)
            port = self.udp.server_address[1]
            try:
                self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), TCPHandler)
                break
            except OSError:
                self.udp.server_close()
        else:
            raise OSError("no free port for both UDP and TCP")
        self.port = port
        for server in (self.udp, self.tcp):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, data: bytes, transport: str) -> bytes | None:
        query = DNSRecord.parse(data)
        name = str(query.q.qname).rstrip(".").lower()
        qtype = QTYPE.get(query.q.qtype)
        with self._lock:
            self.queries.append((transport, name, qtype))
        if self.down or name == "silent" or name.endswith(self.silent_suffixes):
            return None
        if name.endswith(".junk"):  # the right ID, then garbage
            return data[:2] + bytes(range(200))
        if name.endswith(".mismatch"):  # a well-formed answer to a different question
            other = DNSRecord.question("elsewhere.example", "A")
            other.header.id = query.header.id
            bogus = other.reply()
            bogus.add_answer(*RR.fromZone("elsewhere.example. 60 IN A 203.0.113.66"))
            return bogus.pack()
        reply = query.reply()
        if name.endswith(self.servfail_suffixes):
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()
        values = self.records.get((name, qtype))
        if values is None and not any(n == name for n, _ in self.records):
            reply.header.rcode = RCODE.NXDOMAIN
        if not values:  # negative answers carry an SOA (RFC 2308), minimum 30 s
            apex = f"{name.split('.')[-1]}." if name else "."
            reply.add_auth(*RR.fromZone(f"{apex} 60 IN SOA ns. host. 1 7200 1800 86400 30"))
        for value in values or []:
            reply.add_answer(*RR.fromZone(f"{name}. {self.ttl} IN {qtype} {value}"))
        wire = reply.pack()
        if transport == "udp" and (name.endswith(".tc") or name == "tc"):
            reply.rr = []
            reply.header.tc = 1
            wire = reply.pack()
        return wire

    def count(self, name: str, qtype: str | None = None) -> int:
        with self._lock:
            return sum(1 for _, n, t in self.queries if n == name and (qtype is None or t == qtype))

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "FakeUpstream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LoopProxy:
    """A UDP 'upstream' that sends every query straight back to `target` (a forwarding loop)."""

    def __init__(self):
        self.target: tuple[str, int] | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.relayed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending: dict[int, tuple] = {}
        deadline = time.monotonic() + 120  # bounded: a test never runs this long
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            if self.target is None or len(data) < 12:
                continue
            if addr == self.target and data[2] & 0x80:  # a reply from kdns: hand it back to the asker
                back = pending.pop(data[:2], None)
                if back:
                    self.sock.sendto(data, back)
                continue
            pending[data[:2]] = addr
            self.relayed += 1
            self.sock.sendto(data, self.target)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
