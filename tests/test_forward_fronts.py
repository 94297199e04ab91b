"""Front answers of the `cache` plugin (forwarded names) on kdns's UDP reader over real loopback sockets,
with the plugin's clock in the test's hands: a front serves exactly what the plugin would serve at that
moment (TTL included) within one second, is rebuilt when the TTLs count down, is never served after its
entry expired or was evicted or forwarding stopped (a loop), charges its bytes to the plugin's budget,
and counts as a cache hit (coredns_cache_hits / requests, coredns_dns_requests) once folded. Rotated
(loadbalance) answers get none."""

from __future__ import annotations

import asyncio
import io
import socket

import dns.message
import dns.rcode
import pytest
from harness import traced_bytes
from upstream import FakeUpstream

from kdns.cache import AnswerCache
from kdns.config import settings_from_corefile
from kdns.forward import Forwarder
from kdns.index import ClusterIndex
from kdns.log import Logger
from kdns.metrics import DnsMetrics
from kdns.pipeline import Block
from kdns.respcache import ResponseCache
from kdns.server import QueryHandler, TimedFront
from kdns.transport import bind
from kdns.wire import parse_query, patch

CACHE_TTL = 30

COREFILE = """\
.:53 {
    prometheus :9153
    forward . UPSTREAM
    cache %d {
        success %d
    }
    loadbalance
}
"""


class Clock:
    """The `cache` plugin's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream({
        ("www.example.com", "A"): ["93.184.215.15"],
        ("other.example.com", "A"): ["192.0.2.8"],
        ("multi.example.com", "A"): ["192.0.2.1", "192.0.2.2", "192.0.2.3"],
    }, ttl=60) as up:
        yield up


class Served:
    """kdns's query handler for one `forward` + `cache` server block on a real UDP socket."""

    def __init__(self, upstream: FakeUpstream, capacity: int = 9984):
        self.clock = Clock()
        settings = settings_from_corefile((COREFILE % (CACHE_TTL, capacity)).replace("UPSTREAM", upstream.address))
        bc = settings.blocks[0]
        log = Logger(stream=io.StringIO())
        metrics = DnsMetrics()
        answers = AnswerCache()
        self.cache = ResponseCache(bc.cache, clock=self.clock)
        self.block = Block(bc, ClusterIndex(), answers, log, metrics, forwarder=Forwarder(bc.forward, log, set()),
                           cache=self.cache)
        metrics.caches.append((self.block.name, ".", self.cache))
        self.handler = QueryHandler([self.block], log, metrics, answers=answers)
        self.handler.observe = True
        self.upstream = upstream

    async def __aenter__(self) -> "Served":
        self.udp, self.tcp, _, port = await bind(self.handler, self.handler.log, "127.0.0.1", 0)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.setblocking(False)
        self.client.connect(("127.0.0.1", port))
        self.qid = 0
        return self

    async def __aexit__(self, *exc) -> None:
        self.client.close()
        self.udp.close()
        self.tcp.close()
        self.block.forwarder.close()

    async def ask(self, name: str, rdtype: str = "A") -> tuple[bytes, bytes]:
        """(query, reply) of one UDP query."""
        self.qid += 1
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
        q.id = self.qid
        wire = q.to_wire()
        self.client.send(wire)
        async with asyncio.timeout(10):
            reply = await asyncio.get_running_loop().sock_recv(self.client, 65535)
        return wire, reply

    def expected(self, wire: bytes) -> bytes:
        """What the plugin serves for this query now (the slow path's cache.get, counting nothing)."""
        query = parse_query(wire)
        entry = self.cache.find(query.key)
        assert entry is not None
        return patch(self.cache.served(entry), query)

    def fronts(self) -> dict:
        return self.handler.timed_fronts[0]

    def front_hits(self) -> int:
        return sum(f.n for f in self.fronts().values())


def ttl(reply: bytes) -> int:
    return dns.message.from_wire(reply).answer[0].ttl


def test_a_front_serves_what_the_plugin_would_second_by_second_and_never_past_expiry(upstream):
    async def main():
        async with Served(upstream) as s:
            asked = upstream.count("www.example.com", "A")
            _, first = await s.ask("www.example.com")  # forwarded, then cached
            assert upstream.count("www.example.com", "A") == asked + 1 and ttl(first) == CACHE_TTL
            served = 1
            for step in range(4):  # four whole seconds of the entry's life
                for _ in range(4):
                    wire, reply = await s.ask("www.example.com")
                    served += 1
                    assert reply == s.expected(wire)  # byte for byte, the TTL counted down as the plugin does
                    assert ttl(reply) == CACHE_TTL - step
                    s.clock.now += 0.2  # still inside the second
                (front,) = s.fronts().values()
                assert isinstance(front, TimedFront) and front.n >= 1  # the reader answered some of them itself
                s.clock.now += 0.3  # the next second: the front's TTL is stale and must not be sent
            # the entry expires: asked upstream again, a fresh TTL, not the front's
            s.clock.now = 1000.0 + CACHE_TTL
            _, reply = await s.ask("www.example.com")
            served += 1
            assert upstream.count("www.example.com", "A") == asked + 2 and ttl(reply) == CACHE_TTL
            stats = s.handler.stats  # folds the fronts' counts
            assert stats["queries_udp"] == served
            assert s.cache.hits["success"] == served - 2 and s.cache.requests == served
            assert sum(n for k, n in s.handler.metrics.raw.items() if k[7] == "cache") == served - 2
            assert sum(n for k, n in s.handler.metrics.raw.items() if k[4] == "A") == served

    asyncio.run(main())


