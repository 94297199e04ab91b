"""CoreDNS drop-in behaviour with real sockets: the kubeadm Corefile verbatim (both cache forms) fed by
manifests or the API double, forward, cache, autopath, hosts, health/ready/lameduck, metrics, reload,
loop detection, loadbalance, log — against small upstreams started on loopback."""

from __future__ import annotations

import os
import signal
import socket

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from apiserver import FakeApiServer, namespace, service, write_kubeconfig
from dnstcp import frame, read_frame
from harness import EXAMPLE, KdnsProcess, answers, prometheus_samples, wait_until
from test_corefile import KUBEADM_BLOCK_CACHE, KUBEADM_PLAIN_CACHE
from upstream import FakeUpstream, LoopProxy

FREE = ("--bind", "127.0.0.1", "--port-map", "53=0", "--port-map", "8080=0", "--port-map", "8181=0",
        "--port-map", "9153=0")


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream({
        ("example.com", "A"): ["93.184.215.14"],
        ("www.example.com", "A"): ["93.184.215.15"],
        ("intranet.corp.test", "A"): ["10.50.0.1"],
        ("a.example.org", "A"): ["192.0.2.1"],
    }) as up:
        yield up


def corefile(tmp_path, text: str, upstream: FakeUpstream | None = None, search: str = "") -> tuple[str, str]:
    path = tmp_path / "Corefile"
    path.write_text(text)
    resolv = tmp_path / "resolv.conf"
    # the host's resolv.conf: a nameserver nothing listens on (tests name their upstreams explicitly)
    resolv.write_text("nameserver 127.0.0.1\n" + (f"search {search}\n" if search else ""))
    return str(path), str(resolv)


def start(tmp_path, text: str, upstream: FakeUpstream | None = None, *extra: str, search: str = "") -> KdnsProcess:
    """Serve `text` with the upstream's port substituted for UPSTREAM."""
    if upstream is not None:
        text = text.replace("/etc/resolv.conf", f"127.0.0.1:{upstream.port}").replace("UPSTREAM", upstream.address)
    path, resolv = corefile(tmp_path, text, upstream, search)
    return KdnsProcess("--corefile", path, "--resolv-conf", resolv, *FREE, *extra, listen=False)


# ---------------------------------------------------------------- the kubeadm Corefile, verbatim

@pytest.mark.parametrize("text", [KUBEADM_BLOCK_CACHE, KUBEADM_PLAIN_CACHE], ids=["cache-block", "cache-plain"])
def test_kubeadm_corefile_serves_manifests(tmp_path, upstream, text):
    # verbatim: only the upstream in "forward . /etc/resolv.conf" comes from our resolv.conf
    path, resolv = corefile(tmp_path, text)
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    with KdnsProcess("--corefile", path, "--resolv-conf", resolv, *FREE, "--manifests", EXAMPLE, listen=False,
                     ) as kdns:
        assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
        assert answers(kdns.query("kubernetes.default.svc.cluster.local", tcp=True)) == ["10.96.0.1"]
        ttl = kdns.query("kubernetes.default.svc.cluster.local").answer[0].ttl
        assert ttl == 30  # ttl 30 from the kubernetes block
        assert answers(kdns.query("10-244-1-7.shop.pod.cluster.local")) == ["10.244.1.7"]  # pods insecure
        assert answers(kdns.query("1.0.96.10.in-addr.arpa", "PTR")) == ["kubernetes.default.svc.cluster.local."]
        assert kdns.get("health", "/health") == (200, "OK")
        wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, what="ready")
        assert kdns.metric("coredns_dns_requests_total", server="dns://:53", zone=".", proto="udp", type="A") >= 2


