"""EndpointSlices as the API serves them (issues 15 and 13.1): ports without numbers, the same hostname
in slices with different ports, slices with different port sets, headless services without ports,
and fields the API accepts that DNS cannot carry. Every case runs through the real server, fed once
from a manifest file and once from the API double (the real `kubernetes` client)."""

from __future__ import annotations

import contextlib
import json

import dns.rcode
import dns.rdatatype
import pytest

from apiserver import FakeApiServer, write_kubeconfig
from harness import KdnsProcess, wait_until

HTTP = ("--ready-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
Z = "svc.cluster.local"


def ns(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def svc(namespace: str, name: str, ports=(), cluster_ip: str = "None", **spec) -> dict:
    body = {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], **spec}
    if ports:
        body["ports"] = [dict(p) for p in ports]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": body}


def eslice(namespace: str, service: str | None, name: str, endpoints, ports=None, address_type: str = "IPv4") -> dict:
    labels = {"kubernetes.io/service-name": service} if service else {}
    obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "addressType": address_type, "endpoints": list(endpoints)}
    if ports is not None:
        obj["ports"] = list(ports)
    return obj


def endpoint(*addresses: str, hostname: str | None = None, ready: bool | None = True) -> dict:
    out: dict = {"addresses": list(addresses)}
    if ready is not None:
        out["conditions"] = {"ready": ready}
    if hostname:
        out["hostname"] = hostname
    return out


CLUSTER = [
    ns("default"), ns("data"),
    # 15.1: slice ports without a number take the Service's port of that name
    svc("default", "notify", ports=[{"name": "dns", "port": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
    eslice("default", "notify", "notify-x1", [endpoint("10.244.0.10", hostname="primary")],
           ports=[{"name": "dns", "protocol": "UDP"}, {"name": "dns-tcp", "protocol": "TCP"},
                  {"name": "metrics", "protocol": "TCP"}]),  # no Service port "metrics": no SRV for it
    # 15.2: the same hostname in two slices with different port numbers (a rolling port change)
    svc("data", "redis", ports=[{"name": "web", "port": 8080, "protocol": "TCP"}]),
    eslice("data", "redis", "redis-a", [endpoint("10.244.1.5", hostname="web-0")],
           ports=[{"name": "web", "port": 8080, "protocol": "TCP"}]),
    eslice("data", "redis", "redis-b", [endpoint("10.244.1.5", hostname="web-0")],
           ports=[{"name": "web", "port": 8081, "protocol": "TCP"}]),
    # 15.3: slices with different port sets (a port rename): each endpoint only under its own ports
    svc("data", "ren", ports=[{"name": "old", "port": 80, "protocol": "TCP"},
                              {"name": "new", "port": 81, "protocol": "TCP"}]),
    eslice("data", "ren", "ren-a", [endpoint("10.244.2.1", hostname="a")],
           ports=[{"name": "old", "port": 8080, "protocol": "TCP"}]),
    eslice("data", "ren", "ren-b", [endpoint("10.244.2.2", hostname="b")],
           ports=[{"name": "new", "port": 8081, "protocol": "TCP"}]),
    # 13.1: a headless service without ports, slices managed by hand with named ports
    svc("data", "extdb"),
    eslice("data", "extdb", "extdb-1", [endpoint("10.1.0.5", hostname="db-0"), endpoint("10.1.0.6"),
                                        endpoint("10.1.0.7", ready=False)],
           ports=[{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "https", "port": 8443, "protocol": "TCP", "appProtocol": "https"}]),
    # accepted by the API, partly servable: a port number SRV cannot carry; the rest is served
    svc("data", "odd", ports=[{"name": "ok", "port": 90, "protocol": "TCP"}]),
    eslice("data", "odd", "odd-1", [endpoint("010.244.003.004", ready=None),  # legacy leading zeros, ready unset
                                    endpoint("::ffff:10.244.3.5", "10.244.3.6", hostname="two")],
           ports=[{"name": "bad", "port": 0, "protocol": "TCP"}, {"name": "ok", "port": 9090, "protocol": "TCP"}]),
    # an IP as externalName is a valid DNS subdomain for the API, but no CNAME target
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "byip", "namespace": "data"},
     "spec": {"type": "ExternalName", "externalName": "10.20.30.40"}},
    # a slice of no Service (valid for the API) is not an error
    eslice("data", None, "orphan", [endpoint("10.9.9.9")]),
]


def srv(kdns: KdnsProcess, name: str, tcp: bool = False):
    msg = kdns.query(name, "SRV", tcp=tcp)
    answer = sorted(rd.to_text() for rrset in msg.answer for rd in rrset)
    glue = sorted(f"{rrset.name} {rd.to_text()}" for rrset in msg.additional for rd in rrset
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))
    return msg.rcode(), answer, glue


