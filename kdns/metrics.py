"""Prometheus metrics: a private registry per server, read from the live objects at scrape time."""

from __future__ import annotations

import weakref

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__


class KdnsCollector:
    """kdns_* metrics taken from the handler, cache, index and sources when scraped (no hot-path cost)."""

    def __init__(self, handler, index, api_source=None, manifest_source=None):
        self.handler = handler
        self.index = index
        self.api_source = api_source
        self.manifest_source = manifest_source

    def collect(self):
        stats = self.handler.stats
        queries = CounterMetricFamily("kdns_queries", "DNS queries received.", labels=["proto"])
        queries.add_metric(["udp"], stats["queries_udp"])
        queries.add_metric(["tcp"], stats["queries_tcp"])
        yield queries
        bad = CounterMetricFamily("kdns_bad_packets", "Malformed or unsupported packets.", labels=["action"])
        for action in ("dropped", "formerr", "notimp", "badvers"):
            bad.add_metric([action], stats[action])
        yield bad
        for name, key, text in (("kdns_truncated_responses", "truncated", "UDP responses sent with TC set."),
                                ("kdns_refused_responses", "refused", "Queries answered REFUSED."),
                                ("kdns_forwarded_queries", "forwarded", "Queries answered by asking upstream (forward)."),
                                ("kdns_forward_direct_queries", "forward_direct",
                                 "UDP queries for outside names the cache plugin missed, handed to forward as "
                                 "soon as read (without the full pipeline)."),
                                ("kdns_upstream_errors", "upstream_errors",
                                 "Forwarded queries answered SERVFAIL (the upstreams failed or said so)."),
                                ("kdns_internal_errors", "internal_errors", "Handler bugs answered SERVFAIL."),
                                ("kdns_negative_cover_answers", "negative_covered",
                                 "NXDOMAIN answers for <name>.<ns>.svc names without a service, served from the "
                                 "namespace's one negative cache entry."),
                                ("kdns_udp_overload_dropped", "udp_backlog_dropped",
                                 "UDP queries dropped unanswered because too many waited to be worked out "
                                 "(cached answers are still served).")):
            yield CounterMetricFamily(name, text, value=stats[key])
        cache = self.handler.cache
        yield GaugeMetricFamily("kdns_answer_cache_entries", "Packed answers cached.", value=len(cache))
        yield CounterMetricFamily("kdns_answer_cache_hits", "Answer cache hits.", value=cache.hits)
        yield CounterMetricFamily("kdns_answer_cache_misses", "Answer cache misses.", value=cache.misses)
        yield CounterMetricFamily("kdns_answer_cache_demotions", "Protected answers unused for 2 s moved back to "
                                  "probation to make room.", value=cache.demotions)
        yield CounterMetricFamily("kdns_answer_cache_not_promoted", "Reused answers left on probation because "
                                  "every protected answer was in use.", value=cache.not_promoted)
        yield GaugeMetricFamily("kdns_index_generation", "Changes applied to the cluster index.",
                                value=self.index.generation)
        yield GaugeMetricFamily("kdns_index_services", "Services in the index.", value=len(self.index.services))
        yield GaugeMetricFamily("kdns_index_synced", "1 once every source has completed its first sync.",
                                value=1 if self.index.synced else 0)
        if self.api_source is not None:
            synced = GaugeMetricFamily("kdns_api_synced", "1 once the resource's first list completed.",
                                       labels=["resource"])
            age = GaugeMetricFamily("kdns_api_last_contact_age_seconds",
                                    "Seconds since the last successful list/watch contact.", labels=["resource"])
            connected = GaugeMetricFamily("kdns_api_connected", "1 while the watch is healthy.", labels=["resource"])
            events = CounterMetricFamily("kdns_api_events", "Objects received by list and watch.", labels=["resource"])
            relists = CounterMetricFamily("kdns_api_relists", "Relists after 410 Gone, by what expired "
                                          "(watch_expired: the watch's resourceVersion; list_expired: a list's "
                                          "continue token).", labels=["resource", "reason"])
            errors = CounterMetricFamily("kdns_api_errors", "Failed list/watch attempts.", labels=["resource"])
            partial = CounterMetricFamily("kdns_api_objects_partially_served",
                                          "Object versions the API accepted with a part DNS cannot serve "
                                          "(logged as api_object_partially_served).", labels=["resource"])
            for kind, state in self.api_source.states.items():
                partial.add_metric([kind], state.partially_served)
                synced.add_metric([kind], 1 if state.synced else 0)
                age.add_metric([kind], self.api_source.age(kind))
                connected.add_metric([kind], 1 if state.connected else 0)
                events.add_metric([kind], state.events)
                for reason, count in sorted(state.relists.items()):
                    relists.add_metric([kind, reason], count)
                errors.add_metric([kind], state.errors)
            yield from (synced, age, connected, events, relists, errors, partial)
            yield self.api_source.catchup.family(
                "kdns_api_catchup_seconds", "Seconds from the API answering again (after an outage, or the 410 "
                "that asked for a relist) to the resource's relist being applied.", ["resource"])
        if self.manifest_source is not None:
            problems = sum(len(p) for p in self.manifest_source.problems.values())
            yield GaugeMetricFamily("kdns_manifest_problems", "Current problems in manifest files.", value=problems)
            yield CounterMetricFamily("kdns_manifest_objects_partially_served",
                                      "Objects loaded with a part DNS cannot serve (logged as "
                                      "manifest_object_partially_served).", value=self.manifest_source.partially_served)
        info = GaugeMetricFamily("kdns_build_info", "kdns version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


# ------------------------------------------------------------------------------ CoreDNS-named metrics

from bisect import bisect_left  # noqa: E402
from collections import defaultdict  # noqa: E402

from prometheus_client.core import HistogramMetricFamily  # noqa: E402

DURATION_BUCKETS = tuple(0.00025 * 2 ** i for i in range(16))  # ExponentialBuckets(0.00025, 2, 16)
MAX_SHARED_LABELS = 4096  # label sets key() shares at most (more: it starts over; sharing only saves memory)
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
COMMON_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
                35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3",
                51: "NSEC3PARAM", 64: "SVCB", 65: "HTTPS", 255: "ANY", 252: "AXFR", 251: "IXFR"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}


