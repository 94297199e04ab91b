"""The forwarder's UDP machinery on real loopback sockets: replies matched by ID and question (the
others ignored and counted), one timeout sweep, max_concurrent, `expire` moving queries to a fresh
socket, ICMP refusals; and the `cache` plugin's one-walk insert against the full record walk."""

from __future__ import annotations

import asyncio
import io
import random
import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from harness import answers
from test_dropin import start
from upstream import FakeUpstream

from kdns.config import CacheConfig, ForwardConfig
from kdns.forward import Forwarder, Overloaded, Upstream, UpstreamError
from kdns.log import Logger
from kdns.respcache import ResponseCache, _scan, _walk, scan_response
from kdns.wire import WireError, parse_query, rotation_groups, walk_records


class ScriptedUpstream(asyncio.DatagramProtocol):
    """A UDP upstream on 127.0.0.1:0 whose replies a test chooses: `script(query bytes) -> [datagrams]`."""

    def __init__(self, script):
        self.script = script
        self.sources: list[tuple[str, int]] = []
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.sources.append(addr)
        for out in self.script(data):
            self.transport.sendto(out, addr)

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]


async def scripted(script) -> ScriptedUpstream:
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: ScriptedUpstream(script), local_addr=("127.0.0.1", 0))
    return proto


def answer(query: bytes, ip: str = "192.0.2.1", name: str | None = None) -> bytes:
    """The right reply to `query` (its ID), optionally to another question."""
    msg = dns.message.from_wire(query)
    if name is not None:
        other = dns.message.make_query(name, "A")
        other.id = msg.id
        msg = other
    reply = dns.message.make_response(msg)
    reply.answer.append(dns.rrset.from_text(msg.question[0].name, 60, "IN", "A", ip))
    return reply.to_wire()


def forwarder(port: int, **options) -> Forwarder:
    return Forwarder(ForwardConfig(from_zone="", to=[("127.0.0.1", port)], to_text=[f"127.0.0.1:{port}"], **options),
                     Logger(stream=io.StringIO()))


def query(name: str = "www.example.com", qid: int = 4242) -> bytes:
    msg = dns.message.make_query(name, "A")
    msg.id = qid
    return msg.to_wire()


def test_replies_with_an_unknown_id_or_another_question_are_ignored_and_counted_then_the_real_one_taken():
    def script(q: bytes):
        wrong_id = bytes(((q[0] ^ 0x55), q[1])) + answer(q)[2:]
        return [wrong_id, answer(q, "203.0.113.66", name="elsewhere.example"), answer(q, "192.0.2.7")]

    async def main():
        up = await scripted(script)
        fwd = forwarder(up.port)
        try:
            reply = await asyncio.wait_for(fwd.forward(query(qid=4242), False), 10)
            return reply, fwd.ignored_replies, fwd.upstreams[0].upstream.waiting
        finally:
            fwd.close()
            up.transport.close()

    reply, ignored, waiting = asyncio.run(main())
    msg = dns.message.from_wire(reply)
    assert msg.id == 4242 and answers(msg) == ["192.0.2.7"]  # the asker's ID back, the right answer
    to = next(iter(ignored))[0]
    assert ignored == {(to, "no query waits with this ID"): 1, (to, "question does not match the query"): 1}
    assert waiting == 0


def test_a_query_that_only_got_bad_replies_times_out_naming_what_was_ignored():
    async def main():
        up = await scripted(lambda q: [answer(q, name="elsewhere.example"), q[:2] + bytes(range(40))])
        fwd = forwarder(up.port, timeout=0.3)
        try:
            with pytest.raises(UpstreamError) as err:
                await asyncio.wait_for(fwd.forward(query(), False), 10)
            return str(err.value), fwd.ignored_replies, fwd.inflight
        finally:
            fwd.close()
            up.transport.close()

    error, ignored, inflight = asyncio.run(main())
    assert "timed out after 0.3s (ignored a reply: QR bit not set)" in error  # the last one it ignored
    assert sorted(reason for _, reason in ignored) == ["QR bit not set", "question does not match the query"]
    assert inflight == 0


def test_queries_to_a_silent_upstream_time_out_by_one_sweep_not_a_timer_each():
    async def main():
        loop = asyncio.get_running_loop()
        up = await scripted(lambda q: [])
        fwd = forwarder(up.port, timeout=0.2)
        results: list[str] = []
        done = loop.create_future()

        def finished(reply, error):
            results.append(error)
            if len(results) == 300:
                done.set_result(None)
        try:
            for i in range(300):
                packet = query(f"n{i}.example.com")
                fwd.submit(packet, parse_query(packet).qend, False, finished)
            timers = sum(1 for h in loop._scheduled if not h.cancelled())  # the default loop's timer heap
            waiting = fwd.upstreams[0].upstream.waiting
            await asyncio.wait_for(done, 10)
            return timers, waiting, results, fwd.inflight, fwd.upstreams[0].upstream.waiting
        finally:
            fwd.close()
            up.transport.close()

    timers, waiting, results, inflight, after = asyncio.run(main())
    assert waiting == 300 and timers == 1  # 300 queries waiting, one sweep timer
    assert len(results) == 300 and all("timed out after 0.2s" in r for r in results)
    assert inflight == 0 and after == 0


