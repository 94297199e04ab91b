"""The API source end to end: the real `kubernetes` client (via a generated kubeconfig or an
in-cluster service-account directory) against the aiohttp API double, answers checked with dig."""

from __future__ import annotations

import os
import re
import ssl

import dns.rcode
import pytest
import trustme

from apiserver import FakeApiServer, add_services, endpointslice, kubeconfig_args, namespace, pod, service, write_kubeconfig
from harness import KdnsProcess, answers, wait_until

FAST = ("--api-backoff-max", "0.3", "--ready-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")


def seed(api: FakeApiServer) -> None:
    api.apply(namespace("default"))
    api.apply(namespace("shop", team="shop"))
    api.apply(service("default", "kubernetes", "10.96.0.1", ports=[("https", 443, "TCP")]))
    api.apply(service("shop", "web", "10.96.0.20"))
    api.apply(service("shop", "db", "None"))
    api.apply(endpointslice("shop", "db", "db-abc", "10.244.1.5", "10.244.2.6", hostnames=["db-0", "db-1"]))


@pytest.fixture
def api():
    with FakeApiServer() as server:
        seed(server)
        yield server


def start(api: FakeApiServer, tmp_path, *extra: str) -> KdnsProcess:
    return KdnsProcess(*kubeconfig_args(api, tmp_path), *FAST, *extra)


def addrs(kdns: KdnsProcess, name: str, rdtype: str = "A") -> list[str]:
    return answers(kdns.query(name, rdtype))


def rcode(kdns: KdnsProcess, name: str, rdtype: str = "A") -> int:
    return kdns.query(name, rdtype).rcode()


def dig_short(kdns: KdnsProcess, name: str, rdtype: str = "A") -> list[str]:
    return sorted(kdns.dig("+short", name, rdtype).split())


def wait_synced(kdns: KdnsProcess) -> None:
    kdns.wait_for_log(r"api_synced resource=Namespace")
    wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, what="ready")


# ---------------------------------------------------------------- create / modify / delete

