"""Sources turn the outside world (manifests, the API) into index changes."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..selectors import LabelSelector


def object_filter(namespaces: frozenset[str] | None, service_selector: LabelSelector | None) -> Callable[[Any], bool]:
    """Which objects a source stores: CoreDNS's `namespaces` and `labels` (services only) options."""

    def wanted(obj: Any) -> bool:
        kind = type(obj).__name__
        if namespaces is not None and kind != "Namespace" and obj.namespace not in namespaces:
            return False
        if service_selector is not None and kind == "Service":
            return service_selector.matches(obj.labels)
        return True

    return wanted


GC_THRESHOLDS = (20_000, 20, 100)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: a bulk load creates no cycles, and the collector would
    otherwise walk the growing heap again and again (~0.15 s of a 10k-service manifest load)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def settle_heap() -> None:
    """After a bulk load (a full list, a manifest load): move the long-lived index objects out of
    the garbage collector's generations. Full collections then no longer walk 100k+ records, which
    otherwise shows up as multi-millisecond pauses in the answer latency tail. Then hand the memory
    the load's temporary data (decoded pages, parsed documents) left free back to the system."""
    gc.collect()
    gc.freeze()
    # the caches churn (a flood of forwarded names inserts and evicts an answer per query): with the
    # default thresholds (700, 10, 10) the collector's runs cost 5-15% of the CPU per forwarded query
    # (paired perf runs, perf/BENCH.md); kdns makes few reference cycles, so it collects less often
    gc.set_threshold(*GC_THRESHOLDS)
    if _malloc_trim is not None:
        _malloc_trim(0)


def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim: returns free heap memory (also of the reflector threads' arenas) to the
    system; without it RSS keeps the peak of the load. None elsewhere (musl, macOS)."""
    try:
        import ctypes
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _libc_malloc_trim()