class Histogram:
    """Bucket counts per label tuple; cheap to observe (one bisect), exported at scrape time."""

    def __init__(self, buckets):
        self.buckets = tuple(float(b) for b in buckets)
        self.data: dict[tuple, list] = {}

    def observe(self, labels: tuple, value: float) -> None:
        self.add(labels, bisect_left(self.buckets, value), 1)
        self.add_sum(labels, value)

    def _entry(self, labels: tuple) -> list:
        entry = self.data.get(labels)
        if entry is None:
            entry = self.data[labels] = [[0] * (len(self.buckets) + 1), 0.0]
        return entry

    def add(self, labels: tuple, bucket: int, n: int) -> None:
        """n observations that fell in bucket index `bucket` (bisect_left of the buckets)."""
        self._entry(labels)[0][bucket] += n

    def add_sum(self, labels: tuple, value: float) -> None:
        self._entry(labels)[1] += value

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=label_names)
        for labels, (counts, total) in self.data.items():
            cumulative, acc = [], 0
            for bound, count in zip(self.buckets, counts):
                acc += count
                cumulative.append((_fmt(bound), acc))
            acc += counts[-1]
            cumulative.append(("+Inf", acc))
            fam.add_metric(list(labels), cumulative, total)
        return fam


class Tally:
    """coredns_dns_* of the direct forward path (direct.Direct.answered) as plain counters: per
    (IPv6?, type, DO, request size, rcode, response size, server block, upstream) -- the rest of the label set is
    the block's, "." and "forward" -- the queries per duration bucket and their seconds, folded into DnsMetrics
    when read (fold: every scrape); at most MAX_TALLY label sets between folds. `to`, when given, is the upstream
    that answered within the same time: its coredns_forward_* count too (DnsMetrics.count_upstream), so one
    tally stands for both. DnsMetrics owns it, so a reply that comes after its listener closed is counted all
    the same."""

    MAX_TALLY = 512

    def __init__(self, metrics: "DnsMetrics"):
        self.metrics = metrics
        # -> [seconds, count per duration bucket..., (labels, req, resp, to, rcode)]
        self.counts: dict[tuple, list] = {}

    def add(self, server: str, v6: bool, qtype: int, do: bool, req_size: int, rcode: int, resp_size: int,
            seconds: float, to: str | None = None) -> None:
        """One forwarded query answered over UDP (as DnsMetrics.observe(server, ".", "udp", ...) counts it), and
        when `to` is given, upstream `to`'s answer to it in the same `seconds` (as observe_upstream counts it)."""
        key = (v6, qtype, do, req_size, rcode, resp_size, server, to)
        counts = self.counts.get(key)
        if counts is None:
            if len(self.counts) >= self.MAX_TALLY:
                self.fold()
                self.counts.clear()
            labels = self.metrics.key(server, ".", "udp", "2" if v6 else "1", qtype, do, req_size, rcode, "forward",
                                      resp_size)
            counts = self.counts[key] = [0.0] + [0] * (len(DURATION_BUCKETS) + 1) + \
                [(labels, req_size, resp_size, to, rcode)]
        counts[0] += seconds
        counts[bisect_left(DURATION_BUCKETS, seconds) + 1] += 1

    def fold(self) -> None:
        """Hand the counts to DnsMetrics (raw, sums; the upstreams') and start again from zero."""
        for counts in self.counts.values():
            buckets = counts[1:-1]
            n = sum(buckets)
            if n:
                labels, req_size, resp_size, to, rcode = counts[-1]
                self.metrics.count_buckets(labels, buckets, counts[0], req_size * n, resp_size * n)
                if to is not None:
                    self.metrics.count_upstream(to, rcode, buckets, counts[0])
                counts[0] = 0.0
                counts[1:-1] = [0] * len(buckets)