def test_kubeadm_corefile_forwards_and_falls_through_reverse_zones(tmp_path, upstream):
    with start(tmp_path, KUBEADM_BLOCK_CACHE, upstream, "--manifests", EXAMPLE) as kdns:
        assert answers(kdns.query("example.com")) == ["93.184.215.14"]
        # fallthrough in-addr.arpa: an unknown reverse name goes upstream (which says NXDOMAIN)
        before = upstream.count("4.3.2.1.in-addr.arpa")
        assert kdns.query("4.3.2.1.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN
        assert upstream.count("4.3.2.1.in-addr.arpa") == before + 1
        # but a name in cluster.local is never passed on
        assert kdns.query("nope.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        assert upstream.count("nope.default.svc.cluster.local") == 0
        # asked over TCP: forwarded over TCP
        assert answers(kdns.query("www.example.com", tcp=True)) == ["93.184.215.15"]
        assert ("tcp", "www.example.com", "A") in upstream.queries
        # the `loop` check's probe (HINFO through kdns itself) and both upstream protocols used sockets kdns
        # made: the event loop resolved no address, so it started no resolver threads (uvloop's stay for
        # good, and a process with threads pays for them on every system call: kdns.forward.connected_udp)
        wait_until(lambda: any(t == "HINFO" for _, _, t in upstream.queries), what="the loop check's probe")
        assert os.listdir(f"/proc/{kdns.proc.pid}/task") == [str(kdns.proc.pid)]


def test_kubeadm_corefile_with_the_api_double(tmp_path, upstream):
    with FakeApiServer() as api:
        api.apply(namespace("default"))
        api.apply(service("default", "kubernetes", "10.96.0.1", ports=[("https", 443, "TCP")]))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token=api.token)
        with start(tmp_path, KUBEADM_PLAIN_CACHE, upstream, "--kubeconfig", kubeconfig) as kdns:
            wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, what="ready after sync")
            assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
            api.apply(service("default", "web", "10.96.0.7"))
            wait_until(lambda: answers(kdns.query("web.default.svc.cluster.local")) == ["10.96.0.7"], what="watch")


# ---------------------------------------------------------------- plugin order and server blocks

def test_plugin_order_is_coredns_not_file_order(tmp_path, upstream):
    text = """.:53 {
    forward . UPSTREAM
    kubernetes cluster.local
    hosts {
        10.9.9.9 kubernetes.default.svc.cluster.local example.com
        fallthrough
    }
}"""
    with start(tmp_path, text, upstream, "--manifests", EXAMPLE) as kdns:
        # hosts runs before kubernetes and forward whatever the file says
        assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.9.9.9"]
        assert answers(kdns.query("example.com")) == ["10.9.9.9"]
        assert answers(kdns.query("api.shop.svc.cluster.local")) == ["10.96.200.20"]  # fell through to kubernetes
        assert answers(kdns.query("9.9.9.10.in-addr.arpa", "PTR")) == ["example.com.",
                                                                        "kubernetes.default.svc.cluster.local."]


def test_stub_domain_blocks_and_except(tmp_path, upstream):
    with FakeUpstream({("a.example.org", "A"): ["198.51.100.7"]}) as stub:
        text = f""".:53 {{
    forward . UPSTREAM {{
        except blocked.test
    }}
}}
example.org:53 {{
    forward . {stub.address}
}}"""
        with start(tmp_path, text, upstream) as kdns:
            assert answers(kdns.query("a.example.org")) == ["198.51.100.7"]  # the more specific block wins
            assert answers(kdns.query("example.com")) == ["93.184.215.14"]
            assert kdns.query("x.blocked.test").rcode() == dns.rcode.REFUSED
            assert upstream.count("x.blocked.test") == 0


def test_hosts_file_reload_ptr_and_nxdomain(tmp_path, upstream):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.1.1.1 db.corp.test\n")
    text = f"""corp.test:53 {{
    hosts {hosts} {{
        10.1.1.2 inline.corp.test
        reload 1s
        ttl 60
    }}
}}"""
    with start(tmp_path, text) as kdns:
        reply = kdns.query("db.corp.test")
        assert answers(reply) == ["10.1.1.1"] and reply.answer[0].ttl == 60
        assert answers(kdns.query("inline.corp.test")) == ["10.1.1.2"]
        assert kdns.query("missing.corp.test").rcode() == dns.rcode.NXDOMAIN
        nodata = kdns.query("db.corp.test", "AAAA")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        hosts.write_text("10.1.1.9 db.corp.test\n")
        wait_until(lambda: answers(kdns.query("db.corp.test")) == ["10.1.1.9"], timeout=5, what="hosts reload")


