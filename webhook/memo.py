"""Admission answers remembered per (plan, pod shape): an LRU bounded in entries and bytes.

The pods of one Deployment (one ReplicaSet, one Job) are identical in everything the patch reads,
so a namespace's plan plus the pod's shape (patch.shape_key) decide the encoded patch; encoding
thousands of variables again for each replica is what this saves. Entries of a plan are dropped
when the catalog forgets that plan (a service it read changed, or it fell out of the plan memo).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

MAX_ENTRIES = 1024
MAX_BYTES = 16 * 1024 * 1024  # ~60 answers of a full 64 KiB budget (140 KB of base64, as text and bytes);
# small namespaces give small patches. The webhook Deployment is limited to 200Mi (deploy/README.md).


class AnswerMemo:
    """value by (plan serial, shape); `size` counts the bytes an entry holds (its value and its key)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, Hashable], tuple[Any, int]] = OrderedDict()
        self._by_plan: dict[int, set[Hashable]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, plan: int, shape: Hashable) -> Any | None:
        entry = self._entries.get((plan, shape))
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end((plan, shape))
        self.hits += 1
        return entry[0]

    def put(self, plan: int, shape: Hashable, value: Any, size: int) -> None:
        """Remember `value` unless it alone is larger than the byte bound; evicts the least recently used."""
        if size > self.max_bytes or self.max_entries < 1:
            return
        self._remove((plan, shape))
        self._entries[(plan, shape)] = (value, size)
        self._by_plan.setdefault(plan, set()).add(shape)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def drop(self, plan: int) -> None:
        """Forget every answer computed from `plan`."""
        for shape in self._by_plan.get(plan, set()).copy():
            self._remove((plan, shape))

    def _remove(self, key: tuple[int, Hashable]) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= entry[1]
        shapes = self._by_plan[key[0]]
        shapes.discard(key[1])
        if not shapes:
            del self._by_plan[key[0]]
