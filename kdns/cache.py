"""Packed-answer cache for our own zones: bounded in bytes, flood-resistant, invalidated by index dependency keys.

Entries are whole packed responses keyed by Query.key; an index change drops every entry that
depends on a touched key before the next query is read (both run on the one event loop), so no
answer outlives the event that changed it.

Admission is a segmented LRU: a new entry goes to *probation*; its first reuse promotes it to the
*protected* segment (at most PROTECTED_SHARE of the bytes). A flood of names asked once (random
subdomains, a misconfigured client) only ever evicts other probation entries -- the cold negative
answers -- never the hot set. An answer evicted from probation and asked again counts as reused.

The protected segment never pushes out an answer in use. Front answers (the exact bytes of a query
asked before) count in it; when it is full, a reused answer or a front takes the place of a protected
answer nobody asked for in COLD_SECONDS (demoted to probation, not dropped: one more chance), a reused
answer also of other answers' fronts; while every protected answer is in use, the newcomer waits on
probation. So a hot set that moved on (another workload, another hour) gives way to the new one, and a
hot set larger than the segment keeps what fits instead of each answer pushing out the next one asked.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Hashable, Iterable

from .memory import MemoryBudget

PROTECTED_SHARE = 0.8
DOORKEEPER_BITS = 1 << 20  # 128 KiB: names seen once, for the admission of negative answers
# bytes of an entry beyond its packed answer and key name: the value object, the key tuple, one slot
# in the entry table, one in a segment table and one in the dependency table (sys.getsizeof, CPython
# 3.11, dicts at their average fill; calibrated with tracemalloc, which tests/test_memory.py re-checks)
ENTRY_OVERHEAD = 570
DEP_OVERHEAD = 90  # the dep tuple's slot in _deps_of and the key's slot in a _by_dep set
NEW_DEP_OVERHEAD = 100  # a dep key seen first: its tuple and strings, its slot in _by_dep (one key, no set)
SHARED_DEP_OVERHEAD = 300  # a dep's second key: the set the two now make (sys.getsizeof(set()) is 216)
# a front answer beyond its two bytes objects: the Front object, its slot in the front table, its place in
# _front_keys (its metric label set is shared: DnsMetrics.key) -- calibrated with tracemalloc, which
# tests/test_memory.py re-checks with and without metrics
FRONT_OVERHEAD = 390
MEMORYVIEW_BUFFER = 90  # the buffer object a memoryview of bytes holds, beyond sys.getsizeof of the view
MAX_FRONTS = 4  # front answers per entry: the spellings (0x20 case, EDNS sizes) of one question kept
COLD_SECONDS = 2.0  # a protected answer unused this long may make room for another (_make_room)
SWEEP_STEPS = 16  # protected answers looked at, at most, per promotion or front answer that needs room


def cover_key(key: tuple) -> tuple:
    """The answer-cache key of the negative cover (pipeline.NegativeCover) a query (Query.key: qname, type, class, EDNS, DO) falls
    under: the name after its first label, class, EDNS, DO."""
    qname = key[0]
    return qname[qname[0] + 1:], key[2], key[3], key[4]


class AnswerCache:
    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes if max_bytes is not None else MemoryBudget().answers
        self.protected_max = int(self.max_bytes * PROTECTED_SHARE)
        self._entries: dict[Hashable, Any] = {}
        # peek(key): get() without counting a hit or miss or promoting (the caller counts what it serves
        # and calls promote() on the first reuse) -- the table's own get, no Python frame on the hot path
        self.peek = self._entries.get
        self._probation: dict[Hashable, int] = {}  # key -> cost, oldest first
        self._protected: dict[Hashable, int] = {}  # key -> cost, least recently promoted first
        self.probation_bytes = 0
        self.protected_bytes = 0
        self._deps_of: dict[Hashable, tuple] = {}
        # dep -> the key depending on it, or a set of them when more than one does (most deps -- a service,
        # a reverse name -- have one: a set for it would cost 216 bytes)
        self._by_dep: dict[Hashable, Any] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.promotions = 0
        self.demotions = 0  # protected answers unused for COLD_SECONDS demoted to make room (_make_room)
        self.not_promoted = 0  # reused answers left on probation: every protected answer was in use (promote)
        self.not_admitted = 0
        self._seen = KeyBits()  # names asked once (seen_before)
        self._gone = KeyBits()  # answers evicted from probation before their reuse (put)
        # front answers (server.Front) by the exact bytes of a UDP query after its ID, per socket family
        # (0: IPv4, 1: IPv6); each belongs to an entry and goes with it
        self.fronts: tuple[dict[bytes, Any], dict[bytes, Any]] = ({}, {})
        self._front_keys: dict[Hashable, tuple] = {}  # entry key -> the query bytes of its fronts
        # a negative cover's fronts (server.CoverFront), by the query bytes but its ID and first label (their
        # own tables: those keys are not a query's bytes, so they must never meet the fronts')
        self.cover_fronts: tuple[dict[bytes, Any], dict[bytes, Any]] = ({}, {})
        self._cover_front_keys: dict[Hashable, tuple] = {}
        self.on_front_drop = lambda front: None  # the handler folds a dropped front's counts
        self.clock = time.monotonic  # when a protected answer was last seen used (_make_room; tests set it)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self.probation_bytes + self.protected_bytes

    def resize(self, max_bytes: int) -> None:
        """A new budget (a reload changed the number of ports): evict down to it at once."""
        self.max_bytes = max_bytes
        self.protected_max = int(max_bytes * PROTECTED_SHARE)
        while self.protected_bytes > self.protected_max and self._protected:
            self._drop(next(iter(self._protected)))
            self.evictions += 1
        self._shrink()

    def get(self, key: Hashable) -> Any:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            if key in self._probation:
                self.promote(key)
        return value

    def promote(self, key: Hashable) -> None:
        """A reused probation entry joins the protected segment, if there is room for it: answers unused
        for COLD_SECONDS give way first (_make_room), then front answers (a quicker way to an answer: the
        answers come first). While every protected answer is in use it stays on probation (counted in
        `not_promoted`): a hot set a little larger than the segment keeps most of itself protected instead of
        each answer pushing out the next one it will need (a cyclic scan through an LRU)."""
        cost = self._probation.get(key)
        if cost is None:
            return
        if self.protected_bytes + cost > self.protected_max and not self._make_room(cost, key):
            while self.protected_bytes + cost > self.protected_max and self._front_keys:
                self._drop_fronts(next(iter(self._front_keys)))
            if self.protected_bytes + cost > self.protected_max:
                self.not_promoted += 1
                return
        del self._probation[key]
        self.probation_bytes -= cost
        self._protected[key] = cost
        self.protected_bytes += cost
        self.promotions += 1
        # marked as used by now: the reuse that promotes it is counted (served += 1) by the caller, next
        self._mark(key, self._entries[key], self.clock(), 1)
        self._shrink()

    def _demote(self, key: Hashable) -> None:
        """To the newest end of probation, without its front answers (those are for protected entries)."""
        if key in self._front_keys:
            self._drop_fronts(key)
        cost = self._protected.pop(key)
        self.protected_bytes -= cost
        self._probation[key] = cost  # newest in probation: one more chance
        self.probation_bytes += cost

    def add_front(self, key: Hashable, family: int, raw: bytes, front: Any) -> bool:
        """Keep `front` for queries equal to `raw` after their ID, as long as the entry `key` lives;
        its bytes are charged to the entry. False when the entry is gone or not protected, has its
        fronts already, or the protected segment has no room (front_room)."""
        if key not in self._entries or raw in self.fronts[family]:
            return False
        cost = front_cost(raw, front)
        if key in self._probation or self.protected_bytes + cost > self.protected_max:
            return False  # see front_room
        raws = self._front_keys.get(key, ())
        if len(raws) >= MAX_FRONTS:
            return False
        self._front_keys[key] = (*raws, raw)
        self.fronts[family][raw] = front
        self._protected[key] += cost
        self.protected_bytes += cost
        self._shrink()  # cold entries on probation make the room
        return True

    def cover_front_room(self, key: Hashable) -> bool:
        """Whether the cover `key` may have one more front (add_cover_front)."""
        return len(self._cover_front_keys.get(key, ())) < MAX_FRONTS

    def add_cover_front(self, key: Hashable, family: int, raw: bytes, front: Any) -> bool:
        """Keep a negative cover's front (at most MAX_FRONTS) as long as the cover `key` lives, charged to it
        as its shapes are (a cover is one entry per namespace: its fronts are few)."""
        if key not in self._entries or raw in self.cover_fronts[family] or not self.cover_front_room(key):
            return False
        raws = self._cover_front_keys.get(key, ())
        self._cover_front_keys[key] = (*raws, raw)
        self.cover_fronts[family][raw] = front
        self.charge(key, front_cost(raw, front))  # evicting for it may drop the cover, the front with it
        return True

    def charge(self, key: Hashable, cost: int) -> bool:
        """Count `cost` more bytes to the entry `key` (something it came to hold), evicting as needed;
        False when the entry is gone."""
        if key in self._probation:
            self._probation[key] += cost
            self.probation_bytes += cost
        elif key in self._protected:
            self._protected[key] += cost
            self.protected_bytes += cost
        else:
            return False
        self._shrink()
        return True

    def front_room(self, key: Hashable) -> bool:
        """Whether the entry may have one more front answer. Fronts belong to reused (protected) entries
        and count in the protected segment, which they may fill up to its cap, so they displace cold
        entries on probation; a full segment makes room by demoting answers unused for COLD_SECONDS
        (_make_room), never one in use (while every answer is in use, hits are served without fronts)."""
        return len(self._front_keys.get(key, ())) < MAX_FRONTS and \
            (self.protected_bytes + FRONT_OVERHEAD + 512 <= self.protected_max or
             self._make_room(FRONT_OVERHEAD + 512, key))

    def _make_room(self, need: int, user: Hashable) -> bool:
        """Demote protected answers unused since they were last marked, COLD_SECONDS or more ago, until
        `need` bytes fit in the protected segment; one used since (or `user`, the entry in use that asks
        for the room) is marked anew and goes to the end. Marks are in that order (promotion marks too),
        so the first answer marked within COLD_SECONDS ends the search (none after it is cold yet); at
        most SWEEP_STEPS answers are looked at. Whether it made room."""
        now = self.clock()
        protected = self._protected
        for _ in range(SWEEP_STEPS):
            if self.protected_bytes + need <= self.protected_max:
                return True
            if not protected or len(protected) == 1 and user in protected:
                return False
            key = next(iter(protected))
            entry = self._entries[key]
            marked = getattr(entry, "marked", None)
            if marked is None:  # no mark to go by (a value other than our answers): the oldest goes
                self._demote(key)
            elif now - marked < COLD_SECONDS:
                return False  # the oldest mark is recent: nothing can be cold (and each is marked anew at
                # most once per COLD_SECONDS, however often room is asked for)
            elif key == user or self._activity(key, entry) != entry.mark:
                protected[key] = protected.pop(key)  # used since: marked anew, last to go
                self._mark(key, entry, now)
            else:
                self._demote(key)
                self.demotions += 1
        return self.protected_bytes + need <= self.protected_max

    def _mark(self, key: Hashable, entry: Any, now: float, pending: int = 0) -> None:
        """Remember how much the entry has been used by now, `pending` uses not yet counted (_make_room
        compares)."""
        if hasattr(entry, "marked"):
            entry.mark = self._activity(key, entry) + pending
            entry.marked = now

    def _activity(self, key: Hashable, entry: Any) -> int:
        """The entry's answers so far: those of the handler's paths (served) and those its fronts answered
        since their counts were last folded (a fold sets them to 0: a change all the same)."""
        n = entry.served
        for raw in self._front_keys.get(key, ()):
            for fronts in self.fronts:
                front = fronts.get(raw)
                if front is not None:
                    n += front.n
        for raw in self._cover_front_keys.get(key, ()):
            for fronts in self.cover_fronts:
                front = fronts.get(raw)
                if front is not None:
                    n += front.n
        return n

    def clear_fronts(self) -> None:
        for key in [*self._front_keys, *self._cover_front_keys]:
            self._drop_fronts(key)

    def _drop_fronts(self, key: Hashable) -> int:
        """Forget the entry's fronts (their counts folded first); the bytes they cost."""
        freed = 0
        # the query bytes decide the entry: a front under those bytes, in either family, is this entry's
        for registry, tables in ((self._front_keys, self.fronts), (self._cover_front_keys, self.cover_fronts)):
            for raw in set(registry.pop(key, ())):
                for fronts in tables:
                    front = fronts.pop(raw, None)
                    if front is not None:
                        self.on_front_drop(front)
                        freed += front_cost(raw, front)
        if freed:
            if key in self._probation:
                self._probation[key] -= freed
                self.probation_bytes -= freed
            elif key in self._protected:
                self._protected[key] -= freed
                self.protected_bytes -= freed
        return freed

    def seen_before(self, key: Hashable) -> bool:
        """A doorkeeper (a one-hash Bloom filter, cleared at 1/16 full): False the first time a key
        is asked, True after. Negative answers are cached from their second asking only, so a flood of
        names asked once costs no cache work and no memory, while a hot miss (a search-path expansion
        every pod tries) is cached at once on its second go."""
        if self._seen.add(key):
            return True
        self.not_admitted += 1
        return False

    def put(self, key: Hashable, value: Any, deps: Iterable[Hashable]) -> None:
        if key in self._entries:
            self._drop(key)
        deps = tuple(deps)
        cost = entry_cost(key, value, deps, self._by_dep)
        if cost > self.max_bytes // 4:
            return  # one answer may not take a quarter of the cache
        self._entries[key] = value
        self._deps_of[key] = deps
        by_dep = self._by_dep
        for dep in deps:
            keys = by_dep.get(dep)
            if keys is None:
                by_dep[dep] = key
            elif type(keys) is set:
                keys.add(key)
            elif keys != key:
                by_dep[dep] = {keys, key}
        self._probation[key] = cost
        self.probation_bytes += cost
        if key in self._gone:
            # asked again after probation let it go: reused all the same (a hot set larger than probation,
            # asked in turn, would otherwise never be promoted -- each answer evicted before its second asking)
            self.promote(key)
        self._shrink()

    def _shrink(self) -> None:
        while self.probation_bytes + self.protected_bytes > self.max_bytes:
            if self._probation:
                key = next(iter(self._probation))
                self._gone.add(key)
            else:
                key = next(iter(self._protected))
            self._drop(key)
            self.evictions += 1

    def invalidate(self, touched: Iterable[Hashable]) -> int:
        dropped = 0
        for dep in touched:
            keys = self._by_dep.pop(dep, None)
            if keys is None:
                continue
            for key in (keys if type(keys) is set else (keys,)):
                if key in self._entries:
                    self._drop(key)
                    dropped += 1
        return dropped

    def clear(self) -> None:
        self.clear_fronts()
        self._gone = KeyBits()
        self._entries.clear()
        self._deps_of.clear()
        self._by_dep.clear()
        self._probation.clear()
        self._protected.clear()
        self.probation_bytes = self.protected_bytes = 0

    def links(self, dep: Hashable) -> frozenset:
        """The keys that depend on `dep` (for tests and explanations)."""
        keys = self._by_dep.get(dep)
        return frozenset(() if keys is None else keys if type(keys) is set else (keys,))

    def _drop(self, key: Hashable) -> None:
        if key in self._front_keys or key in self._cover_front_keys:
            self._drop_fronts(key)
        del self._entries[key]
        cost = self._probation.pop(key, None)
        if cost is not None:
            self.probation_bytes -= cost
        else:
            self.protected_bytes -= self._protected.pop(key)
        by_dep = self._by_dep
        for dep in self._deps_of.pop(key, ()):
            keys = by_dep.get(dep)
            if type(keys) is set:
                keys.discard(key)
                if len(keys) == 1:
                    by_dep[dep] = keys.pop()
            elif keys == key:
                del by_dep[dep]


