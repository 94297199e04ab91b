"""The direct forward path (QueryHandler.fast): a UDP query for an outside name that the `cache`
plugin misses goes upstream as soon as it is read and is answered from the forwarder's callback. Over
real loopback sockets, against a real upstream, its answers and every counter (coredns_dns_*,
coredns_forward_*, coredns_cache_*, kdns_*) equal the full path's, query by query; names it must not
take (cluster zones, the loop probe, AXFR, TCP) go the full path; max_concurrent and upstream failures
answer as before; and the kubeadm Corefile as deployed takes it (kdns_forward_direct_queries_total)."""

from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.query
import dns.rcode
import pytest

from builders import forward_handler
from harness import EXAMPLE, answers, wait_until
from test_corefile import KUBEADM_PLAIN_CACHE
from test_dropin import start
from test_udp_reader import _close, _serve
from upstream import FakeUpstream

from kdns.server import QueryHandler

RECORDS = {
    ("a1.example.com", "A"): ["192.0.2.1"],
    ("a2.example.com", "AAAA"): ["2001:db8::2"],
    ("x.tc", "A"): ["192.0.2.9"],
    ("big.example.com", "TXT"): ['"' + "x" * 200 + '"'] * 4,
    ("big2.example.com", "TXT"): ['"' + "y" * 200 + '"'] * 4,
}


def _handler(port: int, direct: bool, options: str = "max_concurrent 1000") -> QueryHandler:
    """The kubeadm `.` block in-process; `direct=False`: the same with the direct path off (the full path)."""
    handler = forward_handler(port, options)
    assert handler.forward_direct is not None  # the kubeadm block qualifies
    if not direct:
        handler.forward_direct = None
    return handler


def _stop(served: list, *handlers: QueryHandler) -> None:
    for udp, tcp_server, client in served:
        _close(udp, tcp_server, client)
    for handler in handlers:
        handler.blocks[0].forwarder.close()


def _counters(handler: QueryHandler) -> dict:
    """Everything the two paths must count alike (durations aside: they are timings), folded first as a scrape
    folds them (DnsMetrics.folded: the front answers', the direct path's Tally)."""
    handler.flush()
    m = handler.metrics
    dns_ = {}
    for key, n in m.raw.items():
        dns_[key[:-1]] = dns_.get(key[:-1], 0) + n  # the label set and size buckets, not the duration bucket
    sizes = {k: v[1:] for k, v in m.sums.items()}  # request and response bytes
    upstream = {}
    for (to, rcode, _), n in m.upstream_raw.items():
        upstream[(to, rcode)] = upstream.get((to, rcode), 0) + n
    (block,) = handler.blocks
    cache = block.cache
    stats = {k: v for k, v in handler.stats.items() if k != "forward_direct" and v}
    return {"dns": dns_, "sizes": sizes, "upstream": upstream, "stats": stats, "panics": m.panics,
            "cache": (dict(cache.hits), cache.misses, cache.requests, dict(cache.evictions),
                      cache.entries("success"), cache.entries("denial")),
            "rejects": block.forwarder.rejects, "answers": len(handler.cache)}


def _normal(wire: bytes) -> dns.message.Message:
    """A reply with its TTLs zeroed (a cached one counts down by the second)."""
    msg = dns.message.from_wire(wire, ignore_trailing=True)
    for section in (msg.answer, msg.authority, msg.additional):
        for rrset in section:
            rrset.ttl = 0
    return msg


async def _ask(client: socket.socket, wire: bytes, timeout: float = 10.0) -> bytes:
    client.send(wire)
    async with asyncio.timeout(timeout):
        return await asyncio.get_running_loop().sock_recv(client, 65535)


def _wire(name: str, rdtype: str = "A", qid: int = 4242, **kwargs) -> bytes:
    q = dns.message.make_query(name, rdtype, **kwargs)
    q.id = qid
    return q.to_wire()