# ---------------------------------------------------------------- forward

def test_forward_policies_health_checks_and_recovery(tmp_path):
    with FakeUpstream({("x.test", "A"): ["192.0.2.1"]}) as first, FakeUpstream({("x.test", "A"): ["192.0.2.2"]}) as second:
        text = f""".:53 {{
    prometheus :9153
    forward . {first.address} {second.address} {{
        policy sequential
        max_fails 1
        health_check 200ms
        read_timeout 300ms
    }}
}}"""
        with start(tmp_path, text) as kdns:
            for _ in range(3):
                assert answers(kdns.query("x.test")) == ["192.0.2.1"]  # sequential: always the first
            first.down = True
            assert answers(kdns.query("x.test")) == ["192.0.2.2"]  # first times out, second answers
            kdns.wait_for_log(r"forward_upstream_down upstream=127\.0\.0\.1:%d" % first.port)
            assert answers(kdns.query("x.test")) == ["192.0.2.2"]  # marked down: skipped at once
            wait_until(lambda: (kdns.metric("coredns_proxy_healthcheck_failures_total",
                                            to=f"127.0.0.1:{first.port}") or 0) >= 1, what="a failed health probe")
            first.down = False
            kdns.wait_for_log(r"forward_upstream_up upstream=127\.0\.0\.1:%d" % first.port, timeout=5)
            assert answers(kdns.query("x.test")) == ["192.0.2.1"]


def test_forward_round_robin_spreads_queries(tmp_path):
    with FakeUpstream({("x.test", "A"): ["192.0.2.1"]}) as first, FakeUpstream({("x.test", "A"): ["192.0.2.2"]}) as second:
        text = f".:53 {{\n  forward . {first.address} {second.address} {{\n    policy round_robin\n  }}\n}}\n"
        with start(tmp_path, text) as kdns:
            seen = {answers(kdns.query("x.test"))[0] for _ in range(4)}
            assert seen == {"192.0.2.1", "192.0.2.2"}


def test_forward_max_concurrent_refuses_and_counts(tmp_path, upstream):
    text = ".:53 {\n  prometheus :9153\n  forward . UPSTREAM {\n    max_concurrent 1\n    read_timeout 2s\n  }\n}\n"
    with start(tmp_path, text, upstream) as kdns:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(dns.message.make_query("a.silent", "A").to_wire(), ("127.0.0.1", kdns.port))  # holds the slot
            reply = kdns.query("example.com")
            assert reply.rcode() == dns.rcode.REFUSED
        assert kdns.metric("coredns_forward_max_concurrent_rejects_total") == 1


def test_forward_timeout_is_servfail_not_a_hang(tmp_path, upstream):
    text = ".:53 {\n  errors\n  forward . UPSTREAM {\n    read_timeout 500ms\n  }\n}\n"
    with start(tmp_path, text, upstream) as kdns:
        # the client waits far longer than read_timeout: a SERVFAIL must come (a hang is a Timeout here)
        msg = dns.query.udp(dns.message.make_query("never.silent", "A"), "127.0.0.1", port=kdns.port, timeout=20)
        assert msg.rcode() == dns.rcode.SERVFAIL
        # and it was the configured read_timeout that gave up
        kdns.wait_for_log(r"plugin/errors message=\"2 never\.silent\. A: upstream .* timed out after 0\.5s")


def test_never_forwards_to_itself(tmp_path):
    # "forward . 127.0.0.1:PORT" where PORT is kdns's own listener
    from kdns.cli import _free_port
    port = _free_port("127.0.0.1")  # free for UDP and TCP both: kdns binds the two
    text = f".:53 {{\n  forward . 127.0.0.1:{port}\n}}\n"
    path, resolv = corefile(tmp_path, text)
    with KdnsProcess("--corefile", path, "--resolv-conf", resolv, "--bind", "127.0.0.1", "--port-map", f"53={port}",
                     listen=False) as kdns:
        kdns.wait_for_log(rf"forward_upstream_skipped upstream=127\.0\.0\.1:{port} .*would loop")
        assert kdns.query("example.com").rcode() == dns.rcode.SERVFAIL


