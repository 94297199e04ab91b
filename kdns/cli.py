"""Command line: `kdns serve ...`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from .forward import Upstream, parse_hostport
from .http import HttpEndpoints
from .index import ClusterIndex
from .log import Logger
from .metrics import build_registry
from .resolver import Resolver, ResolverConfig, ZoneSet
from .selectors import SelectorError, parse_selector
from .server import QueryHandler, bind
from .sources import object_filter
from .sources.manifests import ManifestSource

DEFAULT_ZONES = ["cluster.local", "in-addr.arpa", "ip6.arpa"]


def _ttl(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"ttl must be between 0 and 3600, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdns", description="Kubernetes cluster DNS server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve DNS for a cluster (API watch, or manifests on disk)")
    source = serve.add_argument_group("cluster source (one of)")
    source.add_argument("--manifests", action="append", default=[], metavar="PATH",
                        help="file or directory of Kubernetes YAML (repeatable); edits are picked up live")
    source.add_argument("--kubeconfig", metavar="PATH", help="follow the API server of this kubeconfig")
    source.add_argument("--context", metavar="NAME", help="kubeconfig context (default: current-context)")
    source.add_argument("--in-cluster", action="store_true",
                        help="use the pod's service account (the default when KUBERNETES_SERVICE_HOST is set "
                             "and no other source is given)")
    source.add_argument("--serviceaccount-dir", default="/var/run/secrets/kubernetes.io/serviceaccount",
                        metavar="DIR", help="where the in-cluster token and ca.crt are (default %(default)s)")
    source.add_argument("--api-watch-timeout", type=int, default=300, metavar="SECONDS",
                        help="server-side watch timeout, randomised up to twice this (default %(default)s)")
    source.add_argument("--api-stall-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="reopen a watch that delivered nothing, not even a bookmark, this long (default %(default)s)")
    source.add_argument("--api-page-size", type=int, default=500, metavar="N",
                        help="list in pages of N objects, so a relist never holds the whole list (default %(default)s)")
    source.add_argument("--api-backoff-max", type=float, default=30.0, metavar="SECONDS",
                        help="cap of the exponential reconnect backoff (default %(default)s)")
    filters = serve.add_argument_group("what is served (as CoreDNS's namespaces / labels / namespace_labels)")
    filters.add_argument("--namespaces", metavar="NS,NS", help="serve only these namespaces")
    filters.add_argument("--labels", metavar="SELECTOR", help="serve only services matching this label selector")
    filters.add_argument("--namespace-labels", metavar="SELECTOR",
                         help="serve only namespaces whose labels match this selector")
    http = serve.add_argument_group("HTTP endpoints (off unless given; HOST:PORT, port 0 picks one)")
    http.add_argument("--health-listen", metavar="HOST:PORT", help="GET /health -> 200 OK (CoreDNS: :8080)")
    http.add_argument("--ready-listen", metavar="HOST:PORT",
                      help="GET /ready -> 200 OK once synced, else 503 naming what is not (CoreDNS: :8181)")
    http.add_argument("--metrics-listen", metavar="HOST:PORT", help="GET /metrics, Prometheus (CoreDNS: :9153)")
    serve.add_argument("--listen", default="127.0.0.1:5353", metavar="HOST:PORT",
                       help="address for UDP and TCP (port 0 picks a free port; default %(default)s)")
    serve.add_argument("--zone", action="append", default=[], metavar="ZONE",
                       help="authoritative zone (repeatable; default: cluster.local in-addr.arpa ip6.arpa); "
                            "the first forward zone names PTR targets and SOA records")
    serve.add_argument("--ttl", type=_ttl, default=5, help="TTL of cluster answers (0-3600, default 5)")
    serve.add_argument("--pods", choices=["disabled", "insecure", "verified"], default="disabled",
                       help="pod A records <a-b-c-d>.<ns>.pod.<zone> (default disabled)")
    serve.add_argument("--upstream", default="none", metavar="HOST:PORT|none",
                       help="forward names outside our zones here and chase ExternalName targets "
                            "(default none: such names are REFUSED)")
    serve.add_argument("--poll-interval", type=float, default=0.25, metavar="SECONDS",
                       help="how often manifest files are checked for edits (default 0.25)")
    serve.add_argument("--tcp-idle-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="close TCP connections idle this long (default 10, RFC 7766)")
    serve.add_argument("--stats-interval", type=float, default=10.0, metavar="SECONDS",
                       help="how often a summary of malformed packets is logged, if any arrived (default 10)")
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    return parser


async def serve(args: argparse.Namespace, log: Logger) -> int:
    try:
        zones = ZoneSet(args.zone or DEFAULT_ZONES)
    except ValueError as exc:
        log.error("bad_config", field="--zone", reason=str(exc))
        return 2
    upstream = None
    if args.upstream != "none":
        try:
            host, port = parse_hostport(args.upstream, 53)
        except ValueError:
            log.error("bad_config", field="--upstream", reason=f"expected HOST:PORT or none, got {args.upstream!r}")
            return 2
        upstream = Upstream(host, port)
    try:
        labels = parse_selector(args.labels) if args.labels else None
        ns_labels = parse_selector(args.namespace_labels) if args.namespace_labels else None
    except SelectorError as exc:
        log.error("bad_config", field="--labels/--namespace-labels", reason=str(exc))
        return 2
    namespaces = frozenset(n.strip() for n in args.namespaces.split(",") if n.strip()) if args.namespaces else None
    use_api = bool(args.kubeconfig or args.in_cluster)
    if args.manifests and use_api:
        log.error("bad_config", field="--manifests", reason="give either --manifests or --kubeconfig/--in-cluster")
        return 2
    if not args.manifests and not use_api:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            use_api = True
        else:
            log.error("bad_config", field="--manifests",
                      reason="no cluster source: give --manifests PATH or --kubeconfig PATH (or run in a pod)")
            return 2

    index = ClusterIndex(implicit_namespaces=not use_api, namespaces=namespaces, namespace_selector=ns_labels)
    wanted = object_filter(namespaces, labels)
    manifest_source = api_source = None
    if use_api:
        from .sources.api import ApiSource, ConfigError, build_api_client  # the client is heavy to import
        try:
            api_client, where = build_api_client(args.kubeconfig, args.context, args.serviceaccount_dir)
        except ConfigError as exc:
            log.error("bad_config", field="--kubeconfig" if args.kubeconfig else "--in-cluster", reason=str(exc))
            return 2
        kinds = ["Service", "EndpointSlice", "Namespace"] + (["Pod"] if args.pods == "verified" else [])
        api_source = ApiSource(api_client, index, log, kinds, wanted=wanted, watch_timeout=args.api_watch_timeout,
                               stall_timeout=args.api_stall_timeout, backoff_max=args.api_backoff_max,
                               page_size=args.api_page_size)
        log.info("api_source", server=api_client.configuration.host, config=where, resources=",".join(kinds))
    else:
        manifest_source = ManifestSource(args.manifests, index, log, wanted=wanted)
        manifest_source.load()
        index.mark_synced()
    config = ResolverConfig(zones=zones, ttl=args.ttl, pods=args.pods, can_chase=upstream is not None)
    handler = QueryHandler(index, Resolver(index, config), log, upstream=upstream)

    http = HttpEndpoints(build_registry(handler, index, api_source, manifest_source))
    if api_source is not None:
        http.add_ready_check("kubernetes", api_source.ready)
    try:
        host, port = parse_hostport(args.listen, 53)
        udp, tcp_server, _, bound = await bind(handler, log, host, port,
                                                  tcp_idle_timeout=args.tcp_idle_timeout)
        http_bound = await http.start(args.health_listen, args.ready_listen, args.metrics_listen)
    except (OSError, ValueError) as exc:
        log.error("listen_failed", error=str(exc))
        return 1
    shown = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    log.info("listening", udp=shown, tcp=shown, **http_bound, zones=",".join(z.name for z in zones.zones),
             upstream=str(upstream) if upstream else "none")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(_report_bad_packets(handler, log, args.stats_interval))]
    if manifest_source is not None:
        tasks.append(asyncio.create_task(manifest_source.run(args.poll_interval)))
    if api_source is not None:
        api_source.start()
    await stop.wait()
    log.info("shutting_down")
    if api_source is not None:
        api_source.stop()
    for task in tasks:
        task.cancel()
    udp.close()
    tcp_server.close()
    await http.stop()
    return 0


async def _report_bad_packets(handler: QueryHandler, log: Logger, every: float = 10.0) -> None:
    """One log line per interval when malformed packets arrived (never one line per packet)."""
    last = (0, 0, 0)
    while True:
        await asyncio.sleep(every)
        s = handler.stats
        now = (s["dropped"], s["formerr"], s["notimp"])
        if now != last:
            log.warning("bad_packets", dropped=now[0] - last[0], formerr=now[1] - last[1],
                        notimp=now[2] - last[2], total_dropped=now[0], total_formerr=now[1])
            last = now


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = Logger(fmt=args.log_format, level=args.log_level)
    if args.command == "serve":
        try:
            return asyncio.run(serve(args, log))
        except KeyboardInterrupt:
            return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
