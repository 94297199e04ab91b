"""Hand-built cluster objects for tests: short constructors with realistic defaults."""

from __future__ import annotations

from kdns.index import ClusterIndex
from kdns.objects import Endpoint, EndpointSlice, Namespace, Pod, Service, ServicePort
from kdns.resolver import Resolver, ResolverConfig, ZoneSet


def port(name: str, number: int, protocol: str = "TCP") -> ServicePort:
    return ServicePort(name, number, protocol)


def clusterip(ns: str, name: str, *ips: str, ports=(), publish=False) -> Service:
    return Service(ns, name, "ClusterIP", cluster_ips=tuple(ips), ports=tuple(ports), publish_not_ready=publish)


def headless(ns: str, name: str, ports=(), publish=False) -> Service:
    return Service(ns, name, "Headless", ports=tuple(ports), publish_not_ready=publish)


def external(ns: str, name: str, target: str) -> Service:
    return Service(ns, name, "ExternalName", external_name=target)


def ep(*ips: str, ready: bool = True, hostname: str = "", pod: str = "") -> Endpoint:
    return Endpoint(tuple(ips), ready=ready, hostname=hostname, pod_name=pod)


def eps(ns: str, svc: str, *endpoints: Endpoint, ports=(), name: str | None = None) -> EndpointSlice:
    return EndpointSlice(ns, name or f"{svc}-abc12", svc, tuple(endpoints), tuple(ports))


def legacy(ns: str, svc: str, *endpoints: Endpoint, ports=()) -> EndpointSlice:
    return EndpointSlice(ns, svc, svc, tuple(endpoints), tuple(ports), legacy=True)


def namespace(name: str) -> Namespace:
    return Namespace(name)


def pod(ns: str, name: str, *ips: str) -> Pod:
    return Pod(ns, name, tuple(ips))


def build(*objects, zones=("cluster.local", "in-addr.arpa", "ip6.arpa"), ttl=5, pods="disabled",
          implicit=False, synced=True, can_chase=False):
    index = ClusterIndex(implicit_namespaces=implicit)
    for obj in objects:
        index.upsert(obj)
    if synced:
        index.mark_synced()
    config = ResolverConfig(zones=ZoneSet(list(zones)), ttl=ttl, pods=pods, can_chase=can_chase)
    return index, Resolver(index, config)


def handler_for(*objects, loadbalance=False, **kwargs):
    """A QueryHandler with one `.` server block whose kubernetes plugin serves these objects."""
    import io

    from kdns.cache import AnswerCache
    from kdns.config import BlockConfig, KubernetesConfig
    from kdns.log import Logger
    from kdns.metrics import DnsMetrics
    from kdns.pipeline import Block
    from kdns.server import QueryHandler

    index, resolver = build(*objects, **kwargs)
    log = Logger(stream=io.StringIO())
    answers = AnswerCache()
    config = BlockConfig(zones=[""], port=53, kubernetes=KubernetesConfig(zones=list(kwargs.get("zones", ["cluster.local"]))),
                         loadbalance=loadbalance)
    block = Block(config, index, answers, log, DnsMetrics(), resolver=resolver)
    handler = QueryHandler([block], log, answers=answers)
    index.subscribe(answers.invalidate)
    handler.resolver = resolver  # for tests that break it on purpose
    return index, handler


def no_cover(handler):
    """The handler with the namespace negative cover off (Block._cover): the exact-key negative cache
    alone, which answers the names a cover does not take (hosts or autopath blocks, deeper names)."""
    for block in handler.blocks:
        block._cover = lambda *args: None
    return handler


def forward_handler(upstream_port: int, options: str = "max_concurrent 1000", more_upstreams: str = ""):
    """A QueryHandler (prometheus on) for kubeadm's `.` block -- kubernetes, forward to 127.0.0.1:PORT (and
    `more_upstreams`) with these options, cache 30, loadbalance -- its forwarder live (close it with
    handler.blocks[0].forwarder)."""
    import io

    from kdns.cache import AnswerCache
    from kdns.config import settings_from_corefile
    from kdns.forward import Forwarder
    from kdns.log import Logger
    from kdns.metrics import DnsMetrics
    from kdns.pipeline import Block
    from kdns.respcache import ResponseCache
    from kdns.server import QueryHandler

    corefile = f""".:53 {{
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . 127.0.0.1:{upstream_port} {more_upstreams} {{
       {options}
    }}
    cache 30
    loadbalance
}}
"""
    (bc,) = settings_from_corefile(corefile, "Corefile").blocks
    index, resolver = build(namespace("default"), clusterip("default", "kubernetes", "10.96.0.1"))
    log = Logger(stream=io.StringIO())
    answers = AnswerCache()
    metrics = DnsMetrics()
    block = Block(bc, index, answers, log, metrics, resolver=resolver, forwarder=Forwarder(bc.forward, log),
                  cache=ResponseCache(bc.cache, own_zones=bc.kubernetes.zones))
    handler = QueryHandler([block], log, metrics, answers=answers)
    handler.observe = True
    return handler
