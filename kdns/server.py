"""The query handler: packet bytes in, response bytes (or an awaitable of them) out; kdns/transport.py reads
and writes the sockets.

QueryHandler turns packet bytes into response bytes: cache hit -> patch; miss -> resolver + pack;
outside our zones -> upstream (async) or REFUSED; bad packet -> FORMERR or drop, always counted.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
import traceback
from collections import Counter
from functools import partial
from typing import Awaitable

from dnslib import QTYPE, RCODE

from .cache import AnswerCache, cover_key
from .direct import Direct, direct_suffixes
from .forward import Overloaded, UpstreamError
from .log import Logger
from .memory import MemoryBudget
from .metrics import DnsMetrics
from .wire import (MIN_UDP_SIZE, NOERROR, REFUSED, SERVFAIL, Query, WireError, error_response, fast_key, parse_query, patch, qtype_name,
                   pack_answer, query_from_fast, rotate, truncate)

TCP_MAX = 65535
SHARED_TAIL = 300  # a front answer longer than this shares its cache entry's bytes (Front)
MAX_SHAPES = 16  # question lengths a negative cover keeps its packed NXDOMAIN for (NegativeCover.shapes)
MAX_MEMO = 4  # metric label sets a shape keeps (QueryHandler._reply's memo)
# one shape beyond its bytes: its (serial, bytes, memo) tuple, its int key, its dict slot, and the memo at its
# largest (MAX_MEMO label sets and their keys; sys.getsizeof)
SHAPE_OVERHEAD = 1100
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


class Front:
    """A hot answer kept by the exact bytes of a UDP query after its ID: the reply is that ID + `tail`
    (its own bytes, or a view of the cache entry's packed answer when they are the same).
    Its queries are counted here (n) and folded into the stats and metrics when they are read; their time is
    the handler's (QueryHandler.front_seconds), shared out when they are folded."""

    __slots__ = ("tail", "metric", "req_size", "resp_size", "n")
    EXTRA = 0  # bytes a subclass holds beyond a Front (cache.front_cost)

    def __init__(self, tail: bytes, metric: tuple | None, req_size: int, resp_size: int):
        self.tail = tail
        self.metric = metric
        self.req_size = req_size
        self.resp_size = resp_size
        self.n = 0


class CoverFront(Front):
    """A negative cover's front: the NXDOMAIN of every name under the cover whose query is, but for its ID
    and first label's bytes, these bytes (one header, first-label length, rest of the name, type, EDNS),
    while the index serial is `serial` -- the reader writes in the ID and the question, after confirming
    the label names no service. Its answers count as negative_covered, not as cache hits."""

    __slots__ = ("head", "qend", "serial", "index", "ns")
    EXTRA = 200  # five more slots and the header's bytes object

    def __init__(self, response: bytes, qend: int, metric: tuple | None, req_size: int, serial: int, cover):
        super().__init__(response[qend:], metric, req_size, len(response))
        self.head = response[2:12]
        self.qend = qend
        self.serial = serial
        self.index = cover.block.index
        self.ns = cover.ns


class TimedFront(Front):
    """A front answer of the `cache` plugin (a forwarded answer): valid `until` (the plugin's clock) the end
    of the second its TTLs were counted down for; its hits are the plugin's (`cache`, `kind`)."""

    __slots__ = ("until", "entry", "cache", "kind")

    def __init__(self, tail: bytes, metric: tuple | None, req_size: int, resp_size: int, until: float, entry, cache):
        super().__init__(tail, metric, req_size, resp_size)
        self.until = until
        self.entry = entry
        self.cache = cache
        self.kind = entry.kind


class QueryHandler:
    """All server blocks of one port. handle() returns response bytes, None (drop), or an awaitable."""

    def __init__(self, blocks: list, log: Logger, metrics: DnsMetrics | None = None,
                 answers: AnswerCache | None = None):
        self.log = log
        self.metrics = metrics or DnsMetrics()
        self.cache = answers if answers is not None else AnswerCache()
        self._stats: Counter = Counter()
        self._observe = False
        self.negative_limit: NegativeRateLimit | None = None
        self.cache.on_front_drop = self._fold
        # the time the front answers counted in their fronts' n took, together (the UDP reader times a run of
        # them with one clock reading): each front's share, by its count, is folded with it (_fold)
        self.front_seconds = 0.0
        self.front_answers = 0
        # front answers of the `cache` plugin (TimedFront) per socket family, as cache.fronts; the clock
        # they are valid by is the plugin's
        self.timed_fronts: tuple[dict[bytes, TimedFront], dict[bytes, TimedFront]] = ({}, {})
        self.timed_clock = time.monotonic
        self.forward_cache = None
        self.reader_loop = None  # the event loop its UDP readers run on (UDPReader sets it)
        self.metrics.handlers.add(self)
        self.set_blocks(blocks)

    def set_blocks(self, blocks: list) -> None:
        # longest zone first; a name goes to the most specific block (CoreDNS's zone matching)
        self.blocks = sorted(blocks, key=lambda b: -max(len(z) for z in b.config.zones))
        zones = tuple(z for b in blocks for z in b.config.zones)
        for b in blocks:
            b.port_zones = zones
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
        self.cache.clear_fronts()  # they were made for the old settings (what is logged, filtered, measured)
        if self.forward_cache is not None and self.forward_cache[1].fronts is self.timed_fronts:
            self.forward_cache[1].attach_fronts(None)
        self.forward_cache = None
        self.forward_direct = None
        if len(self.blocks) == 1 and self.blocks[0].forward_cache_is_final():
            cache = self.blocks[0].cache
            self.forward_cache = (self.blocks[0], cache)
            # the first handler of the plugin serves its fronts: not a later one sharing it (the block's other
            # bind addresses; explain's shadow handlers, which have no UDP reader)
            if cache.fronts is None:
                cache.attach_fronts(self.timed_fronts, self._fold)
            self.timed_clock = cache.clock
            if self.plain:
                self.forward_direct = direct_suffixes(self.blocks[0])

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

    @property
    def stats(self) -> Counter:
        """The handler's counters, with what the front answers counted folded in."""
        self.flush()
        return self._stats

    def handle(self, data: bytes, tcp: bool, client: tuple | None = None) -> bytes | None | Awaitable[bytes | None]:
        """Response bytes, None (drop), or an awaitable producing bytes or None."""
        self._stats["queries_tcp" if tcp else "queries_udp"] += 1
        if self.plain:
            response = self.fast(data, tcp, client)
            if type(response) is bytes:
                return response
            return self.slow(data, tcp, client, response)
        return self.slow(data, tcp, client)

    def count_udp(self, n: int) -> None:
        """n UDP queries read by a UDPReader, which asks fast() for each while the handler is plain."""
        self._stats["queries_udp"] += n

    def fast(self, data: bytes, tcp: bool, client, send=None,
             start: float | None = None) -> bytes | tuple | bool | None:
        """The fast path, for a handler that is `plain` (the caller has counted the query): a cached answer with
        nothing to log or filter (bytes); True when forwarded at once (UDP with `send`: the direct forward path,
        answered by `send(response, client)`); else fast_key's reading of the packet (None when it takes the full
        parser), for slow(). `start`: time.perf_counter() when the query's handling began, if the caller has it
        (the UDP reader: the end of the previous datagram's, the read included, as it times front answers)."""
        if start is None:
            start = time.perf_counter()
        fast = fast_key(data)
        if fast is None:
            return None
        key, qend, udp_size = fast
        entry = self.cache.peek(key)
        if entry is not None:
            # the hottest path: a cached answer, nothing to log or filter
            if tcp or len(entry.packed) <= udp_size:
                if not entry.served:
                    self.cache.promote(key)  # reused: out of probation, safe from floods of new names
                elif not tcp and not entry.groups and client is not None and self.cache.front_room(key) and \
                        data[2:] not in self.cache.fronts[1 if ":" in client[0] else 0]:
                    return self._front(data, qend, key, entry, udp_size, client, start)
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
                        if not tcp and client is not None and cache.fronts is self.timed_fronts:
                            # a front once this answer is asked twice within one second, and again at once when
                            # the one it had has gone stale (not while a valid one exists: a caller other than
                            # the UDP reader, which serves them, asks)
                            old = cache.fronts[1 if ":" in client[0] else 0].get(data[2:])
                            if old is None and entry.warm == entry.elapsed or \
                                    old is not None and old.until <= self.timed_clock():
                                return self._timed_front(data, qend, key, entry, packed, udp_size, client, start)
                            entry.warm = entry.elapsed
                        return self._reply(data, qend, packed, key, tcp, udp_size, client, block, ".",
                                           "cache", start)
                elif send is not None and self.forward_direct is not None and not block.loop_probe and \
                        key[1] not in REFUSED_TYPES and not key[0].endswith(self.forward_direct):
                    # the direct forward path: a UDP query for a name outside our zones that the `cache` plugin
                    # does not hold goes upstream as it came, and the reply is answered from the forwarder's record
                    # (Direct), without the full path's Query, pipeline and future; counted, cached and reported
                    # as that path does
                    cache.requests += 1  # the `cache` plugin's miss, counted as its lookup() counts one
                    cache.misses += 1
                    self._stats["forward_direct"] += 1
                    try:
                        # read and sent within the same microseconds: the read time stands for the send time
                        block.forwarder.begin(Direct(self, data, fast, client, send, block, cache, start), start,
                                              self.reader_loop)
                        return True
                    except Exception as exc:  # noqa: BLE001 - answered here (_not_forwarded)
                        return self._not_forwarded(data, fast, client, block, exc, start)
        return fast

    def _not_forwarded(self, data: bytes, fast: tuple, client, block, exc: Exception, start: float) -> bytes:
        """The answer to a direct forward path query the forwarder did not take: REFUSED over max_concurrent,
        SERVFAIL when forwarding is disabled -- or SERVFAIL for a bug, which must cost one answer, never the
        server."""
        query = query_from_fast(data, fast)
        if not isinstance(exc, (Overloaded, UpstreamError)):
            return self._internal_error(query, exc)
        response = self._fit(block.not_forwarded(query, exc), query, False, client)
        self._done(block, ".", "forward", query, False, client, response, start)
        return response

    def _forward_done(self, forwarding: Direct, response: bytes | None, error: str, to: str | None = None) -> None:
        """A direct forward path query's answer that Direct.answered does not send itself: `response` (cached and
        counted; `to`: the upstream, when its answer is to be counted with the query's) that must be fitted to the
        client's UDP size, logged or rate-limited; or None and why no upstream answered (SERVFAIL)."""
        data, fast, client, block = forwarding.query, forwarding.fast, forwarding.client, forwarding.block
        start = forwarding.began
        try:
            query = query_from_fast(data, fast)
            if response is not None:
                if to is not None:
                    block.metrics.observe_upstream(to, response[3] & 0x0F, time.perf_counter() - start)
            else:
                response = block.forward_response(query, ".".join(query.labels), forwarding.cache, None, error)
                self._count_forwarded(response)
            response = self._fit(response, query, False, client)
            if response is None:
                return  # rate-limited: dropped
            self._done(block, ".", "forward", query, False, client, response, start)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one SERVFAIL, never the server
            response = self._internal_error(query_from_fast(data, fast), exc)
        forwarding.send(response, client)

    def _front(self, data: bytes, qend: int, key: tuple, entry, udp_size: int, client, start: float) -> bytes:
        """An answer asked again over UDP: served, and kept by the exact bytes of this query after its
        ID, so the next such query is answered by the reader with one dict lookup (Front)."""
        entry.served += 1
        self.cache.hits += 1
        packed = entry.packed
        response, family, metric = self._front_reply(data, qend, key, packed, udp_size, client, start, entry.block,
                                                     entry.zone, entry.plugin)
        # asked as the entry was packed (lower case, the same RD/CD bits: the usual case), the reply but its
        # ID is the entry's own bytes: a large one is shared (a view costs ~250 bytes), not copied
        tail = response[2:]
        if len(tail) > SHARED_TAIL and tail == packed[2:]:
            tail = memoryview(packed)[2:]
        self.cache.add_front(key, family, data[2:], Front(tail, metric, udp_size, len(response)))
        return response

    def _timed_front(self, data: bytes, qend: int, key: tuple, entry, packed: bytes, udp_size: int, client,
                     start: float) -> bytes:
        """A `cache` plugin answer (already counted) asked again within the second its TTLs were counted
        down for, over UDP: served, and kept by the exact bytes of this query after its ID until that
        second ends or the entry goes (TimedFront), so the reader answers the same query meanwhile."""
        block, cache = self.forward_cache
        response, family, metric = self._front_reply(data, qend, key, packed, udp_size, client, start, block, ".",
                                                     "cache")
        until = cache.front_until(entry)
        if until > self.timed_clock():
            cache.add_front(entry, family, data[2:],
                            TimedFront(response[2:], metric, udp_size, len(response), until, entry, cache))
        return response

    def _front_reply(self, data: bytes, qend: int, key: tuple, packed: bytes, udp_size: int, client, start: float,
                     block, zone: str, plugin: str) -> tuple[bytes, int, tuple | None]:
        """The reply a front answer is made of, its socket family and metric label set (the query counted)."""
        flags = bytes(((packed[2] & 0xFE) | (data[2] & 0x01), (packed[3] & 0xEF) | (data[3] & 0x10)))
        response = b"".join((data[0:2], flags, packed[4:12], data[12:qend], packed[qend:]))
        family = 1 if ":" in client[0] else 0
        metric = None
        if self._observe:
            metric = self.metrics.key(block.name, zone, "udp", "2" if family else "1", key[1], key[4],
                                      udp_size, packed[3] & 0x0F, plugin, len(response))
            self.metrics.count(metric, time.perf_counter() - start, 1, udp_size, len(response))
        return response, family, metric

    def _covered(self, data: bytes, fast: tuple, covered: tuple, cover, tcp: bool, client,
                 start: float) -> bytes | None:
        """The NXDOMAIN of a name under a NegativeCover (cache key `covered`), when the resolver confirms it
        has no service: with nothing to log or filter, from the cover's shape for this question length
        when it has one of the current serial (the question written in; UDP: a CoverFront kept), else packed."""
        key, qend, udp_size = fast
        qname = key[0]
        serial = cover.block.index.serial
        shape = cover.shapes.get(qend) if self.plain else None
        if shape is not None and shape[0] == serial and (tcp or len(shape[1]) <= udp_size) and \
                cover.block.resolver.covers(cover.ns, qname[1:1 + qname[0]].decode("latin-1")):
            if not cover.served:
                self.cache.promote(covered)
            cover.served += 1
            self._stats["negative_covered"] += 1
            response = self._reply(data, qend, shape[1], key, tcp, udp_size, client, cover.block, cover.zone,
                                   "kubernetes", start, shape[2])
            if not tcp and client is not None:
                self._cover_front(data, qend, key, covered, udp_size, client, cover, shape, response)
            return response
        answer = cover.block.resolver.covered_nxdomain(cover.ns, qname[1:1 + qname[0]].decode("latin-1"),
                                                       cover.zone_of)
        if answer is None:
            return None
        query = query_from_fast(data, fast)
        packed = patch(pack_answer(query, answer, cover.block.ra), query)
        response = self._fit(packed, query, tcp, client)
        if self.plain and response is packed:
            self._shape(covered, cover, fast[1], serial, packed)
        if not cover.served:
            self.cache.promote(covered)
        cover.served += 1
        self._stats["negative_covered"] += 1
        if response is not None:
            self._done(cover.block, cover.zone, "kubernetes", query, tcp, client, response, start)
        return response

    def _cover_front(self, data: bytes, qend: int, key: tuple, covered: tuple, udp_size: int, client, cover,
                     shape: tuple, response: bytes) -> None:
        """Keep (or bring up to the shape's serial) the CoverFront for this query's bytes but its ID and
        first label, so the reader answers the next such name itself."""
        family = 1 if ":" in client[0] else 0
        raw = data[2:13] + data[13 + data[12]:]
        front = self.cache.cover_fronts[family].get(raw)
        if front is not None:
            if front.serial != shape[0]:  # the index changed: same length, new SOA serial
                front.serial, front.head, front.tail = shape[0], response[2:12], response[qend:]
            return
        if not self.cache.cover_front_room(covered):
            return
        metric = None
        if self._observe:
            metric = self.metrics.key(cover.block.name, cover.zone, "udp", "2" if family else "1", key[1], key[4],
                                      udp_size, response[3] & 0x0F, "kubernetes", len(response))
        self.cache.add_cover_front(covered, family, raw, CoverFront(response, qend, metric, udp_size, shape[0], cover))

    def _shape(self, covered: tuple, cover, qend: int, serial: int, packed: bytes) -> None:
        """Keep `packed` as the cover's NXDOMAIN for questions ending at `qend` (at most MAX_SHAPES lengths,
        charged to the cover's cache entry), for fast() to answer the next such name with."""
        old = cover.shapes.get(qend)
        if old is not None:  # the index changed: same length, new SOA serial, the same metric label sets
            cover.shapes[qend] = (serial, packed, old[2])
        elif len(cover.shapes) < MAX_SHAPES and self.cache.charge(covered, SHAPE_OVERHEAD + sys.getsizeof(packed)):
            cover.shapes[qend] = (serial, packed, {})

    def front_hit(self, front: "Front", seconds: float) -> None:
        """A front answer that took longer than the first duration bucket: counted at once."""
        self._stats["queries_udp"] += 1
        self._count_answers(front, 1)
        if front.metric is not None:
            self.metrics.count(front.metric, seconds, 1, front.req_size, front.resp_size)

    def flush(self) -> None:
        """Fold the front answers' and the direct forward path's counts into the stats, the caches' hits and the
        metrics."""
        self.metrics.tally.fold()
        for fronts in (*self.cache.fronts, *self.timed_fronts, *self.cache.cover_fronts):
            for front in fronts.values():
                if front.n:
                    self._fold(front)

    def _count_answers(self, front: "Front", n: int) -> None:
        """A front's answers: the answer cache's hits, the `cache` plugin's (TimedFront), or covered names."""
        kind = type(front)
        if kind is CoverFront:
            self._stats["negative_covered"] += n
        elif kind is TimedFront:
            front.cache.count_hits(front.kind, n)
        else:
            self.cache.hits += n

    def _fold(self, front: "Front") -> None:
        n = front.n
        self._stats["queries_udp"] += n
        self._count_answers(front, n)
        # its share of the front answers' time: their mean, as they are one dict lookup each alike
        seconds = self.front_seconds * n / self.front_answers if n < self.front_answers else self.front_seconds
        self.front_seconds -= seconds
        self.front_answers -= n
        if front.metric is not None:
            self.metrics.count_fast(front.metric, n, seconds, front.req_size * n, front.resp_size * n)
        front.n = 0

    def slow(self, data: bytes, tcp: bool, client: tuple | None = None,
             fast: tuple | None = None) -> bytes | None | Awaitable[bytes | None]:
        """The full path (already counted, the fast path already tried; `fast`: fast_key's reading)."""
        start = time.perf_counter()
        if fast is not None:
            key = fast[0]
            if key[0][0]:
                # a name the resolver said, for its whole namespace, has no service: NXDOMAIN (NegativeCover)
                covered = cover_key(key)
                cover = self.cache.peek(covered)
                if cover is not None and key[1] not in REFUSED_TYPES:
                    try:
                        response = self._covered(data, fast, covered, cover, tcp, client, start)
                    except Exception as exc:  # noqa: BLE001 - a bug must cost one SERVFAIL, never the server
                        return self._internal_error(query_from_fast(data, fast), exc)
                    if response is not None:
                        return response
            query = query_from_fast(data, fast)
        else:
            try:
                query = parse_query(data)
            except WireError as exc:
                return self._bad_packet(data, exc)
        if query.edns_version:
            self._stats["badvers"] += 1
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
               zone: str, plugin: str, start: float, memo: dict | None = None) -> bytes:
        """A cached response for the fast path: the query's ID, RD/CD bits and question bytes written in.
        memo: metric label sets by (type, proto, size, family), for answers that differ only in the question
        (a negative cover's shape: many names, one label set)."""
        flags = bytes(((packed[2] & 0xFE) | (data[2] & 0x01), (packed[3] & 0xEF) | (data[3] & 0x10)))
        response = b"".join((data[0:2], flags, packed[4:12], data[12:qend], packed[qend:]))
        if self._observe:
            family = "2" if client and ":" in client[0] else "1"
            size = 65535 if tcp else udp_size
            if memo is None:
                self.metrics.observe(block.name, zone, "tcp" if tcp else "udp", family, key[1], key[4], size,
                                     packed[3] & 0x0F, plugin, len(response), time.perf_counter() - start)
                return response
            labels = memo.get((key[1], tcp, size, family))
            if labels is None:
                labels = self.metrics.key(block.name, zone, "tcp" if tcp else "udp", family, key[1], key[4], size,
                                          packed[3] & 0x0F, plugin, len(response))
                if len(memo) < MAX_MEMO:
                    memo[(key[1], tcp, size, family)] = labels
            self.metrics.count(labels, time.perf_counter() - start, 1, size, len(response))
        return response

    def _internal_error(self, query: Query, exc: Exception) -> bytes:
        self._stats["internal_errors"] += 1
        self.metrics.panics += 1
        self.log.error("internal_error", name=query.name_text, type=qtype_name(query.qtype),
                       error=repr(exc), trace=traceback.format_exc(limit=-3).replace("\n", " | "))
        return error_response(query.data, SERVFAIL, query)

    def _miss(self, query: Query, tcp: bool, client, start: float):
        data = query.data
        labels = query.labels
        name = ".".join(labels)
        block, zone = self.select(labels)
        if block is None or query.qtype in REFUSED_TYPES or \
                (query.qclass not in (CLASS_IN, CLASS_ANY) and not block.accepts_class(query.qclass)):
            self._stats["refused"] += 1
            response = self._fit(error_response(data, REFUSED, query), query, tcp, client)
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
            if plugin == "" and response[3] & 0x0F == REFUSED:
                self._stats["refused"] += 1
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
            if plugin == "forward":  # asked upstream (a `cache` plugin hit answers without waiting)
                self._count_forwarded(response)
            response = self._fit(response, query, tcp, client)
            if response is not None:
                self._done(block, zone, plugin, query, tcp, client, response, start)
        except Exception as exc:  # noqa: BLE001
            response = self._internal_error(query, exc)
        out.set_result(response)

    def _count_forwarded(self, response: bytes) -> int:
        """Count a forwarded query's response; its rcode."""
        self._stats["forwarded"] += 1
        rcode = response[3] & 0x0F
        if rcode == SERVFAIL:  # the upstreams failed, or answered SERVFAIL
            self._stats["upstream_errors"] += 1
        return rcode

    def _acl(self, block, query: Query, client):
        """False when allowed, else what to send (None: drop)."""
        name = ".".join(query.labels)
        action = block.config.acl.verdict(name, query.qtype, client[0] if client else None)
        if action == "allow":
            return False
        self._stats[f"acl_{action}"] += 1
        if action == "drop":
            return None
        if action == "block":
            return error_response(query.data, REFUSED, query)
        return error_response(query.data, NOERROR, query)  # filter: an empty NOERROR answer

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
                self._stats["rate_limited"] += 1
                return None
            if verdict is None:
                self._stats["rate_limited"] += 1
                return truncate(response, query)
        limit = TCP_MAX if tcp else (query.udp_size if query.edns else MIN_UDP_SIZE)
        if len(response) > limit:
            self._stats["truncated"] += 1
            return truncate(response, query)
        return response

    def _bad_packet(self, data: bytes, exc: WireError) -> bytes | None:
        if exc.rcode is None:
            self._stats["dropped"] += 1
            self.log.debug("packet_dropped", reason=exc.reason, offset=exc.offset, size=len(data))
            return None
        self._stats["formerr" if exc.rcode == RCODE.FORMERR else "notimp"] += 1
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
