"""The `cache` plugin: forwarded answers cached by TTL, with TTLs decremented when served.

Success and denial have their own capacity, TTL cap and floor (CoreDNS: 9984 entries, 3600 s / 1800 s,
5 s). `disable success|denial ZONES` skips them; SERVFAIL is cached `servfail` seconds but never for
names in our own (kubernetes) zones. Authoritative cluster answers never come here: they live in
the event-invalidated AnswerCache (cache.py), so they are never stale.
"""

from __future__ import annotations

import struct
import sys
import time
from itertools import islice
from dataclasses import dataclass

from .cache import FRONT_OVERHEAD, MAX_FRONTS, KeyBits
from .config import CacheConfig, zone_matcher
from .memory import MemoryBudget
from .wire import RR_FIXED, Query, WireError, _read_name, patch, rotation_groups, wire_labels

T_SOA, T_OPT = 6, 41
_PUT_TTL = struct.Struct("!I").pack_into


# bytes of an entry beyond its packed response: the Entry, its key tuple and name, the offsets tuple's
# frame, the dict slot (sys.getsizeof, CPython 3.11); plus OFFSET_BYTES per record's TTL offset
ENTRY_OVERHEAD = 360
OFFSET_BYTES = 72
EVICT_SHARE = 32  # a full bucket drops this share of its oldest entries at once


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
    fronts: list | None = None  # [(family, query bytes, cost)] of its front answers (add_front)
    warm: int = -1  # the `elapsed` of its last fast-path hit: a second hit within that second makes a front