@pytest.fixture(params=["manifests", "api"])
def served(request, tmp_path):
    """A running kdns serving CLUSTER from a manifest file or from the API double."""
    if request.param == "manifests":
        path = tmp_path / "cluster.yaml"
        path.write_text("---\n".join(json.dumps(obj) + "\n" for obj in CLUSTER))  # JSON is YAML
        with KdnsProcess("--manifests", str(path), *HTTP) as kdns:
            wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, what="ready")
            yield kdns
        return
    with FakeApiServer() as api, _from_api(api, tmp_path) as kdns:
        yield kdns


@contextlib.contextmanager
def _from_api(api: FakeApiServer, tmp_path):
    for obj in CLUSTER:
        api.apply(obj)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token=api.token)
    with KdnsProcess("--kubeconfig", kubeconfig, "--api-backoff-max", "0.3", *HTTP) as kdns:
        wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, timeout=10, what="synced")
        yield kdns


def test_slice_port_without_number_takes_the_services_port_of_that_name(served):
    assert srv(served, f"_dns._udp.notify.default.{Z}") == (
        dns.rcode.NOERROR, [f"0 100 53 primary.notify.default.{Z}."], [f"primary.notify.default.{Z}. 10.244.0.10"])
    # SRV on the bare name: dns/UDP and dns-tcp/TCP give one record (no duplicates in an RRset)
    msg = served.query(f"notify.default.{Z}", "SRV", tcp=True)
    assert [rd.to_text() for rrset in msg.answer for rd in rrset] == [f"0 100 53 primary.notify.default.{Z}."]
    assert sum(len(rrset) for rrset in msg.answer) == 1
    # the slice is served whole: address and PTR too
    assert [rd.to_text() for rrset in served.query(f"primary.notify.default.{Z}").answer for rd in rrset] == ["10.244.0.10"]
    assert [rd.to_text() for rrset in served.query("10.0.244.10.in-addr.arpa", "PTR").answer for rd in rrset] == [
        f"primary.notify.default.{Z}."]
    # a numberless port whose name the Service lacks has no number to give: no SRV name
    assert srv(served, f"_metrics._tcp.notify.default.{Z}")[0] == dns.rcode.NXDOMAIN


def test_same_hostname_in_two_slices_gets_one_srv_per_port(served):
    rcode, answer, glue = srv(served, f"_web._tcp.redis.data.{Z}")
    assert (rcode, answer) == (dns.rcode.NOERROR, [f"0 50 8080 web-0.redis.data.{Z}.", f"0 50 8081 web-0.redis.data.{Z}."])
    assert glue == [f"web-0.redis.data.{Z}. 10.244.1.5"]


def test_endpoint_is_listed_only_under_the_ports_of_its_own_slice(served):
    assert srv(served, f"_old._tcp.ren.data.{Z}")[1] == [f"0 100 8080 a.ren.data.{Z}."]
    assert srv(served, f"_new._tcp.ren.data.{Z}")[1] == [f"0 100 8081 b.ren.data.{Z}."]


def test_headless_service_without_ports_serves_srv_from_its_slices(served):
    rcode, answer, glue = srv(served, f"_http._tcp.extdb.data.{Z}")
    assert rcode == dns.rcode.NOERROR
    assert answer == [f"0 50 8080 10-1-0-6.extdb.data.{Z}.", f"0 50 8080 db-0.extdb.data.{Z}."]
    assert glue == [f"10-1-0-6.extdb.data.{Z}. 10.1.0.6", f"db-0.extdb.data.{Z}. 10.1.0.5"]
    assert srv(served, f"_https._tcp.extdb.data.{Z}", tcp=True)[1] == [
        f"0 50 8443 10-1-0-6.extdb.data.{Z}.", f"0 50 8443 db-0.extdb.data.{Z}."]
    assert served.query(f"_tcp.extdb.data.{Z}", "SRV").rcode() == dns.rcode.NOERROR  # empty non-terminal
    assert srv(served, f"_http._udp.extdb.data.{Z}")[0] == dns.rcode.NXDOMAIN


