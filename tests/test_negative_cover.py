"""The answer cache's negative cover: once the resolver has answered NXDOMAIN for <label>.<ns>.svc.<zone>,
a never-seen name of that shape in that namespace is answered from one cache entry after the resolver
confirms it has no service (Resolver.no_service). Every answer must be byte-identical to the one the
full chain gives without the cover, through changes, and the cover must stay off wherever another
plugin could answer such a name differently."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter

import dns.message
import dns.rcode
import dns.rdatatype

from builders import clusterip, handler_for, namespace, no_cover

from kdns.transport import bind


def _objects():
    return [namespace("shop"), namespace("data"), clusterip("shop", "web", "10.96.0.10"),
            clusterip("data", "db", "10.96.0.20")]


def _wire(name: str, rdtype: str = "A", qid: int = 1, **kwargs) -> bytes:
    msg = dns.message.make_query(name, rdtype, **kwargs)
    msg.id = qid
    return msg.to_wire()


def _questions(rng: random.Random, n: int) -> list[bytes]:
    names = ["web", "db", "nope", "Web", "WEB", "a.b", "x-1", "_http", "web-x"]
    spaces = ["shop", "data", "gone", "SHOP"]
    types = ["A", "AAAA", "SRV", "TXT", "ANY", "AXFR", "MX", "PTR"]
    out = []
    for i in range(n):
        label = rng.choice(names) if rng.random() < 0.6 else f"r{rng.randrange(10_000)}"
        name = f"{label}.{rng.choice(spaces)}.svc.cluster.local"
        edns = rng.random() < 0.5
        out.append(_wire(name, rng.choice(types), qid=i & 0xFFFF, use_edns=0 if edns else None,
                         want_dnssec=edns and rng.random() < 0.5))
    return out


def _serial_masked(wire: bytes) -> bytes:
    """The answer with its SOA serial zeroed: a cached negative answer keeps the serial it was made
    with (the index's serial moves with every change; nothing relies on it), a fresh one has the new."""
    msg = dns.message.from_wire(wire)
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            items = [rd.replace(serial=0) for rd in rrset]
            rrset.clear()
            for rd in items:
                rrset.add(rd)
    return msg.to_wire()


def test_answers_equal_the_full_chain_through_changes():
    rng = random.Random(7)
    index_a, with_cover = handler_for(*_objects())
    index_b, reference = handler_for(*_objects())
    no_cover(reference)  # the reference the cover must equal
    client = ("10.0.0.1", 4000)
    changes = [
        lambda ix: ix.upsert(clusterip("shop", "nope", "10.96.0.30")),  # a name answered NXDOMAIN appears
        lambda ix: ix.upsert(namespace("gone")),
        lambda ix: ix.upsert(clusterip("gone", "web", "10.96.0.40")),
        lambda ix: ix.remove(clusterip("shop", "web", "10.96.0.10")),
    ]
    covered_before = 0
    for step in range(len(changes) + 1):
        for q in _questions(rng, 400):
            mine, theirs = with_cover.handle(q, False, client), reference.handle(q, False, client)
            assert mine == theirs or (len(mine) == len(theirs) and _serial_masked(mine) == _serial_masked(theirs)), \
                (step, dns.message.from_wire(q).question)
        covered = with_cover.stats["negative_covered"]
        assert covered > covered_before  # the cover answered some of this round's names
        covered_before = covered
        if step < len(changes):
            changes[step](index_a)
            changes[step](index_b)
    assert reference.stats["negative_covered"] == 0


def test_a_name_that_appears_is_answered_at_once():
    index, handler = handler_for(*_objects())
    client = ("10.0.0.1", 4000)
    for i in range(3):
        handler.handle(_wire(f"r{i}.shop.svc.cluster.local"), False, client)
    assert handler.stats["negative_covered"] == 2  # the first NXDOMAIN made the cover
    index.upsert(clusterip("shop", "api", "10.96.0.50"))
    reply = dns.message.from_wire(handler.handle(_wire("api.shop.svc.cluster.local"), False, client))
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == "10.96.0.50"
    index.remove(namespace("shop"))  # the namespace's dependants go, the cover with them
    assert handler.cache.peek((b"\x04shop\x03svc\x07cluster\x05local\x00", 1, False, False)) is None


def test_no_cover_where_a_plugin_could_answer_differently():
    from kdns.hosts import Hosts

    _, handler = handler_for(*_objects())
    block = handler.blocks[0]
    block.hosts = Hosts.__new__(Hosts)  # any hosts plugin: its file may name any such name
    client = ("10.0.0.1", 4000)
    block.hosts.covers = lambda name: False
    for i in range(3):
        handler.handle(_wire(f"r{i}.shop.svc.cluster.local"), False, client)
    assert handler.stats["negative_covered"] == 0 and len(handler.cache) == 0

    _, handler = handler_for(*_objects())
    handler.blocks[0].port_zones = ("", "cluster.local", "web2.shop.svc.cluster.local")  # a zone inside
    for i in range(3):
        handler.handle(_wire(f"r{i}.shop.svc.cluster.local"), False, client)
    assert handler.stats["negative_covered"] == 0


def test_covered_answers_over_a_real_socket():
    async def main():
        index, handler = handler_for(*_objects())
        udp, tcp_server, _, port = await bind(handler, handler.log, "127.0.0.1", 0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        client.connect(("127.0.0.1", port))
        loop = asyncio.get_running_loop()
        try:
            for i in range(20):
                name = f"Flood{i}.shop.svc.cluster.local"
                client.send(_wire(name, qid=i))
                async with asyncio.timeout(10):
                    reply = dns.message.from_wire(await loop.sock_recv(client, 65535))
                assert reply.id == i and reply.rcode() == dns.rcode.NXDOMAIN
                assert str(reply.question[0].name) == name + "."
                assert reply.authority[0][0].mname.to_text() == "ns.dns.cluster.local."
            assert handler.stats["negative_covered"] == 19
        finally:
            client.close()
            udp.close()
            tcp_server.close()

    asyncio.run(main())


def test_kdns_counts_covered_answers():
    from harness import EXAMPLE, KdnsProcess, wait_until

    with KdnsProcess("--manifests", EXAMPLE, "--metrics-listen", "127.0.0.1:0") as kdns:
        for i in range(3):
            assert kdns.query(f"missing{i}.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        wait_until(lambda: kdns.metric("kdns_negative_cover_answers_total") == 2, what="2 covered answers counted")


def test_a_bug_under_the_cover_costs_one_servfail():
    _, handler = handler_for(*_objects())
    client = ("10.0.0.1", 4000)
    handler.handle(_wire("r0.shop.svc.cluster.local"), False, client)  # the cover is made

    def broken(*args):
        raise RuntimeError("boom")

    handler.blocks[0].resolver.covered_nxdomain = broken
    reply = dns.message.from_wire(handler.handle(_wire("r1.shop.svc.cluster.local", qid=9), False, client))
    assert reply.id == 9 and reply.rcode() == dns.rcode.SERVFAIL
    assert handler.stats["internal_errors"] == 1 and "boom" in handler.log.stream.getvalue()
    assert handler.handle(_wire("web.shop.svc.cluster.local"), False, client)  # and it goes on serving


def test_names_of_one_length_are_answered_from_the_covers_shape():
    """Under a cover, the NXDOMAIN of names whose question is as long as one answered since the last index
    change is that answer with the question written in (NegativeCover.shapes): exact, current SOA serial,
    and never for a name that has a service."""
    index, handler = handler_for(*_objects())
    ref_index, reference = handler_for(*_objects())
    no_cover(reference)
    client = ("10.0.0.1", 4000)
    resolver = handler.blocks[0].resolver
    real = resolver.covered_nxdomain
    handler.observe = reference.observe = True

    def same(q: bytes) -> bytes:
        mine, theirs = handler.handle(q, False, client), reference.handle(q, False, client)
        assert _serial_masked(mine) == _serial_masked(theirs), dns.message.from_wire(q).question
        reply = dns.message.from_wire(mine)
        assert not reply.authority or reply.authority[0][0].serial == index.serial  # the current one
        return mine

    for i in range(2):  # r0 makes the cover, r1 the shape of its length
        same(_wire(f"r{i}.shop.svc.cluster.local"))

    def unused(*args):
        raise AssertionError("the shape should have answered")

    resolver.covered_nxdomain = unused
    for i in range(2, 10):
        if i % 2:  # EDNS: another cover key (R3 makes it, R5 its shape), left to the resolver here
            resolver.covered_nxdomain = real
        same(_wire(f"R{i}.shop.svc.cluster.local", "AAAA" if i % 4 == 0 else "A", qid=100 + i,
                   use_edns=0 if i % 2 else None))
        resolver.covered_nxdomain = unused
    assert handler.stats["negative_covered"] == 8 and handler.stats["internal_errors"] == 0

    for ix in (index, ref_index):
        ix.upsert(clusterip("data", "db2", "10.96.0.21"))  # another namespace: the cover stays, the serial moves
        ix.upsert(clusterip("shop", "r7", "10.96.0.27"))
    resolver.covered_nxdomain = real
    for name in ("r3", "r4", "r5"):  # the first rebuilds the shape with the new serial
        same(_wire(f"{name}.shop.svc.cluster.local"))
    reply = dns.message.from_wire(same(_wire("r7.shop.svc.cluster.local")))
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == "10.96.0.27"

    def counted(h) -> Counter:  # coredns_dns_* label sets and sizes; the duration bucket left out (timing)
        out = Counter()
        for labels, n in h.metrics.raw.items():
            out[labels[:-1]] += n
        return out

    assert counted(handler) == counted(reference) and sum(counted(handler).values()) == 14


def test_the_reader_answers_covered_names_from_a_cover_front():
    """Over a real socket, once a covered name of one length has been answered from its shape, later names
    asked alike (same header, length, rest of the question) are answered by the UDP reader from the cover's
    front: the full chain's answer with the current serial, counted as covered in the stats and metrics,
    never for a name that gained a service, and gone with the cover."""
    async def main():
        index, handler = handler_for(*_objects())
        ref_index, reference = handler_for(*_objects())
        no_cover(reference)
        handler.observe = reference.observe = True
        udp, tcp_server, _, port = await bind(handler, handler.log, "127.0.0.1", 0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        client.connect(("127.0.0.1", port))
        loop = asyncio.get_running_loop()
        asked = 0

        async def ask(label: str, qid: int) -> dns.message.Message:
            nonlocal asked
            q = _wire(f"{label}.shop.svc.cluster.local", qid=qid)
            client.send(q)
            async with asyncio.timeout(10):
                mine = await loop.sock_recv(client, 65535)
            asked += 1
            theirs = reference.handle(q, False, ("127.0.0.1", 1))
            assert _serial_masked(mine) == _serial_masked(theirs), label
            reply = dns.message.from_wire(mine)
            assert reply.id == qid and (not reply.authority or reply.authority[0][0].serial == index.serial)
            return reply

        try:
            for i in range(40):
                await ask(f"Q{i:03d}", i)  # Q000 makes the cover, Q001 its shape, Q002 the cover front
            fronts = handler.cache.cover_fronts[0]
            assert len(fronts) == 1 and next(iter(fronts.values())).n > 0  # the reader answered from it
            for ix in (index, ref_index):
                ix.upsert(clusterip("data", "db2", "10.96.0.21"))  # the serial moves; the cover stays
                ix.upsert(clusterip("shop", "q100", "10.96.0.27"))
            for i in [*range(101, 110), 100]:  # q100 last: asked once the front has the new serial
                reply = await ask(f"q{i}", i)
                assert (reply.rcode() == dns.rcode.NOERROR) == (i == 100)
            handler.flush()
            assert handler.stats["negative_covered"] == 39 + 9 and handler.stats["queries_udp"] == asked

            def counted(h) -> Counter:
                out = Counter()
                for labels, n in h.metrics.raw.items():
                    out[labels[:-1]] += n
                return out

            assert counted(handler) == counted(reference)
            index.remove(namespace("shop"))  # the cover goes, its fronts with it
            assert not fronts
        finally:
            client.close()
            udp.close()
            tcp_server.close()

    asyncio.run(main())