class ResponseCache:
    """Besides CoreDNS's entry capacities, the whole cache holds at most `max_bytes` (the memory
    budget's share): a flood of large forwarded answers evicts the oldest, it does not grow."""

    def __init__(self, config: CacheConfig, own_zones: list[str] = (), clock=time.monotonic,
                 max_bytes: int | None = None):
        self.config = config
        self.own_zones = list(own_zones)
        self._covers = zone_matcher(config.zones)
        self._own = zone_matcher(self.own_zones)
        # None when nothing is disabled (no matcher called for every stored reply)
        self._no_success = zone_matcher(config.disable_success) if config.disable_success else None
        self._no_denial = zone_matcher(config.disable_denial) if config.disable_denial else None
        # a `disable` zone outside our zones: a name outside them may be in it (store_key's early check)
        self._disables_outside = any(not self._own(z) for z in (*config.disable_success, *config.disable_denial))
        self.clock = clock
        self.max_bytes = max_bytes if max_bytes is not None else MemoryBudget().responses
        self.bytes = 0
        self._entries: dict[str, dict[tuple, Entry]] = {"success": {}, "denial": {}}
        self._success, self._denial = self._entries["success"], self._entries["denial"]
        self.hits = {"success": 0, "denial": 0}
        self.misses = 0
        self.evictions = {"success": 0, "denial": 0}
        # answers not stored because storing them would evict others and their name was asked the first time
        # (store_key): names seen while full, by a one-hash Bloom filter (128 KiB, made when first full)
        self.not_admitted = {"success": 0, "denial": 0}
        # entries below which a bucket stores every answer (_admits): more than one eviction from its capacity
        self._admit_all_below = {kind: capacity - max(1, capacity // EVICT_SHARE) + 1 for kind, capacity in
                                 (("success", config.success_capacity), ("denial", config.denial_capacity))}
        self._seen: KeyBits | None = None
        self._admit_bytes = self.max_bytes - self.max_bytes // EVICT_SHARE  # the byte share storing every answer
        self.requests = 0
        # front answers (server.TimedFront) by the exact bytes of a UDP query after its ID, per socket family:
        # the query handler's tables (attach_fronts), None while it serves no front from this cache
        self.fronts: tuple[dict, dict] | None = None
        self.on_front_drop = lambda front: None  # the handler folds a dropped front's counts

    def covers(self, name: str) -> bool:
        return self._covers(name)

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
        if key not in self._success and key not in self._denial:
            return None  # the usual miss (every forwarded name): two lookups, no clock
        now = self.clock()
        for kind in ("success", "denial"):
            entry = self._entries[kind].get(key)
            if entry is None or (outside_only and not entry.outside):
                continue
            if now >= entry.expires:
                del self._entries[kind][key]
                self._forget(entry)
                continue
            return entry
        return None

    def _forget(self, entry: Entry) -> None:
        """An entry left the cache: its fronts go with it, its bytes are freed."""
        if entry.fronts:
            self._drop_fronts(entry)
        self.bytes -= entry.cost

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

    def count_hits(self, kind: str, n: int) -> None:
        """n hits that front answers served (folded in by the query handler)."""
        self.requests += n
        self.hits[kind] += n

    def front_until(self, entry: Entry) -> float:
        """Until when (this cache's clock) the response served() just gave stays what served() gives:
        the end of the whole second its TTLs were counted down for, and never past the entry's expiry.
        A microsecond early, so float rounding never keeps a front past the second's end."""
        if self.config.keepttl:
            return entry.expires - 1e-6
        return min(entry.stored + entry.elapsed + 1, entry.expires) - 1e-6

    def attach_fronts(self, fronts: tuple[dict, dict] | None, on_drop=None) -> None:
        """Serve (or, None, stop serving) front answers of this cache's entries from these tables."""
        self.clear_fronts()
        self.fronts = fronts
        self.on_front_drop = on_drop or (lambda front: None)

    def add_front(self, entry: Entry, family: int, raw: bytes, front) -> bool:
        """Keep `front` (its `tail`, valid `until`) for UDP queries equal to `raw` after their ID while the
        entry lives, replacing the one it had for them; its bytes are charged to the entry and to this
        cache's budget. False when no fronts are served, the entry has MAX_FRONTS already or the budget is full."""
        fronts = self.fronts
        if fronts is None:
            return False
        old = fronts[family].get(raw)
        if old is not None:
            self._unfront(old.entry, family, raw)
        held = entry.fronts
        if held is not None and len(held) >= MAX_FRONTS:
            return False
        cost = FRONT_OVERHEAD + sys.getsizeof(raw) + sys.getsizeof(front.tail)
        if self.bytes + cost > self.max_bytes:
            return False  # fronts take free room only: they never evict an entry
        if held is None:
            held = entry.fronts = []
        held.append((family, raw, cost))
        fronts[family][raw] = front
        entry.cost += cost
        self.bytes += cost
        return True

    def _unfront(self, entry: Entry, family: int, raw: bytes) -> None:
        """Forget the entry's front for `raw` (its counts folded first)."""
        front = self.fronts[family].pop(raw, None)
        if front is not None:
            self.on_front_drop(front)
        for i, (fam, r, cost) in enumerate(entry.fronts or ()):
            if fam == family and r == raw:
                del entry.fronts[i]
                entry.cost -= cost
                self.bytes -= cost
                break

    def _drop_fronts(self, entry: Entry) -> None:
        """Forget all the entry's fronts (their counts folded first) and what they cost."""
        for family, raw, cost in entry.fronts:
            front = self.fronts[family].pop(raw, None) if self.fronts is not None else None
            if front is not None:
                self.on_front_drop(front)
            entry.cost -= cost
            self.bytes -= cost
        entry.fronts = None

    def clear_fronts(self) -> None:
        """Forget every entry's fronts (a handler stops serving them, or forwarding stopped)."""
        for bucket in self._entries.values():
            for entry in bucket.values():
                if entry.fronts:
                    self._drop_fronts(entry)

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
        return self.store(query, response, name)[0]

    def store(self, query: Query, response: bytes, name: str) -> tuple[bytes, tuple | None]:
        """put(), and loadbalance's rotation groups of what it returns, found in the same walk
        (None when the response could not be walked)."""
        return self.store_key(query.key, query.qend, response, name)

    def store_key(self, key: tuple, qend: int, response: bytes, name: str | None,
                  outside: bool | None = None) -> tuple[bytes, tuple | None]:
        """store() for the query of cache key `key` whose question ends at `qend` (no Query needed). `name`:
        the query's name as text, or None to make it from the key only if a zone list must be matched;
        `outside`: whether it is in none of our zones, when the caller knows (else matched)."""
        if len(response) < 12 or response[2] & 0x02:  # never cache a truncated answer
            return response, None
        admitted = self.admission(key, response) if outside else None
        if admitted is False:
            return response, ()
        try:  # the question was checked against the query's (Upstream): the walk starts after it
            offsets, answer_ttl, soa, groups, top = _scan(response, qend if response[4:6] == b"\x00\x01" else 0)
        except WireError:
            return response, None
        rcode = response[3] & 0x0F
        cfg = self.config
        if rcode == 0 and answer_ttl is not None:
            if self._no_success is not None and self._no_success(name or key_name(key)):
                return response, groups
            kind = "success"
            ttl = answer_ttl if answer_ttl < cfg.success_ttl else cfg.success_ttl
            if ttl < cfg.success_minttl:
                ttl = cfg.success_minttl
        elif rcode == 2:  # SERVFAIL
            if cfg.servfail_ttl <= 0 or (not outside and self._own(name or key_name(key))):
                return response, groups
            kind, ttl = "denial", cfg.servfail_ttl
        elif rcode == 0 or rcode == 3:
            if self._no_denial is not None and self._no_denial(name or key_name(key)):
                return response, groups
            kind = "denial"
            if soa is None:
                return response, groups  # a negative answer without SOA says nothing about how long it holds (RFC 2308)
            ttl = max(cfg.denial_minttl, min(soa, cfg.denial_ttl))
        else:
            return response, groups
        if ttl <= 0:
            return response, groups
        if outside is None:
            outside = not self._own(name or key_name(key))
        cost = entry_cost(response, key, len(offsets))
        if cost > self.max_bytes // 4:
            return response, groups  # one response may not take a quarter of the cache
        if not admitted and not self._admits(kind, key, cost):
            return response, groups  # goes out as the upstream sent it, as every answer not stored here
        # cached TTLs never exceed the time the entry lives
        cap = int(ttl)
        if top > cap:
            if len(offsets) == 1:  # _cap of the usual one-record answer, inline
                capped = bytearray(response)
                _PUT_TTL(capped, offsets[0][0], cap)
                capped, offsets = bytes(capped), ((offsets[0][0], cap),)
            else:
                capped, offsets = _cap(response, offsets, cap)
        else:
            capped, offsets = response, tuple(offsets)
        bucket = self._entries[kind]
        old = bucket.pop(key, None)
        if old is not None:
            self._forget(old)
        elif len(bucket) >= (cfg.success_capacity if kind == "success" else cfg.denial_capacity):
            self._evict(kind)
        now = self.clock()
        while self.bytes + cost > self.max_bytes:
            self._evict(max(self._entries, key=lambda k: len(self._entries[k])))
        bucket[key] = Entry(capped, offsets, now, now + ttl, kind, cost, 0, capped, outside, groups)
        self.bytes += cost
        return capped, groups

    def admission(self, key: tuple, response: bytes) -> bool | None:
        """For the answer of a name outside our zones, whether this cache admits it, known from the header: an
        answer of one record at most (nothing for loadbalance to rotate), NOERROR or NXDOMAIN (_admits: counted
        when not). False: store_key(key, qend, response, name, outside=True) stores nothing and hands it back as
        the upstream sent it, without the walk -- the direct forward path asks first, so such an answer costs one
        call. None: the header cannot tell (store_key decides after its walk)."""
        if len(response) >= 12 and response[6] == 0 and response[7] <= 1 and not response[2] & 0x02 and \
                not self._disables_outside:
            rcode = response[3] & 0x0F
            if rcode == 0 or rcode == 3:
                return self._admits("success" if response[7] and not rcode else "denial", key,
                                    entry_cost(response, key, 1))
        return None

    def _admits(self, kind: str, key: tuple, cost: int) -> bool:
        """Whether to store an answer of `kind` costing `cost` bytes for `key` (whose name is not cached: it missed).
        Within one eviction (EVICT_SHARE) of its bucket's capacity or of the byte budget, storing evicts older
        answers, now or at a next store: worth it from the name's second asking only -- a flood of names asked
        once would push out the answers in use, at the cost of a store each. Counts what it turns away."""
        if len(self._entries[kind]) < self._admit_all_below[kind] and self.bytes + cost <= self._admit_bytes:
            return True
        if self._seen is None:
            self._seen = KeyBits()
        if self._seen.add(hash(key[0]) ^ key[1]):  # name and type (the name's bytes keep their hash: no tuple hash)
            return True
        self.not_admitted[kind] += 1
        return False

    def _evict(self, kind: str) -> None:
        """Drop the oldest entries of `kind` (insertion order), 1/32 of the bucket at once: finding the
        oldest walks the slots freed at the front of the dict since its last resize, so a flood of new
        names that evicted one entry per insert would pay that walk every time."""
        bucket = self._entries[kind]
        oldest = list(islice(bucket, max(1, len(bucket) // EVICT_SHARE)))
        freed = 0
        for key in oldest:
            entry = bucket.pop(key)
            if entry.fronts:
                self._drop_fronts(entry)
            freed += entry.cost  # _forget, inline: once per stored reply in a flood of new names
        self.bytes -= freed
        self.evictions[kind] += len(oldest)


def entry_cost(response: bytes, key: tuple, records: int) -> int:
    """Bytes an entry holds: the packed response twice (as stored and as last served with TTLs decremented), the
    key's name, the TTL offsets of `records` records, the rest."""
    return ENTRY_OVERHEAD + 2 * len(response) + len(key[0]) + OFFSET_BYTES * records


def key_name(key: tuple) -> str:
    """The text of a cache key's (lowercase wire-format) name, as the zone lists are matched against."""
    return ".".join(wire_labels(key[0]))


def scan_response(packet: bytes, question_end: int = 0) -> tuple[list[tuple[int, int]], int | None, int | None,
                                                                    tuple]:
    """One walk over a response's records: (TTL offset, TTL) of every record but OPT, the lowest answer
    TTL (None without answers), the negative-caching TTL of the first authority SOA (min of its TTL
    and MINIMUM, RFC 2308; None without one), and loadbalance's rotation groups (as wire.rotation_groups).
    `question_end`, when the caller knows it, skips walking the question. Raises WireError naming the
    offset of what does not fit."""
    return _scan(packet, question_end)[:4]


def _scan(packet: bytes, question_end: int) -> tuple[list[tuple[int, int]], int | None, int | None, tuple, int]:
    """scan_response(), and the highest TTL of its offsets (0 without any)."""
    if question_end and packet[6:11] == b"\x00\x01\x00\x00\x00" and packet[11] < 2:
        # the usual forwarded answer: one record (its owner the question's name), maybe a root OPT: no walk
        # (the same result as the walk below, which takes every other shape, and this one when it is bad)
        pos = question_end
        end = pos + 12
        if end <= len(packet) and packet[pos] >= 0xC0:
            rtype, _, ttl, rdlen = RR_FIXED.unpack_from(packet, pos + 2)
            end += rdlen
            if rtype != T_OPT and end <= len(packet) and (not packet[11] or (
                    end + 11 <= len(packet) and packet[end] == 0 and packet[end + 1] == 0 and packet[end + 2] == T_OPT
                    and end + 11 + (packet[end + 9] << 8 | packet[end + 10]) <= len(packet))):
                return [(pos + 6, ttl)], ttl, None, (), ttl
    return _walk(packet, question_end)


def _walk(packet: bytes, question_end: int) -> tuple[list[tuple[int, int]], int | None, int | None, tuple, int]:
    """_scan() of any response: every record walked."""
    n = len(packet)
    if n < 12:
        raise WireError(n, f"{n} bytes, shorter than a DNS header")
    an = packet[6] << 8 | packet[7]
    auth_end = an + (packet[8] << 8 | packet[9])
    pos = 12
    if question_end:
        pos = question_end
    else:
        for _ in range(packet[4] << 8 | packet[5]):
            pos = _read_name(packet, pos, allow_pointers=True) + 4
    offsets: list[tuple[int, int]] = []
    answer_ttl = soa = None
    top = 0
    addresses = None  # (owner, type, rdata offset) of the answer's A/AAAA records
    unpack = RR_FIXED.unpack_from
    for i in range(auth_end + (packet[10] << 8 | packet[11])):
        owner = pos
        if pos + 2 <= n and packet[pos] >= 0xC0:
            pos += 2  # the usual owner: a compression pointer (_read_name's own check, inline)
        else:
            pos = _read_name(packet, pos, allow_pointers=True)
        if pos + 10 > n:
            raise WireError(pos, "resource record header runs past the end of the packet")
        rtype, _, ttl, rdlen = unpack(packet, pos)
        rdata = pos + 10
        end = rdata + rdlen
        if end > n:
            raise WireError(pos + 8, f"rdlength {rdlen} runs past the end of the packet")
        if rtype != T_OPT:
            offsets.append((pos + 4, ttl))
            if ttl > top:
                top = ttl
        if i < an:
            if answer_ttl is None or ttl < answer_ttl:
                answer_ttl = ttl
            if (rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16):
                if addresses is None:
                    addresses = []
                addresses.append((packet[owner:owner + 2] if packet[owner] & 0xC0 == 0xC0 else owner, rtype, rdata))
        elif soa is None and rtype == T_SOA and i < auth_end:
            if rdlen < 22:
                raise WireError(rdata, f"SOA rdata of {rdlen} bytes is too short")
            minimum = struct.unpack_from("!I", packet, end - 4)[0]
            soa = ttl if ttl < minimum else minimum
        pos = end
    if addresses is None or len(addresses) < 2:
        return offsets, answer_ttl, soa, (), top
    sets: dict[tuple, list[int]] = {}
    for name, rtype, rdata in addresses:
        sets.setdefault((name, rtype), []).append(rdata)
    return offsets, answer_ttl, soa, tuple((4 if rtype == 1 else 16, tuple(offs))
                                           for (_, rtype), offs in sets.items() if len(offs) > 1), top


def _cap(packet: bytes, offsets, cap: int) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """`packet` with every TTL above `cap` written down to it, and its offsets with their TTLs so capped."""
    out = bytearray(packet)
    capped = []
    for off, ttl in offsets:
        if ttl > cap:
            _PUT_TTL(out, off, cap)
            ttl = cap
        capped.append((off, ttl))
    return bytes(out), tuple(capped)


def _decrement(packet: bytes, offsets, elapsed: int) -> bytes:
    if elapsed <= 0:
        return packet
    out = bytearray(packet)
    for off, ttl in offsets:
        struct.pack_into("!I", out, off, max(0, ttl - elapsed))
    return bytes(out)
