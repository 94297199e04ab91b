"""Catching up after the API returns: restarts (connections refused) with history compacted meanwhile,
so every re-watch gets 410; the real `kubernetes` client against the API double, answers checked
with dnspython. How fast kdns catches up is measured in perf/ (perf/soak.py, perf/BENCH.md); here the
deadlines are generous and the checks are on what happened: one relist per resource, its reason,
the old state served until the new one replaces it in one step."""

from __future__ import annotations

import re

import dns.rcode
import pytest

from apiserver import FakeApiServer, add_services, endpointslice, kubeconfig_args, namespace, pod, service
from harness import KdnsProcess, answers, wait_until

RESOURCES = ("Service", "EndpointSlice", "Namespace", "Pod")
# the default --api-backoff-max (30 s) on purpose: connection errors during an outage must not
# stretch the wait after it; an exponential backoff (0.5 s doubling) would, after OUTAGE_FAILURES
# failures, be waiting 15-30 s: longer than CATCH_UP
OUTAGE_FAILURES = 7
CATCH_UP = 10.0  # generous deadline (seconds) for answers to be current after the API is back


def seed(api: FakeApiServer) -> None:
    api.apply(namespace("shop"))
    api.apply(namespace("gone-ns"))
    api.apply(service("shop", "web", "10.96.0.20"))
    api.apply(service("shop", "cart", "10.96.0.21"))
    api.apply(service("shop", "db", "None"))
    api.apply(endpointslice("shop", "db", "db-a", "10.244.1.5"))
    api.apply(pod("shop", "web-1", "10.244.7.9"))


@pytest.fixture
def api():
    with FakeApiServer() as server:
        seed(server)
        yield server


def start(api: FakeApiServer, tmp_path, *extra: str) -> KdnsProcess:
    return KdnsProcess(*kubeconfig_args(api, tmp_path), "--pods", "verified", "--ready-listen", "127.0.0.1:0",
                       "--metrics-listen", "127.0.0.1:0", *extra)


def a(kdns: KdnsProcess, name: str) -> list[str]:
    return answers(kdns.query(name, "A"))


def rcode(kdns: KdnsProcess, name: str) -> int:
    return kdns.query(name, "A").rcode()


def verbose(kdns: KdnsProcess) -> str:
    return kdns.get("ready", "/ready?verbose=1")[1]


def served_after_change(api: FakeApiServer, kdns: KdnsProcess, name: str, ip: str) -> None:
    """A new service reaches the answers: the watch works again."""
    api.apply(service("shop", name, ip))
    wait_until(lambda: a(kdns, f"{name}.shop.svc.cluster.local") == [ip], timeout=CATCH_UP, what=f"{name} served")


def wait_synced(kdns: KdnsProcess) -> None:
    wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, timeout=15, what="ready")


def relist_lines(kdns: KdnsProcess, kind: str, start: int) -> list[str]:
    return [line for line in kdns.lines[start:] if re.search(rf"api_relist resource={kind}\b", line)]


def outage(api: FakeApiServer, kdns: KdnsProcess, round_: int) -> None:
    """The API goes away (connections refused); kdns keeps failing to reach it; meanwhile every
    resource changes and the history is compacted, as etcd does while an apiserver restarts."""
    errors = {kind: kdns.metric("kdns_api_errors_total", resource=kind) for kind in RESOURCES}
    api.set_unreachable(True)
    for kind in RESOURCES:
        wait_until(lambda: kdns.metric("kdns_api_errors_total", resource=kind) >= errors[kind] + OUTAGE_FAILURES,
                   timeout=60, what=f"{kind}: {OUTAGE_FAILURES} failed attempts while unreachable")
    body = verbose(kdns)
    assert all(f"{kind}: reconnecting (API unreachable" in body for kind in RESOURCES), body
    # served from the last state throughout, including names deleted meanwhile
    last = "10.96.0.20" if round_ == 1 else "10.96.1.20"
    assert a(kdns, "web.shop.svc.cluster.local") == [last]
    api.apply(service("shop", "web", f"10.96.{round_}.20"))
    api.delete_quietly("Service", "shop", "cart" if round_ == 1 else f"new-{round_ - 1}")
    api.apply(service("shop", f"new-{round_}", f"10.96.{round_}.50"))
    api.apply(endpointslice("shop", "db", "db-a", f"10.244.{round_}.6"))
    api.apply(pod("shop", "web-1", f"10.244.{round_}.9"))
    api.apply(namespace(f"ns-{round_}"))
    if round_ == 1:
        api.delete_quietly("Namespace", "", "gone-ns")
    api.compact()
    assert a(kdns, "web.shop.svc.cluster.local") == [last]


