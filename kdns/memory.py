"""Memory: the budget for everything that grows with traffic, the index's footprint, RSS and the cgroup limit.

Traffic-grown state (the answer caches, the `cache` plugin's forwarded responses, the negative-answer
rate-limit buckets) is bounded in bytes by one budget, split in fixed shares. The cluster index is
bounded by the cluster itself: it is measured (sampled deep size) and reported, never evicted.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

DEFAULT_BUDGET = 28 << 20  # fits deploy/'s limit next to a 10k-service / 30k-endpoint index
MIN_BUDGET = 1 << 20
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*$", re.IGNORECASE)

# shares of the budget (they add up to 1)
# (the answer cache holds a 10k-service cluster's A and SRV answers: ~1.1 KiB an entry)
ANSWER_SHARE = 0.55      # authoritative answers, all ports together
RESPONSE_SHARE = 0.20    # the `cache` plugin's forwarded answers, all blocks together
RATE_LIMIT_SHARE = 0.03  # negative-answer rate-limit buckets
TCP_SHARE = 0.22         # open TCP connections, all ports together
RATE_LIMIT_BUCKET_BYTES = 250  # a bucket: the prefix string, a 3-item list, the dict slot (sys.getsizeof)
TCP_READ_LIMIT = 16 << 10  # a connection's read buffer high-water mark (asyncio StreamReader limit)
# a connection at worst: its read buffer (2x the limit before reading pauses), transport, reader,
# writer, task and coroutine frames (measured with tracemalloc: ~6 KiB idle)
TCP_CONNECTION_BYTES = 2 * TCP_READ_LIMIT + (8 << 10)


def parse_size(text: str) -> int:
    """'16Mi', '64M', '1048576', '512Ki' -> bytes (Kubernetes quantities and plain numbers)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 16Mi, 64M, 1048576)")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[(unit or "").lower()])
    if value < MIN_BUDGET:
        raise ValueError(f"{text!r} is below the smallest budget, 1Mi")
    return value


def format_size(n: float) -> str:
    return f"{n / (1 << 20):.1f}Mi"


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes for the traffic-grown state, and how they are shared."""

    total: int = DEFAULT_BUDGET

    @property
    def answers(self) -> int:
        return int(self.total * ANSWER_SHARE)

    @property
    def responses(self) -> int:
        return int(self.total * RESPONSE_SHARE)

    @property
    def tcp_connections(self) -> int:
        """Open TCP connections the budget allows across all ports (at least 16)."""
        return max(16, int(self.total * TCP_SHARE) // TCP_CONNECTION_BYTES)

    @property
    def rate_limit_sources(self) -> int:
        return max(1000, int(self.total * RATE_LIMIT_SHARE) // RATE_LIMIT_BUCKET_BYTES)


# ------------------------------------------------------------------------------ process and cgroup


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> tuple[int, str] | None:
    """(limit in bytes, file it came from) of the memory cgroup this process runs in, v2 or v1; None
    when there is no limit or no cgroup to read. Walks up the hierarchy: a parent's limit binds too."""
    try:
        with open(proc_cgroup) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    candidates = []
    if v1 is not None:
        candidates.append((os.path.join(root, "memory"), v1, "memory.limit_in_bytes"))
    if v2 is not None:
        for base in (root, os.path.join(root, "unified")):
            candidates.append((base, v2, "memory.max"))
    best: tuple[int, str] | None = None
    for base, path, leaf in candidates:
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            limit_file = os.path.join(base, *parts[:depth], leaf)
            try:
                with open(limit_file) as fh:
                    raw = fh.read().strip()
            except OSError:
                continue
            if raw == "max":
                continue
            try:
                value = int(raw)
            except ValueError:
                continue
            if value >= 1 << 60:  # v1's "no limit" is a huge page-rounded number
                continue
            if best is None or value < best[0]:
                best = (value, limit_file)
    return best


# ------------------------------------------------------------------------------ the index's footprint


def deep_size(obj, seen: set[int]) -> int:
    """Bytes of obj and everything it refers to that `seen` has not counted yet (sys.getsizeof based)."""
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or isinstance(o, (bool, type)):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, (str, bytes, int, float)):
            continue
        else:
            slots = getattr(type(o), "__slots__", None)
            if slots is not None:
                stack.extend(getattr(o, s, None) for s in slots)
            d = getattr(o, "__dict__", None)
            if d is not None:
                stack.append(d)
    return total


INDEX_TABLES = ("services", "views", "slices", "legacy", "slice_owner", "pods", "pod_ips", "_pod_ns",
                "namespaces", "_ns_refs", "reverse")
# tables whose keys and values other tables hold (the reverse map: endpoint IPs -> one (ns, svc) tuple
# per service): only the table itself counts, or a sample would count each shared tuple once per entry
REFERENCE_TABLES = ("reverse",)


def index_bytes(index, sample: int = 400) -> int:
    """Estimated bytes held by a ClusterIndex's tables: the deep size of a sample of each table's items,
    scaled to the table (a full walk is exact but costs the event loop ~0.1 s per 10k objects). The
    sample is chosen by key hash, the same in every table keyed alike, and an object is counted once,
    so a Service shared by `services` and `views` is not counted twice; the reverse map counts only
    its table (REFERENCE_TABLES). Strings shared across objects (interned namespaces, port lists) are
    scaled with their sample, so this leans high (tests/test_memory.py keeps it within 0.9-1.5x of
    what tracemalloc traces)."""
    total_reference = sum(sys.getsizeof(t) for t in (getattr(index, name, None) for name in REFERENCE_TABLES)
                          if isinstance(t, dict))
    tables = [t for t in (getattr(index, name, None) for name in INDEX_TABLES if name not in REFERENCE_TABLES)
              if isinstance(t, dict)]
    stride = max(1, max((len(t) for t in tables), default=0) // sample)
    seen: set[int] = set()
    total = total_reference
    for table in tables:
        total += sys.getsizeof(table)
        if not table:
            continue
        picked = [(k, v) for k, v in table.items() if hash(k) % stride == 0] if stride > 1 else list(table.items())
        picked = picked or [next(iter(table.items()))]
        measured = sum(deep_size(k, seen) + deep_size(v, seen) for k, v in picked)
        total += int(measured * len(table) / len(picked))
    events = getattr(getattr(index, "history", None), "events", None)
    if events:  # the change log (kdns explain): bounded, its entries all alike
        # an entry's object is the one in the tables (or a replaced version, at most the log's capacity of them)
        entry = events[-1]
        total += sys.getsizeof(events) + len(events) * (sys.getsizeof(entry) + deep_size(entry[:4], set()))
    return total
