"""asyncio transports (UDP and TCP on one port) around the query handler.

QueryHandler turns packet bytes into response bytes: cache hit -> patch; miss -> resolver + pack;
outside our zones -> upstream (async) or REFUSED; bad packet -> FORMERR or drop, always counted.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import traceback
from collections import Counter
from functools import partial
from typing import Awaitable

from dnslib import QTYPE, RCODE

from .cache import AnswerCache
from .log import Logger
from .memory import TCP_READ_LIMIT, MemoryBudget
from .metrics import DnsMetrics
from .wire import (MIN_UDP_SIZE, Query, WireError, error_response, fast_key, parse_query, patch, qtype_name, rotate,
                   truncate)

TCP_MAX = 65535
CLASS_IN, CLASS_ANY = 1, 255
REFUSED_TYPES = (QTYPE.AXFR, QTYPE.IXFR)


class NegativeRateLimit:
    """Per-source limit on NXDOMAIN/REFUSED answers over UDP (floods of junk names, reflection).

    Sources are grouped by /24 (IPv4) or /56 (IPv6). Over the rate, answers are dropped, except
    every `slip`-th one, which goes out truncated so a real client retries over TCP (as BIND's RRL)."""

    def __init__(self, per_second: float, slip: int = 2, max_sources: int = MemoryBudget().rate_limit_sources):
        self.rate = per_second
        self.slip = slip
        self.max_sources = max_sources
        self.buckets: dict[str, list] = {}
        self.limited = 0

    def _prefix(self, ip: str) -> str:
        if ":" in ip:
            return ":".join(ip.split(":")[:4])[:19]  # roughly the /56-/64 of the address text
        return ip.rsplit(".", 1)[0]

    def allow(self, ip: str) -> bool | None:
        """True: send. False: drop. None: send truncated (slip)."""
        now = time.monotonic()
        key = self._prefix(ip)
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_sources:
                self.buckets.clear()  # bounded memory; a flood from many sources resets the table
            bucket = self.buckets[key] = [self.rate, now, 0]
        tokens = min(self.rate, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return True
        bucket[0] = tokens
        bucket[2] += 1
        self.limited += 1
        return None if self.slip and bucket[2] % self.slip == 0 else False


class QueryHandler:
    """All server blocks of one port. handle() returns response bytes, None (drop), or an awaitable."""

    def __init__(self, blocks: list, log: Logger, metrics: DnsMetrics | None = None,
                 answers: AnswerCache | None = None):
        self.log = log
        self.metrics = metrics or DnsMetrics()
        self.cache = answers if answers is not None else AnswerCache()
        self.stats: Counter = Counter()
        self._observe = False
        self.negative_limit: NegativeRateLimit | None = None
        self.set_blocks(blocks)

    def set_blocks(self, blocks: list) -> None:
        # longest zone first; a name goes to the most specific block (CoreDNS's zone matching)
        self.blocks = sorted(blocks, key=lambda b: -max(len(z) for z in b.config.zones))
        self._zones = sorted(((tuple(z.split(".")) if z else (), z, b) for b in blocks for z in b.config.zones),
                             key=lambda lzb: -len(lzb[0]))
        self.cache.clear()
        self.querylog = any(b.config.log is not None for b in blocks)
        self._update_plain()

    def _update_plain(self) -> None:
        """Whether a cache hit needs nothing but the ID/flags/question patch and metrics (no query log,
        acl, rate limit): then handle() answers it before the full parser runs. With one server block
        whose chain ends in `cache` + `forward` for every name, its cached forwarded answers too."""
        self.plain = not (self.querylog or self.negative_limit is not None
                          or any(b.config.acl is not None for b in self.blocks))
        self.forward_cache = None
        if len(self.blocks) == 1 and self.blocks[0].forward_cache_is_final():
            self.forward_cache = (self.blocks[0], self.blocks[0].cache)

    @property
    def observe(self) -> bool:
        """prometheus configured: record coredns_dns_* per query."""
        return self._observe

    @observe.setter
    def observe(self, value: bool) -> None:
        self._observe = value
        self._update_plain()

    def select(self, labels: tuple[str, ...]):
        """The block with the most specific zone for these labels (a dot inside a label matches nothing)."""
        n = len(labels)
        for zone_labels, zone, block in self._zones:
            k = len(zone_labels)
            if k <= n and (k == 0 or labels[n - k:] == zone_labels):
                return block, zone or "."
        return None, None

    def handle(self, data: bytes, tcp: bool, client: tuple | None = None) -> bytes | None | Awaitable[bytes | None]:
        """Response bytes, None (drop), or an awaitable producing bytes or None."""
        self.stats["queries_tcp" if tcp else "queries_udp"] += 1
        if self.plain:
            start = time.perf_counter()
            fast = fast_key(data)
            if fast is not None:
                key, qend, udp_size = fast
                entry = self.cache.peek(key)
                if entry is not None:
                    # the hottest path: a cached answer, nothing to log or filter
                    if tcp or len(entry.packed) <= udp_size:
                        if not entry.served:
                            self.cache.promote(key)  # reused: out of probation, safe from floods of new names
                        entry.served += 1
                        self.cache.hits += 1
                        packed = rotate(entry.packed, entry.groups, entry.served) if entry.groups else entry.packed
                        return self._reply(data, qend, packed, key, tcp, udp_size, client, entry.block, entry.zone,
                                           entry.plugin, start)
                elif self.forward_cache is not None and (key[2] == CLASS_IN or key[2] == CLASS_ANY):
                    # a name outside our zones that the `cache` plugin holds: served the same way
                    block, cache = self.forward_cache
                    if not block.loop_detected:
                        entry = cache.find(key, outside_only=True)  # a miss is counted by the full path
                        if entry is not None:
                            packed = cache.served(entry)
                            if tcp or len(packed) <= udp_size:
                                cache.count_hit(entry)
                                if block.config.loadbalance:
                                    groups = cache.rotation_groups(entry)
                                    if groups:
                                        entry.rotation += 1
                                        packed = rotate(packed, groups, entry.rotation)
                                return self._reply(data, qend, packed, key, tcp, udp_size, client, block, ".",
                                                   "cache", start)
        start = time.perf_counter()
        try:
            query = parse_query(data)
        except WireError as exc:
            return self._bad_packet(data, exc)
        if query.edns_version:
            self.stats["badvers"] += 1
            return error_response(data, 16, query)  # BADVERS (RFC 6891 §6.1.3)
        entry = self.cache.get(query.key)
        if entry is not None:  # the hot path: no dnslib, no resolver
            if entry.block.config.acl is not None:
                denied = self._acl(entry.block, query, client)
                if denied is not False:
                    return denied
            entry.served += 1
            packed = rotate(entry.packed, entry.groups, entry.served) if entry.groups else entry.packed
            response = self._fit(patch(packed, query), query, tcp, client)
            if response is None:
                return None
            if self.observe or self.querylog:
                self._done(entry.block, entry.zone, entry.plugin, query, tcp, client, response, start)
            return response
        try:
            return self._miss(query, tcp, client, start)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one SERVFAIL, never the server
            return self._internal_error(query, exc)

    def _reply(self, data: bytes, qend: int, packed: bytes, key: tuple, tcp: bool, udp_size: int, client, block,
               zone: str, plugin: str, start: float) -> bytes:
        """A cached response for the fast path: the query's ID, RD/CD bits and question bytes written in."""
        flags = bytes(((packed[2] & 0xFE) | (data[2] & 0x01), (packed[3] & 0xEF) | (data[3] & 0x10)))
        response = b"".join((data[0:2], flags, packed[4:12], data[12:qend], packed[qend:]))
        if self._observe:
            self.metrics.observe(block.name, zone, "tcp" if tcp else "udp", "2" if client and ":" in client[0] else "1",
                                 key[1], key[4], 65535 if tcp else udp_size, packed[3] & 0x0F, plugin,
                                 len(response), time.perf_counter() - start)
        return response

    def _internal_error(self, query: Query, exc: Exception) -> bytes:
        self.stats["internal_errors"] += 1
        self.metrics.panics += 1
        self.log.error("internal_error", name=query.name_text, type=qtype_name(query.qtype),
                       error=repr(exc), trace=traceback.format_exc(limit=-3).replace("\n", " | "))
        return error_response(query.data, RCODE.SERVFAIL, query)

    def _miss(self, query: Query, tcp: bool, client, start: float):
        data = query.data
        labels = query.labels
        name = ".".join(labels)
        block, zone = self.select(labels)
        if block is None or query.qtype in REFUSED_TYPES or \
                (query.qclass not in (CLASS_IN, CLASS_ANY) and not block.accepts_class(query.qclass)):
            self.stats["refused"] += 1
            response = self._fit(error_response(data, RCODE.REFUSED, query), query, tcp, client)
            if block is not None and response is not None:
                self._done(block, zone, "", query, tcp, client, response, start)
            return response
        if block.config.acl is not None:
            denied = self._acl(block, query, client)
            if denied is not False:
                return denied
        result = block.answer(query, name, zone, tcp, client[0] if client else None, client)
        if isinstance(result, tuple):
            response, plugin = result
            if plugin == "" and response[3] & 0x0F == RCODE.REFUSED:
                self.stats["refused"] += 1
            response = self._fit(response, query, tcp, client)
            if response is not None:
                self._done(block, zone, plugin, query, tcp, client, response, start)
            return response
        return self._finish_later(result, block, zone, query, tcp, client, start)

    def _finish_later(self, pending, block, zone, query, tcp, client, start) -> asyncio.Future:
        """A future of the response to an answer that comes later (forward), finished by callback."""
        if not isinstance(pending, asyncio.Future):
            pending = asyncio.ensure_future(pending)  # a plugin's coroutine
        out = pending.get_loop().create_future()
        pending.add_done_callback(partial(self._finished, out, block, zone, query, tcp, client, start))
        return out

    def _finished(self, out: asyncio.Future, block, zone, query, tcp, client, start, pending: asyncio.Future) -> None:
        if pending.cancelled():
            out.cancel()
            return
        try:
            response, plugin = pending.result()
            response = self._fit(response, query, tcp, client)
            if response is not None:
                self._done(block, zone, plugin, query, tcp, client, response, start)
        except Exception as exc:  # noqa: BLE001
            response = self._internal_error(query, exc)
        out.set_result(response)

    def _acl(self, block, query: Query, client):
        """False when allowed, else what to send (None: drop)."""
        name = ".".join(query.labels)
        action = block.config.acl.verdict(name, query.qtype, client[0] if client else None)
        if action == "allow":
            return False
        self.stats[f"acl_{action}"] += 1
        if action == "drop":
            return None
        if action == "block":
            return error_response(query.data, RCODE.REFUSED, query)
        return error_response(query.data, RCODE.NOERROR, query)  # filter: an empty NOERROR answer

    def _done(self, block, zone, plugin, query: Query, tcp: bool, client, response: bytes, start: float) -> None:
        rcode = response[3] & 0x0F
        if self.observe:
            family = "2" if client and ":" in client[0] else "1"
            size = 65535 if tcp else (query.udp_size if query.edns else MIN_UDP_SIZE)
            self.metrics.observe(block.name, zone, "tcp" if tcp else "udp", family, query.qtype, query.do, size,
                                 rcode, plugin, len(response), time.perf_counter() - start)
        logcfg = block.config.log
        if logcfg is not None:
            cls = "success" if rcode == 0 and _ancount(response) else "denial" if rcode in (0, 3) else "error"
            if "all" in logcfg.classes or cls in logcfg.classes:
                self.log.info("query", line=query_log_line(client, query, tcp, response, time.perf_counter() - start))

    def _fit(self, response: bytes, query: Query, tcp: bool, client=None) -> bytes | None:
        if self.negative_limit is not None and not tcp and client and response[3] & 0x0F in (3, 5):
            verdict = self.negative_limit.allow(client[0])
            if verdict is False:
                self.stats["rate_limited"] += 1
                return None
            if verdict is None:
                self.stats["rate_limited"] += 1
                return truncate(response, query)
        limit = TCP_MAX if tcp else (query.udp_size if query.edns else MIN_UDP_SIZE)
        if len(response) > limit:
            self.stats["truncated"] += 1
            return truncate(response, query)
        return response

    def _bad_packet(self, data: bytes, exc: WireError) -> bytes | None:
        if exc.rcode is None:
            self.stats["dropped"] += 1
            self.log.debug("packet_dropped", reason=exc.reason, offset=exc.offset, size=len(data))
            return None
        self.stats["formerr" if exc.rcode == RCODE.FORMERR else "notimp"] += 1
        self.log.debug("packet_rejected", rcode=RCODE.get(exc.rcode), reason=exc.reason, offset=exc.offset)
        return error_response(data, exc.rcode)


def _ancount(response: bytes) -> int:
    return struct.unpack_from("!H", response, 6)[0]


_FLAG_NAMES = ((0x8000, "qr"), (0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"), (0x0080, "ra"), (0x0020, "ad"),
               (0x0010, "cd"))


def query_log_line(client, query: Query, tcp: bool, response: bytes, seconds: float) -> str:
    """CoreDNS's common log format: `{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do}
    {>bufsize}" {rcode} {>rflags} {rsize} {duration}`."""
    host, port = (client[0], client[1]) if client else ("-", 0)
    remote = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    flags = struct.unpack_from("!H", response, 2)[0]
    rflags = ",".join(n for bit, n in _FLAG_NAMES if flags & bit)
    rcode = RCODE.get(flags & 0x0F, str(flags & 0x0F))
    qclass = {1: "IN", 3: "CH", 4: "HS", 255: "ANY"}.get(query.qclass, str(query.qclass))
    bufsize = query.udp_size if query.edns else MIN_UDP_SIZE
    return (f'{remote} - {query.id} "{qtype_name(query.qtype)} {qclass} {query.name_text} '
            f'{"tcp" if tcp else "udp"} {len(query.data)} {str(query.do).lower()} {bufsize}" {rcode} {rflags} '
            f'{len(response)} {seconds:.9f}s')


# ------------------------------------------------------------------------------ transports


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: QueryHandler):
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        result = self.handler.handle(data, False, addr)
        if result is None:
            return
        if isinstance(result, bytes):
            self.transport.sendto(result, addr)
            return
        if isinstance(result, asyncio.Future):
            # a forwarded query, sent from a callback once its reply is in: callbacks run after the loop's
            # reads, so the answers of one turn go out together (sent one by one between reads, each
            # woke the client anew: 1.5x the CPU per forwarded query, measured with dnsperf)
            result.add_done_callback(partial(self._send_later, addr))
            return
        asyncio.ensure_future(self._later(result, addr))

    def _send_later(self, addr, result: asyncio.Future) -> None:
        if not result.cancelled() and self.transport is not None and not self.transport.is_closing():
            response = result.result()
            if response is not None:
                self.transport.sendto(response, addr)

    async def _later(self, pending: Awaitable, addr) -> None:
        response = await pending
        if response is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for a client that went away: nothing to do, keep serving
        self.handler.stats["udp_errors"] += 1


class TCPServer:
    """DNS over TCP (RFC 7766): length-prefixed, pipelined, idle timeout, bounded connections."""

    def __init__(self, handler: QueryHandler, log: Logger, idle_timeout: float = 10.0, max_connections: int = 1000,
                 max_inflight: int = 64):
        self.handler = handler
        self.log = log
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_inflight = max_inflight  # forwarded queries pending per connection before we stop reading
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:
            self.handler.stats["tcp_rejected"] += 1
            writer.close()
            return
        self.connections += 1
        peer = writer.get_extra_info("peername")
        pending: set[asyncio.Task] = set()
        try:
            while True:
                if len(pending) >= self.max_inflight:  # back-pressure: stop reading until answers go out
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                try:
                    prefix = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                    size = struct.unpack("!H", prefix)[0]
                    data = await asyncio.wait_for(reader.readexactly(size), self.idle_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                result = self.handler.handle(data, True, peer)
                if result is None:
                    continue
                if isinstance(result, bytes):
                    if writer.is_closing():
                        return
                    writer.write(struct.pack("!H", len(result)) + result)
                else:
                    task = asyncio.ensure_future(self._later(result, writer))
                    self._tasks.add(task)
                    pending.add(task)
                    task.add_done_callback(self._tasks.discard)
                    task.add_done_callback(pending.discard)
                try:
                    # a client that never reads must not hold the connection: drain is bounded too
                    await asyncio.wait_for(writer.drain(), self.idle_timeout)
                except asyncio.TimeoutError:
                    _reset(writer.transport)
                    return
        except (ConnectionError, RuntimeError):  # uvloop raises RuntimeError on a closed transport
            return
        finally:
            self.connections -= 1
            transport = writer.transport
            if transport.get_write_buffer_size():
                # answers stuck in our buffer: close() would wait for a peer that does not read
                _reset(transport)
            else:
                writer.close()  # what the kernel still holds is flushed to the peer, then FIN

    async def _later(self, pending: Awaitable, writer: asyncio.StreamWriter) -> None:
        response = await pending
        if response is not None and not writer.is_closing():
            try:
                writer.write(struct.pack("!H", len(response)) + response)
            except (ConnectionError, RuntimeError):  # the client went away meanwhile
                pass


def _reset(transport) -> None:
    """Abort with an RST (SO_LINGER 0), dropping whatever is queued for the peer."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _sockets(host: str, port: int, reuse_port: bool = False) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on host:port. Host "" means every interface: one dual-stack IPv6
    socket when the system has IPv6, else 0.0.0.0."""
    if host in ("", "::"):
        try:
            return _bound(socket.AF_INET6, "::", port, dual=True, reuse_port=reuse_port)
        except OSError:
            if host == "::":
                raise
            return _bound(socket.AF_INET, "0.0.0.0", port, reuse_port=reuse_port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _bound(family, host, port, reuse_port=reuse_port)


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket; host "" is every interface (dual-stack when IPv6 exists)."""
    candidates = [(socket.AF_INET6, "::", True), (socket.AF_INET, "0.0.0.0", False)] if host in ("", "::") else \
        [(socket.AF_INET6 if ":" in host else socket.AF_INET, host, False)]
    last: OSError | None = None
    for family, addr, dual in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if host == "::":
                break
    raise last or OSError("could not bind")


def _bound(family: int, host: str, port: int, dual: bool = False,
           reuse_port: bool = False) -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        for sock in (udp, tcp):
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if reuse_port:  # --workers: every worker binds the same port; the kernel spreads the load
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((host, port))
        tcp.bind((host, udp.getsockname()[1]))
        tcp.listen(1024)
        return udp, tcp
    except OSError:
        udp.close()
        tcp.close()
        raise


async def bind(handler: QueryHandler, log: Logger, host: str, port: int, attempts: int = 20,
               tcp_idle_timeout: float = 10.0, tcp_max_connections: int = 1000, reuse_port: bool = False):
    """Bind UDP and TCP on the same port (port 0: pick a free one both can use)."""
    loop = asyncio.get_running_loop()
    last_error: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        try:
            udp_sock, tcp_sock = _sockets(host, port, reuse_port)
        except OSError as exc:
            last_error = exc
            continue
        bound_port = udp_sock.getsockname()[1]
        udp_transport, _ = await loop.create_datagram_endpoint(lambda: UDPProtocol(handler), sock=udp_sock)
        tcp = TCPServer(handler, log, idle_timeout=tcp_idle_timeout, max_connections=tcp_max_connections)
        server = await asyncio.start_server(tcp.serve_client, sock=tcp_sock, limit=TCP_READ_LIMIT)
        return udp_transport, server, tcp, bound_port
    raise last_error or OSError("could not bind")
