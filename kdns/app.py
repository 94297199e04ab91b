"""The running server: builds sources, server blocks, listeners and HTTP endpoints from Settings,
swaps them on reload without dropping listeners that did not change, and shuts down with lameduck."""

from __future__ import annotations

import asyncio
import random

from .cache import AnswerCache
from .config import DEFAULT_RESOLV_CONF, Settings, load_corefile, read_resolv_conf
from .corefile import CorefileError
from .corefile import digest as corefile_digest
from .forward import Forwarder
from .hosts import Hosts
from .http import ExplainEndpoint, HttpEndpoints
from .index import ClusterIndex
from .log import Logger, route_library_logs
from .memory import MemoryBudget, cgroup_memory_limit, format_size, index_bytes, rss_bytes
from .metrics import CoreDnsCollector, DnsMetrics, KdnsCollector
from .pipeline import Block
from .resolver import Resolver, ResolverConfig, ZoneSet
from .respcache import ResponseCache
from .server import NegativeRateLimit, QueryHandler
from .transport import bind
from .sources import object_filter, settle_heap
from .sources.manifests import ManifestSource
from .startup import StartupFailure, api_refused, listen_failed


# a full relist's transient peak over the RSS at ready, measured (perf/memory_relist.py, BENCH.md):
# 3-6% of it; at least 8 MiB for a reload's second config and the odd large response
HEADROOM_SHARE = 0.06
HEADROOM_MIN = 8 << 20


