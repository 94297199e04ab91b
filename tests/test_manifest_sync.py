"""Issue 13.2: a manifest file that has never loaded leaves the source unsynced (SERVFAIL instead of a
cacheable false NXDOMAIN, /ready 503 naming the file), and `kdns check-config --manifests` finds
every problem offline."""

from __future__ import annotations

import os
import subprocess
import sys

import dns.rcode

from harness import ROOT, KdnsProcess, answers, wait_until

GOOD = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
"""
BROKEN = """\
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.20}
---
apiVersion: v1
kind: Service
metadata: {name: cache, namespace: shop}
spec:
  clusterIP: 10.96.0.500
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.244.0.5]
  hostname: Not_A_Label
"""
FIXED = BROKEN.replace("10.96.0.500", "10.96.0.21").replace("Not_A_Label", "db-0")


def _write(path, text: str) -> None:
    tmp = f"{path}.tmp~"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def test_file_never_loaded_means_not_synced_until_it_loads(tmp_path):
    _write(tmp_path / "a.yaml", GOOD)
    _write(tmp_path / "b.yaml", BROKEN)
    with KdnsProcess("--manifests", str(tmp_path), "--ready-listen", "127.0.0.1:0") as kdns:
        status, body = kdns.get("ready", "/ready?verbose=1")
        assert status == 503 and "b.yaml:10" in body and "spec.clusterIP" in body
        # what loaded is served; what would be NXDOMAIN may just be in the broken file: SERVFAIL
        assert answers(kdns.query("web.shop.svc.cluster.local")) == ["10.96.0.10"]
        for name in ("db.shop.svc.cluster.local", "nothing.shop.svc.cluster.local"):
            msg = kdns.query(name, tcp=True)
            assert msg.rcode() == dns.rcode.SERVFAIL and not msg.answer
        _write(tmp_path / "b.yaml", FIXED)
        wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, what="ready after the fix")
        assert answers(kdns.query("db-0.db.shop.svc.cluster.local")) == ["10.244.0.5"]
        assert kdns.query("nothing.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        # a later break keeps the last good state: still synced, still served
        mark = len(kdns.lines)
        _write(tmp_path / "b.yaml", BROKEN)
        kdns.wait_for_log(r"manifest_error .*kept_objects=3", start=mark)
        assert kdns.get("ready", "/ready")[0] == 200
        assert answers(kdns.query("cache.shop.svc.cluster.local")) == ["10.96.0.21"]
        assert kdns.query("nothing.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdns", "check-config", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_check_config_manifests_lists_every_problem(tmp_path):
    _write(tmp_path / "a.yaml", GOOD)
    _write(tmp_path / "b.yaml", BROKEN)
    out = _check("--manifests", str(tmp_path))
    assert out.returncode == 1
    problems = [line for line in out.stderr.splitlines() if "b.yaml:" in line]
    assert problems == [
        f"{tmp_path / 'b.yaml'}:10: Service cache: spec.clusterIP: not an IP address: '10.96.0.500'",
        f"{tmp_path / 'b.yaml'}:18: EndpointSlice db-1: endpoints[0].hostname: not a DNS label "
        "(a-z, 0-9, '-', at most 63): 'not_a_label'"]
    assert "manifests: 2 problems" in out.stderr
    _write(tmp_path / "b.yaml", FIXED)
    out = _check("--manifests", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"))
    assert (out.returncode, out.stdout.strip()) == (0, "manifests: OK (4 objects)")


def test_check_config_manifests_warns_about_partly_served_objects(tmp_path):
    _write(tmp_path / "s.yaml", GOOD + "---\n" + """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.9]}]
ports: [{name: http, port: 70000}]
""")
    out = _check("--manifests", str(tmp_path / "s.yaml"))
    assert out.returncode == 0
    assert "warning: " in out.stderr and "ports[0].port: 70000 is not a port number" in out.stderr
    assert _check().returncode == 2
