"""kdns's UDP reader on real loopback sockets: front answers (a repeated query answered by its exact
bytes) are correct and counted, go with their cache entry on a change, and cached answers are sent
ahead of queries that wait in the backlog (a flood of new names); the backlog is bounded and counted."""

from __future__ import annotations

import asyncio
import bisect
import socket
import time

import dns.message
import dns.rcode
import pytest

from builders import clusterip, handler_for, namespace

from kdns.metrics import DURATION_BUCKETS
from kdns.server import Front
from kdns.transport import UDPReader, bind

NAME = "web.shop.svc.cluster.local"


def _objects():
    return [namespace("shop"), clusterip("shop", "web", "10.96.0.10")]


async def _serve(handler):
    udp, tcp_server, _, port = await bind(handler, handler.log, "127.0.0.1", 0)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    client.connect(("127.0.0.1", port))
    return udp, tcp_server, client


async def _recv(client: socket.socket, n: int, timeout: float = 10.0) -> list[bytes]:
    loop = asyncio.get_running_loop()
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await loop.sock_recv(client, 65535))
    return out


def _query(name: str, qid: int) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q.to_wire()


def _close(udp, tcp_server, client) -> None:
    client.close()
    udp.close()
    tcp_server.close()


def test_front_answers_are_exact_and_counted():
    async def main():
        index, handler = handler_for(*_objects())
        handler.observe = True
        udp, tcp_server, client = await _serve(handler)
        try:
            upper = NAME.upper()
            for i, name in enumerate([NAME] * 6 + [upper] * 3):
                client.send(_query(name, 1000 + i))
                (reply,) = await _recv(client, 1)
                msg = dns.message.from_wire(reply)
                assert msg.id == 1000 + i and msg.rcode() == dns.rcode.NOERROR
                assert str(msg.question[0].name) == name + "."  # the asker's spelling (0x20) kept
                assert [rr.address for rr in msg.answer[0]] == ["10.96.0.10"]
            # the 3rd asking of each spelling on is answered from a front entry, without the handler
            assert len(handler.cache.fronts[0]) == 2
            assert sum(f.n for f in handler.cache.fronts[0].values()) > 0
            stats = handler.stats  # folds the fronts' counts
            assert stats["queries_udp"] == 9
            assert handler.cache.hits == 8  # all but the first asking (the key is the lower-case name)
            requests = sum(n for k, n in handler.metrics.raw.items() if k[4] == "A")
            assert requests == 9
            assert all(f.n == 0 for f in handler.cache.fronts[0].values())
        finally:
            _close(udp, tcp_server, client)

    asyncio.run(main())


def test_front_answers_are_timed_by_run():
    """Front answers read one after another are timed with one clock reading per run: each answer is in the
    duration histogram once, and the time the runs took is shared out to the fronts by count when they are
    folded, none left over; a run the process was paused in counts each of its answers at once, at the run's
    mean, in that duration's bucket."""
    async def main():
        index, handler = handler_for(*_objects())
        handler.observe = True
        udp, tcp_server, client = await _serve(handler)
        try:
            started = time.perf_counter()
            for i in range(3):  # cached, then a front
                client.send(_query(NAME, i))
                await _recv(client, 1)
            for i in range(50):  # in the socket together: read in runs of front answers
                client.send(_query(NAME, 100 + i))
            await _recv(client, 50)
            elapsed = time.perf_counter() - started
            assert handler.front_answers > 0
            pooled = handler.front_seconds
            handler._fold(Front(b"", None, 0, 0))  # a front with no answers (dropped unused) takes none of the time
            assert handler.front_seconds == pooled > 0
            assert handler.stats["queries_udp"] == 53  # folds the fronts' counts and time
            assert handler.front_answers == 0 and handler.front_seconds == 0.0
            durations = {k: n for k, n in handler.metrics.raw.items() if k[4] == "A"}
            assert sum(durations.values()) == 53
            seconds = sum(s[0] for s in handler.metrics.sums.values())
            assert 0 < seconds <= elapsed

            # a run of two answers that took 3 ms: 1.5 ms each, in the 2 ms bucket, counted at once
            (front,) = handler.cache.fronts[0].values()
            bucket = bisect.bisect_left(DURATION_BUCKETS, 0.0015)
            before = sum(n for k, n in handler.metrics.raw.items() if k[4] == "A" and k[-1] == bucket)
            front.n += 2  # as the reader counts them
            udp._timed([front, front], time.perf_counter() - 0.003)
            assert front.n == 0 and handler.front_answers == 0
            assert sum(n for k, n in handler.metrics.raw.items() if k[4] == "A" and k[-1] == bucket) == before + 2
            assert 0.003 <= sum(s[0] for s in handler.metrics.sums.values()) - seconds < 0.004
        finally:
            _close(udp, tcp_server, client)

    asyncio.run(main())