def current(kdns: KdnsProcess, round_: int) -> bool:
    """Every resource's change from outage `round_` is served."""
    deleted = "cart" if round_ == 1 else f"new-{round_ - 1}"
    return (a(kdns, "web.shop.svc.cluster.local") == [f"10.96.{round_}.20"]
            and rcode(kdns, f"{deleted}.shop.svc.cluster.local") == dns.rcode.NXDOMAIN
            and a(kdns, f"new-{round_}.shop.svc.cluster.local") == [f"10.96.{round_}.50"]
            and a(kdns, "db.shop.svc.cluster.local") == [f"10.244.{round_}.6"]
            and a(kdns, f"10-244-{round_}-9.shop.pod.cluster.local") == [f"10.244.{round_}.9"]
            and rcode(kdns, "10-244-7-9.shop.pod.cluster.local") == dns.rcode.NXDOMAIN
            and rcode(kdns, f"ns-{round_}.svc.cluster.local") == dns.rcode.NOERROR
            and rcode(kdns, "gone-ns.svc.cluster.local") == dns.rcode.NXDOMAIN)


def test_after_a_restart_with_compaction_every_resource_relists_once_and_serves_the_new_state(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        mark = len(kdns.lines)
        outage(api, kdns, 1)
        api.set_unreachable(False)
        wait_until(lambda: current(kdns, 1), timeout=CATCH_UP, interval=0.1, what="answers current after the return")
        for kind in RESOURCES:
            kdns.wait_for_log(rf"api_relisted resource={kind} .*reason=watch_expired catchup_seconds=", start=mark)
            lines = relist_lines(kdns, kind, mark)
            assert len(lines) == 1 and "reason=watch_expired" in lines[0] and "retry_in" not in lines[0], lines
            assert kdns.metric("kdns_api_relists_total", resource=kind, reason="watch_expired") == 1
            assert kdns.metric("kdns_api_relists_total", resource=kind, reason="list_expired") == 0
            assert kdns.metric("kdns_api_catchup_seconds_count", resource=kind) == 1
        wait_until(lambda: all(f"{kind}: watching" in verbose(kdns) for kind in RESOURCES), what="all watching")
        served_after_change(api, kdns, "later", "10.96.9.9")


def test_two_outages_in_a_row_each_relist_at_once(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        mark = len(kdns.lines)
        for round_ in (1, 2):
            outage(api, kdns, round_)
            api.set_unreachable(False)
            wait_until(lambda: current(kdns, round_), timeout=CATCH_UP, interval=0.1,
                       what=f"answers current after return {round_}")
            for kind in RESOURCES:
                kdns.wait_for_log(rf"api_relisted resource={kind} .*reason=watch_expired", start=mark)
        for kind in RESOURCES:
            lines = relist_lines(kdns, kind, mark)
            # each outage's 410 followed a working watch, so neither waited out a backoff
            assert len(lines) == 2 and not any("retry_in" in line for line in lines), lines
            assert kdns.metric("kdns_api_relists_total", resource=kind, reason="watch_expired") == 2
            assert kdns.metric("kdns_api_catchup_seconds_count", resource=kind) == 2


def test_the_last_state_is_served_while_relisting_and_replaced_in_one_step(api, tmp_path):
    # one headless service whose endpoints come in six slices: one answer shows all six at once
    api.apply(namespace("bulk"))
    api.apply(service("bulk", "hl", "None"))
    for i in range(6):
        api.apply(endpointslice("bulk", "hl", f"hl-{i}", f"10.98.0.{i + 1}"))
    new = sorted(f"10.98.1.{i + 1}" for i in range(6))
    with start(api, tmp_path, "--api-page-size", "2") as kdns:
        wait_synced(kdns)
        api.set_unreachable(True)
        wait_until(lambda: "EndpointSlice: reconnecting (API unreachable" in verbose(kdns), what="unreachable")
        for i in range(6):
            api.apply(endpointslice("bulk", "hl", f"hl-{i}", f"10.98.1.{i + 1}"))
        api.compact()
        api.faults.list_delay = 0.5  # four pages of slices: the relist takes seconds
        api.set_unreachable(False)
        wait_until(lambda: "EndpointSlice: relisting (410 Gone: watch_expired" in verbose(kdns), timeout=CATCH_UP,
                   what="verbose ready shows the relist")
        samples = []

        def switched() -> bool:
            got = sorted(a(kdns, "hl.bulk.svc.cluster.local"))
            samples.append({ip.split(".")[2] for ip in got})
            return got == new

        wait_until(switched, timeout=CATCH_UP, interval=0.01, what="the new state served")
        api.faults.list_delay = 0
        assert {"0"} in samples  # the old state was served during the relist...
        assert all(len(sample) == 1 for sample in samples), samples  # ...and never a mix of old and new


def test_a_relist_whose_continue_token_expires_starts_over(api, tmp_path):
    add_services(api, 5)
    with start(api, tmp_path, "--api-page-size", "2") as kdns:
        wait_synced(kdns)
        mark = len(kdns.lines)
        api.faults.list_delay = 0.5
        api.delete_quietly("Service", "bulk", "s4")
        api.compact()
        api.cut_watches()  # the re-watches get 410: relists of several pages each
        sent = len(api.requests)
        wait_until(lambda: any(p == "/api/v1/services" and "continue" in q for p, q in api.requests[sent:]),
                   timeout=CATCH_UP, what="the relist asks for its second page")
        api.compact()  # during that page's delay: its continue token is now too old
        kdns.wait_for_log(r"api_relist resource=Service reason=list_expired", start=mark, timeout=CATCH_UP)
        api.faults.list_delay = 0
        kdns.wait_for_log(r"api_relisted resource=Service .*reason=list_expired", start=mark, timeout=CATCH_UP)
        wait_until(lambda: rcode(kdns, "s4.bulk.svc.cluster.local") == dns.rcode.NXDOMAIN, what="s4 gone")
        assert a(kdns, "s3.bulk.svc.cluster.local") == ["10.97.0.4"]
        assert kdns.metric("kdns_api_relists_total", resource="Service", reason="list_expired") == 1


def test_410_again_right_after_a_relist_backs_off(api, tmp_path):
    with start(api, tmp_path, "--api-backoff-max", "2") as kdns:
        wait_synced(kdns)
        mark = len(kdns.lines)
        api.faults.gone_every_watch = {"Service"}
        api.cut_watches()
        wait_until(lambda: len(relist_lines(kdns, "Service", mark)) >= 3, timeout=CATCH_UP, what="repeated 410s")
        lines = relist_lines(kdns, "Service", mark)
        assert "retry_in" not in lines[0]  # the first 410 after a working watch: relist at once
        assert all("retry_in=" in line for line in lines[1:3])  # back to back: backed off
        api.faults.gone_every_watch = set()
        kdns.wait_for_log(r"api_relisted resource=Service", start=mark, timeout=CATCH_UP)
        served_after_change(api, kdns, "after", "10.96.0.77")


def test_an_api_answering_errors_is_backed_off_and_retry_after_honoured(api, tmp_path):
    with start(api, tmp_path) as kdns:
        wait_synced(kdns)
        mark = len(kdns.lines)
        api.faults.fail_kinds = {"Service"}
        api.faults.retry_after = "3"
        api.faults.fail_statuses = [429]
        sent = len(api.requests)
        api.cut_watches()
        wait_until(lambda: "Service: reconnecting (API answering with errors" in (body := verbose(kdns))
                   and "HTTP 429" in body, what="the 429 shown")
        wait_until(lambda: sum(p == "/api/v1/services" for p, _ in api.requests[sent:]) >= 2, timeout=CATCH_UP,
                   what="retried")
        services = [t for (p, _), t in zip(api.requests[sent:], api.request_times[sent:]) if p == "/api/v1/services"]
        assert services[1] - services[0] >= 3.0  # the retry came no sooner than the API asked
        kdns.wait_for_log(r"api_reconnected resource=Service", start=mark, timeout=CATCH_UP)
        served_after_change(api, kdns, "after", "10.96.0.78")