def test_max_concurrent_bounds_the_queries_in_flight_and_frees_them_on_timeout():
    async def main():
        loop = asyncio.get_running_loop()
        up = await scripted(lambda q: [])
        fwd = forwarder(up.port, timeout=0.2, max_concurrent=5)
        errors: list[str] = []
        try:
            for i in range(6):
                packet = query(f"n{i}.example.com")
                if i < 5:
                    fwd.submit(packet, parse_query(packet).qend, False, lambda reply, error: errors.append(error))
                    continue
                with pytest.raises(Overloaded):
                    fwd.submit(packet, parse_query(packet).qend, False, lambda reply, error: None)
            rejects = fwd.rejects
            deadline = loop.time() + 10
            while len(errors) < 5 and loop.time() < deadline:
                await asyncio.sleep(0.02)
            up.script = lambda q: [answer(q, "192.0.2.9")]
            reply = await asyncio.wait_for(fwd.forward(query("again.example.com"), False), 10)  # a slot is free
            return rejects, errors, reply
        finally:
            fwd.close()
            up.transport.close()

    rejects, errors, reply = asyncio.run(main())
    assert rejects == 1 and len(errors) == 5
    assert answers(dns.message.from_wire(reply)) == ["192.0.2.9"]


def test_expire_moves_new_queries_to_a_fresh_socket_and_closes_the_drained_one():
    async def main(expire: float):
        up = await scripted(lambda q: [answer(q)])
        fwd = forwarder(up.port, expire=expire)
        upstream = fwd.upstreams[0].upstream
        try:
            for i in range(3):
                await asyncio.wait_for(fwd.forward(query(f"q{i}.example.com"), False), 10)
            return [port for _, port in up.sources], len(upstream._channels)
        finally:
            fwd.close()
            up.transport.close()

    ports, open_sockets = asyncio.run(main(10.0))
    assert len(set(ports)) == 1 and open_sockets == 1  # one socket takes every query while it is fresh
    ports, open_sockets = asyncio.run(main(0.0))
    assert len(set(ports)) == 3  # expired at once: each query went out from a new source port
    assert open_sockets == 1  # and the answered ones were closed


def test_a_closed_forwarder_still_answers_the_queries_in_flight_then_closes_its_socket():
    """A reload replaces the forwarder: what it already sent is answered, nothing new is taken."""
    async def main():
        loop = asyncio.get_running_loop()
        held: list[tuple[bytes, tuple]] = []
        up = await scripted(lambda q: held.append(q) or [])  # answers later, when the test says so
        fwd = forwarder(up.port)
        upstream = fwd.upstreams[0].upstream
        try:
            asked = asyncio.ensure_future(fwd.forward(query(), False))
            deadline = loop.time() + 10
            while not held and loop.time() < deadline:
                await asyncio.sleep(0.01)
            fwd.close()
            sockets_while_waiting = len(upstream._channels)
            up.transport.sendto(answer(held[0], "192.0.2.44"), up.sources[0])
            reply = await asyncio.wait_for(asked, 10)
            with pytest.raises(UpstreamError, match="forwarder closed"):
                await asyncio.wait_for(fwd.forward(query("later.example.com"), False), 10)
            return reply, sockets_while_waiting, len(upstream._channels), fwd.upstreams[0].healthy
        finally:
            up.transport.close()

    reply, waiting_sockets, sockets_after, healthy = asyncio.run(main())
    assert answers(dns.message.from_wire(reply)) == ["192.0.2.44"]
    assert waiting_sockets == 1 and sockets_after == 0 and healthy


