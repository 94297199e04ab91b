"""Forwarded answers from the `cache` plugin, served on the handler's fast path, through the kubeadm
Corefile as kind deploys it: TTLs count down, the asker's ID/RD/CD/case come back, loadbalance
rotates, an answer too big for UDP is truncated, and chains that must not take the shortcut
(hosts before cache) still answer from hosts."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from harness import EXAMPLE, answers, wait_until
from test_corefile import KUBEADM_BLOCK_CACHE
from test_dropin import start
from upstream import FakeUpstream

UPSTREAM_TTL = 60


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream({
        ("www.example.com", "A"): ["93.184.215.15"],
        ("counted.example.com", "A"): ["192.0.2.7"],
        ("fronted.example.com", "A"): ["192.0.2.17"],
        ("multi.example.com", "A"): ["192.0.2.1", "192.0.2.2", "192.0.2.3"],
        ("big.example.com", "TXT"): ['"' + "x" * 200 + '"'] * 4,
        ("hosted.example.com", "A"): ["192.0.2.99"],
        ("77.0.96.10.in-addr.arpa", "PTR"): ["outside.example.com."],
    }, ttl=UPSTREAM_TTL) as up:
        yield up


@pytest.fixture(scope="module")
def kdns(tmp_path_factory, upstream):
    with start(tmp_path_factory.mktemp("fc"), KUBEADM_BLOCK_CACHE, upstream, "--manifests", EXAMPLE) as proc:
        yield proc


def ttl_of(reply) -> int:
    return reply.answer[0].ttl


def test_cached_forwarded_answer_counts_down_and_hits_the_cache(kdns, upstream):
    first = kdns.query("www.example.com")
    assert answers(first) == ["93.184.215.15"] and ttl_of(first) <= UPSTREAM_TTL
    asked = upstream.count("www.example.com", "A")
    hits = kdns.metric("coredns_cache_hits_total", server="dns://:53", type="success") or 0
    wait_until(lambda: ttl_of(kdns.query("www.example.com")) < ttl_of(first), timeout=10,
               what="the cached TTL to count down")
    again = kdns.query("www.example.com")
    assert answers(again) == ["93.184.215.15"] and again.rcode() == dns.rcode.NOERROR
    assert upstream.count("www.example.com", "A") == asked  # never asked again
    assert kdns.metric("coredns_cache_hits_total", server="dns://:53", type="success") >= hits + 2


def test_forwarded_queries_and_upstream_failures_are_counted(kdns, upstream):
    forwarded = kdns.metric("kdns_forwarded_queries_total") or 0
    errors = kdns.metric("kdns_upstream_errors_total") or 0
    assert answers(kdns.query("counted.example.com")) == ["192.0.2.7"]
    wait_until(lambda: kdns.metric("kdns_forwarded_queries_total") == forwarded + 1, what="one forwarded query")
    assert kdns.metric("kdns_upstream_errors_total") == errors
    kdns.query("counted.example.com")  # from the cache plugin: not forwarded again
    assert kdns.query("x.servfail").rcode() == dns.rcode.SERVFAIL  # the upstream says SERVFAIL
    wait_until(lambda: kdns.metric("kdns_upstream_errors_total") == errors + 1, what="one upstream failure")
    assert kdns.metric("kdns_forwarded_queries_total") == forwarded + 2


def test_answers_of_a_hot_forwarded_name_count_as_cache_hits_and_dns_requests(kdns, upstream):
    # asked 40 times in a row: after the first few the UDP reader answers it from a front (TimedFront),
    # whose counts the scrape folds into the cache plugin's and the server's metrics
    def sample(name, **labels):
        return kdns.metric(name, server="dns://:53", **labels) or 0

    before = (sample("coredns_cache_hits_total", type="success"), sample("coredns_cache_requests_total"),
              sample("coredns_dns_requests_total", zone=".", proto="udp", family="1", type="A"),
              sample("coredns_dns_responses_total", zone=".", rcode="NOERROR", plugin="cache"))
    replies = [kdns.query("fronted.example.com") for _ in range(40)]
    assert all(answers(r) == ["192.0.2.17"] for r in replies)
    assert [ttl_of(r) for r in replies] == sorted((ttl_of(r) for r in replies), reverse=True)  # never back up
    assert upstream.count("fronted.example.com", "A") == 1
    after = (sample("coredns_cache_hits_total", type="success"), sample("coredns_cache_requests_total"),
             sample("coredns_dns_requests_total", zone=".", proto="udp", family="1", type="A"),
             sample("coredns_dns_responses_total", zone=".", rcode="NOERROR", plugin="cache"))
    assert [a - b for a, b in zip(after, before)] == [39, 40, 40, 39]


def test_cached_answer_carries_the_askers_id_flags_and_case(kdns):
    kdns.query("www.example.com")
    msg = dns.message.make_query("WwW.ExAmPlE.CoM", "A")
    msg.flags &= ~dns.flags.RD
    msg.flags |= dns.flags.CD
    reply = dns.query.udp(msg, "127.0.0.1", port=kdns.port, timeout=3)
    assert reply.id == msg.id and not reply.flags & dns.flags.RD and reply.flags & dns.flags.CD
    assert str(reply.question[0].name) == "WwW.ExAmPlE.CoM."
    assert answers(reply) == ["93.184.215.15"]


def test_loadbalance_rotates_cached_forwarded_answers(kdns):
    kdns.query("multi.example.com")  # forwarded and cached; the following come from the cache
    orders = {tuple(rd.to_text() for rd in kdns.query("multi.example.com").answer[0]) for _ in range(12)}
    assert all(sorted(o) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"] for o in orders)
    assert len(orders) > 1


def test_cached_answer_too_big_for_udp_is_truncated_then_whole_over_tcp(kdns):
    full = kdns.query("big.example.com", "TXT", use_edns=0, payload=4096)
    assert not full.flags & dns.flags.TC and len(full.answer[0]) == 1  # four equal strings: one record
    small = dns.query.udp(dns.message.make_query("big.example.com", "TXT", use_edns=False), "127.0.0.1",
                          port=kdns.port, timeout=3)
    assert small.flags & dns.flags.TC and not small.answer
    tcp = kdns.query("big.example.com", "TXT", tcp=True, use_edns=False)
    assert not tcp.flags & dns.flags.TC and tcp.answer


def test_hosts_before_cache_still_wins(tmp_path, upstream):
    text = KUBEADM_BLOCK_CACHE.replace("    prometheus :9153", "    hosts {\n        192.0.2.50 hosted.example.com\n"
                                                               "        fallthrough\n    }\n    prometheus :9153")
    assert "hosts {" in text
    with start(tmp_path, text, upstream, "--manifests", EXAMPLE) as proc:
        for _ in range(3):
            assert answers(proc.query("hosted.example.com")) == ["192.0.2.50"]
        assert answers(proc.query("www.example.com")) == ["93.184.215.15"]
        assert answers(proc.query("www.example.com")) == ["93.184.215.15"]


def test_reverse_name_that_fell_through_is_answered_by_the_cluster_once_it_exists(tmp_path, upstream):
    """kubeadm's `fallthrough in-addr.arpa ip6.arpa`: a PTR the cluster does not have is forwarded and
    cached; when a service takes that IP, the kubernetes plugin answers at once (it looks first)."""
    manifests = tmp_path / "cluster.yaml"
    manifests.write_text(open(EXAMPLE).read())
    with start(tmp_path, KUBEADM_BLOCK_CACHE, upstream, "--manifests", str(manifests)) as proc:
        for _ in range(3):
            assert answers(proc.query("77.0.96.10.in-addr.arpa", "PTR")) == ["outside.example.com."]
        manifests.write_text(open(EXAMPLE).read() + """