def test_unservable_field_leaves_the_rest_served_logged_and_counted(served):
    # one SRV per endpoint name and port (an RRset holds no duplicates), both addresses as glue
    assert srv(served, f"_ok._tcp.odd.data.{Z}") == (dns.rcode.NOERROR, [
        f"0 50 9090 10-244-3-4.odd.data.{Z}.", f"0 50 9090 two.odd.data.{Z}."], [
        f"10-244-3-4.odd.data.{Z}. 10.244.3.4", f"two.odd.data.{Z}. 10.244.3.5", f"two.odd.data.{Z}. 10.244.3.6"])
    assert srv(served, f"_bad._tcp.odd.data.{Z}")[0] == dns.rcode.NXDOMAIN
    addresses = sorted(rd.to_text() for rrset in served.query(f"odd.data.{Z}").answer for rd in rrset)
    assert addresses == ["10.244.3.4", "10.244.3.5", "10.244.3.6"]
    line = served.wait_for_log(r"(api|manifest)_object_partially_served.*field=ports\[0\]\.port")
    assert "field=ports[0].port" in line and "0 is not a port number" in line
    metric = ("kdns_manifest_objects_partially_served_total" if "manifest_" in line
              else "kdns_api_objects_partially_served_total")
    labels = {} if "manifest_" in line else {"resource": "EndpointSlice"}
    assert served.metric(metric, **labels) == (2 if "manifest_" in line else 1)  # manifests: + the Service
    assert "field=spec.externalName" in served.wait_for_log(r"object_partially_served.*byip|byip.*partially_served")
    assert served.query(f"byip.data.{Z}").rcode() == dns.rcode.NXDOMAIN
    assert not [l for l in served.lines if "api_object_invalid" in l or "manifest_error" in l]


def test_changed_port_set_is_followed_through_the_api(tmp_path):
    with FakeApiServer() as api, _from_api(api, tmp_path) as kdns:
        # the rename completes: ren-a moves to the new port, both endpoints now under _new
        api.apply(eslice("data", "ren", "ren-a", [endpoint("10.244.2.1", hostname="a")],
                         ports=[{"name": "new", "port": 8081, "protocol": "TCP"}]))
        wait_until(lambda: srv(kdns, f"_old._tcp.ren.data.{Z}")[0] == dns.rcode.NXDOMAIN, what="old gone")
        assert srv(kdns, f"_new._tcp.ren.data.{Z}")[1] == [
            f"0 50 8081 a.ren.data.{Z}.", f"0 50 8081 b.ren.data.{Z}."]
        # the odd port is fixed: logged once per change, counted once more only if it recurs
        api.apply(eslice("data", "odd", "odd-1", [endpoint("10.244.3.4")],
                         ports=[{"name": "bad", "port": 91, "protocol": "TCP"}]))
        wait_until(lambda: srv(kdns, f"_bad._tcp.odd.data.{Z}")[1] == [f"0 100 91 10-244-3-4.odd.data.{Z}."],
                   what="fixed port served")
        assert kdns.metric("kdns_api_objects_partially_served_total", resource="EndpointSlice") == 1


def test_v1_endpoints_subsets_keep_their_own_ports():
    # the same rule for a v1 Endpoints object (manifests): an address only under its subset's ports
    from builders import build
    from dnslib import QTYPE
    from kdns.objects import endpoints_from_dict, service_from_dict

    service = service_from_dict(svc("data", "legacy", ports=[{"name": "a", "port": 1}, {"name": "b", "port": 2}]))
    eps = endpoints_from_dict({"metadata": {"name": "legacy", "namespace": "data"}, "subsets": [
        {"addresses": [{"ip": "10.3.0.1", "hostname": "one"}], "ports": [{"name": "a", "port": 1001}]},
        {"addresses": [{"ip": "10.3.0.2", "hostname": "two"}], "ports": [{"name": "b", "port": 1002}]}]})
    _, resolver = build(service, eps, implicit=True)
    for port, expected in (("a", "1001 one"), ("b", "1002 two")):
        ans = resolver.resolve(("_" + port, "_tcp", "legacy", "data", "svc", "cluster", "local"), QTYPE.SRV)
        assert [f"{r.rdata.port} {str(r.rdata.target).split('.')[0]}" for r in ans.answer] == [expected]


def test_slice_whose_only_port_cannot_be_served_does_not_take_the_services_ports():
    from builders import build
    from dnslib import QTYPE, RCODE
    from kdns.objects import endpointslice_from_dict, service_from_dict

    service = service_from_dict(svc("data", "h", ports=[{"name": "web", "port": 80}]))
    listed = endpointslice_from_dict(eslice("data", "h", "h-1", [endpoint("10.5.0.1", hostname="a")],
                                            ports=[{"name": "web", "port": 70000, "protocol": "TCP"}]))
    unlisted = endpointslice_from_dict(eslice("data", "h", "h-2", [endpoint("10.5.0.2", hostname="b")]))
    assert listed.ports == () and listed.unserved
    _, resolver = build(service, listed, unlisted, implicit=True)
    ans = resolver.resolve(("_web", "_tcp", "h", "data", "svc", "cluster", "local"), QTYPE.SRV)
    assert ans.rcode == RCODE.NOERROR
    assert [f"{r.rdata.port} {str(r.rdata.target).split('.')[0]}" for r in ans.answer] == ["80 b"]
