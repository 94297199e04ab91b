"""Prometheus metrics: a private registry per server, read from the live objects at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
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
                                ("kdns_forwarded_queries", "forwarded", "Queries forwarded upstream."),
                                ("kdns_upstream_errors", "upstream_errors", "Upstream failures (SERVFAIL sent)."),
                                ("kdns_internal_errors", "internal_errors", "Handler bugs answered SERVFAIL.")):
            yield CounterMetricFamily(name, text, value=stats[key])
        cache = self.handler.cache
        yield GaugeMetricFamily("kdns_answer_cache_entries", "Packed answers cached.", value=len(cache))
        yield CounterMetricFamily("kdns_answer_cache_hits", "Answer cache hits.", value=cache.hits)
        yield CounterMetricFamily("kdns_answer_cache_misses", "Answer cache misses.", value=cache.misses)
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
            relists = CounterMetricFamily("kdns_api_relists", "Relists after 410 Gone.", labels=["resource"])
            errors = CounterMetricFamily("kdns_api_errors", "Failed list/watch attempts.", labels=["resource"])
            for kind, state in self.api_source.states.items():
                synced.add_metric([kind], 1 if state.synced else 0)
                age.add_metric([kind], self.api_source.age(kind))
                connected.add_metric([kind], 1 if state.connected else 0)
                events.add_metric([kind], state.events)
                relists.add_metric([kind], state.relists)
                errors.add_metric([kind], state.errors)
            yield from (synced, age, connected, events, relists, errors)
        if self.manifest_source is not None:
            problems = sum(len(p) for p in self.manifest_source.problems.values())
            yield GaugeMetricFamily("kdns_manifest_problems", "Current problems in manifest files.", value=problems)
        info = GaugeMetricFamily("kdns_build_info", "kdns version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def build_registry(handler, index, api_source=None, manifest_source=None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KdnsCollector(handler, index, api_source, manifest_source))
    return registry