---
apiVersion: v1
kind: Service
metadata: {name: late, namespace: default}
spec: {clusterIP: 10.96.0.77, ports: [{port: 80}]}
""")
        wait_until(lambda: answers(proc.query("77.0.96.10.in-addr.arpa", "PTR"))
                   == ["late.default.svc.cluster.local."], timeout=15, what="the cluster's PTR")


def test_a_flood_of_names_asked_once_leaves_the_cached_answers_in_place(tmp_path, upstream):
    """The cache plugin full (buckets of 64): new names (NXDOMAIN upstream) asked once are answered but not stored --
    nothing is evicted, so the oldest cached denial stays and is not asked upstream again (the bucket would have
    evicted it first); a name asked twice is stored (kdns_cache_not_admitted_total counts the others)."""
    small = KUBEADM_BLOCK_CACHE.replace("    cache 30 {\n", "    cache 30 {\n       success 64\n       denial 64\n")
    assert small != KUBEADM_BLOCK_CACHE
    with start(tmp_path, small, upstream, "--manifests", EXAMPLE) as kdns:
        assert kdns.query("hot.example.com").rcode() == dns.rcode.NXDOMAIN  # the oldest entry of the bucket
        asked = upstream.count("hot.example.com", "A")
        for i in range(60):  # fill the denial bucket: stored at once while it has room
            assert kdns.query(f"fill{i}.example.com").rcode() == dns.rcode.NXDOMAIN
        for i in range(150):
            assert kdns.query(f"flood{i}.example.com").rcode() == dns.rcode.NXDOMAIN
        not_admitted = kdns.metric("kdns_cache_not_admitted_total", server="dns://:53", type="denial")
        assert not_admitted >= 150 - 3  # a doorkeeper false positive (~0.01% each) may store one
        assert (kdns.metric("coredns_cache_evictions_total", server="dns://:53", type="denial") or 0) == 0
        assert kdns.query("hot.example.com").rcode() == dns.rcode.NXDOMAIN
        assert upstream.count("hot.example.com", "A") == asked  # still cached
        for _ in range(2):
            assert kdns.query("twice.example.com").rcode() == dns.rcode.NXDOMAIN
        asked_twice = upstream.count("twice.example.com", "A")
        assert kdns.query("twice.example.com").rcode() == dns.rcode.NXDOMAIN  # stored on its second asking
        assert upstream.count("twice.example.com", "A") == asked_twice
