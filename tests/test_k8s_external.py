"""k8s_external through real sockets: services' externalIPs and LoadBalancer ingress (IPs, hostnames as
CNAME) under an external zone, SRV, apex SOA/NS and ns1.<apex>, `headless`, `apex`, `ttl`; from
manifests and from the API double (an ingress IP that appears later is served from the watch)."""

from __future__ import annotations

import dns.rcode
import pytest

from apiserver import FakeApiServer, namespace, service, write_kubeconfig
from harness import answers, wait_until
from test_dropin import start

MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: edge}
spec:
  type: LoadBalancer
  clusterIP: 10.96.50.5
  externalIPs: [192.0.2.50]
  ports: [{name: http, port: 80, protocol: TCP}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.7}, {ip: "2001:db8::7"}]
---
apiVersion: v1
kind: Service
metadata: {name: cdn, namespace: edge}
spec:
  type: LoadBalancer
  clusterIP: 10.96.50.6
  ports: [{name: https, port: 443, protocol: TCP}]
status:
  loadBalancer:
    ingress: [{hostname: lb-1234.elb.example.net}]
---
apiVersion: v1
kind: Service
metadata: {name: internal, namespace: edge}
spec:
  clusterIP: 10.96.50.7
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.53]
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: edge}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: edge, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- {addresses: [10.244.9.1], hostname: db-0, conditions: {ready: true}}
ports: [{name: pg, port: 5432, protocol: TCP}]
"""

COREFILE = """.:53 {
    kubernetes cluster.local
    k8s_external example.external {
        headless
        ttl 17
    }
}
"""


@pytest.fixture(scope="module")
def kdns(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k8s_external")
    (tmp / "edge.yaml").write_text(MANIFEST)
    with start(tmp, COREFILE, None, "--manifests", str(tmp / "edge.yaml")) as server:
        yield server


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_external_addresses(kdns, tcp):
    msg = kdns.query("web.edge.example.external", tcp=tcp)
    assert answers(msg) == ["192.0.2.50", "198.51.100.7"] and msg.answer[0].ttl == 17
    assert answers(kdns.query("web.edge.example.external", "AAAA", tcp=tcp)) == ["2001:db8::7"]
    assert answers(kdns.query("cdn.edge.example.external", tcp=tcp)) == ["lb-1234.elb.example.net."]
    srv = kdns.query("_http._tcp.web.edge.example.external", "SRV", tcp=tcp)
    assert answers(srv) == ["0 100 80 web.edge.example.external."]
    assert sorted(rd.to_text() for rrset in srv.additional for rd in rrset) == \
        ["192.0.2.50", "198.51.100.7", "2001:db8::7"]
    # a service without external addresses, and unknown names: NXDOMAIN with the zone's SOA
    for name in ("internal.edge.example.external", "nope.edge.example.external", "a.b.c.example.external"):
        nx = kdns.query(name, tcp=tcp)
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].name.to_text() == "example.external."
    # the cluster zone is untouched
    assert answers(kdns.query("web.edge.svc.cluster.local", tcp=tcp)) == ["10.96.50.5"]


def test_apex_and_headless(kdns):
    soa = kdns.query("example.external", "SOA")
    assert [rd.mname.to_text() for rrset in soa.answer for rd in rrset] == ["ns1.dns.example.external."]
    assert answers(kdns.query("example.external", "NS")) == ["ns1.dns.example.external."]
    assert answers(kdns.query("ns1.dns.example.external")) == ["192.0.2.53"]  # kube-dns's external IP
    assert answers(kdns.query("db.edge.example.external")) == ["10.244.9.1"]  # headless: endpoints
    assert answers(kdns.query("db-0.db.edge.example.external")) == ["10.244.9.1"]


def test_apex_option_and_the_api_double(tmp_path):
    with FakeApiServer() as api:
        api.apply(namespace("edge"))
        web = service("edge", "web", "10.96.50.5")
        api.apply(web)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token=api.token)
        text = ".:53 {\n    kubernetes cluster.local\n    k8s_external example.external other.external {\n" \
               "        apex ns\n    }\n}\n"
        with start(tmp_path, text, None, "--kubeconfig", kubeconfig) as kdns:
            wait_until(lambda: kdns.query("web.edge.svc.cluster.local").answer, what="synced")
            assert kdns.query("web.edge.example.external").rcode() == dns.rcode.NXDOMAIN
            web["spec"]["type"] = "LoadBalancer"
            web["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
            api.apply(web)
            wait_until(lambda: answers(kdns.query("web.edge.example.external")) == ["203.0.113.9"],
                       what="ingress IP from the watch")
            assert answers(kdns.query("web.edge.other.external")) == ["203.0.113.9"]
            soa = kdns.query("other.external", "SOA")
            assert [rd.mname.to_text() for rrset in soa.answer for rd in rrset] == ["ns1.ns.other.external."]