def test_changes_are_served_within_a_bounded_wait(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        assert dig_short(kdns, "kubernetes.default.svc.cluster.local") == ["10.96.0.1"]
        assert dig_short(kdns, "db.shop.svc.cluster.local") == ["10.244.1.5", "10.244.2.6"]
        assert dig_short(kdns, "db-1.db.shop.svc.cluster.local") == ["10.244.2.6"]
        # create
        api.apply(service("shop", "cart", "10.96.0.30"))
        wait_until(lambda: dig_short(kdns, "cart.shop.svc.cluster.local") == ["10.96.0.30"], timeout=2, what="create")
        # modify a service and an endpoint slice
        api.apply(service("shop", "cart", "10.96.0.31"))
        api.apply(endpointslice("shop", "db", "db-abc", "10.244.1.5", hostnames=["db-0"]))
        wait_until(lambda: dig_short(kdns, "cart.shop.svc.cluster.local") == ["10.96.0.31"], timeout=2, what="modify")
        wait_until(lambda: dig_short(kdns, "db.shop.svc.cluster.local") == ["10.244.1.5"], timeout=2, what="slice")
        # a second slice for the same service is joined
        api.apply(endpointslice("shop", "db", "db-xyz", "10.244.3.7"))
        wait_until(lambda: dig_short(kdns, "db.shop.svc.cluster.local") == ["10.244.1.5", "10.244.3.7"], timeout=2,
                   what="second slice")
        # delete
        api.delete("Service", "shop", "cart")
        api.delete("EndpointSlice", "shop", "db-xyz")
        wait_until(lambda: rcode(kdns, "cart.shop.svc.cluster.local") == dns.rcode.NXDOMAIN, timeout=2, what="delete")
        wait_until(lambda: dig_short(kdns, "db.shop.svc.cluster.local") == ["10.244.1.5"], timeout=2, what="slice delete")
        # namespaces come from the Namespace watch
        assert rcode(kdns, "x.nowhere.svc.cluster.local") == dns.rcode.NXDOMAIN
        api.apply(namespace("nowhere"))
        wait_until(lambda: rcode(kdns, "nowhere.svc.cluster.local") == dns.rcode.NOERROR, timeout=2, what="namespace")
        api.delete("Namespace", "", "nowhere")
        wait_until(lambda: rcode(kdns, "nowhere.svc.cluster.local") == dns.rcode.NXDOMAIN, timeout=2, what="ns delete")


def _maps_yaml_rs(kdns: KdnsProcess) -> bool:
    with open(f"/proc/{kdns.proc.pid}/maps") as fh:
        return "yaml_rs" in fh.read()


def test_kdns_on_the_api_never_loads_the_manifest_parser(api, tmp_path):
    """yaml-rs (~5 MiB resident) reads manifests only: kdns on the API does not map it."""
    from harness import EXAMPLE

    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        assert not _maps_yaml_rs(kdns)
    with KdnsProcess("--manifests", EXAMPLE) as kdns:  # the check sees it where it is loaded
        assert _maps_yaml_rs(kdns)


# ---------------------------------------------------------------- before the first sync

def test_servfail_and_not_ready_before_sync(api, tmp_path):
    api.faults.fail_statuses = [500] * 1000
    api.faults.fail_kinds = {"EndpointSlice"}
    with start(api, tmp_path) as kdns:
        kdns.wait_for_log(r"api_synced resource=Service")
        kdns.wait_for_log(r"api_disconnected resource=EndpointSlice .*HTTP 500")
        assert rcode(kdns, "nope.shop.svc.cluster.local") == dns.rcode.SERVFAIL
        assert addrs(kdns, "web.shop.svc.cluster.local") == ["10.96.0.20"]  # what is known is served
        code, body = kdns.get("ready", "/ready")
        assert code == 503 and "kubernetes" in body
        assert "EndpointSlice" in kdns.get("ready", "/ready?verbose=1")[1]
        assert kdns.metric("kdns_api_synced", resource="EndpointSlice") == 0
        api.faults.fail_statuses = []
        wait_synced(kdns)
        assert rcode(kdns, "nope.shop.svc.cluster.local") == dns.rcode.NXDOMAIN
        assert kdns.metric("kdns_api_synced", resource="EndpointSlice") == 1


# ---------------------------------------------------------------- outages

def test_answers_are_kept_through_an_outage_and_staleness_is_visible(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        mark = len(kdns.lines)
        api.set_down(True)
        kdns.wait_for_log(r"api_disconnected resource=Service .*serving=\"last known state\"", start=mark)
        for _ in range(3):
            assert addrs(kdns, "web.shop.svc.cluster.local") == ["10.96.0.20"]
            assert rcode(kdns, "nope.shop.svc.cluster.local") == dns.rcode.NXDOMAIN  # synced: still authoritative
        wait_until(lambda: kdns.metric("kdns_api_last_contact_age_seconds", resource="Service") > 0.5,
                   what="staleness grows")
        assert kdns.metric("kdns_api_connected", resource="Service") == 0
        code, body = kdns.get("ready", "/ready?verbose=1")
        assert code == 200 and "disconnected" in body and "since last API contact" in body
        api.set_down(False)
        kdns.wait_for_log(r"api_reconnected resource=Service outage_seconds=", start=mark, timeout=10)
        api.apply(service("shop", "after", "10.96.0.40"))
        wait_until(lambda: addrs(kdns, "after.shop.svc.cluster.local") == ["10.96.0.40"], timeout=3, what="resumed")
        assert kdns.metric("kdns_api_last_contact_age_seconds", resource="Service") < 5


@pytest.mark.parametrize("how", ["event", "status"])
def test_relist_after_410_drops_objects_deleted_while_away(api, tmp_path, how):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        assert addrs(kdns, "web.shop.svc.cluster.local") == ["10.96.0.20"]
        api.set_down(True)
        kdns.wait_for_log(r"api_disconnected resource=Service")
        api.delete_quietly("Service", "shop", "web")  # no DELETED event will ever be sent
        api.apply(service("shop", "new", "10.96.0.50"))
        if how == "event":
            api.compact()  # the watch will get an ERROR event with a 410 Status
        else:
            api.compact()
            api.faults.gone_next_watch = {"Service": "status"}  # HTTP 410 on the watch request
        api.set_down(False)
        kdns.wait_for_log(r"api_relist resource=Service", timeout=10)
        wait_until(lambda: rcode(kdns, "web.shop.svc.cluster.local") == dns.rcode.NXDOMAIN, timeout=3,
                   what="quietly deleted service gone after relist")
        assert addrs(kdns, "new.shop.svc.cluster.local") == ["10.96.0.50"]
        kdns.wait_for_log(r"api_relist_removed resource=Service objects=1")
        assert kdns.metric("kdns_api_relists_total", resource="Service", reason="watch_expired") >= 1


def test_stream_closed_mid_event_resumes_from_last_version(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        watches = api.watch_count["Service"]
        api.cut_watches()
        api.apply(service("shop", "later", "10.96.0.60"))  # may land before or after the reconnect
        wait_until(lambda: addrs(kdns, "later.shop.svc.cluster.local") == ["10.96.0.60"], timeout=5, what="resumed")
        assert api.watch_count["Service"] > watches
        assert api.list_count["Service"] == 1  # resumed from the resourceVersion, no relist
        resumed = [q for p, q in api.requests if p == "/api/v1/services" and q.get("watch")][-1]
        assert int(resumed["resourceVersion"]) >= 7


def test_http_500_on_watch_backs_off_and_retries(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        api.faults.fail_kinds = {"Service"}
        api.faults.fail_statuses = [500, 500, 503]
        api.cut_watches()  # the reconnects meet the three failures, then succeed
        kdns.wait_for_log(r"api_disconnected resource=Service")
        kdns.wait_for_log(r"api_reconnected resource=Service", timeout=10)
        assert api.faults.fail_statuses == []
        assert kdns.metric("kdns_api_errors_total", resource="Service") == 4
        api.apply(service("shop", "back", "10.96.0.70"))
        wait_until(lambda: addrs(kdns, "back.shop.svc.cluster.local") == ["10.96.0.70"], timeout=3, what="back")
        assert api.list_count["Service"] == 1


def test_server_side_watch_timeout_resumes_silently(api, tmp_path):
    with start(api, tmp_path, "--api-watch-timeout", "1") as kdns:
        wait_synced(kdns)
        wait_until(lambda: api.watch_count["Service"] >= 3, timeout=10, what="several watch rounds")
        api.apply(service("shop", "quiet", "10.96.0.80"))
        wait_until(lambda: addrs(kdns, "quiet.shop.svc.cluster.local") == ["10.96.0.80"], timeout=3, what="served")
        assert not any("api_disconnected" in line for line in kdns.lines)
        assert api.list_count["Service"] == 1


def test_stalled_watch_is_reopened(api, tmp_path):
    with start(api, tmp_path, "--api-stall-timeout", "1") as kdns:
        wait_synced(kdns)
        watches = api.watch_count["Service"]
        api.faults.stall = True  # streams stay open but deliver nothing
        wait_until(lambda: api.watch_count["Service"] >= watches + 1, timeout=6, what="reopened after stall")
        api.faults.stall = False
        api.cut_watches()  # the stalled streams hold events back; a fresh watch replays from its version
        api.apply(service("shop", "unstalled", "10.96.0.90"))
        wait_until(lambda: addrs(kdns, "unstalled.shop.svc.cluster.local") == ["10.96.0.90"], timeout=5, what="served")


def test_bookmarks_advance_the_resource_version(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        for i in range(3):  # changes to other resources move the global resourceVersion
            api.apply(namespace(f"extra-{i}"))
        api.bookmark("Service")
        bookmark_rv = int(api._rv)
        wait_until(lambda: "Service: " in (body := kdns.get("ready", "/ready?verbose=1")[1])
                   and f"resourceVersion {bookmark_rv}" in body.split("Service: ")[1].split(";")[0],
                   timeout=10, what="the bookmark's resourceVersion taken")
        api.cut_watches()
        wait_until(lambda: any(p == "/api/v1/services" and q.get("watch") and int(q["resourceVersion"]) == bookmark_rv
                               for p, q in api.requests), timeout=5, what="watch resumed from the bookmark")


def test_relist_is_paged(api, tmp_path):
    add_services(api, 25)
    with start(api, tmp_path, "--api-page-size", "10") as kdns:
        wait_synced(kdns)
        assert addrs(kdns, "s24.bulk.svc.cluster.local") == ["10.97.0.25"]
        pages = [q for p, q in api.requests if p == "/api/v1/services" and not q.get("watch")]
        assert len(pages) == 3 and all(q["limit"] == "10" for q in pages) and "continue" in pages[1]


# ---------------------------------------------------------------- filters

def test_namespace_and_label_filters(api, tmp_path):
    api.apply(namespace("other", team="other"))
    api.apply(service("other", "web", "10.96.1.20"))
    api.apply(service("shop", "labelled", "10.96.0.99", labels={"expose": "yes"}))
    with start(api, tmp_path, "--namespaces", "shop,default", "--labels", "expose in (yes)") as kdns:
        wait_synced(kdns)
        assert addrs(kdns, "labelled.shop.svc.cluster.local") == ["10.96.0.99"]
        assert rcode(kdns, "web.shop.svc.cluster.local") == dns.rcode.NXDOMAIN  # label filter
        assert rcode(kdns, "web.other.svc.cluster.local") == dns.rcode.NXDOMAIN  # namespace filter
        assert rcode(kdns, "other.svc.cluster.local") == dns.rcode.NXDOMAIN
        api.apply(service("shop", "web", "10.96.0.20", labels={"expose": "yes"}))  # now matches
        wait_until(lambda: addrs(kdns, "web.shop.svc.cluster.local") == ["10.96.0.20"], timeout=2, what="matching")
        api.apply(service("shop", "web", "10.96.0.20", labels={"expose": "no"}))  # stops matching
        wait_until(lambda: rcode(kdns, "web.shop.svc.cluster.local") == dns.rcode.NXDOMAIN, timeout=2, what="unmatched")


def test_namespace_label_filter_follows_label_changes(api, tmp_path):
    with start(api, tmp_path, "--namespace-labels", "team=shop") as kdns:
        wait_synced(kdns)
        assert addrs(kdns, "web.shop.svc.cluster.local") == ["10.96.0.20"]
        assert rcode(kdns, "kubernetes.default.svc.cluster.local") == dns.rcode.NXDOMAIN
        api.apply(namespace("default", team="shop"))
        wait_until(lambda: addrs(kdns, "kubernetes.default.svc.cluster.local") == ["10.96.0.1"], timeout=2,
                   what="namespace labelled in")
        api.apply(namespace("shop", team="none"))
        wait_until(lambda: rcode(kdns, "web.shop.svc.cluster.local") == dns.rcode.NXDOMAIN, timeout=2,
                   what="namespace labelled out")


def test_pods_verified_watches_pods(api, tmp_path):
    api.apply(pod("shop", "web-1", "10.244.1.9"))
    with start(api, tmp_path, "--pods", "verified") as kdns:
        kdns.wait_for_log(r"api_synced resource=Pod")
        wait_synced(kdns)
        assert addrs(kdns, "10-244-1-9.shop.pod.cluster.local") == ["10.244.1.9"]
        assert rcode(kdns, "10-244-1-10.shop.pod.cluster.local") == dns.rcode.NXDOMAIN
        api.delete("Pod", "shop", "web-1")
        wait_until(lambda: rcode(kdns, "10-244-1-9.shop.pod.cluster.local") == dns.rcode.NXDOMAIN, timeout=2,
                   what="pod deleted")


def test_invalid_object_from_the_api_is_logged_and_the_rest_served(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        bad = service("shop", "broken", "10.96.0.5")
        bad["spec"]["clusterIP"] = "not-an-ip"
        bad["spec"]["clusterIPs"] = ["not-an-ip"]
        api.apply(bad)
        line = kdns.wait_for_log(r"api_object_invalid")
        assert "object=shop/broken" in line and "spec.clusterIP" in line
        api.apply(service("shop", "fine", "10.96.0.6"))
        wait_until(lambda: addrs(kdns, "fine.shop.svc.cluster.local") == ["10.96.0.6"], timeout=2, what="served")


# ---------------------------------------------------------------- authentication

@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def test_in_cluster_config_with_token_rotation(ca, tmp_path):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(ca.cert_pem.bytes())
    (sa / "token").write_text("token-one")
    with FakeApiServer(token="token-one", ssl_context=server_ctx) as api:
        seed(api)
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
        os.environ.update(env)
        try:
            proc = KdnsProcess("--serviceaccount-dir", str(sa), *FAST)  # no source flag: in-cluster is the default
            with proc as kdns:
                kdns.wait_for_log(r"api_source server=https://127\.0\.0\.1:\d+ config=\"in-cluster")
                wait_synced(kdns)
                assert addrs(kdns, "web.shop.svc.cluster.local") == ["10.96.0.20"]
                # the kubelet rotates the projected token: the next request must use the new one
                (sa / "token.tmp").write_text("token-two")
                os.replace(sa / "token.tmp", sa / "token")
                api.token = "token-two"
                api.cut_watches()
                api.apply(service("shop", "rotated", "10.96.0.77"))
                wait_until(lambda: addrs(kdns, "rotated.shop.svc.cluster.local") == ["10.96.0.77"], timeout=5,
                           what="served with the rotated token")
        finally:
            for key in env:
                os.environ.pop(key, None)


def test_kubeconfig_with_client_certificates_as_kind_writes_it(ca, tmp_path):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    client = ca.issue_cert("kubernetes-admin")
    with FakeApiServer(token=None, ssl_context=server_ctx) as api:
        seed(api)
        kubeconfig = write_kubeconfig(tmp_path / "kind.kubeconfig", api.url, ca_pem=ca.cert_pem.bytes(),
                                      client_cert_pem=client.cert_chain_pems[0].bytes(),
                                      client_key_pem=client.private_key_pem.bytes())
        with KdnsProcess("--kubeconfig", kubeconfig, *FAST) as kdns:
            wait_synced(kdns)
            assert addrs(kdns, "web.shop.svc.cluster.local") == ["10.96.0.20"]


def test_bad_kubeconfig_is_a_clear_startup_error(tmp_path):
    path = tmp_path / "nope.kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    proc = KdnsProcess("--kubeconfig", str(path))
    with pytest.raises(AssertionError, match=r"bad_config field=--kubeconfig"):
        with proc:
            pass
    assert proc.proc.wait(5) == 2
    assert any(re.search(r"bad_config field=--kubeconfig reason=", line) for line in proc.lines)