def _fmt(value: float) -> str:
    return repr(float(value))


class DnsMetrics:
    """coredns_dns_* and friends, fed by the query handler; also owns forward/autopath/reload counters.

    A query costs one counter increment: `observe` counts the query's whole label set with its three
    histogram buckets in `raw`, and adds its duration and sizes to `sums`; the CoreDNS families
    (requests, responses, DO, the three histograms) are folded from them when scraped."""

    def __init__(self):
        # (server, zone, proto, family, qtype, do, rcode, plugin, req bucket, resp bucket, duration bucket)
        self.raw: dict[tuple, int] = {}
        self.sums: dict[tuple, list] = {}  # (server, zone, proto) -> [seconds, request bytes, response bytes]
        # (to, rcode) -> [their time in all, answers from upstream per duration bucket...]
        self._upstream: dict[tuple, list] = {}
        self.autopath_success: dict[str, int] = defaultdict(int)
        self.reload_failed = 0
        self.reload_hash = ""
        self.panics = 0
        self.plugins_enabled: set[tuple] = set()  # (server, zone, name)
        self.forwarders: list = []  # Forwarder objects (for rejects / health counters)
        self.caches: list = []  # (server, zones text, ResponseCache)
        self.loop_detected: dict[str, int] = {}
        self.handlers: weakref.WeakSet = weakref.WeakSet()  # query handlers whose front answers fold in here
        self.tally = Tally(self)  # the direct forward path's coredns_dns_* (direct.Direct.answered)
        self._labels: dict[tuple, tuple] = {}  # key(): one tuple per label set

    def observe(self, server: str, zone: str, proto: str, family: str, qtype: int, do: bool, req_size: int,
                rcode: int, plugin: str, resp_size: int, seconds: float) -> None:
        # count(key(...)) written out: this runs for every query a front answer does not take
        full = (server, zone, proto, family, COMMON_TYPES.get(qtype, "other"), do, rcode, plugin,
                bisect_left(SIZE_BUCKETS, req_size), bisect_left(SIZE_BUCKETS, resp_size),
                bisect_left(DURATION_BUCKETS, seconds))
        raw = self.raw
        raw[full] = raw.get(full, 0) + 1
        sums = self.sums.get((server, zone, proto))
        if sums is None:
            sums = self.sums[(server, zone, proto)] = [0.0, 0, 0]
        sums[0] += seconds
        sums[1] += req_size
        sums[2] += resp_size

    def key(self, server: str, zone: str, proto: str, family: str, qtype: int, do: bool, req_size: int, rcode: int,
            plugin: str, resp_size: int) -> tuple:
        """A query's label set with its size buckets (`raw`'s key but for the duration bucket); one tuple per
        label set, shared by the front answers and shapes that keep it."""
        # the type as its label value: 65,536 qtypes must not make 65,536 label sets (a flood of odd types)
        labels = (server, zone, proto, family, COMMON_TYPES.get(qtype, "other"), do, rcode, plugin,
                  bisect_left(SIZE_BUCKETS, req_size), bisect_left(SIZE_BUCKETS, resp_size))
        shared = self._labels.get(labels)
        if shared is None:
            if len(self._labels) >= MAX_SHARED_LABELS:
                self._labels.clear()
            shared = self._labels[labels] = labels
        return shared

    def count(self, key: tuple, seconds: float, n: int, req_size: int, resp_size: int) -> None:
        """n queries of label set `key` that took `seconds` each."""
        full = key + (bisect_left(DURATION_BUCKETS, seconds),)
        raw = self.raw
        raw[full] = raw.get(full, 0) + n
        self._add_sums(key, seconds * n, req_size * n, resp_size * n)

    def count_fast(self, key: tuple, n: int, seconds: float, req_bytes: int, resp_bytes: int) -> None:
        """n queries of label set `key`, each within the first duration bucket, `seconds` in all."""
        full = key + (0,)
        raw = self.raw
        raw[full] = raw.get(full, 0) + n
        self._add_sums(key, seconds, req_bytes, resp_bytes)

    def count_buckets(self, key: tuple, counts: list[int], seconds: float, req_bytes: int, resp_bytes: int) -> None:
        """Queries of label set `key`: counts[i] of them in duration bucket i, `seconds` in all."""
        raw = self.raw
        for bucket, n in enumerate(counts):
            if n:
                full = key + (bucket,)
                raw[full] = raw.get(full, 0) + n
        self._add_sums(key, seconds, req_bytes, resp_bytes)

    def _add_sums(self, key: tuple, seconds: float, req_bytes: int, resp_bytes: int) -> None:
        sums = self.sums.get(key[:3])
        if sums is None:
            sums = self.sums[key[:3]] = [0.0, 0, 0]
        sums[0] += seconds
        sums[1] += req_bytes
        sums[2] += resp_bytes

    def folded(self) -> "FoldedDns":
        """The coredns_dns_* families' data, folded from the per-query counters."""
        for handler in list(self.handlers):
            handler.flush()
        self.tally.fold()
        out = FoldedDns()
        for (server, zone, proto, family, qtype, do, rcode, plugin, req_b, resp_b, dur_b), n in list(self.raw.items()):
            out.requests[(server, zone, proto, family, qtype)] += n
            out.responses[(server, zone, RCODES.get(rcode, str(rcode)), plugin)] += n
            if do:
                out.do_requests[(server, zone)] += n
            out.duration.add((server, zone, ""), dur_b, n)
            out.request_size.add((server, zone, "", proto), req_b, n)
            out.response_size.add((server, zone, "", proto), resp_b, n)
        for (server, zone, proto), (seconds, req, resp) in list(self.sums.items()):
            out.request_size.add_sum((server, zone, "", proto), req)
            out.response_size.add_sum((server, zone, "", proto), resp)
            out.duration.add_sum((server, zone, ""), seconds)
        return out

    def _upstream_counts(self, to: str, rcode: int) -> list:
        counts = self._upstream.get((to, rcode))
        if counts is None:
            counts = self._upstream[(to, rcode)] = [0.0] + [0] * (len(DURATION_BUCKETS) + 1)
        return counts

    def observe_upstream(self, to: str, rcode: int, seconds: float) -> None:
        """An answer from upstream `to`: plain counters here, coredns_forward_*/proxy_* at scrape time."""
        counts = self._upstream_counts(to, rcode)
        counts[0] += seconds
        counts[bisect_left(DURATION_BUCKETS, seconds) + 1] += 1

    def count_upstream(self, to: str, rcode: int, buckets: list[int], seconds: float) -> None:
        """Answers from upstream `to`: buckets[i] of them in duration bucket i, `seconds` in all (Tally.fold)."""
        counts = self._upstream_counts(to, rcode)
        counts[0] += seconds
        for i, n in enumerate(buckets, 1):
            counts[i] += n

    @property
    def upstream_raw(self) -> dict[tuple, int]:
        """(to, rcode, duration bucket) -> answers from upstream."""
        self.tally.fold()
        return {(to, rcode, bucket): n for (to, rcode), counts in list(self._upstream.items())
                for bucket, n in enumerate(counts[1:]) if n}

    @property
    def upstream_seconds(self) -> dict[tuple, float]:
        """(to, rcode) -> the time of their answers in all."""
        self.tally.fold()
        return {key: counts[0] for key, counts in list(self._upstream.items())}

    @property
    def forward_requests(self) -> dict[str, int]:
        """coredns_forward_requests_total: to -> answers."""
        out: dict[str, int] = defaultdict(int)
        for (to, _, _), n in self.upstream_raw.items():
            out[to] += n
        return out

    @property
    def forward_responses(self) -> dict[tuple, int]:
        """coredns_forward_responses_total: (to, rcode name) -> answers."""
        out: dict[tuple, int] = defaultdict(int)
        for (to, rcode, _), n in self.upstream_raw.items():
            out[(to, RCODES.get(rcode, str(rcode)))] += n
        return out

    @property
    def proxy_duration(self) -> Histogram:
        """coredns_proxy_request_duration_seconds, labels ("forward", to, rcode name)."""
        out = Histogram(DURATION_BUCKETS)
        for (to, rcode, bucket), n in self.upstream_raw.items():
            out.add(("forward", to, RCODES.get(rcode, str(rcode))), bucket, n)
        for (to, rcode), seconds in self.upstream_seconds.items():
            out.add_sum(("forward", to, RCODES.get(rcode, str(rcode))), seconds)
        return out