def test_one_forwarder_serves_successive_event_loops():
    """`kdns explain` runs an event loop per question on the server blocks' forwarder: each must be
    answered (the socket and sweep timer of an ended loop are never served again)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]

    def serve_one():
        data, addr = probe.recvfrom(4096)
        probe.sendto(answer(data, "192.0.2.55"), addr)

    fwd = forwarder(port)
    try:
        for _ in range(3):
            server = threading.Thread(target=serve_one, daemon=True)
            server.start()
            reply = asyncio.run(asyncio.wait_for(fwd.forward(query(), False), 10))
            assert answers(dns.message.from_wire(reply)) == ["192.0.2.55"]
            server.join(10)
    finally:
        fwd.close()
        probe.close()


def test_an_upstream_port_that_refuses_fails_the_query_without_waiting_for_the_timeout():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the kernel answers ICMP port unreachable

    async def main():
        fwd = forwarder(port, timeout=60)
        try:
            with pytest.raises(UpstreamError) as err:
                await asyncio.wait_for(fwd.forward(query(), False), 20)  # far below read_timeout
            return str(err.value)
        finally:
            fwd.close()

    assert "refused" in asyncio.run(main()).lower()


def test_queries_of_one_turn_are_sent_together_when_it_ends_and_fail_on_a_refusing_port():
    async def main():
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the upstream, read by hand
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        fwd = forwarder(sink.getsockname()[1], timeout=60)
        loop = asyncio.get_running_loop()
        try:
            futs = [loop.create_task(fwd.forward(query(f"n{i}.example.com", qid=i), False)) for i in range(5)]
            await asyncio.sleep(0)  # the tasks run and queue their datagrams
            assert fwd.upstreams[0].upstream.waiting == 5
            with pytest.raises(BlockingIOError):
                sink.recvfrom(512)  # nothing sent yet: the turn is not over
            got = []
            async with asyncio.timeout(20):
                while len(got) < 5:
                    try:
                        got.append(sink.recvfrom(512))
                    except BlockingIOError:
                        await asyncio.sleep(0.01)
            assert len({addr for _, addr in got}) == 1  # one socket
            for data, addr in got:
                sink.sendto(answer(data), addr)
            replies = await asyncio.wait_for(asyncio.gather(*futs), 20)
            assert [r[:2] for r in replies] == [bytes((0, i)) for i in range(5)]  # each its asker's ID
        finally:
            fwd.close()
            sink.close()

        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        # nothing listens: ICMP port unreachable, reported on the socket's next send or read (a socket holds
        # one such error at a time, so a query of the batch may only time out)
        probe.close()
        fwd = forwarder(port, timeout=2)
        try:
            results = await asyncio.wait_for(asyncio.gather(
                *(fwd.forward(query(f"r{i}.example.com", qid=i), False) for i in range(4)), return_exceptions=True), 20)
            assert all(isinstance(r, UpstreamError) for r in results), results
            assert "refused" in str(results[0]).lower() or "refused" in str(results[1]).lower()
        finally:
            fwd.close()

    asyncio.run(main())


def test_ignored_replies_are_exported_as_a_metric(tmp_path):
    with FakeUpstream({("example.com", "A"): ["93.184.215.14"]}) as up:
        text = ".:53 {\n  prometheus :9153\n  forward . UPSTREAM {\n    read_timeout 300ms\n  }\n}\n"
        with start(tmp_path, text, up) as kdns:
            assert kdns.query("x.mismatch").rcode() == dns.rcode.SERVFAIL
            assert kdns.metric("kdns_forward_ignored_replies_total", to=up.address,
                               reason="question does not match the query") == 1
            assert answers(kdns.query("example.com")) == ["93.184.215.14"]


# ---------------------------------------------------------------- the cache plugin's one walk


def responses() -> list[bytes]:
    out = []
    q = dns.message.make_query("multi.example.com", "A", use_edns=0, want_dnssec=True)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("multi.example.com.", 300, "IN", "A", "192.0.2.1", "192.0.2.2", "192.0.2.3"))
    r.answer.append(dns.rrset.from_text("multi.example.com.", 120, "IN", "AAAA", "2001:db8::1", "2001:db8::2"))
    out.append(r.to_wire())
    q = dns.message.make_query("www.example.com", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.com.", 40, "IN", "CNAME", "edge.example.net."))
    r.answer.append(dns.rrset.from_text("edge.example.net.", 20, "IN", "A", "198.51.100.1"))
    r.additional.append(dns.rrset.from_text("ns.example.net.", 99, "IN", "A", "198.51.100.53"))
    out.append(r.to_wire())
    q = dns.message.make_query("nx.example.com", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.authority.append(dns.rrset.from_text("example.com.", 900, "IN", "SOA", "ns. host. 1 7200 1800 86400 30"))
    out.append(r.to_wire())
    return out


@pytest.mark.parametrize("index", range(3), ids=["rotation-groups", "cname-additional", "nxdomain-soa"])
def test_the_one_walk_insert_finds_what_the_full_record_walk_finds(index):
    packet = responses()[index]
    offsets, answer_ttl, soa, groups = scan_response(packet)
    records = walk_records(packet)
    assert offsets == [(r.ttl_offset, int.from_bytes(packet[r.ttl_offset:r.ttl_offset + 4], "big"))
                       for r in records if r.rtype != 41]
    ttls = [t for (o, t), r in zip(offsets, [r for r in records if r.rtype != 41]) if r.section == 0]
    assert answer_ttl == (min(ttls) if ttls else None)
    assert groups == rotation_groups(packet)
    assert soa == (30 if index == 2 else None)  # min(SOA TTL 900, MINIMUM 30)


def _outcome(scan, packet: bytes, qend: int):
    try:
        return scan(packet, qend)
    except WireError as exc:
        return ("WireError", str(exc))


def test_the_one_answer_shortcut_finds_what_the_walk_finds_on_good_and_damaged_replies():
    """_scan answers the usual forwarded reply (one answer record, maybe a root OPT) without the record walk;
    on any packet -- these replies, and each damaged 200 ways (bytes changed, cut, appended) -- it must give
    what the walk gives (or the walk's own error)."""
    rng = random.Random(11)
    for i, (rdtype, rdata) in enumerate([("A", "192.0.2.1"), ("AAAA", "2001:db8::1"), ("TXT", '"x y"'),
                                         ("MX", "10 mx.example.net."), ("A", "198.51.100.7")] * 4):
        q = dns.message.make_query(f"n{i}.example.com", rdtype, use_edns=0 if i % 2 else None)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, (0, 5, 300, 86400)[i % 4], "IN", rdtype, rdata))
        good = r.to_wire()
        qend = 12 + len(q.question[0].name.to_wire()) + 4
        offsets, answer_ttl, soa, groups, top = _scan(good, qend)
        assert offsets == [(qend + 6, answer_ttl)] and top == answer_ttl and soa is None and groups == ()
        variants = [good[:qend + 2] + b"\x00\x29" + good[qend + 4:]]  # the answer record typed OPT
        if len(good) > qend + 30:  # with EDNS: the OPT's type, owner changed
            opt = len(good) - 11
            variants += [good[:opt + 2] + b"\x00\x01" + good[opt + 3:], good[:opt] + b"\xc0\x0c" + good[opt + 1:]]
        for packet in variants:
            assert _outcome(_scan, packet, qend) == _outcome(_walk, packet, qend), packet.hex()
        for _ in range(200):
            b = bytearray(good)
            for _ in range(rng.randint(1, 3)):
                op = rng.random()
                if op < 0.5:
                    b[rng.randrange(len(b))] = rng.randrange(256)
                elif op < 0.8:
                    b = b[:rng.randrange(12, len(b) + 1)]
                else:
                    b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 5)))
            packet = bytes(b)
            assert _outcome(_scan, packet, qend) == _outcome(_walk, packet, qend), packet.hex()