# ---------------------------------------------------------------- cache

def test_cache_success_denial_ttl_decrement_and_cap(tmp_path, upstream):
    text = ".:53 {\n  prometheus :9153\n  cache 30\n  forward . UPSTREAM\n}\n"
    with start(tmp_path, text, upstream) as kdns:
        before = upstream.count("www.example.com")
        first = kdns.query("www.example.com")
        assert first.answer[0].ttl == 30  # upstream says 60; cache 30 caps it
        wait_until(lambda: kdns.query("www.example.com").answer[0].ttl < 30, timeout=15, what="TTL decremented")
        assert upstream.count("www.example.com") == before + 1  # every later answer came from the cache
        assert kdns.query("nx.example.com").rcode() == dns.rcode.NXDOMAIN
        assert kdns.query("nx.example.com").rcode() == dns.rcode.NXDOMAIN
        assert upstream.count("nx.example.com") == 1
        assert kdns.metric("coredns_cache_hits_total", type="success", server="dns://:53") >= 1
        assert kdns.metric("coredns_cache_hits_total", type="denial", server="dns://:53") == 1
        assert kdns.metric("coredns_cache_entries", type="success", server="dns://:53") == 1


def test_cache_disable_and_servfail_never_cached_for_our_zones(tmp_path, upstream):
    text = """.:53 {
    kubernetes cluster.local in-addr.arpa {
        fallthrough in-addr.arpa
    }
    cache 30 {
        disable success example.com
    }
    forward . UPSTREAM {
        read_timeout 300ms
    }
}"""
    failing = FakeUpstream({("example.com", "A"): ["93.184.215.14"]}, servfail_suffixes=(".servfail", ".in-addr.arpa"))
    with failing, start(tmp_path, text, failing, "--manifests", EXAMPLE) as kdns:
        upstream = failing
        for _ in range(2):
            assert answers(kdns.query("example.com")) == ["93.184.215.14"]
        assert upstream.count("example.com") >= 2  # success caching disabled for example.com
        # an in-addr.arpa name falls through to an upstream that answers SERVFAIL: passed on, never
        # cached for our zones (asked again next time), while outside names' SERVFAIL is cached 5 s
        for _ in range(2):
            assert kdns.query("5.5.5.5.in-addr.arpa", "PTR").rcode() == dns.rcode.SERVFAIL
            assert kdns.query("x.servfail", "A").rcode() == dns.rcode.SERVFAIL
        assert upstream.count("5.5.5.5.in-addr.arpa") == 2
        assert upstream.count("x.servfail") == 1


def test_cluster_answers_follow_changes_immediately_despite_cache(tmp_path, upstream):
    manifest = tmp_path / "m.yaml"
    svc = "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: x}}\nspec: {{clusterIP: {ip}}}\n"
    manifest.write_text(svc.format(ip="10.0.0.1"))
    text = ".:53 {\n  kubernetes cluster.local {\n    ttl 30\n  }\n  cache 30\n  forward . UPSTREAM\n}\n"
    with start(tmp_path, text, upstream, "--manifests", str(manifest)) as kdns:
        assert answers(kdns.query("web.x.svc.cluster.local")) == ["10.0.0.1"]
        mark = len(kdns.lines)
        os.replace(_write_tmp(tmp_path, svc.format(ip="10.0.0.2")), manifest)
        # once the edit is loaded (logged in the same step that applies it), the very next query has
        # the new address: the 30 s cache kept nothing stale
        kdns.wait_for_log(r"manifest_loaded file=.*m\.yaml", timeout=20, start=mark)
        assert answers(kdns.query("web.x.svc.cluster.local")) == ["10.0.0.2"]


def _write_tmp(tmp_path, text: str) -> str:
    path = tmp_path / "next.yaml.tmp"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- autopath

AUTOPATH = """.:53 {
    prometheus :9153
    autopath @kubernetes
    kubernetes cluster.local
    forward . UPSTREAM
}"""


