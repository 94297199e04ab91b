"""Resolver unit tests, one group per section of the Kubernetes DNS spec 1.1.0
(kubernetes/dns docs/specification.md). The resolver is pure: a hand-built index, no sockets."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE

from builders import (build, clusterip, ep, eps, external, headless, legacy, namespace, pod, port)

NS_OBJS = (namespace("default"), namespace("shop"), namespace("data"), namespace("kube-system"))


def ask(resolver, name: str, qtype: str = "A"):
    labels = tuple(name.rstrip(".").lower().split(".")) if name.strip(".") else ()
    return resolver.resolve(labels, getattr(QTYPE, qtype))


def rrs(records) -> list[str]:
    """Records as `name ttl type rdata` strings (dnslib zone format, whitespace collapsed)."""
    return [" ".join(str(r).replace("IN ", "").split()) for r in records]


def nxdomain(ans) -> bool:
    return ans.rcode == RCODE.NXDOMAIN and not ans.answer and "SOA" in rrs(ans.authority)[0]


def nodata(ans) -> bool:
    return ans.rcode == RCODE.NOERROR and not ans.answer and "SOA" in rrs(ans.authority)[0]


@pytest.fixture
def cluster():
    index, resolver = build(
        *NS_OBJS,
        clusterip("default", "kubernetes", "10.96.0.1", ports=[port("https", 443)]),
        clusterip("kube-system", "kube-dns", "10.96.0.10",
                  ports=[port("dns", 53, "UDP"), port("dns-tcp", 53), port("metrics", 9153)]),
        clusterip("shop", "gateway", "10.96.100.10", ports=[port("http", 80), port("quic", 443, "UDP")]),
        eps("shop", "gateway", ep("10.244.1.7", pod="gw-a"), ep("10.244.2.9", pod="gw-b"),
            ports=[port("http", 8080), port("quic", 8443, "UDP")]),
        clusterip("shop", "api", "10.96.200.20", "fd00:10:96::c8", ports=[port("grpc", 9000)]),
        clusterip("shop", "plain", "10.96.3.3", ports=[port("", 8080)]),
        external("shop", "payments", "payments.example.com"),
        external("shop", "legacy-api", "api.shop.svc.cluster.local"),
        external("shop", "gone", "missing.shop.svc.cluster.local"),
        headless("data", "db", ports=[port("postgres", 5432)]),
        eps("data", "db", ep("10.244.1.20", hostname="db-0"), ep("10.244.2.21", hostname="db-1"),
            ep("10.244.3.22", hostname="db-2", ready=False), ports=[port("postgres", 15432)]),
        headless("data", "peers", ports=[port("peer", 7000)], publish=True),
        eps("data", "peers", ep("10.244.1.20", hostname="db-0"), ep("10.244.3.22", hostname="db-2", ready=False)),
        headless("data", "empty", ports=[port("http", 80)]),
        eps("data", "empty", ep("10.244.9.9", ready=False)),
        headless("data", "v6", ports=[port("http", 80)]),
        eps("data", "v6", ep("fd00:10:244::7")),
        pods="insecure",
    )
    return index, resolver


# ---------------------------------------------------------------- §2.2 schema version

def test_2_2_dns_version_txt(cluster):
    _, r = cluster
    ans = ask(r, "dns-version.cluster.local", "TXT")
    assert rrs(ans.answer) == ['dns-version.cluster.local. 28800 TXT "1.1.0"']
    assert ans.authoritative


def test_2_2_dns_version_other_type_is_nodata(cluster):
    assert nodata(ask(cluster[1], "dns-version.cluster.local", "A"))


# ---------------------------------------------------------------- §2.3 services with a ClusterIP

def test_2_3_1_a_record(cluster):
    ans = ask(cluster[1], "kubernetes.default.svc.cluster.local")
    assert rrs(ans.answer) == ["kubernetes.default.svc.cluster.local. 5 A 10.96.0.1"]
    assert ans.rcode == RCODE.NOERROR and ans.authoritative


def test_2_3_2_aaaa_record_dual_stack(cluster):
    _, r = cluster
    assert rrs(ask(r, "api.shop.svc.cluster.local", "AAAA").answer) == ["api.shop.svc.cluster.local. 5 AAAA fd00:10:96::c8"]
    assert rrs(ask(r, "api.shop.svc.cluster.local", "A").answer) == ["api.shop.svc.cluster.local. 5 A 10.96.200.20"]


def test_2_3_2_aaaa_of_ipv4_only_service_is_nodata(cluster):
    assert nodata(ask(cluster[1], "kubernetes.default.svc.cluster.local", "AAAA"))


def test_2_3_3_srv_named_port_with_address_in_additional(cluster):
    ans = ask(cluster[1], "_https._tcp.kubernetes.default.svc.cluster.local", "SRV")
    assert rrs(ans.answer) == ["_https._tcp.kubernetes.default.svc.cluster.local. 5 SRV 0 100 443 kubernetes.default.svc.cluster.local."]
    assert rrs(ans.additional) == ["kubernetes.default.svc.cluster.local. 5 A 10.96.0.1"]


def test_2_3_3_srv_udp_port_and_protocol_must_match(cluster):
    _, r = cluster
    assert rrs(ask(r, "_quic._udp.gateway.shop.svc.cluster.local", "SRV").answer) == [
        "_quic._udp.gateway.shop.svc.cluster.local. 5 SRV 0 100 443 gateway.shop.svc.cluster.local."]
    assert nxdomain(ask(r, "_quic._tcp.gateway.shop.svc.cluster.local", "SRV"))
    assert nxdomain(ask(r, "_nope._tcp.gateway.shop.svc.cluster.local", "SRV"))


def test_2_3_3_unnamed_ports_have_no_srv(cluster):
    _, r = cluster
    assert nodata(ask(r, "plain.shop.svc.cluster.local", "SRV"))
    assert nxdomain(ask(r, "_._tcp.plain.shop.svc.cluster.local", "SRV"))


def test_2_3_3_srv_name_with_other_type_is_nodata(cluster):
    assert nodata(ask(cluster[1], "_https._tcp.kubernetes.default.svc.cluster.local", "A"))


def test_2_3_3_protocol_label_alone_is_an_empty_non_terminal(cluster):
    _, r = cluster
    assert nodata(ask(r, "_tcp.kubernetes.default.svc.cluster.local", "SRV"))
    assert nxdomain(ask(r, "_sctp.kubernetes.default.svc.cluster.local", "SRV"))


def test_srv_on_bare_service_name_lists_named_ports(cluster):
    # CoreDNS extension, kept: SRV on <svc>.<ns>.svc.<zone> lists every named port
    ans = ask(cluster[1], "gateway.shop.svc.cluster.local", "SRV")
    assert rrs(ans.answer) == [
        "gateway.shop.svc.cluster.local. 5 SRV 0 50 80 gateway.shop.svc.cluster.local.",
        "gateway.shop.svc.cluster.local. 5 SRV 0 50 443 gateway.shop.svc.cluster.local.",
    ]


def test_2_3_4_ptr_for_cluster_ip(cluster):
    ans = ask(cluster[1], "1.0.96.10.in-addr.arpa", "PTR")
    assert rrs(ans.answer) == ["1.0.96.10.in-addr.arpa. 5 PTR kubernetes.default.svc.cluster.local."]


def test_2_3_4_ptr_for_ipv6_cluster_ip(cluster):
    import ipaddress
    name = ipaddress.ip_address("fd00:10:96::c8").reverse_pointer
    assert rrs(ask(cluster[1], name, "PTR").answer) == [f"{name}. 5 PTR api.shop.svc.cluster.local."]


def test_ptr_for_endpoint_of_cluster_ip_service(cluster):
    # CoreDNS extension: endpoints of any service get a PTR to <dashed-ip>.<svc>...
    assert rrs(ask(cluster[1], "7.1.244.10.in-addr.arpa", "PTR").answer) == [
        "7.1.244.10.in-addr.arpa. 5 PTR 10-244-1-7.gateway.shop.svc.cluster.local."]


def test_ptr_unknown_ip_is_nxdomain_and_partial_names_follow_ent_rules(cluster):
    _, r = cluster
    assert nxdomain(ask(r, "99.99.99.99.in-addr.arpa", "PTR"))
    assert nodata(ask(r, "96.10.in-addr.arpa", "PTR"))  # 10.96.x.x exist below it
    assert nxdomain(ask(r, "97.10.in-addr.arpa", "PTR"))
    assert nxdomain(ask(r, "300.0.96.10.in-addr.arpa", "PTR"))
    assert nodata(ask(r, "1.0.96.10.in-addr.arpa", "A"))


def test_reverse_zone_apex_soa(cluster):
    ans = ask(cluster[1], "in-addr.arpa", "SOA")
    assert rrs(ans.answer)[0].startswith("in-addr.arpa. 5 SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa.")


# ---------------------------------------------------------------- §2.4 headless services

def test_2_4_1_a_records_for_ready_endpoints_only(cluster):
    ans = ask(cluster[1], "db.data.svc.cluster.local")
    assert sorted(rrs(ans.answer)) == ["db.data.svc.cluster.local. 5 A 10.244.1.20",
                                       "db.data.svc.cluster.local. 5 A 10.244.2.21"]


def test_2_4_1_hostname_records(cluster):
    _, r = cluster
    assert rrs(ask(r, "db-1.db.data.svc.cluster.local").answer) == ["db-1.db.data.svc.cluster.local. 5 A 10.244.2.21"]
    assert nxdomain(ask(r, "db-2.db.data.svc.cluster.local"))  # not ready
    assert nxdomain(ask(r, "db-9.db.data.svc.cluster.local"))


def test_2_4_1_no_ready_endpoints_is_nxdomain(cluster):
    _, r = cluster
    assert nxdomain(ask(r, "empty.data.svc.cluster.local"))
    assert nxdomain(ask(r, "empty.data.svc.cluster.local", "AAAA"))


def test_2_4_1_publish_not_ready_addresses_serves_not_ready(cluster):
    ans = ask(cluster[1], "peers.data.svc.cluster.local")
    assert sorted(rrs(ans.answer)) == ["peers.data.svc.cluster.local. 5 A 10.244.1.20",
                                       "peers.data.svc.cluster.local. 5 A 10.244.3.22"]
    assert rrs(ask(cluster[1], "db-2.peers.data.svc.cluster.local").answer) == [
        "db-2.peers.data.svc.cluster.local. 5 A 10.244.3.22"]


def test_2_4_2_aaaa_and_dashed_ipv6_endpoint_names(cluster):
    _, r = cluster
    assert rrs(ask(r, "v6.data.svc.cluster.local", "AAAA").answer) == ["v6.data.svc.cluster.local. 5 AAAA fd00:10:244::7"]
    assert nodata(ask(r, "v6.data.svc.cluster.local", "A"))
    assert rrs(ask(r, "fd00-10-244--7.v6.data.svc.cluster.local", "AAAA").answer) == [
        "fd00-10-244--7.v6.data.svc.cluster.local. 5 AAAA fd00:10:244::7"]


def test_2_4_1_endpoints_without_hostname_get_dashed_ip_names(cluster):
    assert rrs(ask(cluster[1], "10-244-2-9.gateway.shop.svc.cluster.local").answer) == [
        "10-244-2-9.gateway.shop.svc.cluster.local. 5 A 10.244.2.9"]


def test_2_4_3_srv_per_ready_endpoint_with_targets_in_additional(cluster):
    ans = ask(cluster[1], "_postgres._tcp.db.data.svc.cluster.local", "SRV")
    # the endpoint (target) port is the one a client must dial on a headless service
    assert rrs(ans.answer) == [
        "_postgres._tcp.db.data.svc.cluster.local. 5 SRV 0 50 15432 db-0.db.data.svc.cluster.local.",
        "_postgres._tcp.db.data.svc.cluster.local. 5 SRV 0 50 15432 db-1.db.data.svc.cluster.local.",
    ]
    assert rrs(ans.additional) == ["db-0.db.data.svc.cluster.local. 5 A 10.244.1.20",
                                   "db-1.db.data.svc.cluster.local. 5 A 10.244.2.21"]


def test_2_4_3_srv_of_headless_falls_back_to_service_port(cluster):
    ans = ask(cluster[1], "_peer._tcp.peers.data.svc.cluster.local", "SRV")
    assert [r.split()[-2] for r in rrs(ans.answer)] == ["7000", "7000"]


def test_2_4_4_ptr_for_headless_endpoint(cluster):
    ans = ask(cluster[1], "21.2.244.10.in-addr.arpa", "PTR")
    assert rrs(ans.answer) == ["21.2.244.10.in-addr.arpa. 5 PTR db-1.db.data.svc.cluster.local."]


def test_2_4_4_ptr_not_served_for_a_not_ready_endpoint():
    _, r = build(namespace("ns"), headless("ns", "h"),
                 eps("ns", "h", ep("10.0.0.1", hostname="a"), ep("10.0.0.2", hostname="b", ready=False)))
    assert rrs(ask(r, "1.0.0.10.in-addr.arpa", "PTR").answer) == ["1.0.0.10.in-addr.arpa. 5 PTR a.h.ns.svc.cluster.local."]
    assert nxdomain(ask(r, "2.0.0.10.in-addr.arpa", "PTR"))


def test_ptr_of_a_not_ready_endpoint_comes_from_the_publish_not_ready_service(cluster):
    ans = ask(cluster[1], "22.3.244.10.in-addr.arpa", "PTR")  # db-2: not ready in db, published by peers
    assert rrs(ans.answer) == ["22.3.244.10.in-addr.arpa. 5 PTR db-2.peers.data.svc.cluster.local."]


def test_soa_serial_moves_forward_with_every_change():
    """RFC 1035 3.3.13 / RFC 1982: a secondary (or a cache) sees a change by a larger serial."""
    index, r = build(namespace("ns"), clusterip("ns", "s", "10.0.0.1"))

    def serial() -> int:
        return int(rrs(ask(r, "cluster.local", "SOA").answer)[0].split()[5])
    before = serial()
    assert serial() == before  # no change, same serial
    index.upsert(clusterip("ns", "t", "10.0.0.2"))
    after = serial()
    assert after > before
    index.delete("Service", "ns", "t")
    assert serial() > after


def test_endpoint_slices_win_over_v1_endpoints():
    _, r = build(namespace("ns"), headless("ns", "h"),
                 legacy("ns", "h", ep("10.0.0.1")), eps("ns", "h", ep("10.0.0.2")))
    assert rrs(ask(r, "h.ns.svc.cluster.local").answer) == ["h.ns.svc.cluster.local. 5 A 10.0.0.2"]


def test_v1_endpoints_used_when_no_slices():
    index, r = build(namespace("ns"), headless("ns", "h"), legacy("ns", "h", ep("10.0.0.1")))
    assert rrs(ask(r, "h.ns.svc.cluster.local").answer) == ["h.ns.svc.cluster.local. 5 A 10.0.0.1"]
    index.upsert(eps("ns", "h", ep("10.0.0.2")))
    assert rrs(ask(r, "h.ns.svc.cluster.local").answer) == ["h.ns.svc.cluster.local. 5 A 10.0.0.2"]
    index.delete("EndpointSlice", "ns", "h-abc12")
    assert rrs(ask(r, "h.ns.svc.cluster.local").answer) == ["h.ns.svc.cluster.local. 5 A 10.0.0.1"]


def test_several_slices_per_service_are_joined():
    _, r = build(namespace("ns"), headless("ns", "h"),
                 eps("ns", "h", ep("10.0.0.1"), name="h-1"), eps("ns", "h", ep("10.0.0.2"), name="h-2"))
    assert sorted(rrs(ask(r, "h.ns.svc.cluster.local").answer)) == [
        "h.ns.svc.cluster.local. 5 A 10.0.0.1", "h.ns.svc.cluster.local. 5 A 10.0.0.2"]


# ---------------------------------------------------------------- §2.5 ExternalName

def test_2_5_external_name_cname(cluster):
    ans = ask(cluster[1], "payments.shop.svc.cluster.local")
    assert rrs(ans.answer) == ["payments.shop.svc.cluster.local. 5 CNAME payments.example.com."]
    assert ans.chase is None  # no upstream: the CNAME alone


def test_2_5_external_name_outside_target_is_chased_when_upstream_exists():
    _, r = build(namespace("shop"), external("shop", "payments", "payments.example.com"), can_chase=True)
    ans = ask(r, "payments.shop.svc.cluster.local", "AAAA")
    assert ans.chase == ("payments.example.com", QTYPE.AAAA) and not ans.cacheable


def test_2_5_external_name_inside_zone_is_chased_here(cluster):
    ans = ask(cluster[1], "legacy-api.shop.svc.cluster.local")
    assert rrs(ans.answer) == ["legacy-api.shop.svc.cluster.local. 5 CNAME api.shop.svc.cluster.local.",
                               "api.shop.svc.cluster.local. 5 A 10.96.200.20"]
    assert ("svc", "shop", "api") in ans.deps and ("svc", "shop", "legacy-api") in ans.deps


def test_2_5_external_name_to_missing_inside_name_keeps_target_rcode(cluster):
    ans = ask(cluster[1], "gone.shop.svc.cluster.local")
    assert ans.rcode == RCODE.NXDOMAIN
    assert rrs(ans.answer) == ["gone.shop.svc.cluster.local. 5 CNAME missing.shop.svc.cluster.local."]


def test_2_5_external_name_cname_query(cluster):
    assert rrs(ask(cluster[1], "legacy-api.shop.svc.cluster.local", "CNAME").answer) == [
        "legacy-api.shop.svc.cluster.local. 5 CNAME api.shop.svc.cluster.local."]


def test_external_name_loop_is_bounded():
    _, r = build(namespace("a"), external("a", "x", "y.a.svc.cluster.local"), external("a", "y", "x.a.svc.cluster.local"))
    ans = ask(r, "x.a.svc.cluster.local")
    assert ans.rcode == RCODE.SERVFAIL and not ans.cacheable
    # a failure carries no partial chain and no AA (found by the model, tests/test_model.py)
    assert not ans.answer and not ans.authority and not ans.authoritative


# ---------------------------------------------------------------- §2.6 pods

def test_2_6_pod_insecure(cluster):
    _, r = cluster
    assert rrs(ask(r, "10-244-1-7.shop.pod.cluster.local").answer) == ["10-244-1-7.shop.pod.cluster.local. 5 A 10.244.1.7"]
    assert nodata(ask(r, "10-244-1-7.shop.pod.cluster.local", "AAAA"))
    assert nxdomain(ask(r, "10-244-1.shop.pod.cluster.local"))
    assert nxdomain(ask(r, "10-244-1-300.shop.pod.cluster.local"))
    assert nxdomain(ask(r, "10-244-1-7.nowhere.pod.cluster.local"))


def test_2_6_pod_ipv6_dashed(cluster):
    assert rrs(ask(cluster[1], "fd00-10-244--7.shop.pod.cluster.local", "AAAA").answer) == [
        "fd00-10-244--7.shop.pod.cluster.local. 5 AAAA fd00:10:244::7"]


def test_2_6_pods_disabled_is_nxdomain():
    _, r = build(namespace("ns"))
    assert nxdomain(ask(r, "10-244-1-7.ns.pod.cluster.local"))


def test_2_6_pods_verified_requires_a_pod_with_that_ip():
    index, r = build(namespace("ns"), namespace("other"), pod("ns", "p", "10.244.1.7"), pods="verified")
    assert rrs(ask(r, "10-244-1-7.ns.pod.cluster.local").answer) == ["10-244-1-7.ns.pod.cluster.local. 5 A 10.244.1.7"]
    assert nxdomain(ask(r, "10-244-1-8.ns.pod.cluster.local"))
    assert nxdomain(ask(r, "10-244-1-7.other.pod.cluster.local"))
    index.delete("Pod", "ns", "p")
    assert nxdomain(ask(r, "10-244-1-7.ns.pod.cluster.local"))


# ---------------------------------------------------------------- negative answers, apex, existence

def test_missing_service_nxdomain_with_soa_and_aa(cluster):
    ans = ask(cluster[1], "nope.shop.svc.cluster.local")
    assert nxdomain(ans) and ans.authoritative
    soa = rrs(ans.authority)[0].split()
    assert soa[:5] == ["cluster.local.", "5", "SOA", "ns.dns.cluster.local.", "hostmaster.cluster.local."]
    assert 0 < int(soa[5]) < 2 ** 32 and soa[6:] == ["7200", "1800", "86400", "5"]
    # it depends on what the lookup consulted, not on every change in the cluster
    assert ans.deps == {("ns", "shop"), ("svc", "shop", "nope")}


def test_missing_namespace_is_nxdomain(cluster):
    _, r = cluster
    assert nxdomain(ask(r, "kubernetes.nowhere.svc.cluster.local"))
    assert nxdomain(ask(r, "nowhere.svc.cluster.local"))


def test_empty_non_terminals_are_nodata(cluster):
    _, r = cluster
    for name in ("cluster.local", "svc.cluster.local", "shop.svc.cluster.local", "pod.cluster.local",
                 "shop.pod.cluster.local"):
        assert nodata(ask(r, name, "A")), name
        assert nodata(ask(r, name, "TXT")), name


def test_txt_of_a_service_is_nodata(cluster):
    assert nodata(ask(cluster[1], "kubernetes.default.svc.cluster.local", "TXT"))


def test_unknown_second_level_and_too_long_names_are_nxdomain(cluster):
    _, r = cluster
    assert nxdomain(ask(r, "foo.cluster.local"))
    assert nxdomain(ask(r, "a.b.c.d.kubernetes.default.svc.cluster.local"))


def test_apex_soa_and_ns(cluster):
    _, r = cluster
    soa = ask(r, "cluster.local", "SOA")
    assert rrs(soa.answer)[0].startswith("cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local.")
    ns = ask(r, "cluster.local", "NS")
    assert rrs(ns.answer) == ["cluster.local. 5 NS ns.dns.cluster.local."]
    assert rrs(ns.additional) == ["ns.dns.cluster.local. 5 A 10.96.0.10"]
    assert rrs(ask(r, "ns.dns.cluster.local").answer) == ["ns.dns.cluster.local. 5 A 10.96.0.10"]


def test_soa_ttl_is_capped_at_300_and_minimum_is_ttl():
    _, r = build(namespace("ns"), ttl=600)
    soa = rrs(ask(r, "x.ns.svc.cluster.local").authority)[0].split()
    assert soa[1] == "300" and soa[-1] == "600"


def test_names_are_case_insensitive(cluster):
    ans = ask(cluster[1], "KuBeRnEtEs.DeFaUlT.SvC.ClUsTeR.LoCaL")
    assert [r.split()[-1] for r in rrs(ans.answer)] == ["10.96.0.1"]


def test_outside_names_are_flagged_for_forwarding(cluster):
    ans = ask(cluster[1], "example.com")
    assert ans.outside and not ans.cacheable


def test_custom_zone_and_reverse_subzone():
    _, r = build(namespace("ns"), clusterip("ns", "s", "10.0.0.5"), zones=("corp.example", "0.10.in-addr.arpa"))
    assert rrs(ask(r, "s.ns.svc.corp.example").answer) == ["s.ns.svc.corp.example. 5 A 10.0.0.5"]
    assert rrs(ask(r, "5.0.0.10.in-addr.arpa", "PTR").answer) == ["5.0.0.10.in-addr.arpa. 5 PTR s.ns.svc.corp.example."]
    assert ask(r, "5.0.0.11.in-addr.arpa", "PTR").outside  # not our reverse zone
    assert ask(r, "s.ns.svc.cluster.local").outside


def test_first_forward_zone_names_ptr_targets():
    _, r = build(namespace("ns"), clusterip("ns", "s", "10.0.0.5"), zones=("in-addr.arpa", "one.test", "two.test"))
    assert rrs(ask(r, "5.0.0.10.in-addr.arpa", "PTR").answer) == ["5.0.0.10.in-addr.arpa. 5 PTR s.ns.svc.one.test."]
    assert rrs(ask(r, "s.ns.svc.two.test").answer) == ["s.ns.svc.two.test. 5 A 10.0.0.5"]


def test_implicit_namespaces_exist_while_an_object_names_them():
    index, r = build(clusterip("ns", "s", "10.0.0.5"), implicit=True)
    assert nodata(ask(r, "ns.svc.cluster.local"))
    index.delete("Service", "ns", "s")
    assert nxdomain(ask(r, "ns.svc.cluster.local"))


def test_without_implicit_namespaces_a_namespace_object_is_required():
    index, r = build(clusterip("ns", "s", "10.0.0.5"))
    assert nxdomain(ask(r, "s.ns.svc.cluster.local"))
    index.upsert(namespace("ns"))
    assert rrs(ask(r, "s.ns.svc.cluster.local").answer) == ["s.ns.svc.cluster.local. 5 A 10.0.0.5"]


def test_before_sync_nxdomain_becomes_servfail_but_positive_answers_are_served():
    index, r = build(namespace("ns"), clusterip("ns", "s", "10.0.0.5"), synced=False)
    miss = ask(r, "t.ns.svc.cluster.local")
    assert miss.rcode == RCODE.SERVFAIL and not miss.cacheable
    assert rrs(ask(r, "s.ns.svc.cluster.local").answer) == ["s.ns.svc.cluster.local. 5 A 10.0.0.5"]
    index.mark_synced()
    assert nxdomain(ask(r, "t.ns.svc.cluster.local"))


def test_ttl_is_configurable():
    _, r = build(namespace("ns"), clusterip("ns", "s", "10.0.0.5"), ttl=30)
    assert rrs(ask(r, "s.ns.svc.cluster.local").answer) == ["s.ns.svc.cluster.local. 30 A 10.0.0.5"]


def test_any_query_returns_addresses(cluster):
    ans = ask(cluster[1], "api.shop.svc.cluster.local", "ANY")
    assert sorted(rrs(ans.answer)) == ["api.shop.svc.cluster.local. 5 A 10.96.200.20",
                                       "api.shop.svc.cluster.local. 5 AAAA fd00:10:96::c8"]


# ---------------------------------------------------------------- consistency rules (RFC 8020: NXDOMAIN means nothing below)

def test_2_4_3_headless_srv_port_comes_from_each_endpoints_own_slice():
    _, r = build(namespace("ns"), headless("ns", "h", ports=[port("web", 80)]),
                 eps("ns", "h", ep("10.0.0.1", hostname="a"), ports=[port("web", 8080)], name="h-1"),
                 eps("ns", "h", ep("10.0.0.2", hostname="b"), ports=[port("web", 9090)], name="h-2"),
                 eps("ns", "h", ep("10.0.0.3", hostname="c"), name="h-3"))
    ans = ask(r, "_web._tcp.h.ns.svc.cluster.local", "SRV")
    assert sorted(x.split(" ", 3)[3] for x in rrs(ans.answer)) == [
        "0 33 80 c.h.ns.svc.cluster.local.",  # no port in its slice: the Service's port (spec §2.4.3)
        "0 33 8080 a.h.ns.svc.cluster.local.",
        "0 33 9090 b.h.ns.svc.cluster.local."]


def test_protocol_label_of_headless_without_ready_endpoints_is_nxdomain(cluster):
    assert nxdomain(ask(cluster[1], "_tcp.empty.data.svc.cluster.local", "SRV"))


def test_dns_label_above_ns_dns_is_nodata(cluster):
    assert nodata(ask(cluster[1], "dns.cluster.local"))


def test_external_name_holding_an_ip_is_nxdomain():
    _, r = build(namespace("ns"), external("ns", "e", "192.0.2.10"))
    assert nxdomain(ask(r, "e.ns.svc.cluster.local"))


def test_pods_disabled_nothing_below_pod_zone():
    _, r = build(namespace("ns"))
    assert nxdomain(ask(r, "ns.pod.cluster.local"))
    assert nodata(ask(r, "pod.cluster.local"))


def test_ns_record_names_the_queried_zone_and_headless_kube_dns_gives_endpoint_glue():
    _, r = build(namespace("kube-system"), headless("kube-system", "kube-dns"),
                 eps("kube-system", "kube-dns", ep("10.244.0.5")), zones=("cluster.local", "other.test"))
    ans = ask(r, "other.test", "NS")
    assert rrs(ans.answer) == ["other.test. 5 NS ns.dns.other.test."]
    assert rrs(ans.additional) == ["ns.dns.other.test. 5 A 10.244.0.5"]


def test_ptr_of_a_cluster_ip_is_the_service_only():
    _, r = build(namespace("ns"), clusterip("ns", "s", "10.0.0.5"), headless("ns", "h"), eps("ns", "h", ep("10.0.0.5")))
    assert rrs(ask(r, "5.0.0.10.in-addr.arpa", "PTR").answer) == ["5.0.0.10.in-addr.arpa. 5 PTR s.ns.svc.cluster.local."]