def test_an_evicted_entry_takes_its_front_and_its_bytes_with_it(upstream):
    async def main():
        async with Served(upstream, capacity=1) as s:
            for _ in range(4):
                await s.ask("www.example.com")
            assert len(s.fronts()) == 1
            entry = s.cache.find(parse_query((await s.ask("www.example.com"))[0]).key)
            assert entry.fronts and s.cache.bytes == entry.cost
            front_cost = entry.fronts[0][2]
            assert s.cache.bytes > front_cost > 0
            asked = upstream.count("www.example.com", "A")
            await s.ask("other.example.com")  # a bucket of one, full: a name asked once is not stored
            assert s.cache.not_admitted["success"] == 1 and len(s.fronts()) == 1
            await s.ask("other.example.com")  # asked again: stored, www is evicted
            assert s.cache.entries("success") == 1 and not s.fronts()
            assert s.cache.bytes == s.cache.find(parse_query((await s.ask("other.example.com"))[0]).key).cost
            _, reply = await s.ask("www.example.com")  # the front is gone with its entry: asked upstream again
            assert upstream.count("www.example.com", "A") == asked + 1
            assert dns.message.from_wire(reply).answer[0][0].address == "93.184.215.15"

    asyncio.run(main())


def test_rotated_answers_get_no_front_and_keep_rotating(upstream):
    async def main():
        async with Served(upstream) as s:
            firsts = set()
            for _ in range(6):
                _, reply = await s.ask("multi.example.com")
                firsts.add(dns.message.from_wire(reply).answer[0][0].address)
            assert not s.fronts() and len(firsts) > 1

    asyncio.run(main())


def test_fronts_take_only_free_room_in_the_budget(upstream):
    async def main():
        async with Served(upstream) as s:
            for _ in range(2):
                await s.ask("www.example.com")
            s.cache.max_bytes = s.cache.bytes  # full: a front would not fit
            for _ in range(3):
                wire, reply = await s.ask("www.example.com")
                assert reply == s.expected(wire)
            assert not s.fronts() and s.cache.bytes == s.cache.max_bytes

    asyncio.run(main())


def test_fronts_are_charged_what_they_hold(upstream):
    """2,000 fronts against tracemalloc: what add_front charges is what they hold (the budget bounds them)."""
    import dns.rrset

    s = Served(upstream)
    queries = []
    for i in range(2000):
        q = dns.message.make_query(f"h{i}.example.test", "A")
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", f"192.0.2.{i % 250 + 1}"))
        s.cache.put(parse_query(q.to_wire()), r.to_wire(), f"h{i}.example.test")
        queries.append(q.to_wire())
    client = ("10.0.0.1", 5353)
    for q in queries * 2:  # hit twice within the second: a front each
        s.handler.handle(q, False, client)
    assert len(s.fronts()) == 2000
    s.cache.clear_fronts()
    before_accounted = s.cache.bytes
    # asked again in the same second: the front is made again
    traced = traced_bytes(lambda: [s.handler.handle(q, False, client) for q in queries])
    assert len(s.fronts()) == 2000
    accounted = s.cache.bytes - before_accounted
    assert 0.9 * traced <= accounted <= 2.0 * traced, (accounted, traced)
    s.cache.clear_fronts()
    assert s.cache.bytes == before_accounted and not s.fronts()


def test_a_forwarding_loop_found_later_stops_the_fronts_at_once(upstream):
    async def main():
        async with Served(upstream) as s:
            for _ in range(4):
                await s.ask("www.example.com")
            assert len(s.fronts()) == 1
            s.block.loop_probe = "loop-probe.example.com"
            for rdtype in ("HINFO", "TXT", "MX"):  # our own probe comes back: a loop (forwarding stops)
                await s.ask("loop-probe.example.com", rdtype)
            assert s.block.loop_detected and not s.fronts()
            _, reply = await s.ask("www.example.com")
            assert dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED  # as the full path answers it now

    asyncio.run(main())


def test_a_handler_sharing_the_plugin_later_does_not_take_its_fronts(upstream):
    # explain's shadow handler shares the running cache plugin (an explained name fills it as a pod's
    # query would); it has no UDP reader, so the listener's handler keeps serving the plugin's fronts
    from kdns.explain import Recorder, shadow_handler

    async def main():
        async with Served(upstream) as s:
            for _ in range(4):
                await s.ask("www.example.com")
            (front,) = s.fronts().values()
            shadow = shadow_handler(s.handler.blocks, Recorder())
            assert s.cache.fronts is s.handler.timed_fronts and shadow.forward_cache is not None
            served = front.n
            for _ in range(3):
                wire, reply = await s.ask("www.example.com")
                assert reply == s.expected(wire)
            assert s.fronts()[wire[2:]] is front and front.n == served + 3

    asyncio.run(main())