def test_the_one_walk_names_the_offset_of_a_cut_record():
    packet = responses()[0]
    with pytest.raises(WireError, match="offset"):
        scan_response(packet[:-7])


def test_a_full_cache_bucket_admits_a_name_from_its_second_asking_and_evicts_its_oldest_entries():
    """Within one eviction (1/32) of its capacity, storing an answer would evict others: an answer is then stored
    from its name's second asking only, so names asked once (a flood) neither push out nor cost a store."""
    cache = ResponseCache(CacheConfig(zones=[""], success_capacity=256))

    def put(i: int) -> bytes:
        q = dns.message.make_query(f"n{i}.example.com", "A")
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 600, "IN", "A", "192.0.2.1"))
        return cache.put(parse_query(q.to_wire()), r.to_wire(), f"n{i}.example.com")

    def cached(i: int) -> bytes | None:
        return cache.get(parse_query(dns.message.make_query(f"n{i}.example.com", "A").to_wire()))

    for i in range(1000):
        assert dns.message.from_wire(put(i)).answer[0].ttl == 600  # answered all the same
    stored = 256 - 256 // 32 + 1  # stored at once while more than one eviction away from the capacity
    # the rest were asked once: not stored (a doorkeeper false positive, ~0.1% each, may store one or two)
    assert 1000 - stored - 3 <= cache.not_admitted["success"] <= 1000 - stored
    assert cache.evictions["success"] == 0
    assert cached(0) is not None and cached(stored - 1) is not None
    assert sum(cached(i) is not None for i in range(stored, 1000)) == 1000 - stored - cache.not_admitted["success"]
    for i in range(900, 1000):  # asked again: admitted, the oldest entries make room
        put(i)
    assert all(cached(i) is not None for i in range(900, 1000))
    assert 200 <= cache.entries("success") <= 256
    assert cache.evictions["success"] >= stored + 100 - 256
    assert cached(0) is None
    assert not dns.message.from_wire(cached(999)).flags & dns.flags.TC
