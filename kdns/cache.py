"""Packed-answer cache for our own zones, invalidated precisely by index dependency keys.

Entries are whole packed responses keyed by Query.key; an index change drops every entry that
depends on a touched key before the next query is read (both run on the one event loop), so no
answer outlives the event that changed it.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable


class AnswerCache:
    def __init__(self, maxsize: int = 100_000):
        self.maxsize = maxsize
        self._entries: dict[Hashable, Any] = {}
        self._deps_of: dict[Hashable, tuple] = {}
        self._by_dep: dict[Hashable, set] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any:
        packed = self._entries.get(key)
        if packed is None:
            self.misses += 1
        else:
            self.hits += 1
        return packed

    def peek(self, key: Hashable) -> Any:
        """get() without counting a hit or miss (the caller counts what it serves)."""
        return self._entries.get(key)

    def put(self, key: Hashable, packed: Any, deps: Iterable[Hashable]) -> None:
        if key in self._entries:
            self._drop(key)
        elif len(self._entries) >= self.maxsize:
            # oldest first (dicts keep insertion order)
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        deps = tuple(deps)
        self._entries[key] = packed
        self._deps_of[key] = deps
        for dep in deps:
            self._by_dep.setdefault(dep, set()).add(key)

    def invalidate(self, touched: Iterable[Hashable]) -> int:
        dropped = 0
        for dep in touched:
            keys = self._by_dep.pop(dep, None)
            if not keys:
                continue
            for key in keys:
                if key in self._entries:
                    self._drop(key)
                    dropped += 1
        return dropped

    def clear(self) -> None:
        self._entries.clear()
        self._deps_of.clear()
        self._by_dep.clear()

    def _drop(self, key: Hashable) -> None:
        del self._entries[key]
        for dep in self._deps_of.pop(key, ()):
            keys = self._by_dep.get(dep)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_dep[dep]
