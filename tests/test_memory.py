"""Memory: the answer cache's byte bound and flood-resistant admission, its accounting against
tracemalloc, the cgroup limit reader, and the real server under a budget and inside a memory cgroup."""

from __future__ import annotations

import gc
import socket
import tracemalloc

import dns.message
import dns.rcode
import pytest

from builders import clusterip, ep, eps, handler_for, headless, namespace, no_cover
from cgroup import MemoryCgroup
from harness import EXAMPLE, KdnsProcess, answers, traced_bytes, wait_until
from kdns.cache import AnswerCache
from kdns.memory import cgroup_memory_limit, index_bytes, parse_size
from kdns.wire import fast_key


def ask_wire(handler, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.message.from_wire(handler.handle(dns.message.make_query(name, rdtype).to_wire(), False, ("10.0.0.1", 1)))


# ---------------------------------------------------------------- admission and the byte bound


def test_flood_of_new_names_never_evicts_a_reused_answer():
    cache = AnswerCache(max_bytes=200_000)
    cache.put("hot", b"H" * 100, [("svc", "n", "hot")])
    assert cache.get("hot") == b"H" * 100  # reused once: promoted out of probation
    for i in range(5000):  # far more than fits: ~1000 entries of ~200 bytes would
        cache.put(f"cold{i}", b"C" * 100, [("svc", "n", f"cold{i}")])
        assert cache.bytes <= cache.max_bytes
    assert cache.peek("hot") == b"H" * 100
    assert cache.evictions > 4000 and cache.peek("cold0") is None and cache.peek("cold4999") is not None
    # the evicted entries' dependency links went with them; the hot one's stayed
    assert cache.links(("svc", "n", "cold0")) == frozenset()
    assert cache.links(("svc", "n", "hot")) == frozenset({"hot"})
    assert cache.invalidate([("svc", "n", "hot")]) == 1 and cache.peek("hot") is None


def test_protected_segment_is_bounded_and_demotes_the_oldest():
    cache = AnswerCache(max_bytes=50_000)
    for i in range(400):  # every entry reused: all want the protected segment
        cache.put(i, b"x" * 100, [("svc", "n", str(i))])
        cache.get(i)
        assert cache.protected_bytes <= cache.protected_max and cache.bytes <= cache.max_bytes
    assert cache.peek(399) is not None and cache.peek(0) is None


def test_invalidation_drops_exactly_the_dependent_entries_and_their_bytes():
    cache = AnswerCache(max_bytes=100_000)
    cache.put("a", b"A", [("svc", "n", "a"), ("ns", "n")])
    cache.put("b", b"B", [("svc", "n", "b"), ("ns", "n")])
    before = cache.bytes
    assert cache.invalidate([("svc", "n", "a")]) == 1
    assert cache.peek("a") is None and cache.peek("b") == b"B" and 0 < cache.bytes < before
    assert cache.links(("ns", "n")) == frozenset({"b"})
    cache.invalidate([("ns", "n")])
    assert len(cache) == 0 and cache.bytes == 0 and cache.links(("svc", "n", "b")) == frozenset()


def test_accounted_bytes_match_what_the_entries_really_hold():
    """The cost model (cache.entry_cost) against tracemalloc, for the entries a flood really creates:
    unique NXDOMAIN names under one namespace, through the real handler."""
    index, handler = handler_for(namespace("shop"), clusterip("shop", "web", "10.96.0.10"))
    no_cover(handler)  # one cover entry would answer them all: measure the exact-key entries
    for i in range(200):  # warm-up: interned strings, dict growth
        ask_wire(handler, f"w{i}.shop.svc.cluster.local")
    handler.cache.clear()

    def flood() -> None:
        for i in range(3000):  # each twice: a negative answer is cached from its second asking
            assert ask_wire(handler, f"r{i}.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
            assert ask_wire(handler, f"r{i}.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN

    traced = traced_bytes(flood)
    assert len(handler.cache) == 3000
    accounted = handler.cache.bytes
    # never under-counts by more than 10% (the budget must hold), never over-counts 2x (wasted budget)
    assert 0.9 * traced <= accounted <= 2.0 * traced, (accounted, traced)


@pytest.mark.parametrize("observe", [False, True], ids=["plain", "prometheus"])
def test_front_answers_are_charged_what_they_hold(observe):
    """A front answer (a reused answer kept by its exact query bytes) against tracemalloc: its bytes
    are charged to its cache entry, so the budget bounds them too (with prometheus on, as deployed)."""
    index, handler = handler_for(namespace("shop"), *[clusterip("shop", f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}")
                                                       for i in range(2000)])
    handler.observe = observe
    queries = [dns.message.make_query(f"s{i}.shop.svc.cluster.local", "A").to_wire() for i in range(2000)]
    client = ("10.0.0.1", 5353)
    for q in queries:  # cached, then reused (promoted)
        handler.handle(q, False, client)
    for q in queries:
        handler.handle(q, False, client)
    handler.cache.clear_fronts()
    before_accounted = handler.cache.bytes
    traced = traced_bytes(lambda: [handler.handle(q, False, client) for q in queries])  # the third asking: a front each
    assert len(handler.cache.fronts[0]) == 2000
    accounted = handler.cache.bytes - before_accounted
    assert 0.9 * traced <= accounted <= 2.0 * traced, (accounted, traced)
    handler.cache.clear_fronts()
    assert handler.cache.bytes == before_accounted


def test_front_answers_of_both_families_go_with_their_entry():
    """The same query bytes asked over IPv4 and IPv6 make one front per family, both charged to the entry;
    an index change that drops the entry drops both and gives their bytes back."""
    index, handler = handler_for(namespace("shop"), clusterip("shop", "web", "10.96.0.10"))
    q = dns.message.make_query("web.shop.svc.cluster.local", "A").to_wire()
    for client in (("10.0.0.1", 5353), ("10.0.0.1", 5353), ("10.0.0.1", 5353), ("fd00::1", 5353, 0, 0)):
        handler.handle(q, False, client)
    assert q[2:] in handler.cache.fronts[0] and q[2:] in handler.cache.fronts[1]
    with_fronts = handler.cache.bytes
    handler.cache.clear_fronts()
    assert not handler.cache.fronts[0] and not handler.cache.fronts[1] and handler.cache.bytes < with_fronts
    for client in (("10.0.0.1", 5353), ("fd00::1", 5353, 0, 0)):
        handler.handle(q, False, client)
    assert handler.cache.bytes == with_fronts
    index.upsert(clusterip("shop", "web", "10.96.0.11"))
    assert not handler.cache.fronts[0] and not handler.cache.fronts[1] and handler.cache.bytes == 0


def test_large_front_answers_share_their_entry_bytes_and_are_charged_for_the_view():
    """Answers over 300 bytes asked as they were packed: their fronts are views of the entries' bytes,
    charged for the view (against tracemalloc, as the small ones above)."""
    objects = [namespace("shop")]
    for i in range(300):
        objects += [headless("shop", f"big{i}"),
                    eps("shop", f"big{i}", *[ep(f"10.{i // 250}.{i % 250}.{j}") for j in range(1, 25)], name=f"b{i}")]
    index, handler = handler_for(*objects)
    queries = [dns.message.make_query(f"big{i}.shop.svc.cluster.local", "A", use_edns=0, payload=4096).to_wire()
               for i in range(300)]
    client = ("10.0.0.1", 5353)
    firsts = [handler.handle(q, False, client) for q in queries]
    for q in queries:
        handler.handle(q, False, client)
    handler.cache.clear_fronts()
    before_accounted = handler.cache.bytes
    traced = traced_bytes(lambda: [handler.handle(q, False, client) for q in queries])
    fronts = list(handler.cache.fronts[0].values())
    assert len(fronts) == 300 and all(isinstance(f.tail, memoryview) for f in fronts)
    assert all(len(first) > 300 for first in firsts)
    assert sorted(bytes(f.tail) for f in fronts) == sorted(first[2:] for first in firsts)
    accounted = handler.cache.bytes - before_accounted
    assert 0.9 * traced <= accounted <= 2.0 * traced, (accounted, traced)


def test_index_bytes_estimate_against_tracemalloc(tmp_path):
    """kdns_index_bytes for a generated cluster loaded from manifests, against what tracemalloc
    traces for the same index (the source's own state dropped)."""
    import io
    import os
    import sys

    from kdns.index import ClusterIndex
    from kdns.log import Logger
    from kdns.sources.manifests import ManifestSource
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perf"))
    from gen_cluster import build_cluster, write_manifests
    write_manifests(build_cluster(1500, 4500, 40, 0.1, 3), str(tmp_path))
    gc.collect()
    tracemalloc.start()
    try:
        index = ClusterIndex(implicit_namespaces=True)
        source = ManifestSource([str(tmp_path)], index, Logger(stream=io.StringIO()))
        source.load()
        del source
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(index.services) > 1500
    assert 0.9 * traced <= index_bytes(index) <= 1.5 * traced, (index_bytes(index), traced)


def test_index_bytes_estimate_follows_the_cluster():
    small, _ = handler_for(namespace("a"), clusterip("a", "s0", "10.96.0.1"))
    objects = [namespace("a")] + [clusterip("a", f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}") for i in range(2000)]
    big, _ = handler_for(*objects)
    assert index_bytes(big) > 50 * index_bytes(small) > 0


# ---------------------------------------------------------------- sizes and the cgroup limit


def test_parse_size_takes_kubernetes_quantities_and_rejects_the_rest():
    assert parse_size("24Mi") == 24 << 20 and parse_size("64M") == 64_000_000 and parse_size("2097152") == 2 << 20
    for bad in ("", "12 apples", "-5Mi", "100"):
        try:
            parse_size(bad)
        except ValueError as exc:
            assert repr(bad) in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_cgroup_limit_v1_v2_and_parents(tmp_path):
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    (root / "memory" / "pod" / "ctr").mkdir(parents=True)
    (root / "memory" / "pod" / "memory.limit_in_bytes").write_text("178257920\n")
    (root / "memory" / "pod" / "ctr" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc.write_text("4:memory:/pod/ctr\n0::/\n")
    # the container itself is unlimited; its pod's limit binds
    assert cgroup_memory_limit(str(proc), str(root)) == (178257920, str(root / "memory" / "pod" / "memory.limit_in_bytes"))
    (root / "svc").mkdir()
    (root / "svc" / "memory.max").write_text("max\n")
    (root / "memory.max").write_text("104857600\n")
    proc.write_text("0::/svc\n")
    assert cgroup_memory_limit(str(proc), str(root)) == (104857600, str(root / "memory.max"))
    proc.write_text("0::/svc\n")
    (root / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(str(proc), str(root)) is None


# ---------------------------------------------------------------- the real server


def test_server_under_a_flood_stays_in_its_budget_and_keeps_the_hot_name():
    with KdnsProcess("--manifests", EXAMPLE, "--memory-budget", "2Mi", "--metrics-listen", "127.0.0.1:0") as kdns:
        hot = "api.shop.svc.cluster.local"
        assert answers(kdns.query(hot)) == ["10.96.200.20"]
        assert answers(kdns.query(hot)) == ["10.96.200.20"]  # reused: protected from now on
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", kdns.port))
        try:
            for i in range(12_000):  # 2Mi x 55% holds ~1,000 negative answers: most must be evicted
                # each name twice: a negative answer is admitted to the cache on its second asking; a name
                # below a missing service (<svc>.<ns>.svc names are all answered by one negative cover)
                sock.send(dns.message.make_query(f"r{i // 2}.nosvc.shop.svc.cluster.local", "A").to_wire())
                if i % 50 == 49:  # lockstep in small windows: nothing is lost to a full socket buffer
                    for _ in range(50):
                        sock.recv(4096)
        finally:
            sock.close()
        budget_share = int((2 << 20) * 0.55)
        assert budget_share * 0.8 <= kdns.metric("kdns_cache_bytes", cache="answers") <= budget_share
        assert kdns.metric("kdns_memory_budget_bytes") == 2 << 20
        assert kdns.metric("kdns_index_bytes") > 0
        assert kdns.metric("kdns_answer_cache_demotions_total") == 0  # a flood's names are never reused
        assert kdns.metric("kdns_answer_cache_not_promoted_total") == 0
        hits = kdns.metric("kdns_answer_cache_hits_total")
        misses = kdns.metric("kdns_answer_cache_misses_total")
        assert answers(kdns.query(hot)) == ["10.96.200.20"]
        wait_until(lambda: kdns.metric("kdns_answer_cache_hits_total") == hits + 1, what="the hot name hit the cache")
        assert kdns.metric("kdns_answer_cache_misses_total") == misses


def test_ready_verbose_shows_memory():
    with KdnsProcess("--manifests", EXAMPLE, "--ready-listen", "127.0.0.1:0") as kdns:
        status, text = kdns.get("ready", "/ready?verbose=1")
        assert status == 200
        line = next(l for l in text.splitlines() if l.startswith("memory: ready; "))
        assert "rss " in line and "index " in line and "of a 28.0Mi budget" in line


def test_startup_warns_when_index_plus_budget_cannot_fit_the_cgroup_limit():
    with MemoryCgroup(160 << 20) as cg:
        with KdnsProcess("--manifests", EXAMPLE, "--memory-budget", "150Mi", wrap=cg.wrap) as kdns:
            line = kdns.wait_for_log(r"memory_limit_too_small", timeout=30)
            assert "limit=160.0Mi" in line and "budget=150.0Mi" in line and "fix=" in line
            assert answers(kdns.query("api.shop.svc.cluster.local")) == ["10.96.200.20"]  # still serving
    with MemoryCgroup(160 << 20) as cg:
        with KdnsProcess("--manifests", EXAMPLE, wrap=cg.wrap) as kdns:
            line = kdns.wait_for_log(r"memory_fits", timeout=30)
            assert "limit=160.0Mi" in line and not any("memory_limit_too_small" in l for l in kdns.lines)


def test_corefile_memory_budget_and_the_flag_that_overrides_it(tmp_path):
    from test_dropin import corefile
    text = ".:53 {\n    memory_budget 3Mi\n    kubernetes cluster.local\n    prometheus :9153\n}\n"
    path, resolv = corefile(tmp_path, text)
    free = ("--bind", "127.0.0.1", "--port-map", "53=0", "--port-map", "9153=0")
    with KdnsProcess("--corefile", path, "--resolv-conf", resolv, "--manifests", EXAMPLE, *free, listen=False) as kdns:
        assert kdns.metric("kdns_memory_budget_bytes") == 3 << 20
    with KdnsProcess("--corefile", path, "--resolv-conf", resolv, "--manifests", EXAMPLE, *free,
                     "--memory-budget", "5Mi", listen=False) as kdns:
        assert kdns.metric("kdns_memory_budget_bytes") == 5 << 20


def test_corefile_memory_budget_errors_name_the_place(tmp_path):
    import subprocess
    import sys
    for text, where, words in (
            (".:53 {\n    memory_budget lots\n}\n", ":2:19", "is not a size"),
            (".:53 {\n    memory_budget\n}\n", ":2:5", "wrong number of arguments"),
            (".:53 {\n    memory_budget 3Mi\n}\n.:54 {\n    memory_budget 4Mi\n}\n", ":5:19", "differs from another")):
        path = tmp_path / "Corefile"
        path.write_text(text)
        out = subprocess.run([sys.executable, "-m", "kdns", "check-config", str(path)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode != 0 and f"{path}{where}" in out.stderr + out.stdout and words in out.stderr + out.stdout


def test_front_answers_displace_only_cold_entries():
    """Front answers fill the protected segment up to its cap, evicting only entries on probation: when
    the hot set fills it, no front is made and no hot answer is evicted for one."""
    index, handler = handler_for(namespace("shop"), *[clusterip("shop", f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}")
                                                       for i in range(400)])
    handler.cache.resize(200_000)
    client = ("10.0.0.1", 5353)
    queries = [dns.message.make_query(f"s{i}.shop.svc.cluster.local", "A").to_wire() for i in range(400)]
    for q in queries:  # cached, then reused at once (promoted): no front answer yet
        handler.handle(q, False, client)
        handler.handle(q, False, client)
    cache = handler.cache
    assert cache.evictions > 0 and not cache.fronts[0]  # 400 answers do not fit in 200 kB
    protected = set(cache._protected)
    assert cache.protected_bytes + 1100 > cache.protected_max  # the hot set fills its segment
    for q in queries[-20:]:  # a third asking would make fronts: no room for them, so none is made
        assert handler.handle(q, False, client)
    assert not cache.fronts[0] and set(cache._protected) == protected
    assert cache.bytes <= cache.max_bytes

    cache.clear()
    for q in queries[:60]:  # a small hot set, and cold entries around it
        handler.handle(q, False, client)
        handler.handle(q, False, client)
    for q in queries[60:]:
        handler.handle(q, False, client)
    hot = set(cache._protected)
    cold = len(cache._probation)
    for q in queries[:60]:  # fronts made: cold entries go for them, no hot one
        handler.handle(q, False, client)
    assert len(cache.fronts[0]) == 60 and set(cache._protected) == hot and len(cache._probation) < cold
    assert cache.bytes <= cache.max_bytes


class Clock:
    """The answer cache's clock, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fronted_handler(services: int = 400, budget: int = 200_000):
    index, handler = handler_for(namespace("shop"), *[clusterip("shop", f"s{i}", f"10.96.{i // 250}.{i % 250 + 1}")
                                                       for i in range(services)])
    handler.cache.resize(budget)
    handler.cache.clock = Clock()
    queries = [dns.message.make_query(f"s{i}.shop.svc.cluster.local", "A").to_wire() for i in range(services)]
    return handler, queries


def ask_times(handler, queries, times: int, client=("10.0.0.1", 5353)) -> None:
    for _ in range(times):
        for q in queries:
            assert handler.handle(q, False, client)


def test_front_answers_take_the_place_of_answers_unused_for_a_while():
    """A hot set that moved on: once its answers have gone unused for COLD_SECONDS, a new hot set's fronts
    demote them (to probation, not dropped); answers still in use -- asked through the handler or through
    their fronts -- keep their place however long ago they were marked."""
    from kdns.cache import COLD_SECONDS
    handler, queries = fronted_handler()
    cache, clock = handler.cache, handler.cache.clock
    used, old, new = queries[:20], queries[20:110], queries[300:320]
    ask_times(handler, used + old, 3)  # cached, promoted (`used` first: the oldest), fronts made while there was room
    assert cache.protected_bytes + 1100 > cache.protected_max  # the segment is full
    ask_times(handler, new, 3)  # cached, promoted; nothing is cold yet, so no front is made for them
    new_raws = {q[2:] for q in new}
    assert not new_raws & set(cache.fronts[0]) and cache.demotions == 0
    protected_before = set(cache._protected)

    clock.now += COLD_SECONDS + 0.5
    # each was used after its promotion's mark (its third asking): marked anew as room is asked for
    ask_times(handler, used, 1)
    assert cache.demotions == 0
    clock.now += COLD_SECONDS * 0.75
    ask_times(handler, used, 1)  # in use through the handler (no mark is old enough yet: no demotion)
    fronted = [q for q in old if q[2:] in cache.fronts[0]]
    cache.fronts[0][fronted[0][2:]].n += 5  # ... and one old answer through its front, as the UDP reader counts
    assert cache.demotions == 0
    clock.now += COLD_SECONDS * 0.5  # the rest unused for longer than COLD_SECONDS
    ask_times(handler, new, 2)  # (a sweep looks at 16 answers: the first askings mark the used ones anew)
    assert new_raws <= set(cache.fronts[0]) and cache.demotions > 0
    protected = set(cache._protected)
    for q in [*used, fronted[0], *new]:
        assert fast_key(q)[0] in protected  # in use since the mark: kept
    assert fronted[0][2:] in cache.fronts[0]
    demoted = protected_before - protected
    assert demoted and all(key[0] in {fast_key(q)[0][0] for q in old} for key in demoted)  # only unused ones
    assert cache.bytes <= cache.max_bytes


def test_the_answer_asking_for_a_front_is_in_use():
    """The longest-unused protected answer, asked again, is in use: it keeps its place and gets its front
    (the room comes from the other unused answers)."""
    from kdns.cache import COLD_SECONDS
    handler, queries = fronted_handler()
    cache = handler.cache
    for q in queries[:200]:  # reused answers (no front before a third asking) fill the protected segment
        ask_times(handler, [q], 2)
    assert cache.protected_bytes + 1100 > cache.protected_max and not cache.fronts[0]
    cache.clock.now += COLD_SECONDS + 0.5
    head = next(iter(cache._protected))
    ask_times(handler, [q for q in queries if fast_key(q)[0] == head], 1)
    assert head in cache._protected and len(cache.fronts[0]) == 1 and cache.demotions > 0


def test_answers_come_before_front_answers_in_the_protected_segment():
    """A reused answer promoted into a full protected segment drops front answers (a quicker way to other
    answers) before it demotes any answer."""
    handler, queries = fronted_handler()
    cache = handler.cache
    ask_times(handler, queries[:100], 3)  # promoted, with fronts
    fronts = len(cache.fronts[0])
    for q in queries[100:140]:  # reused answers, more than fit beside the fronts
        ask_times(handler, [q], 2)
    assert len(cache.fronts[0]) < fronts and cache.demotions == 0  # fronts gave way, no answer did
    protected = set(cache._protected)
    assert all(fast_key(q)[0] in protected for q in queries[:140])
    assert cache.bytes <= cache.max_bytes


def test_a_hot_set_asked_in_turn_keeps_what_fits_protected():
    """Names asked in turn (a client walking its list, dnsperf's file), more than the budget holds: each
    answer leaves probation before its second asking. Evicted and asked again, it counts as reused and
    is promoted, until the protected segment is full of answers in use; those stay (the rest wait on
    probation, counted), so every later round hits the same ~70% instead of each answer pushing out the
    next one it will need (an LRU's 0%)."""
    handler, queries = fronted_handler()
    cache = handler.cache
    hot = queries[:250]  # ~230 kB of answers: more than the 200 kB budget
    ask_times(handler, hot, 2)
    assert cache.evictions > 0 and cache.protected_bytes + 1000 > cache.protected_max
    protected = set(cache._protected)
    for _ in range(2):
        hits, not_promoted = cache.hits, cache.not_promoted
        ask_times(handler, hot, 1)
        assert cache.hits - hits >= 0.6 * len(hot) and cache.not_promoted > not_promoted
        assert set(cache._protected) == protected
    assert cache.bytes <= cache.max_bytes


def test_a_promotion_takes_an_unused_answers_place_before_any_front():
    """With the protected segment full, a reused answer first takes the place of one unused for
    COLD_SECONDS; fronts (of answers in use) give way only when no answer is unused."""
    from kdns.cache import COLD_SECONDS
    handler, queries = fronted_handler()
    cache = handler.cache
    for q in queries[60:150]:  # reused once, then never again
        ask_times(handler, [q], 2)
    ask_times(handler, queries[:40], 3)  # in use, with fronts
    for q in queries[150:250]:  # more reused answers, until the segment is full
        if cache.protected_bytes + 1000 > cache.protected_max:
            break
        ask_times(handler, [q], 2)
    fronts = len(cache.fronts[0])
    assert fronts and cache.protected_bytes + 1000 > cache.protected_max
    cache.clock.now += COLD_SECONDS + 0.5
    ask_times(handler, [queries[300]], 2)
    assert fast_key(queries[300])[0] in cache._protected
    assert cache.demotions > 0 and len(cache.fronts[0]) == fronts


def test_a_reused_answer_waits_on_probation_while_every_protected_answer_is_in_use():
    """A full protected segment of answers in use keeps them: a newly reused answer stays on probation
    (counted) instead of pushing out one that will be asked for again; once they have gone unused for
    COLD_SECONDS, it takes the place of one."""
    from kdns.cache import COLD_SECONDS
    handler, queries = fronted_handler()
    cache = handler.cache
    for q in queries[:200]:  # reused answers fill the protected segment
        ask_times(handler, [q], 2)
    protected = set(cache._protected)
    assert cache.protected_bytes + 1000 > cache.protected_max
    not_promoted = cache.not_promoted
    late = queries[300]
    ask_times(handler, [late], 2)
    assert set(cache._protected) == protected and cache.not_promoted == not_promoted + 1
    assert fast_key(late)[0] in cache._probation
    cache.clock.now += COLD_SECONDS + 0.5
    late2 = queries[301]
    ask_times(handler, [late2], 2)
    assert fast_key(late2)[0] in cache._protected and cache.demotions > 0


def test_dependency_table_through_one_and_many_dependants():
    """A dependency with one dependant keeps it without a set; more make a set; drops in any order and
    invalidation go through both forms, and nothing is left once every entry is gone."""
    cache = AnswerCache(1 << 20)
    a, b, c = ((name.encode(), 1, 1, False, False) for name in "abc")  # keys as Query.key makes them
    ns, svc_a, svc_b = ("ns", "n"), ("svc", "n", "a"), ("svc", "n", "b")
    cache.put(a, b"a" * 40, [ns, svc_a])
    cache.put(b, b"b" * 40, [ns, svc_b])
    cache.put(c, b"c" * 40, [ns])
    assert cache.links(ns) == {a, b, c} and cache.links(svc_a) == {a} and cache.links(svc_b) == {b}
    assert cache.invalidate([svc_a]) == 1 and cache.links(ns) == {b, c} and cache.links(svc_a) == frozenset()
    assert cache.invalidate([svc_b]) == 1 and cache.links(ns) == {c}
    cache.put(a, b"a" * 40, [ns, svc_a])
    cache.put(c, b"C" * 40, [ns])  # replaced: its old links go first
    assert cache.links(ns) == {a, c}
    assert cache.invalidate([ns]) == 2 and len(cache) == 0 and cache.bytes == 0
    assert cache.links(svc_a) == frozenset() and not cache._by_dep
