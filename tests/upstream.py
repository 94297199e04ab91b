"""A small upstream DNS server for tests, on a free loopback port (UDP + TCP), with fault behaviours.

Records are given as {(name, qtype): [rdata text, ...]}. Names under `silent.` never get an
answer; names under `tc.` are always truncated over UDP (full answer over TCP).
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

from dnslib import QTYPE, RCODE, RR, DNSRecord


class FakeUpstream:
    def __init__(self, records: dict[tuple[str, str], list[str]]):
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
                    size = struct.unpack("!H", recv_exact(self.request, 2))[0]
                    reply = outer.answer(recv_exact(self.request, size), "tcp")
                except (OSError, struct.error):
                    return
                if reply is not None:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), UDPHandler)
        port = self.udp.server_address[1]
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), TCPHandler)
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
        if name == "silent" or name.endswith(".silent"):
            return None
        reply = query.reply()
        values = self.records.get((name, qtype))
        if values is None and not any(n == name for n, _ in self.records):
            reply.header.rcode = RCODE.NXDOMAIN
        for value in values or []:
            reply.add_answer(*RR.fromZone(f"{name}. 60 IN {qtype} {value}"))
        wire = reply.pack()
        if transport == "udp" and (name.endswith(".tc") or name == "tc"):
            reply.rr = []
            reply.header.tc = 1
            wire = reply.pack()
        return wire

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "FakeUpstream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes from a stream socket; OSError if it closes first."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("closed")
        buf += chunk
    return buf