class KeyBits:
    """Keys seen, approximately: one bit per key hash (a one-hash Bloom filter), all cleared at 1/16 full,
    so at most ~6% of keys never added read as added."""

    __slots__ = ("bits", "count")

    MASK = DOORKEEPER_BITS - 1
    LIMIT = DOORKEEPER_BITS // 16  # keys added before it starts again

    def __init__(self):
        self.bits = bytearray(DOORKEEPER_BITS // 8)
        self.count = 0

    def __contains__(self, key: Hashable) -> bool:
        h = hash(key) & self.MASK
        return bool(self.bits[h >> 3] & (1 << (h & 7)))

    def add(self, key: Hashable) -> bool:
        """Add the key; whether it was there already."""
        h = hash(key) & self.MASK
        byte = h >> 3
        bit = 1 << (h & 7)
        bits = self.bits
        if bits[byte] & bit:
            return True
        if self.count >= self.LIMIT:
            self.bits = bits = bytearray(DOORKEEPER_BITS // 8)
            self.count = 0
        bits[byte] |= bit
        self.count += 1
        return False


def front_cost(raw: bytes, front: Any) -> int:
    """Bytes a front answer holds: its query bytes, its reply's bytes (or the view of its entry's), the rest."""
    return FRONT_OVERHEAD + front.EXTRA + sys.getsizeof(raw) + sys.getsizeof(front.tail) + \
        (MEMORYVIEW_BUFFER if isinstance(front.tail, memoryview) else 0)


def entry_cost(key: Hashable, value: Any, deps: tuple, by_dep: dict) -> int:
    """Bytes one cache entry holds, by sys.getsizeof of its parts plus fixed table overheads."""
    packed = getattr(value, "packed", value)
    cost = ENTRY_OVERHEAD + (sys.getsizeof(packed) if isinstance(packed, (bytes, bytearray)) else 64)
    if isinstance(key, tuple) and key and isinstance(key[0], bytes):
        cost += sys.getsizeof(key[0])
    for dep in deps:
        keys = by_dep.get(dep)
        cost += NEW_DEP_OVERHEAD if keys is None else DEP_OVERHEAD if type(keys) is set else SHARED_DEP_OVERHEAD
    return cost
