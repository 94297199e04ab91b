"""The kubernetes `zonal` option through real sockets, with CoreDNS's own cases (plugin/kubernetes zonal
tests): `<zone>.pin._zone.<svc>.<ns>.svc.cluster.local` narrows a headless service to the endpoints of
an EndpointSlice topology zone, `prefer` falls back to all of them; a zone-only change is served."""

from __future__ import annotations

import dns.rcode
import pytest

from harness import answers, wait_until
from test_dropin import start

MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: hdls, namespace: testns}
spec:
  clusterIP: None
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: clstr, namespace: testns}
spec:
  clusterIP: 10.0.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hdls-slice, namespace: testns, labels: {kubernetes.io/service-name: hdls}}
addressType: IPv4
endpoints:
- {addresses: [172.0.0.1], zone: us-west-2a}
- {addresses: [172.0.0.2], zone: us-west-2b}
- {addresses: [172.0.0.3], zone: ZONE3}
ports: [{name: http, port: 80, protocol: TCP}]
"""
Z = "._zone.hdls.testns.svc.cluster.local"


@pytest.fixture(scope="module")
def kdns(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zonal")
    (tmp / "m.yaml").write_text(MANIFEST.replace("ZONE3", "us-west-2b"))
    with start(tmp, ".:53 {\n    kubernetes cluster.local {\n        zonal\n    }\n}\n", None,
               "--manifests", str(tmp / "m.yaml")) as server:
        server.manifest = tmp / "m.yaml"
        yield server


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_coredns_zonal_cases(kdns, tcp):
    q = lambda name, rdtype="A": kdns.query(name, rdtype, tcp=tcp)  # noqa: E731
    assert answers(q("us-west-2a.pin" + Z)) == ["172.0.0.1"]
    assert answers(q("us-west-2b.pin" + Z)) == ["172.0.0.2", "172.0.0.3"]
    empty = q("us-west-2c.pin" + Z)  # drained zones and typos alike: NODATA with the SOA
    assert empty.rcode() == dns.rcode.NOERROR and empty.answer == [] and empty.authority
    assert answers(q("us-west-2a.prefer" + Z)) == ["172.0.0.1"]
    assert answers(q("us-west-2c.prefer" + Z)) == ["172.0.0.1", "172.0.0.2", "172.0.0.3"]
    for name in ("us-west-2a.pin._zone.ghost.testns.svc.cluster.local", "us-west-2a.florp" + Z,
                 "us-west-2a.pin._zone.clstr.testns.svc.cluster.local"):  # zonal names are for headless only
        assert q(name).rcode() == dns.rcode.NXDOMAIN, name
    txt = q("us-west-2c.pin" + Z, "TXT")
    assert txt.rcode() == dns.rcode.NOERROR and txt.answer == []
    srv = q("us-west-2c.prefer" + Z, "SRV")
    assert answers(srv) == [f"0 33 80 172-0-0-{i}.hdls.testns.svc.cluster.local." for i in (1, 2, 3)]
    srv = q("us-west-2b.pin" + Z, "SRV")
    assert answers(srv) == [f"0 50 80 172-0-0-{i}.hdls.testns.svc.cluster.local." for i in (2, 3)]
    assert sorted(rd.to_text() for rrset in srv.additional for rd in rrset) == ["172.0.0.2", "172.0.0.3"]


def test_a_zone_only_change_is_served(kdns):
    assert answers(kdns.query("us-west-2a.pin" + Z)) == ["172.0.0.1"]  # cached now
    kdns.manifest.write_text(MANIFEST.replace("ZONE3", "us-west-2a"))
    wait_until(lambda: answers(kdns.query("us-west-2a.pin" + Z)) == ["172.0.0.1", "172.0.0.3"], what="zone moved")
    kdns.manifest.write_text(MANIFEST.replace("ZONE3", "us-west-2b"))
    wait_until(lambda: answers(kdns.query("us-west-2a.pin" + Z)) == ["172.0.0.1"], what="zone moved back")


def test_without_the_option_zonal_names_do_not_exist(tmp_path):
    (tmp_path / "m.yaml").write_text(MANIFEST.replace("ZONE3", "us-west-2b"))
    with start(tmp_path, ".:53 {\n    kubernetes cluster.local\n}\n", None, "--manifests",
               str(tmp_path / "m.yaml")) as kdns:
        assert kdns.query("us-west-2a.pin" + Z).rcode() == dns.rcode.NXDOMAIN
