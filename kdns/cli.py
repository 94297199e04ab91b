"""Command line: `kdns serve ...`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .forward import Upstream, parse_hostport
from .index import ClusterIndex
from .log import Logger
from .resolver import Resolver, ResolverConfig, ZoneSet
from .server import QueryHandler, bind
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
    serve = sub.add_parser("serve", help="serve DNS for a cluster described by manifests")
    serve.add_argument("--manifests", action="append", default=[], metavar="PATH",
                       help="file or directory of Kubernetes YAML (repeatable); edits are picked up live")
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
    if not args.manifests:
        log.error("bad_config", field="--manifests", reason="at least one --manifests PATH is required")
        return 2
    index = ClusterIndex(implicit_namespaces=True)
    source = ManifestSource(args.manifests, index, log)
    source.load()
    index.mark_synced()
    config = ResolverConfig(zones=zones, ttl=args.ttl, pods=args.pods, can_chase=upstream is not None)
    handler = QueryHandler(index, Resolver(index, config), log, upstream=upstream)
    try:
        host, port = parse_hostport(args.listen, 53)
        udp, tcp_server, _, bound = await bind(handler, log, host, port,
                                                  tcp_idle_timeout=args.tcp_idle_timeout)
    except (OSError, ValueError) as exc:
        log.error("listen_failed", address=args.listen, error=str(exc))
        return 1
    shown = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    log.info("listening", udp=shown, tcp=shown, zones=",".join(z.name for z in zones.zones),
             services=len(index.services), upstream=str(upstream) if upstream else "none")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    poller = asyncio.create_task(source.run(args.poll_interval))
    reporter = asyncio.create_task(_report_bad_packets(handler, log, args.stats_interval))
    await stop.wait()
    log.info("shutting_down")
    poller.cancel()
    reporter.cancel()
    udp.close()
    tcp_server.close()
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
