"""Truncation and EDNS payload sizes, and the --upstream forwarder / ExternalName chase, with real sockets."""

from __future__ import annotations


import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from harness import KdnsProcess, answers
from upstream import FakeUpstream

N_ENDPOINTS = 120


@pytest.fixture(scope="module")
def big_cluster(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.yaml"
    endpoints = "\n".join(f"- addresses: [10.244.{i // 200}.{i % 200 + 1}]" for i in range(N_ENDPOINTS))
    path.write_text(f"""\
apiVersion: v1
kind: Service
metadata: {{name: big, namespace: load}}
spec:
  clusterIP: None
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: big-1, namespace: load, labels: {{kubernetes.io/service-name: big}}}}
addressType: IPv4
endpoints:
{endpoints}
---
apiVersion: v1
kind: Service
metadata: {{name: payments, namespace: shop}}
spec: {{type: ExternalName, externalName: payments.example.com}}
---
apiVersion: v1
kind: Service
metadata: {{name: nowhere, namespace: shop}}
spec: {{type: ExternalName, externalName: gone.example.com}}
""")
    return str(path)


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream({
        ("example.com", "A"): ["93.184.215.14"],
        ("payments.example.com", "A"): ["192.0.2.10"],
        ("payments.example.com", "AAAA"): ["2001:db8::10"],
        ("many.tc", "A"): [f"192.0.2.{i}" for i in range(1, 60)],
    }) as up:
        yield up


@pytest.fixture(scope="module")
def kdns(big_cluster, upstream):
    with KdnsProcess("--manifests", big_cluster, "--upstream", upstream.address) as proc:
        yield proc


def test_udp_without_edns_is_truncated_at_512(kdns):
    msg = dns.message.make_query("big.load.svc.cluster.local", "A", use_edns=False)
    reply = dns.query.udp(msg, "127.0.0.1", port=kdns.port, timeout=3)
    assert reply.flags & dns.flags.TC and not reply.answer
    assert reply.id == msg.id and str(reply.question[0].name) == "big.load.svc.cluster.local."


def test_udp_honours_client_edns_payload_size(kdns):
    small = dns.query.udp(dns.message.make_query("big.load.svc.cluster.local", "A", use_edns=0, payload=1232),
                          "127.0.0.1", port=kdns.port, timeout=3)
    assert small.flags & dns.flags.TC and small.edns == 0  # OPT still echoed in the truncated reply
    large = dns.query.udp(dns.message.make_query("big.load.svc.cluster.local", "A", use_edns=0, payload=4096),
                          "127.0.0.1", port=kdns.port, timeout=3)
    assert not large.flags & dns.flags.TC and len(answers(large)) == N_ENDPOINTS


def test_tcp_answers_in_full(kdns):
    reply = kdns.query("big.load.svc.cluster.local", "A", tcp=True, use_edns=False)
    assert not reply.flags & dns.flags.TC and len(answers(reply)) == N_ENDPOINTS


def test_dig_retries_over_tcp_after_truncation(kdns):
    out = kdns.dig("+noedns", "big.load.svc.cluster.local", "A")
    assert "Truncated, retrying in TCP mode" in out
    assert out.count("\tA\t") == N_ENDPOINTS


def test_outside_name_is_forwarded(kdns, upstream):
    reply = kdns.query("example.com", "A")
    assert reply.rcode() == dns.rcode.NOERROR and answers(reply) == ["93.184.215.14"]
    assert kdns.query("nothing.example.org", "A").rcode() == dns.rcode.NXDOMAIN
    assert answers(kdns.query("example.com", "A", tcp=True)) == ["93.184.215.14"]
    assert ("tcp", "example.com", "A") in upstream.queries


def test_forwarder_retries_truncated_upstream_answer_over_tcp(kdns, upstream):
    reply = kdns.query("many.tc", "A", use_edns=0, payload=4096)
    assert len(answers(reply)) == 59 and not reply.flags & dns.flags.TC
    assert ("udp", "many.tc", "A") in upstream.queries and ("tcp", "many.tc", "A") in upstream.queries
    # a client without EDNS gets TC for it and retries over TCP itself
    small = kdns.query("many.tc", "A", use_edns=False)
    assert small.flags & dns.flags.TC


def test_silent_upstream_gives_servfail_not_a_hang(kdns):
    # the client waits far longer than the forwarder's 2 s: a hang is a Timeout here, not a SERVFAIL
    reply = dns.query.udp(dns.message.make_query("x.silent", "A"), "127.0.0.1", port=kdns.port, timeout=20)
    assert reply.rcode() == dns.rcode.SERVFAIL
    kdns.wait_for_log(r"forward_failed name=x\.silent\. .*timed out after 2\.0s")


def test_external_name_target_is_chased_upstream(kdns):
    reply = kdns.query("payments.shop.svc.cluster.local", "A")
    texts = [(str(r.name), r.rdtype, [rd.to_text() for rd in r]) for r in reply.answer]
    assert texts == [("payments.shop.svc.cluster.local.", 5, ["payments.example.com."]),
                     ("payments.example.com.", 1, ["192.0.2.10"])]
    assert answers(kdns.query("payments.shop.svc.cluster.local", "AAAA")) == ["2001:db8::10", "payments.example.com."]


def test_external_name_with_missing_target_reports_target_rcode(kdns):
    reply = kdns.query("nowhere.shop.svc.cluster.local", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert answers(reply) == ["gone.example.com."]


def test_recursion_available_when_an_upstream_is_configured(kdns):
    assert kdns.query("big.load.svc.cluster.local", "SOA").flags & dns.flags.RA