# (name, type, make_query options): new names of every outcome, repeats served by the cache plugin,
# names the direct path must leave to the full path
QUERIES = [
    ("a1.example.com", "A", {}),
    ("A1.Example.COM", "A", {}),  # a cache plugin hit, the asker's case
    ("a2.example.com", "AAAA", {"use_edns": 0, "want_dnssec": True}),
    ("nx1.example.com", "A", {}),  # NXDOMAIN with SOA: a denial entry
    ("nx1.example.com", "A", {}),
    ("x.servfail", "A", {}),  # the upstream says SERVFAIL
    ("x.tc", "A", {}),  # truncated by the upstream: retried over TCP
    ("big.example.com", "TXT", {}),  # too big for 512 bytes: truncated to the client, cached whole
    ("big.example.com", "TXT", {"use_edns": 0, "payload": 4096}),
    ("big2.example.com", "TXT", {"use_edns": 0, "payload": 1232}),
    ("x.junk", "A", {}),  # garbage with the right ID: ignored, then the timeout's SERVFAIL
    ("y.silent", "A", {}),  # never answered: SERVFAIL after the timeout
    ("1.0.96.10.in-addr.arpa", "PTR", {}),  # a cluster zone: the full path
    ("kubernetes.default.svc.cluster.local", "A", {}),
    ("nope.cluster.local", "A", {}),
    ("axfr.example.com", "AXFR", {}),  # refused
    ("nx2.example.com", "MX", {"use_edns": 0, "payload": 512}),
    ("v1.example.com", "A", {"use_edns": 1}),  # EDNS version 1: BADVERS from the full parser
    ("ch.example.com", "A", {"rdclass": "CH"}),  # class CH: the full path refuses it
    ("nx3.example.com", "ANY", {"rdclass": "ANY"}),  # class ANY is forwarded
]


def test_direct_path_answers_and_counts_as_the_full_path():
    with FakeUpstream(RECORDS, ttl=60) as upstream:
        async def main():
            options = "max_concurrent 1000\n       read_timeout 1s"
            direct, full = _handler(upstream.port, True, options), _handler(upstream.port, False, options)
            served = [await _serve(direct), await _serve(full)]
            try:
                for i, (name, rdtype, opts) in enumerate(QUERIES):
                    wire = _wire(name, rdtype, qid=1000 + i, **opts)
                    got, want = await asyncio.gather(_ask(served[0][2], wire), _ask(served[1][2], wire))
                    assert _normal(got) == _normal(want), (name, rdtype)
                    assert len(got) == len(want), (name, rdtype)
                    assert got[:2] == wire[:2]
                    assert _counters(direct) == _counters(full), (name, rdtype)
                # the direct path took every new outside name the cache plugin missed, and nothing else
                assert direct.stats["forward_direct"] == 12
                assert full.stats["forward_direct"] == 0
                assert direct.stats["forwarded"] == 12
                errors = direct.blocks[0].log.stream.getvalue()
                assert "plugin/errors" in errors and "y.silent. A" in errors and "x.servfail" not in errors
            finally:
                _stop(served, direct, full)

        asyncio.run(main())


def test_direct_path_refuses_over_max_concurrent_and_serves_after():
    with FakeUpstream(RECORDS, ttl=60) as upstream:
        async def main():
            handler = _handler(upstream.port, True, "max_concurrent 1\n       read_timeout 1s")
            served = [await _serve(handler)]
            client = served[0][2]
            try:
                client.send(_wire("first.silent", qid=1))  # holds the only slot until it times out
                refused = dns.message.from_wire(await _ask(client, _wire("second.example.com", qid=2)))
                assert refused.id == 2 and refused.rcode() == dns.rcode.REFUSED
                assert handler.blocks[0].forwarder.rejects == 1
                timed_out = dns.message.from_wire(await asyncio.get_running_loop().sock_recv(client, 65535))
                assert timed_out.id == 1 and timed_out.rcode() == dns.rcode.SERVFAIL
                ok = dns.message.from_wire(await _ask(client, _wire("a1.example.com", qid=3)))
                assert ok.id == 3 and answers(ok) == ["192.0.2.1"]
                assert handler.stats["forward_direct"] == 3 and handler.stats["forwarded"] == 2
                assert handler.stats["upstream_errors"] == 1
                dns_ = {(k[6], k[7]): n for k, n in handler.metrics.raw.items()}  # (rcode, plugin)
                assert dns_ == {(5, "forward"): 1, (2, "forward"): 1, (0, "forward"): 1}
            finally:
                _stop(served, handler)

        asyncio.run(main())


