"""asyncio transports (UDP and TCP on one port) around the query handler.

QueryHandler turns packet bytes into response bytes: cache hit -> patch; miss -> resolver + pack;
outside our zones -> upstream (async) or REFUSED; bad packet -> FORMERR or drop, always counted.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import traceback
from collections import Counter
from typing import Awaitable

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from .cache import AnswerCache
from .forward import Upstream, UpstreamError
from .index import ClusterIndex
from .log import Logger
from .resolver import Answer, Resolver
from .wire import (MIN_UDP_SIZE, Query, WireError, error_response, pack_answer, parse_query, patch,
                   qtype_name, truncate)

TCP_MAX = 65535
CLASS_IN, CLASS_ANY = 1, 255
REFUSED_TYPES = (QTYPE.AXFR, QTYPE.IXFR)


class QueryHandler:
    def __init__(self, index: ClusterIndex, resolver: Resolver, log: Logger,
                 upstream: Upstream | None = None, cache_size: int = 100_000):
        self.index = index
        self.resolver = resolver
        self.log = log
        self.upstream = upstream
        self.cache = AnswerCache(cache_size)
        self.stats: Counter = Counter()
        index.subscribe(self.cache.invalidate)

    def handle(self, data: bytes, tcp: bool) -> bytes | None | Awaitable[bytes | None]:
        """Response bytes, None (drop), or an awaitable producing bytes or None."""
        self.stats["queries_tcp" if tcp else "queries_udp"] += 1
        try:
            query = parse_query(data)
        except WireError as exc:
            return self._bad_packet(data, exc)
        try:
            return self._answer(query, tcp)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one SERVFAIL, never the server
            self.stats["internal_errors"] += 1
            self.log.error("internal_error", name=query.name_text, type=qtype_name(query.qtype),
                           error=repr(exc), trace=traceback.format_exc(limit=-3).replace("\n", " | "))
            return error_response(data, RCODE.SERVFAIL, query)

    def _answer(self, query: Query, tcp: bool) -> bytes | Awaitable[bytes | None]:
        data = query.data
        if query.edns and query.edns_version > 0:
            self.stats["badvers"] += 1
            return error_response(data, 16, query)  # BADVERS (RFC 6891 §6.1.3)
        key = query.key
        packed = self.cache.get(key)
        if packed is None:
            if query.qclass not in (CLASS_IN, CLASS_ANY) or query.qtype in REFUSED_TYPES:
                self.stats["refused"] += 1
                return error_response(data, RCODE.REFUSED, query)
            answer = self.resolver.resolve(query.labels, query.qtype)
            if answer.outside:
                return self._outside(query, tcp)
            if answer.chase is not None:
                return self._chase(query, answer, tcp)
            packed = pack_answer(query, answer, self.upstream is not None)
            if answer.cacheable:
                self.cache.put(key, packed, answer.deps)
        return self._fit(patch(packed, query), query, tcp)

    def _fit(self, response: bytes, query: Query, tcp: bool) -> bytes:
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

    def _outside(self, query: Query, tcp: bool) -> bytes | Awaitable[bytes | None]:
        if self.upstream is None:
            self.stats["refused"] += 1
            return error_response(query.data, RCODE.REFUSED, query)
        return self._forward(query, tcp)

    async def _forward(self, query: Query, tcp: bool) -> bytes | None:
        self.stats["forwarded"] += 1
        try:
            reply = await self.upstream.exchange(query.data, tcp=tcp)
        except UpstreamError as exc:
            self.stats["upstream_errors"] += 1
            self.log.warning("forward_failed", name=query.name_text, type=qtype_name(query.qtype), error=str(exc))
            return error_response(query.data, RCODE.SERVFAIL, query)
        return self._fit(reply, query, tcp)

    async def _chase(self, query: Query, answer: Answer, tcp: bool) -> bytes | None:
        """ExternalName pointing outside our zones: add the target's records from upstream."""
        target, qtype = answer.chase
        self.stats["chased"] += 1
        request = DNSRecord.question(target, QTYPE.get(qtype, "A"))
        request.header.rd = 1
        try:
            reply = DNSRecord.parse(await self.upstream.exchange(request.pack(), tcp=tcp))
            answer.answer.extend(reply.rr)
            answer.rcode = reply.header.rcode
            if not reply.rr:
                answer.authority = list(reply.auth)
        except (UpstreamError, DNSError) as exc:  # the CNAME alone still answers the question
            self.stats["upstream_errors"] += 1
            self.log.warning("chase_failed", target=target, type=qtype_name(qtype), error=str(exc))
        packed = pack_answer(query, answer, True)
        return self._fit(patch(packed, query), query, tcp)


# ------------------------------------------------------------------------------ transports


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: QueryHandler):
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        result = self.handler.handle(data, False)
        if result is None:
            return
        if isinstance(result, bytes):
            self.transport.sendto(result, addr)
            return
        asyncio.ensure_future(self._later(result, addr))

    async def _later(self, pending: Awaitable, addr) -> None:
        response = await pending
        if response is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for a client that went away: nothing to do, keep serving
        self.handler.stats["udp_errors"] += 1


class TCPServer:
    """DNS over TCP (RFC 7766): length-prefixed, pipelined, idle timeout, bounded connections."""

    def __init__(self, handler: QueryHandler, log: Logger, idle_timeout: float = 10.0, max_connections: int = 1000):
        self.handler = handler
        self.log = log
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:
            self.handler.stats["tcp_rejected"] += 1
            writer.close()
            return
        self.connections += 1
        try:
            while True:
                try:
                    prefix = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                    size = struct.unpack("!H", prefix)[0]
                    data = await asyncio.wait_for(reader.readexactly(size), self.idle_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                result = self.handler.handle(data, True)
                if result is None:
                    continue
                if isinstance(result, bytes):
                    writer.write(struct.pack("!H", len(result)) + result)
                else:
                    task = asyncio.ensure_future(self._later(result, writer))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self.connections -= 1
            writer.close()

    async def _later(self, pending: Awaitable, writer: asyncio.StreamWriter) -> None:
        response = await pending
        if response is not None and not writer.is_closing():
            writer.write(struct.pack("!H", len(response)) + response)


async def bind(handler: QueryHandler, log: Logger, host: str, port: int, attempts: int = 20,
               tcp_idle_timeout: float = 10.0):
    """Bind UDP and TCP on the same port (port 0: pick a free one both can use)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: UDPProtocol(handler), local_addr=(host, port), family=family)
        bound_port = udp_transport.get_extra_info("sockname")[1]
        tcp = TCPServer(handler, log, idle_timeout=tcp_idle_timeout)
        try:
            server = await asyncio.start_server(tcp.serve_client, host, bound_port, family=family,
                                                reuse_address=True)
        except OSError as exc:
            udp_transport.close()
            last_error = exc
            continue
        return udp_transport, server, tcp, bound_port
    raise last_error or OSError("could not bind")
