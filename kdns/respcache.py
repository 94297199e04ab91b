"""The `cache` plugin: forwarded answers cached by TTL, with TTLs decremented when served.

Success and denial have their own capacity, TTL cap and floor (CoreDNS: 9984 entries, 3600 s / 1800 s,
5 s). `disable success|denial ZONES` skips them; SERVFAIL is cached `servfail` seconds but never for
names in our own (kubernetes) zones. Authoritative cluster answers never come here: they live in
the event-invalidated AnswerCache (cache.py), so they are never stale.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from .config import CacheConfig, in_zone
from .memory import MemoryBudget
from .wire import Query, WireError, patch, rotation_groups, walk_records

T_SOA, T_OPT = 6, 41


# bytes of an entry beyond its packed response: the Entry, its key tuple and name, the offsets tuple's
# frame, the dict slot (sys.getsizeof, CPython 3.11); plus OFFSET_BYTES per record's TTL offset
ENTRY_OVERHEAD = 360
OFFSET_BYTES = 72


@dataclass(slots=True)
class Entry:
    packed: bytes
    ttl_offsets: tuple[tuple[int, int], ...]  # (offset, original ttl)
    stored: float
    expires: float
    kind: str  # success | denial | servfail
    cost: int = 0  # bytes held, for the memory budget
    elapsed: int = 0  # whole seconds since stored that `served` was decremented for
    served: bytes = b""  # packed with TTLs decremented by `elapsed`
    outside: bool = True  # the name is in none of our (kubernetes) zones: no plugin before cache answers it
    groups: tuple | None = None  # loadbalance's rotation groups, found on first use
    rotation: int = 0  # loadbalance: fast-path hits so far (the rotation step)


class ResponseCache:
    """Besides CoreDNS's entry capacities, the whole cache holds at most `max_bytes` (the memory
    budget's share): a flood of large forwarded answers evicts the oldest, it does not grow."""

    def __init__(self, config: CacheConfig, own_zones: list[str] = (), clock=time.monotonic,
                 max_bytes: int | None = None):
        self.config = config
        self.own_zones = list(own_zones)
        self.clock = clock
        self.max_bytes = max_bytes if max_bytes is not None else MemoryBudget().responses
        self.bytes = 0
        self._entries: dict[str, dict[tuple, Entry]] = {"success": {}, "denial": {}}
        self.hits = {"success": 0, "denial": 0}
        self.misses = 0
        self.evictions = {"success": 0, "denial": 0}
        self.requests = 0

    def covers(self, name: str) -> bool:
        return any(in_zone(name, z) for z in self.config.zones)

    def entries(self, kind: str) -> int:
        return len(self._entries[kind])

    def get(self, query: Query) -> bytes | None:
        packed = self.lookup(query.key)
        return None if packed is None else patch(packed, query)

    def lookup(self, key: tuple) -> bytes | None:
        """The cached response for a query key, TTLs decremented, ID and question not yet patched;
        counts the request and its hit or miss."""
        entry = self.find(key)
        self.requests += 1
        if entry is None:
            self.misses += 1
            return None
        self.hits[entry.kind] += 1
        return self.served(entry)

    def find(self, key: tuple, outside_only: bool = False) -> Entry | None:
        """The live entry for a query key, counting nothing (the query handler's fast path counts
        with count_hit() only what it serves, and asks only for names outside our zones: inside them,
        e.g. a reverse name that fell through, the kubernetes plugin must look first)."""
        now = self.clock()
        for kind in ("success", "denial"):
            entry = self._entries[kind].get(key)
            if entry is None or (outside_only and not entry.outside):
                continue
            if now >= entry.expires:
                del self._entries[kind][key]
                self.bytes -= entry.cost
                continue
            return entry
        return None

    def served(self, entry: Entry) -> bytes:
        """The entry's response with its TTLs counted down (re-decremented at most once a second)."""
        if self.config.keepttl:
            return entry.packed
        elapsed = int(self.clock() - entry.stored)
        if elapsed != entry.elapsed:
            entry.elapsed = elapsed
            entry.served = _decrement(entry.packed, entry.ttl_offsets, elapsed)
        return entry.served

    def count_hit(self, entry: Entry) -> None:
        self.requests += 1
        self.hits[entry.kind] += 1

    def rotation_groups(self, entry: Entry) -> tuple:
        """loadbalance's A/AAAA groups of the entry, found once (TTL countdown moves no rdata)."""
        if entry.groups is None:
            try:
                entry.groups = rotation_groups(entry.packed)
            except ValueError:
                entry.groups = ()
        return entry.groups

    def put(self, query: Query, response: bytes, name: str) -> bytes:
        """Cache `response`; returns what to send now: the response with TTLs capped as cached
        (CoreDNS does the same, so the first answer does not show a longer TTL than later ones)."""
        if len(response) < 12 or response[2] & 0x02:  # never cache a truncated answer
            return response
        rcode = response[3] & 0x0F
        try:
            records = walk_records(response)
        except WireError:
            return response
        answers = [r for r in records if r.section == 0]
        cfg = self.config
        if rcode == 2:  # SERVFAIL
            if cfg.servfail_ttl <= 0 or any(in_zone(name, z) for z in self.own_zones):
                return response
            kind, ttl = "denial", cfg.servfail_ttl
        elif rcode == 0 and answers:
            if any(in_zone(name, z) for z in cfg.disable_success):
                return response
            kind = "success"
            ttl = min(_ttl(response, r) for r in answers)
            ttl = max(cfg.success_minttl, min(ttl, cfg.success_ttl))
        elif rcode in (0, 3):
            if any(in_zone(name, z) for z in cfg.disable_denial):
                return response
            kind = "denial"
            soa = [r for r in records if r.section == 1 and r.rtype == T_SOA]
            if not soa:
                return response  # a negative answer without SOA says nothing about how long it holds (RFC 2308)
            ttl = min(_ttl(response, soa[0]), _soa_minimum(response, soa[0]))
            ttl = max(cfg.denial_minttl, min(ttl, cfg.denial_ttl))
        else:
            return response
        if ttl <= 0:
            return response
        bucket = self._entries[kind]
        capacity = cfg.success_capacity if kind == "success" else cfg.denial_capacity
        old = bucket.pop(query.key, None)
        if old is not None:
            self.bytes -= old.cost
        elif len(bucket) >= capacity:
            self._evict(kind)
        offsets = tuple((r.ttl_offset, _ttl(response, r)) for r in records if r.rtype != T_OPT)
        now = self.clock()
        # cached TTLs never exceed the time the entry lives
        capped = _cap(response, offsets, int(ttl))
        # the packed response twice: as stored and as last served with TTLs decremented
        cost = ENTRY_OVERHEAD + 2 * len(capped) + len(query.key[0]) + OFFSET_BYTES * len(offsets)
        if cost > self.max_bytes // 4:
            return capped  # one response may not take a quarter of the cache
        while self.bytes + cost > self.max_bytes:
            self._evict(max(self._entries, key=lambda k: len(self._entries[k])))
        bucket[query.key] = Entry(capped, tuple((o, min(t, int(ttl))) for o, t in offsets), now, now + ttl, kind,
                                  cost, 0, capped, not any(in_zone(name, z) for z in self.own_zones))
        self.bytes += cost
        return capped

    def _evict(self, kind: str) -> None:
        """Drop the oldest entry of `kind` (insertion order)."""
        bucket = self._entries[kind]
        self.bytes -= bucket.pop(next(iter(bucket))).cost
        self.evictions[kind] += 1


def _ttl(packet: bytes, rec) -> int:
    return struct.unpack_from("!I", packet, rec.ttl_offset)[0]


def _soa_minimum(packet: bytes, rec) -> int:
    return struct.unpack_from("!I", packet, rec.rdata + rec.rdlen - 4)[0]


def _cap(packet: bytes, offsets, cap: int) -> bytes:
    out = bytearray(packet)
    for off, ttl in offsets:
        if ttl > cap:
            struct.pack_into("!I", out, off, cap)
    return bytes(out)


def _decrement(packet: bytes, offsets, elapsed: int) -> bytes:
    if elapsed <= 0:
        return packet
    out = bytearray(packet)
    for off, ttl in offsets:
        struct.pack_into("!I", out, off, max(0, ttl - elapsed))
    return bytes(out)
