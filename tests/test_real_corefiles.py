"""The Corefiles people run, from deploy/corefiles/, served by kdns through real sockets: NodeLocal DNSCache
(bind on two addresses, forward ... { force_tcp } to the cluster DNS, cache, health, prometheus) and a
customised kubeadm Corefile (snippets, an imported stub domain, rewrite, hosts, template)."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request

import dns.message
import dns.query
import dns.rcode
import pytest

from harness import EXAMPLE, ROOT, answers, wait_until
from test_dropin import start
from upstream import FakeUpstream

CORFILES = os.path.join(ROOT, "deploy", "corefiles")


def read(name: str) -> str:
    with open(os.path.join(CORFILES, name, "Corefile")) as fh:
        return fh.read()


def ask(host: str, port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    msg = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(msg, host, port=port, timeout=3)
    return dns.query.udp(msg, host, port=port, timeout=3)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_nodelocal_dnscache_corefile(tmp_path, tcp):
    # the node's link-local address and the kube-dns ClusterIP become two loopback addresses; the
    # cluster DNS (kube-dns-upstream) and the node's upstream resolvers are small upstreams on loopback
    with FakeUpstream({("kubernetes.default.svc.cluster.local", "A"): ["10.96.0.1"],
                       ("1.0.96.10.in-addr.arpa", "PTR"): ["kubernetes.default.svc.cluster.local."]}) as cluster, \
            FakeUpstream({("example.com", "A"): ["93.184.215.14"]}) as internet:
        text = read("nodelocaldns").replace("169.254.20.10", "127.0.0.2").replace("10.96.0.10", "127.0.0.3") \
            .replace("10.96.0.11", cluster.address)
        with start(tmp_path, text, internet, "--port-map", "9253=0") as kdns:
            wait_until(lambda: len(re.findall(r"INFO listening ", "\n".join(kdns.lines))) == 2, what="2 listeners")
            port = kdns.port
            for host in ("127.0.0.2", "127.0.0.3"):
                assert answers(ask(host, port, "kubernetes.default.svc.cluster.local", tcp=tcp)) == ["10.96.0.1"]
                assert answers(ask(host, port, "1.0.96.10.in-addr.arpa", "PTR", tcp=tcp)) == \
                    ["kubernetes.default.svc.cluster.local."]
                assert answers(ask(host, port, "example.com", tcp=tcp)) == ["93.184.215.14"]
            # force_tcp: the cluster DNS was only ever asked over TCP, and each name once (cache)
            asked = [q for q in cluster.queries if q[1] in ("kubernetes.default.svc.cluster.local",
                                                           "1.0.96.10.in-addr.arpa")]
            assert {t for t, _, _ in asked} == {"tcp"} and len(asked) == 2
            assert internet.count("example.com") == 1
            # not listening anywhere else
            with pytest.raises(OSError):
                ask("127.0.0.1", port, "example.com", tcp=True)
            health = re.search(r"health=127\.0\.0\.2:(\d+)", kdns.wait_for_log("INFO listening ")).group(1)
            with urllib.request.urlopen(f"http://127.0.0.2:{health}/health", timeout=5) as resp:
                assert resp.status == 200
            assert not [line for line in kdns.lines if "forward_loop_detected" in line or "internal_error" in line]


def test_customised_kubeadm_corefile(tmp_path):
    with FakeUpstream({("example.com", "A"): ["93.184.215.14"]}) as internet, \
            FakeUpstream({("git.corp.internal", "A"): ["10.150.7.7"]}) as corp:
        shutil.copytree(os.path.join(CORFILES, "kubeadm-customised", "stubs"), tmp_path / "stubs")
        stub = tmp_path / "stubs" / "corp.server"
        stub.write_text(stub.read_text().replace("10.150.0.1 10.150.0.2", corp.address))
        with start(tmp_path, read("kubeadm-customised"), internet, "--manifests", EXAMPLE) as kdns:
            for tcp in (False, True):
                msg = kdns.query("db.example.internal", tcp=tcp)
                assert answers(msg) == ["10.244.1.20", "10.244.2.21"]
                assert {str(r.name) for r in msg.answer} == {"db.example.internal."}
                msg = kdns.query("api.legacy.internal", tcp=tcp)
                assert answers(msg) == ["10.96.200.20"] and str(msg.answer[0].name) == "api.legacy.internal."
                assert answers(kdns.query("registry.example.internal", tcp=tcp)) == ["10.10.0.5"]
                aaaa = kdns.query("www.ipv4only.example", "AAAA", tcp=tcp)
                assert aaaa.rcode() == dns.rcode.NOERROR and aaaa.answer == []
                assert answers(kdns.query("git.corp.internal", tcp=tcp)) == ["10.150.7.7"]  # the stub domain
                assert answers(kdns.query("example.com", tcp=tcp)) == ["93.184.215.14"]
                assert answers(kdns.query("kubernetes.default.svc.cluster.local", tcp=tcp)) == ["10.96.0.1"]
            assert internet.count("git.corp.internal") == 0
            wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, what="ready")


def test_deploy_corefiles_pass_check_config():
    from test_corefile import _kdns
    for name in ("nodelocaldns", "kubeadm-customised"):
        path = os.path.join(CORFILES, name, "Corefile")
        out = _kdns("check-config", path)
        assert out.returncode == 0 and out.stdout.strip().endswith(f"{path}: OK"), out.stderr
    # a block from an imported file is listed under that file's name and line
    assert f"{os.path.join(CORFILES, 'kubeadm-customised', 'stubs', 'corp.server')}:2: server corp.internal" in out.stdout