def test_front_answer_goes_with_a_change():
    async def main():
        index, handler = handler_for(*_objects())
        udp, tcp_server, client = await _serve(handler)
        try:
            for i in range(3):
                client.send(_query(NAME, i))
                await _recv(client, 1)
            assert handler.cache.fronts[0]
            index.upsert(clusterip("shop", "web", "10.96.0.99"))
            assert not handler.cache.fronts[0]
            client.send(_query(NAME, 7))
            (reply,) = await _recv(client, 1)
            assert [rr.address for rr in dns.message.from_wire(reply).answer[0]] == ["10.96.0.99"]
            assert handler.stats["queries_udp"] == 4
        finally:
            _close(udp, tcp_server, client)

    asyncio.run(main())


@pytest.mark.parametrize("fronted", [False, True], ids=["covered", "cover-fronted"])
def test_cached_answers_go_out_before_waiting_misses(fronted):
    """Covered never-seen names -- answered from their cover's shape, or (fronted) from a CoverFront, both
    cheap -- still wait in the backlog behind the wake-up's cached answers: a flood of them cannot delay
    the hot names read with them."""
    async def main():
        index, handler = handler_for(*_objects())
        udp, tcp_server, client = await _serve(handler)
        try:
            client.send(_query(NAME, 1))
            client.send(_query("seed.shop.svc.cluster.local", 2))
            await _recv(client, 2)  # NAME cached; the namespace's negative cover made
            if fronted:  # names as long as the flood's below, asked one by one: shapes, then cover fronts
                for i in range(6):
                    client.send(_query(f"old{i}.shop.svc.cluster.local" if i % 2 else f"ol{i}.shop.svc.cluster.local",
                                       10 + i))
                    await _recv(client, 1)
                assert len(handler.cache.cover_fronts[0]) == 2
            # 40 never-seen names (cheap to answer from the cover, yet work), then the cached one, all in
            # the socket before kdns reads any
            for i in range(40):
                client.send(_query(f"new{i}.shop.svc.cluster.local", 100 + i))
            client.send(_query(NAME, 999))
            replies = [dns.message.from_wire(r) for r in await _recv(client, 41)]
            assert replies[0].id == 999 and replies[0].rcode() == dns.rcode.NOERROR
            misses = replies[1:]
            assert [m.id for m in misses] == list(range(100, 140))  # the backlog keeps their order
            assert all(m.rcode() == dns.rcode.NXDOMAIN for m in misses)
            assert handler.stats["negative_covered"] == 40 + (6 if fronted else 0)
        finally:
            _close(udp, tcp_server, client)

    asyncio.run(main())


def test_backlog_is_bounded_and_drops_are_counted(monkeypatch):
    monkeypatch.setattr(UDPReader, "BACKLOG", 8)

    async def main():
        index, handler = handler_for(*_objects())
        udp, tcp_server, client = await _serve(handler)
        try:
            client.send(_query(NAME, 1))
            await _recv(client, 1)
            for i in range(30):  # fewer than READS: one wake-up reads them all
                client.send(_query(f"new{i}.shop.svc.cluster.local", 100 + i))
            client.send(_query(NAME, 999))
            replies = [dns.message.from_wire(r) for r in await _recv(client, 9)]
            assert replies[0].id == 999  # the cached answer is never the one dropped
            assert [m.id for m in replies[1:]] == list(range(100, 108))
            assert handler.stats["udp_backlog_dropped"] == 22
        finally:
            _close(udp, tcp_server, client)

    asyncio.run(main())


def test_a_burst_is_answered_in_full_around_empty_datagrams():
    """Datagrams queued together are all read (a wake-up reads on while the queue holds any), and a
    datagram of zero bytes -- dropped -- holds up none of those behind it, first or in between."""
    async def main():
        index, handler = handler_for(*_objects())
        udp, tcp_server, client = await _serve(handler)
        try:
            replies = []
            for burst in range(3):  # 100 datagrams a burst: well inside the socket's receive buffer
                for i in range(burst * 100, burst * 100 + 100):
                    if i in (0, 1, 150):
                        client.send(b"")
                    client.send(_query(NAME if i % 2 else f"n{i}.shop.svc.cluster.local", i))
                replies += [dns.message.from_wire(r) for r in await _recv(client, 100)]
            assert sorted(r.id for r in replies) == list(range(300))
            assert all(r.rcode() == (dns.rcode.NOERROR if r.id % 2 else dns.rcode.NXDOMAIN) for r in replies)
            assert handler.stats["dropped"] == 3
        finally:
            _close(udp, tcp_server, client)

    asyncio.run(main())