class FoldedDns:
    """What the coredns_dns_* families export, folded from DnsMetrics.raw at scrape time."""

    def __init__(self):
        self.requests: dict[tuple, int] = defaultdict(int)  # (server, zone, proto, family, type)
        self.responses: dict[tuple, int] = defaultdict(int)  # (server, zone, rcode, plugin)
        self.do_requests: dict[tuple, int] = defaultdict(int)  # (server, zone)
        self.duration = Histogram(DURATION_BUCKETS)  # (server, zone, view)
        self.request_size = Histogram(SIZE_BUCKETS)  # (server, zone, view, proto)
        self.response_size = Histogram(SIZE_BUCKETS)


class CoreDnsCollector:
    def __init__(self, metrics: DnsMetrics):
        self.m = metrics

    def collect(self):
        m = self.m
        f = m.folded()
        req = CounterMetricFamily("coredns_dns_requests", "Counter of DNS requests made per zone, protocol and family.",
                                  labels=["server", "zone", "view", "proto", "family", "type"])
        for (server, zone, proto, family, qtype), n in f.requests.items():
            req.add_metric([server, zone, "", proto, family, qtype], n)
        yield req
        resp = CounterMetricFamily("coredns_dns_responses", "Counter of response status codes.",
                                   labels=["server", "zone", "view", "rcode", "plugin"])
        for (server, zone, rcode, plugin), n in f.responses.items():
            resp.add_metric([server, zone, "", rcode, plugin], n)
        yield resp
        do = CounterMetricFamily("coredns_dns_do_requests", "Counter of DNS requests with DO bit set per zone.",
                                 labels=["server", "zone", "view"])
        for (server, zone), n in f.do_requests.items():
            do.add_metric([server, zone, ""], n)
        yield do
        yield f.duration.family("coredns_dns_request_duration_seconds",
                                "Histogram of the time (in seconds) each request took per zone.",
                                ["server", "zone", "view"])
        yield f.request_size.family("coredns_dns_request_size_bytes",
                                    "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
                                    ["server", "zone", "view", "proto"])
        yield f.response_size.family("coredns_dns_response_size_bytes", "Size of the returned response in bytes.",
                                     ["server", "zone", "view", "proto"])
        enabled = GaugeMetricFamily("coredns_plugin_enabled", "A metric that indicates whether a plugin is enabled "
                                    "on per server and zone basis.", labels=["server", "zone", "view", "name"])
        for server, zone, name in sorted(m.plugins_enabled):
            enabled.add_metric([server, zone, "", name], 1)
        yield enabled
        yield CounterMetricFamily("coredns_panics", "A metrics that counts the number of panics.", value=m.panics)
        yield CounterMetricFamily("coredns_reload_failed", "Counter of the number of failed reload attempts.",
                                  value=m.reload_failed)
        version = GaugeMetricFamily("coredns_reload_version_info", "A metric with a constant '1' value labeled by "
                                    "hash, and value which type of hash generated.", labels=["hash", "value"])
        if m.reload_hash:
            version.add_metric(["sha512", m.reload_hash], 1)
        yield version
        info = GaugeMetricFamily("coredns_build_info", "A metric with a constant '1' value labeled by version, "
                                 "revision, and goversion from which CoreDNS was built.",
                                 labels=["version", "revision", "goversion"])
        import platform
        info.add_metric([f"kdns-{__version__}", "", f"python{platform.python_version()}"], 1)
        yield info
        # forward / proxy
        fr = CounterMetricFamily("coredns_forward_requests", "Counter of requests made per upstream.", labels=["to"])
        for to, n in m.forward_requests.items():
            fr.add_metric([to], n)
        yield fr
        fresp = CounterMetricFamily("coredns_forward_responses", "Counter of responses received per upstream.",
                                    labels=["to", "rcode"])
        for (to, rcode), n in m.forward_responses.items():
            fresp.add_metric([to, rcode], n)
        yield fresp
        yield m.proxy_duration.family("coredns_proxy_request_duration_seconds",
                                      "Histogram of the time each request took.", ["proxy_name", "to", "rcode"])
        rejects = sum(f.rejects for f in m.forwarders)
        broken = sum(f.healthcheck_broken for f in m.forwarders)
        yield CounterMetricFamily("coredns_forward_max_concurrent_rejects",
                                  "Counter of the number of queries rejected because the concurrent queries were "
                                  "at maximum.", value=rejects)
        yield CounterMetricFamily("coredns_forward_healthcheck_broken",
                                  "Counter of the number of complete failures of the healthchecks.", value=broken)
        hcf = CounterMetricFamily("coredns_proxy_healthcheck_failures", "Count of failed health checks per upstream.",
                                  labels=["proxy_name", "to"])
        for f in m.forwarders:
            for to, n in f.healthcheck_failures.items():
                hcf.add_metric(["forward", to], n)
        yield hcf
        ignored = CounterMetricFamily("kdns_forward_ignored_replies", "Upstream UDP replies not taken: no query "
                                      "waits with their ID, or they do not answer its question.", labels=["to", "reason"])
        for f in m.forwarders:
            for (to, reason), n in f.ignored_replies.items():
                ignored.add_metric([to, reason], n)
        yield ignored
        # cache
        entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the cache.",
                                    labels=["server", "type", "zones", "view"])
        hits = CounterMetricFamily("coredns_cache_hits", "The count of cache hits.",
                                   labels=["server", "type", "zones", "view"])
        misses = CounterMetricFamily("coredns_cache_misses", "The count of cache misses. Deprecated, derive "
                                     "misses from cache hits/requests counters.", labels=["server", "zones", "view"])
        requests = CounterMetricFamily("coredns_cache_requests", "The count of cache requests.",
                                       labels=["server", "zones", "view"])
        evictions = CounterMetricFamily("coredns_cache_evictions", "The count of cache evictions.",
                                        labels=["server", "type", "zones", "view"])
        not_admitted = CounterMetricFamily("kdns_cache_not_admitted", "Answers the cache plugin did not store: it "
                                           "was full and their name was asked for the first time.",
                                           labels=["server", "type", "zones"])
        for server, zones, cache in m.caches:
            for kind in ("success", "denial"):
                entries.add_metric([server, kind, zones, ""], cache.entries(kind))
                hits.add_metric([server, kind, zones, ""], cache.hits[kind])
                evictions.add_metric([server, kind, zones, ""], cache.evictions[kind])
                not_admitted.add_metric([server, kind, zones], cache.not_admitted[kind])
            misses.add_metric([server, zones, ""], cache.misses)
            requests.add_metric([server, zones, ""], cache.requests)
        yield from (entries, hits, misses, requests, evictions, not_admitted)
        ap = CounterMetricFamily("coredns_autopath_success", "Counter of requests that did autopath.",
                                 labels=["server"])
        for server, n in m.autopath_success.items():
            ap.add_metric([server], n)
        yield ap
        loop = GaugeMetricFamily("kdns_forward_loop_detected", "1 when a forwarding loop was detected at startup "
                                 "(forwarding is then off for that server block).", labels=["server"])
        for server, flag in m.loop_detected.items():
            loop.add_metric([server], flag)
        yield loop
