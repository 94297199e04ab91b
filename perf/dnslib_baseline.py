"""The naive Python baseline: dnslib answering the generated cluster's zone files, no answer cache.

    .venv/bin/python perf/dnslib_baseline.py --zones DIR [--listen 127.0.0.1:0] [--mode threaded|asyncio]

--mode threaded (default): dnslib's own `dnslib.server.DNSServer` (socketserver, a thread per
    request) with a `BaseResolver` subclass — what a first Python DNS server usually is.
--mode asyncio: the same resolver behind an asyncio DatagramProtocol (one thread, no per-request
    thread), so the difference to kdns is parse/resolve/pack per query versus kdns's cache and
    wire fast path.

Both parse every query with DNSRecord.parse, look the name up in a dict built from DIR/*.zone
(the files perf/gen_cluster.py writes: one record per line, absolute owner names), and pack a reply
with dnslib: answers; NXDOMAIN or NODATA (empty non-terminals included) with the zone's SOA; SRV
targets' addresses in the additional section; UDP replies over 512 bytes truncated (TC), as kdns does
for queries without EDNS. Names outside the zones get REFUSED.

Logs `listening udp=HOST:PORT records=N` once the zones are loaded and the socket is bound (the
same line kdns logs, so perf/run.py starts both the same way). UDP only; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import ipaddress
import os
import signal
import sys
import threading
import time

from dnslib import CLASS, QTYPE, RCODE, RR, A, AAAA, NS, PTR, SOA, SRV, TXT, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

UDP_LIMIT = 512


def _rdata(rtype: str, text: str):
    parts = text.split()
    if rtype == "A":
        return A(parts[0])
    if rtype == "AAAA":
        return AAAA(parts[0])
    if rtype == "PTR":
        return PTR(parts[0])
    if rtype == "NS":
        return NS(parts[0])
    if rtype == "SRV":
        return SRV(int(parts[0]), int(parts[1]), int(parts[2]), parts[3])
    if rtype == "SOA":
        return SOA(parts[0], parts[1], tuple(int(x) for x in parts[2:7]))
    if rtype == "TXT":
        return TXT(text.strip().strip('"'))
    raise ValueError(f"unsupported record type {rtype}")


class ZoneData:
    """Records by (lower-case name, qtype); every name that exists, empty non-terminals included."""

    def __init__(self, zone_dir: str):
        self.records: dict[tuple[str, int], list[RR]] = {}
        self.names: set[str] = set()
        self.soa: dict[str, RR] = {}  # zone apex -> SOA
        self.count = 0
        files = sorted(glob.glob(os.path.join(zone_dir, "*.zone")))
        if not files:
            raise SystemExit(f"{zone_dir}: no *.zone files (run perf/gen_cluster.py)")
        for path in files:
            with open(path) as fh:
                for line in fh:
                    if not line.strip() or line.startswith(";"):
                        continue
                    owner, ttl, klass, rtype, rest = line.split(None, 4)
                    if klass != "IN":
                        continue
                    name = owner.lower().rstrip(".")
                    rr = RR(DNSLabel(owner), getattr(QTYPE, rtype), CLASS.IN, int(ttl), _rdata(rtype, rest))
                    self.records.setdefault((name, rr.rtype), []).append(rr)
                    self.count += 1
                    if rtype == "SOA":
                        self.soa[name] = rr
                    self.names.add(name)
        # empty non-terminals: every ancestor of a name, up to its zone apex, exists
        apexes = sorted(self.soa, key=lambda z: -z.count("."))
        for name in list(self.names):
            zone = self.zone_of(name, apexes)
            labels = name.split(".")
            for i in range(1, len(labels)):
                parent = ".".join(labels[i:])
                if zone is None or not (parent == zone or parent.endswith("." + zone)):
                    break
                self.names.add(parent)
        self._apexes = apexes

    @staticmethod
    def zone_of(name: str, apexes) -> str | None:
        for zone in apexes:
            if name == zone or name.endswith("." + zone):
                return zone
        return None


class ZoneResolver(BaseResolver):
    """dnslib BaseResolver over ZoneData: the whole parse -> lookup -> build -> pack path per query."""

    def __init__(self, data: ZoneData):
        self.data = data

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        reply = request.reply(ra=0, aa=1)
        q = request.q
        name = str(q.qname).lower().rstrip(".")
        zone = self.data.zone_of(name, self.data._apexes)
        if zone is None:
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return reply
        rrs = self.data.records.get((name, q.qtype))
        if rrs:
            reply.rr.extend(rrs)
            if q.qtype == QTYPE.SRV:
                seen = set()
                for rr in rrs:
                    target = str(rr.rdata.target).lower().rstrip(".")
                    if target not in seen:
                        seen.add(target)
                        reply.ar.extend(self.data.records.get((target, QTYPE.A), ()))
            return reply
        if name not in self.data.names:
            reply.header.rcode = RCODE.NXDOMAIN
        reply.auth.append(self.data.soa[zone])
        return reply


class QuietLogger(DNSLogger):
    def __init__(self):
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-data", prefix=False, logf=lambda s: None)


class Handler512(DNSHandler):
    udplen = UDP_LIMIT  # truncate UDP replies over 512 bytes, as kdns does without EDNS


def _pack(resolver: ZoneResolver, data: bytes) -> bytes | None:
    try:
        request = DNSRecord.parse(data)
    except Exception:  # noqa: BLE001 - a bad packet is dropped
        return None
    reply = resolver.resolve(request, None)
    packed = reply.pack()
    if len(packed) > UDP_LIMIT:
        packed = reply.truncate().pack()
    return packed


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: ZoneResolver):
        self.resolver = resolver
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        out = _pack(self.resolver, data)
        if out is not None:
            self.transport.sendto(out, addr)


def _parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("--listen must be a loopback address (this is a benchmark baseline)")
    return host, int(port)


async def _serve_asyncio(resolver: ZoneResolver, host: str, port: int, records: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(resolver), local_addr=(host, port))
    bound = transport.get_extra_info("sockname")[1]
    print(f"listening udp={host}:{bound} mode=asyncio records={records}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    transport.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zones", required=True, help="directory of *.zone files from perf/gen_cluster.py")
    p.add_argument("--listen", default="127.0.0.1:0", help="loopback HOST:PORT (port 0 picks one)")
    p.add_argument("--mode", choices=["threaded", "asyncio"], default="threaded")
    a = p.parse_args()
    host, port = _parse_listen(a.listen)
    started = time.monotonic()
    data = ZoneData(a.zones)
    resolver = ZoneResolver(data)
    print(f"zones_loaded records={data.count} names={len(data.names)} seconds={time.monotonic() - started:.2f}",
          flush=True)
    if a.mode == "asyncio":
        asyncio.run(_serve_asyncio(resolver, host, port, data.count))
        return 0
    server = DNSServer(resolver, address=host, port=port, logger=QuietLogger(), handler=Handler512)
    bound = server.server.server_address[1]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start_thread()
    print(f"listening udp={host}:{bound} mode=threaded records={data.count}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