def test_loop_probe_and_tcp_take_the_full_path():
    with FakeUpstream(RECORDS, ttl=60) as upstream:
        async def main():
            handler = _handler(upstream.port, True)
            handler.blocks[0].loop_probe = "1.2"  # the loop check running: its probe name must be seen
            served = [await _serve(handler)]
            client = served[0][2]
            try:
                reply = dns.message.from_wire(await _ask(client, _wire("a1.example.com", qid=5)))
                assert answers(reply) == ["192.0.2.1"] and handler.stats["forward_direct"] == 0
                handler.blocks[0].loop_probe = ""  # the check is over
                reply = dns.message.from_wire(await _ask(client, _wire("nx9.example.com", qid=6)))
                assert reply.rcode() == dns.rcode.NXDOMAIN and handler.stats["forward_direct"] == 1
                port = client.getpeername()[1]
                tcp = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: dns.query.tcp(dns.message.make_query("t1.example.com", "A"), "127.0.0.1", 10, port))
                assert tcp.rcode() == dns.rcode.NXDOMAIN and handler.stats["forward_direct"] == 1  # TCP: full path
                assert handler.stats["forwarded"] == 3
            finally:
                _stop(served, handler)

        asyncio.run(main())


def test_direct_path_fails_over_to_the_next_upstream_as_the_full_path_does():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()[1]
    probe.close()  # nothing listens there: refused
    with FakeUpstream(RECORDS, ttl=60) as upstream:
        async def main():
            options = "policy sequential\n       max_fails 0"
            handlers = [forward_handler(dead, options, f"127.0.0.1:{upstream.port}") for _ in range(2)]
            handlers[1].forward_direct = None  # the full path
            served = [await _serve(h) for h in handlers]
            try:
                for i in range(3):
                    wire = _wire("a1.example.com" if i == 0 else f"nx{i}.fail.example.com", qid=7000 + i)
                    got, want = await asyncio.gather(_ask(served[0][2], wire), _ask(served[1][2], wire))
                    assert _normal(got) == _normal(want)
                    assert dns.message.from_wire(got).rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
                assert handlers[0].stats["forward_direct"] == 3 and handlers[1].stats["forward_direct"] == 0
                assert [h.blocks[0].forwarder.upstreams[0].fails for h in handlers] == [3, 3]  # each refused first
                assert _counters(handlers[0]) == _counters(handlers[1])
            finally:
                _stop(served, *handlers)

        asyncio.run(main())


@pytest.mark.parametrize("corefile, direct", [
    (KUBEADM_PLAIN_CACHE, True),
    (KUBEADM_PLAIN_CACHE.replace("    errors\n", "    errors\n    log\n"), False),  # a query log: the full path
    (KUBEADM_PLAIN_CACHE.replace("forward . /etc/resolv.conf {", "forward . /etc/resolv.conf {\n       except corp.test"),
     False),  # forward does not take every name
])
def test_kubeadm_corefile_takes_the_direct_path(tmp_path, corefile, direct):
    with FakeUpstream(RECORDS, ttl=60) as upstream, \
            start(tmp_path, corefile, upstream, "--manifests", EXAMPLE) as kdns:
        # the loop check's probe goes through first; until it is answered, outside names take the full path
        wait_until(lambda: any(t == "HINFO" for _, _, t in upstream.queries), what="the loop check's probe upstream")
        if direct:
            warm = iter(range(1000))
            wait_until(lambda: kdns.query(f"warm{next(warm)}.example.com") and
                       kdns.metric("kdns_forward_direct_queries_total"), what="the loop check to end")
        before = kdns.metric("kdns_forward_direct_queries_total") or 0
        for i in range(20):
            reply = kdns.query(f"new{i}.example.com")
            assert reply.rcode() == dns.rcode.NXDOMAIN
        assert answers(kdns.query("a1.example.com")) == ["192.0.2.1"]
        assert answers(kdns.query("x.tc")) == ["192.0.2.9"]
        assert kdns.query("x.servfail").rcode() == dns.rcode.SERVFAIL
        assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
        after = kdns.metric("kdns_forward_direct_queries_total") or 0
        assert after - before == (23 if direct else 0)
        assert kdns.metric("coredns_cache_misses_total", server="dns://:53") >= 23
        assert kdns.metric("coredns_forward_requests_total", to=upstream.address) >= 23