class Runtime:
    def __init__(self, settings: Settings, log: Logger, bind_host: str = "", resolv_conf: str = DEFAULT_RESOLV_CONF,
                 tcp_idle_timeout: float = 10.0, poll_interval: float = 0.25, api_options: dict | None = None,
                 serviceaccount_dir: str | None = None, reload_settings=None, port_map: dict | None = None,
                 tcp_max_connections: int | None = None, negative_rate_limit: float = 0.0, reuse_port: bool = False,
                 serve_http: bool = True, memory_budget: MemoryBudget | None = None, explain_listen: str | None = None):
        self.settings = settings
        self.budget_flag = memory_budget  # --memory-budget: wins over the Corefile's memory_budget
        self.budget = self._budget_for(settings)
        self._memory_cache: tuple | None = None  # (when, index generation, index bytes, index)
        self.log = log
        self.bind_host = bind_host
        self.resolv_conf = resolv_conf
        self.tcp_idle_timeout = tcp_idle_timeout
        self.poll_interval = poll_interval
        self.api_options = api_options or {}
        self.serviceaccount_dir = serviceaccount_dir
        self.port_map = port_map or {}  # Corefile port -> port actually bound (0: a free one)
        self.tcp_max_connections = tcp_max_connections
        self.reuse_port = reuse_port
        self.serve_http = serve_http  # --workers: only the first worker serves health/ready/metrics
        self.negative_rate_limit = negative_rate_limit
        # re-reads the Corefile (with the command line's overrides) on reload
        self.reload_settings = reload_settings or (lambda: load_corefile(self.settings.path, self.resolv_conf))
        self.metrics = DnsMetrics()
        self.metrics.reload_hash = settings.digest
        self.handlers: dict[tuple[int, str], QueryHandler] = {}  # (config port, host) -> handler
        self.listeners: dict[tuple[int, str], tuple] = {}  # (config port, host) -> (udp, tcp server, bound port)
        self.blocks: list[Block] = []
        self.index = ClusterIndex(implicit_namespaces=True)
        self.index.mark_synced()
        self.source = None
        self.source_key = None
        self._source_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []
        self._http_addresses: tuple = (None, None, None)
        self.http: HttpEndpoints | None = None
        self.http_bound: dict[str, str] = {}
        self.explain_listen = explain_listen  # --explain-listen: wins over the Corefile's `explain`
        self.explain: ExplainEndpoint | None = None
        self._explain_block = None  # the server block whose listener /explain answers for
        self._unstarted = None  # an API source whose threads start once every listener is up
        self.failure: StartupFailure | None = None  # why start-up cannot complete (the API refused us)
        self.on_failure = lambda: None  # called once, on the loop, when `failure` is set

    # -------------------------------------------------------------------- building

    async def start(self) -> None:
        """Bind every listener, then start the source: a port that cannot be had fails before any thread runs."""
        route_library_logs(self.log)  # aiohttp / asyncio complaints become one-line log events
        await self._apply(self.settings)
        if self.settings.reload and self.settings.path:
            self._tasks.append(asyncio.create_task(self._reload_loop()))
        self._tasks.append(asyncio.create_task(self.check_memory_fits()))

    def _budget_for(self, settings: Settings) -> MemoryBudget:
        if self.budget_flag is not None:
            return self.budget_flag
        sizes = [b.plugins["memory_budget"] for b in settings.blocks if "memory_budget" in b.plugins]
        return MemoryBudget(sizes[0]) if sizes else MemoryBudget()

    async def _apply(self, settings: Settings) -> None:
        self.budget = self._budget_for(settings)  # a reload may change it: the caches are resized below
        self._start_source(settings)
        k = settings.kubernetes
        blocks_by_listener: dict[tuple[int, str], list[Block]] = {}
        wanted = {(bc.port, host) for bc in settings.blocks for host in self._hosts(bc)}
        per_listener = self.budget.answers // max(1, len(wanted))
        answers = {key: self.handlers[key].cache if key in self.handlers else AnswerCache(per_listener)
                   for key in wanted}
        for cache in answers.values():
            cache.resize(per_listener)
        per_cache = self.budget.responses // max(1, sum(1 for bc in settings.blocks if bc.cache is not None))
        own = {(host, self.port_map.get(port, port)) for port, host in wanted}
        own |= {(host, self.listeners[key][2]) for key in wanted if key in self.listeners for host in [key[1]]}
        old_blocks = self.blocks
        new_blocks = []
        for bc in settings.blocks:
            parts = block_parts(bc, self.index, self.log, own, per_cache, k.zones if k else [], self.resolv_conf)
            # a Block per listener, sharing the plugins (cache, forwarder, hosts) of the server block; each
            # listener's answer cache holds only what its own blocks answered
            for host in self._hosts(bc):
                block = Block(bc, self.index, answers[(bc.port, host)], self.log, self.metrics,
                              listener=(bc.port, host), **parts)
                new_blocks.append(block)
                blocks_by_listener.setdefault((bc.port, host), []).append(block)
        # listeners: keep the (port, address) pairs that stay, bind new ones, close the ones gone
        for key, blocks in blocks_by_listener.items():
            handler = self.handlers.get(key)
            if handler is None:
                handler = QueryHandler(blocks, self.log, self.metrics, answers=answers[key])
                self.index.subscribe(handler.cache.invalidate)
                if self.negative_rate_limit > 0:
                    handler.negative_limit = NegativeRateLimit(self.negative_rate_limit,
                                                               max_sources=self.budget.rate_limit_sources)
                    handler._update_plain()
                port, host = key
                tcp_max = self.tcp_max_connections or max(1, self.budget.tcp_connections // len(wanted))
                try:
                    udp, tcp_server, _, bound = await self._bind(handler, host, port, tcp_max)
                except OSError as exc:
                    want = self.port_map.get(port, port)
                    shown = f"[{host}]" if ":" in host else host
                    raise listen_failed(exc, f"{shown}:{want}", f"dns://:{port}", want) from None
                self.handlers[key] = handler
                self.listeners[key] = (udp, tcp_server, bound)
                if old_blocks:
                    self.log.info("listener_opened", server=f"dns://:{port}", address=show_address(host, bound))
            else:
                handler.set_blocks(blocks)
            handler.observe = settings.prometheus is not None
        for key in list(self.listeners):
            if key not in blocks_by_listener:
                udp, tcp_server, bound = self.listeners.pop(key)
                udp.close()
                tcp_server.close()
                self.handlers.pop(key).flush()  # its front answers' counts into the metrics
                self.log.info("listener_closed", port=bound, address=show_address(key[1], bound))
        for block in old_blocks:
            if block.forwarder is not None:
                block.forwarder.close()
        self.blocks = new_blocks
        self._register_metrics(settings)
        await self._start_http(settings)
        await self._start_explain(settings)
        self._tasks = [t for t in self._tasks if not t.done()]  # finished loop checks etc. of earlier configs
        for block in _per_server_block(new_blocks):
            if block.hosts is not None:
                self._tasks.append(asyncio.create_task(self._hosts_loop(block)))
            if block.config.loop and block.forwarder is not None:
                self._tasks.append(asyncio.create_task(self._check_loop(block)))
        for warning in settings.warnings:
            self.log.warning("config_warning", detail=warning)
        self.settings = settings
        self._start_unstarted()

    def _start_unstarted(self) -> None:
        if self._unstarted is not None:
            self._unstarted.start()
            self._unstarted = None

    def _fail(self, failure: StartupFailure) -> None:
        if self.failure is None:
            self.failure = failure
            self.on_failure()

    def _hosts(self, bc) -> list[str]:
        """The addresses a block listens on: its `bind`, else kdns's --bind (default every interface)."""
        bind = bc.plugins.get("bind")
        return list(bind.addresses) if bind is not None else [self.bind_host]

    async def _bind(self, handler: QueryHandler, host: str, port: int, tcp_max: int):
        """UDP+TCP for (host, Corefile port); a port mapped to 0 takes the port another address of it got."""
        target = self.port_map.get(port, port)
        if target == 0:
            taken = [b for (p, _), (_, _, b) in self.listeners.items() if p == port]
            if taken:
                try:
                    return await self._bind_at(handler, host, taken[0], tcp_max)
                except OSError:
                    pass
        return await self._bind_at(handler, host, target, tcp_max)

    async def _bind_at(self, handler: QueryHandler, host: str, port: int, tcp_max: int):
        return await bind(handler, self.log, host, port, tcp_idle_timeout=self.tcp_idle_timeout,
                          tcp_max_connections=tcp_max, reuse_port=self.reuse_port)

    def _start_source(self, settings: Settings) -> None:
        k = settings.kubernetes
        key = k.source_key() if k is not None else None
        if key == self.source_key and self.source is not None:
            return
        self._stop_source()
        self.source_key = key
        if k is None:
            return
        use_api = not k.manifests
        index = index_for(k)
        wanted = object_filter(k.namespaces, k.labels)
        if use_api:
            from .sources.api import ApiSource, build_api_client
            client, where = build_api_client(k.kubeconfig, k.context, self.serviceaccount_dir, endpoint=k.endpoint,
                                             tls=k.tls)
            kinds = ["Service", "Namespace"] + ([] if k.noendpoints else ["EndpointSlice"])
            if k.pods == "verified":
                kinds.append("Pod")
            source = ApiSource(client, index, self.log, kinds, wanted=wanted, **self.api_options)
            source.on_refused = lambda kind, verb, failure: self._fail(api_refused(
                kind, failure.status, verb, source.server, where, failure.message))
            self.log.info("api_source", server=client.configuration.host, config=where, resources=",".join(kinds))
            self._unstarted = source
        else:
            source = ManifestSource(k.manifests, index, self.log, wanted=wanted)
            source.load()  # synced once every file has loaded (a file broken from the start is not)
            settle_heap()
            self._source_task = asyncio.create_task(source.run(self.poll_interval))
        # the handlers follow the new index
        for handler in self.handlers.values():
            index.subscribe(handler.cache.invalidate)
            handler.cache.clear()
        self.index = index
        self.source = source

    def _stop_source(self) -> None:
        self._unstarted = None
        if self.source is not None and hasattr(self.source, "stop"):
            self.source.stop()
        if self._source_task is not None:
            self._source_task.cancel()
            self._source_task = None
        self.source = None

    def _register_metrics(self, settings: Settings) -> None:
        m = self.metrics
        m.plugins_enabled = set()
        blocks = _per_server_block(self.blocks)
        m.forwarders = [b.forwarder for b in blocks if b.forwarder is not None]
        m.caches = [(b.name, " ".join(z or "." for z in b.cache.config.zones), b.cache)
                    for b in blocks if b.cache is not None]
        for b in self.blocks:
            c = b.config
            names = [n for n, on in (("kubernetes", c.kubernetes), ("forward", c.forward), ("cache", c.cache),
                                     ("hosts", c.hosts), ("autopath", c.autopath), ("loadbalance", c.loadbalance),
                                     ("log", c.log), ("errors", c.errors), ("loop", c.loop)) if on]
            for zone in c.zones:
                for name in names:
                    m.plugins_enabled.add((b.name, zone or ".", name))

    def _mapped(self, address: str | None) -> str | None:
        if address is None or not self.port_map:
            return address
        host, _, port = address.rpartition(":")
        return f"{host}:{self.port_map.get(int(port), int(port))}"

    async def _start_http(self, settings: Settings) -> None:
        addresses = tuple(self._mapped(a) if self.serve_http else None
                          for a in (settings.health, settings.ready, settings.prometheus))
        if self.http is not None and addresses == self._http_addresses:
            return
        if self.http is not None:
            await self.http.stop()
        from prometheus_client import CollectorRegistry
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CoreDnsCollector(self.metrics))
        registry.register(_RuntimeCollector(self))
        self.http = HttpEndpoints(registry)
        self.http.add_ready_check("kubernetes", self._source_ready)
        self.http.add_ready_check("memory", lambda: (True, self.memory_line()))
        self.http.add_advisory("forward", self._loop_report)
        self.http_bound = await self.http.start(*addresses)
        self._http_addresses = addresses

    async def _start_explain(self, settings: Settings) -> None:
        """/explain on the configured address (off by default), answering with the blocks of the listener of
        the server block that names `explain` (with --explain-listen: the first block)."""
        named = [bc for bc in settings.blocks if "explain" in bc.plugins]
        address = self.explain_listen or (named[0].plugins["explain"] if named else None)
        self._explain_block = named[0] if named else (settings.blocks[0] if settings.blocks else None)
        if not self.serve_http:
            address = None
        if self.explain is not None and (address is None or address != self.explain.address):
            await self.explain.stop()
            self.explain = None
            self.http_bound.pop("explain", None)
        if address is not None and self.explain is None:
            self.explain = ExplainEndpoint(self._explain_blocks)
            await self.explain.start(address)
        if self.explain is not None:  # _start_http may have replaced http_bound
            self.http_bound["explain"] = self.explain.bound

    def _explain_blocks(self) -> list[Block]:
        owner = next((b for b in self.blocks if b.config is self._explain_block), None)
        return [b for b in self.blocks if owner is not None and b.listener == owner.listener]

    def _source_ready(self) -> tuple[bool, str]:
        if self.source is not None and hasattr(self.source, "ready"):
            return self.source.ready()
        return True, "manifests loaded" if self.source is not None else "no kubernetes source"

    # -------------------------------------------------------------------- memory

    def index_bytes(self, max_age: float = 60.0) -> int:
        """The index's estimated footprint, re-measured when it changed and the last figure is older than max_age."""
        import time
        now = time.monotonic()
        cached = self._memory_cache
        if cached is None or (cached[1] != self.index.generation and now - cached[0] > max_age) \
                or cached[3] is not self.index:
            self._memory_cache = cached = (now, self.index.generation, index_bytes(self.index), self.index)
        return cached[2]

    def cache_bytes(self) -> dict[str, int]:
        return {"answers": sum(h.cache.bytes for h in self.handlers.values()),
                "responses": sum(b.cache.bytes for b in _per_server_block(self.blocks) if b.cache is not None)}

    def memory_line(self) -> str:
        rss = rss_bytes()
        limit = cgroup_memory_limit()
        caches = self.cache_bytes()
        return (f"rss {format_size(rss) if rss else 'unknown'}, index {format_size(self.index_bytes())}, "
                f"caches {format_size(sum(caches.values()))} of a {format_size(self.budget.total)} budget, "
                f"limit {format_size(limit[0]) if limit else 'none'}")

    async def check_memory_fits(self, timeout: float = 600.0) -> None:
        """Once the source has synced: warn when the index plus the budget cannot fit the cgroup's limit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.index.synced and loop.time() < deadline:
            await asyncio.sleep(0.5)
        if not self.index.synced:
            return
        limit = cgroup_memory_limit()
        rss = rss_bytes()
        if limit is None or rss is None:
            return
        need = rss + self.budget.total + max(HEADROOM_MIN, int(rss * HEADROOM_SHARE))
        fields = dict(rss=format_size(rss), index=format_size(self.index_bytes(max_age=0)),
                      budget=format_size(self.budget.total), limit=format_size(limit[0]), source=limit[1])
        if need > limit[0]:
            self.log.warning("memory_limit_too_small", **fields, needed=format_size(need),
                             fix="raise the container's memory limit (deploy/README.md: sizing) or lower "
                                 "--memory-budget; under a flood of new names kdns would grow into the limit")
        else:
            self.log.info("memory_fits", **fields)

    def _loop_report(self) -> str:
        looped = [b.name for b in self.blocks if b.loop_detected]
        return f"forwarding loop detected in {', '.join(looped)}: forwarding stopped there" if looped else ""

    # -------------------------------------------------------------------- background work

    async def _hosts_loop(self, block: Block) -> None:
        while block in self.blocks:
            await asyncio.sleep(block.hosts.config.reload)
            if block.hosts.reload():
                for handler in self.handlers.values():
                    handler.cache.clear()  # hosts answers take precedence over cached cluster answers

    async def _check_loop(self, block: Block) -> None:
        port = self.listeners[block.listener][2]
        host = block.listener[1]
        host = host if host not in ("", "::", "0.0.0.0") else "127.0.0.1"
        await block.check_loop((host, port))

    async def _reload_loop(self) -> None:
        while True:
            interval, jitter = self.settings.reload or (30.0, 15.0)
            await asyncio.sleep(max(0.5, interval + random.uniform(-jitter, jitter)))
            path = self.settings.path
            try:
                with open(path, "rb") as fh:  # the Corefile and what it imports: an edit to either reloads
                    digest = corefile_digest(fh.read().decode("utf-8", errors="replace"), path)
            except OSError as exc:
                self.metrics.reload_failed += 1
                self.log.error("reload_failed", file=path, error=exc.strerror, action="keeping the running config")
                continue
            if digest == self.settings.digest:
                continue
            try:
                new = self.reload_settings()
            except CorefileError as exc:
                self.metrics.reload_failed += 1
                self.log.error("reload_failed", error=str(exc), action="keeping the running config")
                self.settings.digest = digest  # report a broken file once, not every poll
                continue
            try:
                await self._apply(new)
            except Exception as exc:  # noqa: BLE001 - e.g. a new port that cannot be bound
                self._start_unstarted()  # a new source is in place: follow it even if a listener failed
                self.metrics.reload_failed += 1
                self.log.error("reload_failed", error=repr(exc), action="keeping what could be kept")
                continue
            self.metrics.reload_hash = digest
            self.log.info("reloaded", file=path, hash=digest[:16], ports=",".join(map(str, new.ports)))

    # -------------------------------------------------------------------- shutdown

    async def shutdown(self, lameduck: float = 0.0) -> None:
        if lameduck > 0 and self.http is not None:
            self.http.lameduck = True
            self.log.info("lameduck", seconds=lameduck, ready="failing", dns="still serving")
            await asyncio.sleep(lameduck)
        for task in self._tasks:
            task.cancel()
        self._stop_source()
        for udp, tcp_server, _ in self.listeners.values():
            udp.close()
            tcp_server.close()
        for block in self.blocks:
            if block.forwarder is not None:
                block.forwarder.close()
        if self.http is not None:
            await self.http.stop()
        if self.explain is not None:
            await self.explain.stop()


def index_for(k) -> ClusterIndex:
    """An empty index with the kubernetes directive's namespace filters (manifests: a namespace named by
    any object exists)."""
    return ClusterIndex(implicit_namespaces=bool(k.manifests), namespaces=k.namespaces,
                        namespace_selector=k.namespace_labels, endpoint_pod_names=k.endpoint_pod_names)


def block_parts(bc, index: ClusterIndex, log: Logger, own: set, per_cache: int, zones: list[str],
                resolv_conf: str) -> dict:
    """The plugins every Block of one server block shares: resolver, forwarder, response cache, hosts and
    the autopath search list (keyword arguments of Block)."""
    resolver = None
    if bc.kubernetes is not None:
        resolver = Resolver(index, ResolverConfig(
            zones=ZoneSet(bc.kubernetes.zones), ttl=bc.kubernetes.ttl, pods=bc.kubernetes.pods,
            can_chase=bc.forward is not None, ignore_empty_service=bc.kubernetes.ignore_empty_service,
            zonal=bc.kubernetes.zonal))
    forwarder = Forwarder(bc.forward, log, own) if bc.forward is not None else None
    cache = ResponseCache(bc.cache, own_zones=zones, max_bytes=per_cache) if bc.cache is not None else None
    hosts = Hosts(bc.hosts, log) if bc.hosts is not None else None
    search: list[str] = []
    if bc.autopath is not None:
        path = resolv_conf if bc.autopath.source.startswith("@") else bc.autopath.source
        try:
            search = read_resolv_conf(path)[1]
        except OSError as exc:
            log.warning("autopath_resolv_conf_unreadable", file=path, error=exc.strerror,
                        effect="no host search domains are tried")
    return dict(resolver=resolver, forwarder=forwarder, cache=cache, hosts=hosts, search_domains=search)


def _per_server_block(blocks: list[Block]) -> list[Block]:
    """One Block of each server block (the others are the same block on its other bind addresses)."""
    seen: set[int] = set()
    out = []
    for block in blocks:
        if id(block.config) not in seen:
            seen.add(id(block.config))
            out.append(block)
    return out


def show_address(host: str, port: int) -> str:
    """HOST:PORT as logged ([v6]:port; every interface is [::])."""
    host = host or "::"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _RuntimeCollector:
    """kdns_* metrics of whatever handler/index/source the runtime currently has."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def collect(self):
        from .sources.manifests import ManifestSource as _MS
        rt = self.runtime
        handlers = list(rt.handlers.values())
        if not handlers:
            return
        source = rt.source
        api = source if source is not None and not isinstance(source, _MS) else None
        manifests = source if isinstance(source, _MS) else None
        yield from KdnsCollector(_MergedHandlers(handlers), rt.index, api, manifests).collect()
        yield from _memory_metrics(rt)


