"""coredns_dns_* families folded at scrape time from the per-query counters: exact counts, buckets
and sums for known observations (the values below are worked out by hand from CoreDNS's buckets)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from kdns.metrics import COMMON_TYPES, DURATION_BUCKETS, CoreDnsCollector, DnsMetrics, Tally


def scrape(m: DnsMetrics) -> dict[tuple, float]:
    """{(name, frozenset of label pairs): value} from the text exposition."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoreDnsCollector(m))
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels))
            out[(name, pairs)] = float(value)
    return out


def at(got: dict, name: str, **labels) -> float:
    labels = {"server": "dns://:53", "zone": ".", "view": "", **labels}
    return got[(name, frozenset(labels.items()))]


def test_folded_families_count_each_query_once_with_its_buckets_and_sums():
    m = DnsMetrics()
    # server, zone, proto, family, qtype, do, request size, rcode, plugin, response size, seconds
    m.observe("dns://:53", ".", "udp", "1", 1, False, 512, 0, "kubernetes", 90, 0.0001)
    m.observe("dns://:53", ".", "udp", "1", 1, False, 512, 0, "kubernetes", 90, 0.0001)  # the same again
    m.observe("dns://:53", ".", "udp", "1", 1, True, 1232, 3, "kubernetes", 150, 0.0003)
    m.observe("dns://:53", ".", "tcp", "2", 99, False, 65535, 0, "cache", 400, 0.002)
    got = scrape(m)
    assert at(got, "coredns_dns_requests_total", family="1", proto="udp", type="A") == 3
    assert at(got, "coredns_dns_requests_total", family="2", proto="tcp", type="other") == 1
    assert at(got, "coredns_dns_responses_total", plugin="kubernetes", rcode="NOERROR") == 2
    assert at(got, "coredns_dns_responses_total", plugin="kubernetes", rcode="NXDOMAIN") == 1
    assert at(got, "coredns_dns_responses_total", plugin="cache", rcode="NOERROR") == 1
    assert at(got, "coredns_dns_do_requests_total") == 1
    # duration buckets 0.00025 * 2^i: 0.0001 under 0.00025, 0.0003 under 0.0005, 0.002 at 0.002
    d = "coredns_dns_request_duration_seconds"
    assert [at(got, d + "_bucket", le=le) for le in ("0.00025", "0.0005", "0.001", "0.002")] == [2, 3, 3, 4]
    assert at(got, d + "_count") == 4 and abs(at(got, d + "_sum") - 0.0025) < 1e-12
    # request sizes per proto: udp 512 (<= 1023) and 1232 (<= 2047); tcp 65535 (+Inf only)
    r = "coredns_dns_request_size_bytes"
    assert [at(got, r + "_bucket", le=le, proto="udp") for le in ("511.0", "1023.0", "2047.0")] == [0, 2, 3]
    assert at(got, r + "_sum", proto="udp") == 2256
    assert at(got, r + "_bucket", le="64000.0", proto="tcp") == 0
    assert at(got, r + "_bucket", le="+Inf", proto="tcp") == 1
    a = "coredns_dns_response_size_bytes"
    assert [at(got, a + "_bucket", le=le, proto="udp") for le in ("0.0", "100.0", "200.0")] == [0, 2, 3]
    assert at(got, a + "_sum", proto="tcp") == 400


def test_label_sets_stay_bounded_under_any_qtype():
    m = DnsMetrics()
    for qtype in range(0, 65536, 7):  # a flood of odd query types: one "other" label set, not thousands
        m.observe("dns://:53", ".", "udp", "1", qtype, False, 512, 4, "", 40, 0.0001)
    assert len(m.raw) <= len(set(COMMON_TYPES.values())) + 1
    got = scrape(m)
    assert at(got, "coredns_dns_requests_total", family="1", proto="udp", type="other") > 9000


def test_the_direct_forward_tally_folds_to_what_observe_counts():
    """Tally (the direct forward path's counters) against DnsMetrics.observe fed the same queries: the same
    raw counts per label set and duration bucket and the same sums once scraped (DnsMetrics.folded), across
    more label sets than it keeps between folds (MAX_TALLY: folded early) and scraped twice (nothing counted
    again)."""
    want, got = DnsMetrics(), DnsMetrics()
    tally = got.tally
    queries = []
    for i in range(Tally.MAX_TALLY + 200):
        v6 = i % 3 == 0
        qtype = (1, 28, 33, 12, 99)[i % 5]
        seconds = DURATION_BUCKETS[i % len(DURATION_BUCKETS)] * (0.5 if i % 2 else 1.5)  # below and above a bound
        queries.append((v6, qtype, bool(i % 2), 512 + i % 7, (0, 3, 2)[i % 3], 60 + i, seconds))
    for v6, qtype, do, req, rcode, resp, seconds in queries * 2:
        want.observe("dns://:53", ".", "udp", "2" if v6 else "1", qtype, do, req, rcode, "forward", resp, seconds)
        tally.add("dns://:53", v6, qtype, do, req, rcode, resp, seconds)
    got.folded()  # a scrape folds it
    got.folded()
    assert got.raw == want.raw
    assert got.sums.keys() == want.sums.keys()
    for key, (seconds, req, resp) in want.sums.items():
        assert got.sums[key][1:] == [req, resp]
        assert abs(got.sums[key][0] - seconds) < 1e-9