@pytest.mark.parametrize("cache", ["", "cache 30"], ids=["alone", "with-cache"])
def test_autopath_answers_the_search_path_in_one_round_trip(tmp_path, upstream, cache):
    # with cache: autopath's upstream questions go through the response cache (once a SERVFAIL:
    # dnslib's pack() gave a bytearray, and the cache key built from it was unhashable)
    text = AUTOPATH.replace("    kubernetes", f"    {cache}\n    kubernetes") if cache else AUTOPATH
    with start(tmp_path, text, upstream, "--manifests", EXAMPLE, search="corp.test") as kdns:
        # a pod in "shop" looks up example.com: the first try is example.com.shop.svc.cluster.local
        reply = kdns.query("www.example.com.shop.svc.cluster.local")
        assert reply.rcode() == dns.rcode.NOERROR
        chain = [(str(r.name), [rd.to_text() for rd in r]) for r in reply.answer]
        assert chain == [("www.example.com.shop.svc.cluster.local.", ["www.example.com."]),
                         ("www.example.com.", ["93.184.215.15"])]
        # a partial cluster name: kubernetes.default from a pod in shop
        reply = kdns.query("kubernetes.default.shop.svc.cluster.local")
        assert answers(reply) == ["10.96.0.1", "kubernetes.default.svc.cluster.local."]
        # the host's search domains are tried before the bare name
        assert answers(kdns.query("intranet.shop.svc.cluster.local")) == ["10.50.0.1", "intranet.corp.test."]
        assert kdns.metric("coredns_autopath_success_total", server="dns://:53") == 3
        # a name that really exists is never changed, and a real miss stays NXDOMAIN
        assert answers(kdns.query("api.shop.svc.cluster.local")) == ["10.96.200.20"]
        assert kdns.query("nothing-at-all.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        # unknown namespace: not a search-path expansion
        assert kdns.query("www.example.com.nowhere.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_autopath_flag_without_corefile(upstream):
    with KdnsProcess("--manifests", EXAMPLE, "--upstream", upstream.address, "--autopath") as kdns:
        assert answers(kdns.query("example.com.data.svc.cluster.local")) == ["93.184.215.14", "example.com."]


# ---------------------------------------------------------------- health, ready, lameduck

def test_lameduck_keeps_serving_with_ready_failing_then_exits(tmp_path):
    # 8 s of lameduck: room for the three checks below on a loaded machine (the test waits that long)
    text = ".:53 {\n  health {\n    lameduck 8s\n  }\n  ready\n  kubernetes cluster.local\n}\n"
    with start(tmp_path, text, None, "--manifests", EXAMPLE) as kdns:
        assert kdns.get("ready", "/ready") == (200, "OK")
        kdns.proc.send_signal(signal.SIGTERM)
        kdns.wait_for_log(r"lameduck seconds=8\.0")
        assert kdns.get("ready", "/ready")[0] == 503
        assert kdns.get("health", "/health") == (200, "OK")
        assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
        assert kdns.proc.wait(30) == 0
        assert any("stopped" in line for line in kdns.lines)


# ---------------------------------------------------------------- metrics

def test_prometheus_metrics_use_coredns_names_labels_and_buckets(tmp_path, upstream):
    text = ".:53 {\n  prometheus :9153\n  kubernetes cluster.local\n  forward . UPSTREAM\n}\n"
    with start(tmp_path, text, upstream, "--manifests", EXAMPLE) as kdns:
        kdns.query("kubernetes.default.svc.cluster.local")
        kdns.query("kubernetes.default.svc.cluster.local", tcp=True)
        kdns.query("nope.default.svc.cluster.local", "AAAA")
        kdns.query("example.com")
        m = kdns.metric
        assert m("coredns_dns_requests_total", server="dns://:53", zone=".", view="", proto="udp", family="1",
                 type="A") == 2
        assert m("coredns_dns_requests_total", proto="tcp", type="A") == 1
        assert m("coredns_dns_requests_total", type="AAAA") == 1
        assert m("coredns_dns_responses_total", rcode="NOERROR", plugin="kubernetes") == 2
        assert m("coredns_dns_responses_total", rcode="NXDOMAIN", plugin="kubernetes") == 1
        assert m("coredns_dns_responses_total", rcode="NOERROR", plugin="forward") == 1
        assert m("coredns_dns_request_duration_seconds_count", server="dns://:53", zone=".") == 4
        body = kdns.get("metrics", "/metrics")[1]
        # CoreDNS's buckets (ExponentialBuckets(0.00025, 2, 16)), cumulative, every request within 8.192 s
        duration = prometheus_samples(body, "coredns_dns_request_duration_seconds_bucket", server="dns://:53", zone=".")
        assert [float(labels["le"]) for labels, _ in duration] == [0.00025 * 2 ** i for i in range(16)] + [float("inf")]
        counts = [value for _, value in duration]
        assert counts == sorted(counts) and counts[-2:] == [4, 4]
        # response sizes: CoreDNS's size buckets; the three UDP answers here are each under 200 bytes
        sizes = dict((labels["le"], value) for labels, value in
                     prometheus_samples(body, "coredns_dns_response_size_bytes_bucket", server="dns://:53", zone=".",
                                        proto="udp"))
        assert list(sizes) == ["0.0", "100.0", "200.0", "300.0", "400.0", "511.0", "1023.0", "2047.0", "4095.0",
                               "8291.0", "16000.0", "32000.0", "48000.0", "64000.0", "+Inf"]
        assert sizes["0.0"] == 0 and sizes["200.0"] == sizes["511.0"] == sizes["+Inf"] == 3
        assert m("coredns_forward_requests_total", to=upstream.address) == 1
        assert m("coredns_forward_responses_total", to=upstream.address, rcode="NOERROR") == 1
        assert m("coredns_proxy_request_duration_seconds_count", proxy_name="forward", to=upstream.address,
                 rcode="NOERROR") == 1
        assert m("coredns_build_info") == 1
        assert m("coredns_plugin_enabled", name="kubernetes", zone=".") == 1
        assert m("coredns_reload_failed_total") == 0
        assert m("kdns_queries_total", proto="udp") >= 3


# ---------------------------------------------------------------- reload

def test_reload_applies_a_valid_change_and_keeps_running_config_on_a_bad_one(tmp_path, upstream):
    base = ".:53 {{\n  prometheus :9153\n  reload 2s 1s\n  kubernetes cluster.local {{\n    ttl {ttl}\n  }}\n}}\n"
    with start(tmp_path, base.format(ttl=30), None, "--manifests", EXAMPLE) as kdns:
        path = tmp_path / "Corefile"
        assert kdns.query("kubernetes.default.svc.cluster.local").answer[0].ttl == 30
        path.write_text(base.format(ttl=7))
        wait_until(lambda: kdns.query("kubernetes.default.svc.cluster.local").answer[0].ttl == 7, timeout=8,
                   what="reloaded ttl")
        kdns.wait_for_log(r"reloaded file=")
        path.write_text(base.format(ttl=7000))
        kdns.wait_for_log(r"reload_failed error=.*Corefile:5:9: ttl: ttl must be between 0 and 3600", timeout=8)
        assert kdns.query("kubernetes.default.svc.cluster.local").answer[0].ttl == 7  # still the last good one
        assert kdns.metric("coredns_reload_failed_total") == 1


# ---------------------------------------------------------------- loop

def test_forwarding_loop_is_detected_reported_and_cluster_names_still_served(tmp_path):
    proxy = LoopProxy()
    try:
        text = f""".:53 {{
    ready
    prometheus :9153
    kubernetes cluster.local
    forward . 127.0.0.1:{proxy.port}
    loop
}}"""
        path, resolv = corefile(tmp_path, text)
        with KdnsProcess("--corefile", path, "--resolv-conf", resolv, *FREE, "--manifests", EXAMPLE,
                         listen=False) as kdns:
            proxy.target = ("127.0.0.1", kdns.port)
            kdns.wait_for_log(r"forward_loop_detected server=dns://:53", timeout=40)
            assert kdns.metric("kdns_forward_loop_detected", server="dns://:53") == 1
            code, body = kdns.get("ready", "/ready?verbose=1")
            assert code == 200 and "forwarding loop detected" in body
            assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
            assert kdns.query("example.com").rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED)
    finally:
        proxy.close()


# ---------------------------------------------------------------- loadbalance and log

def test_loadbalance_rotates_addresses(tmp_path):
    text = ".:53 {\n  kubernetes cluster.local\n  loadbalance\n}\n"
    with start(tmp_path, text, None, "--manifests", EXAMPLE) as kdns:
        orders = {tuple(rd.to_text() for rd in kdns.query("db.data.svc.cluster.local").answer[0]) for _ in range(4)}
        assert orders == {("10.244.1.20", "10.244.2.21"), ("10.244.2.21", "10.244.1.20")}
        chained = kdns.query("legacy-api.shop.svc.cluster.local")
        assert chained.answer[0].rdtype == 5  # CNAME stays first


def test_log_plugin_writes_coredns_common_log_lines_filtered_by_class(tmp_path):
    text = ".:53 {\n  kubernetes cluster.local\n  log {\n    class denial\n  }\n}\n"
    with start(tmp_path, text, None, "--manifests", EXAMPLE) as kdns:
        kdns.query("kubernetes.default.svc.cluster.local")
        kdns.query("nope.default.svc.cluster.local")
        line = kdns.wait_for_log(r"INFO query ")
        assert '"A IN nope.default.svc.cluster.local. udp ' in line and " NXDOMAIN qr,aa,rd " in line
        assert line.rstrip('"').endswith("s")
        assert not any("kubernetes.default.svc.cluster.local. udp" in l for l in kdns.lines)


def test_kubernetes_options_endpoint_pod_names_and_ignore_empty_service(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("""\
apiVersion: v1
kind: Service
metadata: {name: h, namespace: x}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: h-1, namespace: x, labels: {kubernetes.io/service-name: h}}
addressType: IPv4
endpoints:
- addresses: [10.1.0.5]
  targetRef: {kind: Pod, name: web-7d9f-abcde}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: x}
spec: {clusterIP: 10.0.0.9}
""")
    text = ".:53 {\n  kubernetes cluster.local {\n    endpoint_pod_names\n    ignore empty_service\n  }\n}\n"
    with start(tmp_path, text, None, "--manifests", str(manifest)) as kdns:
        assert answers(kdns.query("web-7d9f-abcde.h.x.svc.cluster.local")) == ["10.1.0.5"]
        assert kdns.query("10-1-0-5.h.x.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        assert kdns.query("empty.x.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_reload_keeps_an_unchanged_listener_open(tmp_path):
    base = ".:53 {{\n  reload 2s 1s\n  kubernetes cluster.local {{\n    ttl {ttl}\n  }}\n}}\n"
    with start(tmp_path, base.format(ttl=30), None, "--manifests", EXAMPLE, "--tcp-idle-timeout", "30") as kdns:
        with socket.create_connection(("127.0.0.1", kdns.port), timeout=5) as conn:
            def ask() -> int:
                conn.sendall(frame(dns.message.make_query("kubernetes.default.svc.cluster.local", "A").to_wire()))
                return dns.message.from_wire(read_frame(conn)).answer[0].ttl
            assert ask() == 30
            (tmp_path / "Corefile").write_text(base.format(ttl=9))
            kdns.wait_for_log(r"reloaded file=", timeout=8)
            assert ask() == 9  # same TCP connection, same listener, new configuration


def test_autopath_with_pods_verified_uses_the_asking_pods_namespace(tmp_path, upstream):
    manifest = tmp_path / "pods.yaml"
    # the test client queries from 127.0.0.1: make that the IP of a pod in "shop"
    manifest.write_text(open(EXAMPLE).read() + """
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
status: {podIP: 127.0.0.1}
""")
    text = AUTOPATH.replace("kubernetes cluster.local", "kubernetes cluster.local {\n        pods verified\n    }")
    with start(tmp_path, text, upstream, "--manifests", str(manifest)) as kdns:
        assert answers(kdns.query("example.com.shop.svc.cluster.local")) == ["93.184.215.14", "example.com."]
        # not the client's namespace: no search-path expansion
        assert kdns.query("example.com.data.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