def _memory_metrics(rt: Runtime):
    from prometheus_client.core import GaugeMetricFamily
    yield GaugeMetricFamily("kdns_memory_budget_bytes", "Bytes allowed for traffic-grown state (caches, "
                            "rate-limit buckets): --memory-budget.", value=rt.budget.total)
    cache = GaugeMetricFamily("kdns_cache_bytes", "Bytes held by each cache, as accounted against the budget.",
                              labels=["cache"])
    for name, n in rt.cache_bytes().items():
        cache.add_metric([name], n)
    yield cache
    yield GaugeMetricFamily("kdns_index_bytes", "Estimated bytes held by the cluster index (sampled deep size).",
                            value=rt.index_bytes())
    rss = rss_bytes()
    if rss is not None:
        yield GaugeMetricFamily("kdns_resident_memory_bytes", "Resident set size of this process.", value=rss)
    limit = cgroup_memory_limit()
    if limit is not None:
        yield GaugeMetricFamily("kdns_memory_limit_bytes", "The memory cgroup limit this process runs under.",
                                value=limit[0])


class _MergedHandlers:
    """Sum of the per-port handlers' stats and caches, for the kdns_* collector."""

    def __init__(self, handlers: list[QueryHandler]):
        from collections import Counter
        self.stats = Counter()
        for h in handlers:
            self.stats.update(h.stats)
        self.cache = _MergedCache([h.cache for h in handlers])


class _MergedCache:
    def __init__(self, caches):
        self.hits = sum(c.hits for c in caches)
        self.misses = sum(c.misses for c in caches)
        self.demotions = sum(c.demotions for c in caches)
        self.not_promoted = sum(c.not_promoted for c in caches)
        self._len = sum(len(c) for c in caches)

    def __len__(self) -> int:
        return self._len
