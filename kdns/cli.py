"""Command line: `kdns serve ...`, `kdns check-config COREFILE`, and CoreDNS's `kdns -conf COREFILE`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

from .config import (DEFAULT_RESOLV_CONF, AutopathConfig, BlockConfig, ForwardConfig, KubernetesConfig, Settings,
                     load_corefile, normalize_zone)
from .corefile import CorefileError
from .explain_cli import add_arguments as add_explain_arguments
from .forward import parse_hostport
from .http import split_address
from .log import Logger
from .memory import MemoryBudget, parse_size
from .selectors import SelectorError, parse_selector
from .startup import (EXIT_CONFIG, EXIT_OK, ArgumentParser, StartupFailure, bad_config, bounded,
                      check_manifest_paths, early_log_format, exit_now, listener_clash, non_negative, port_number,
                      positive, reported)

DEFAULT_ZONES = ["cluster.local", "in-addr.arpa", "ip6.arpa"]


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number 0-3600, got {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"ttl must be between 0 and 3600, got {value}")
    return value


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cluster_flags(parser: argparse.ArgumentParser) -> tuple:
    """The flags that say which cluster and what to serve, shared by serve and explain; returns the
    (Corefile, source, what-to-serve) argument groups for the command's own additions."""
    conf = parser.add_argument_group("Corefile (CoreDNS drop-in)")
    conf.add_argument("--corefile", "-conf", dest="corefile", metavar="PATH",
                      help="serve what this Corefile says (CoreDNS syntax; kdns -conf PATH works as coredns does)")
    conf.add_argument("--dns-port", "-dns.port", "-p", dest="dns_port", type=port_number, default=53, metavar="PORT",
                      help="port for Corefile server blocks that name none (default 53)")
    conf.add_argument("--resolv-conf", default=DEFAULT_RESOLV_CONF, metavar="PATH",
                      help="read the host's resolv.conf from here: `forward . /etc/resolv.conf` upstreams and "
                           "autopath search domains (default %(default)s)")
    source = parser.add_argument_group("cluster source (overrides the Corefile's kubernetes source when given)")
    source.add_argument("--manifests", action="append", default=[], metavar="PATH",
                        help="file or directory of Kubernetes YAML (repeatable); edits are picked up live")
    source.add_argument("--kubeconfig", metavar="PATH", help="follow the API server of this kubeconfig")
    source.add_argument("--context", metavar="NAME", help="kubeconfig context (default: current-context)")
    source.add_argument("--in-cluster", action="store_true",
                        help="use the pod's service account (the default when KUBERNETES_SERVICE_HOST is set "
                             "and no other source is given)")
    source.add_argument("--serviceaccount-dir", default="/var/run/secrets/kubernetes.io/serviceaccount",
                        metavar="DIR", help="where the in-cluster token and ca.crt are (default %(default)s)")
    flags = parser.add_argument_group("without a Corefile: what to serve")
    flags.add_argument("--zone", action="append", default=[], metavar="ZONE",
                       help="authoritative zone (repeatable; default: cluster.local in-addr.arpa ip6.arpa); "
                            "the first forward zone names PTR targets and SOA records")
    flags.add_argument("--ttl", type=_ttl, default=5, help="TTL of cluster answers (0-3600, default 5)")
    flags.add_argument("--pods", choices=["disabled", "insecure", "verified"], default="disabled",
                       help="pod A records <a-b-c-d>.<ns>.pod.<zone> (default disabled)")
    flags.add_argument("--upstream", default="none", metavar="HOST:PORT|none",
                       help="forward names outside our zones here and chase ExternalName targets "
                            "(default none: such names are REFUSED)")
    flags.add_argument("--autopath", action="store_true",
                       help="server-side search path for <name>.<ns>.svc.<zone> misses (as autopath @kubernetes)")
    flags.add_argument("--namespaces", metavar="NS,NS", help="serve only these namespaces")
    flags.add_argument("--labels", metavar="SELECTOR", help="serve only services matching this label selector")
    flags.add_argument("--namespace-labels", metavar="SELECTOR",
                       help="serve only namespaces whose labels match this selector")
    return conf, source, flags


def _explain_address(text: str) -> str:
    from .plugins.explain import listen_address
    try:
        return listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="kdns", description="Kubernetes cluster DNS server.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve DNS for a cluster (Corefile, API watch, or manifests on disk)",
                           allow_abbrev=False)
    conf, source, flags = _cluster_flags(serve)
    conf.add_argument("--port-map", action="append", default=[], metavar="FROM=TO",
                      help="serve the Corefile's port FROM (DNS, health, ready or prometheus) on port TO instead "
                           "(TO 0: a free port); e.g. run the kind Corefile unprivileged with --port-map 53=5353 "
                           "(repeatable)")
    conf.add_argument("--bind", default=None, metavar="HOST",
                      help="address the Corefile's listeners bind (default: every interface)")
    source.add_argument("--api-watch-timeout", type=bounded(int, 1), default=300, metavar="SECONDS",
                        help="server-side watch timeout, randomised up to twice this (default %(default)s)")
    source.add_argument("--api-stall-timeout", type=positive, default=120.0, metavar="SECONDS",
                        help="reopen a watch that delivered nothing, not even a bookmark, this long (default %(default)s)")
    source.add_argument("--api-page-size", type=bounded(int, 1), default=500, metavar="N",
                        help="list in pages of N objects, so a relist never holds the whole list (default %(default)s)")
    source.add_argument("--api-backoff-max", type=positive, default=30.0, metavar="SECONDS",
                        help="cap of the exponential reconnect backoff (default %(default)s)")
    flags.add_argument("--listen", default="127.0.0.1:5353", metavar="HOST:PORT",
                       help="address for UDP and TCP (port 0 picks a free port; default %(default)s)")
    flags.add_argument("--health-listen", metavar="HOST:PORT", help="GET /health -> 200 OK (CoreDNS: :8080)")
    flags.add_argument("--ready-listen", metavar="HOST:PORT",
                       help="GET /ready -> 200 OK once synced, else 503 naming what is not (CoreDNS: :8181)")
    flags.add_argument("--metrics-listen", metavar="HOST:PORT", help="GET /metrics, Prometheus (CoreDNS: :9153)")
    flags.add_argument("--lameduck", type=non_negative, default=0.0, metavar="SECONDS",
                       help="on SIGTERM keep serving this long with /ready failing (Corefile: health { lameduck })")
    misc = serve.add_argument_group("runtime")
    misc.add_argument("--poll-interval", type=positive, default=0.25, metavar="SECONDS",
                      help="how often manifest files are checked for edits (default 0.25)")
    misc.add_argument("--tcp-idle-timeout", type=positive, default=10.0, metavar="SECONDS",
                      help="close TCP connections idle this long (default 10, RFC 7766)")
    misc.add_argument("--workers", type=bounded(int, 1), default=1, metavar="N",
                      help="serve from N processes sharing the DNS ports (SO_REUSEPORT), each following the "
                           "source itself; health/ready/metrics come from the first (default 1)")
    misc.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                      help="event loop: uvloop when installed (pip install kdns[fast]) unless asyncio is asked for")
    misc.add_argument("--tcp-max-connections", type=bounded(int, 1), default=None, metavar="N",
                      help="open TCP connections per port; more are closed at once (default: what the memory "
                           "budget's TCP share allows, 22%% of it at 40 KiB a connection: 157 with 28Mi)")
    misc.add_argument("--memory-budget", type=_size, default=None, metavar="SIZE",
                      help="bytes for everything that grows with traffic -- answer caches, the cache plugin, "
                           "rate-limit buckets, TCP connections -- evicting cold entries first beyond it "
                           "(e.g. 28Mi, the default; the cluster index comes on top: deploy/README.md, sizing)")
    misc.add_argument("--negative-rate-limit", type=non_negative, default=0.0, metavar="PER_SECOND",
                      help="per source /24 (/56), at most this many NXDOMAIN/REFUSED answers a second over UDP; "
                           "beyond it they are dropped, every 2nd sent truncated so real clients retry over TCP "
                           "(default 0: off)")
    misc.add_argument("--stats-interval", type=positive, default=10.0, metavar="SECONDS",
                      help="how often a summary of malformed packets is logged, if any arrived (default 10)")
    misc.add_argument("--explain-listen", type=_explain_address, default=None, metavar="[HOST:]PORT",
                      help="serve GET /explain (kdns explain --server) here; host 127.0.0.1 unless given. Off by "
                           "default: its near-miss hints reveal names across namespaces (Corefile: explain)")
    misc.add_argument("--log-format", choices=["text", "json"], default="text")
    misc.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    explain = sub.add_parser("explain", help="why does this name resolve like that? replay a pod's lookup through "
                             "the server's own pipeline (offline, or --server a running kdns)", allow_abbrev=False)
    add_explain_arguments(explain)
    _cluster_flags(explain)
    explain.set_defaults(listen="127.0.0.1:0", health_listen=None, ready_listen=None, metrics_listen=None,
                         lameduck=0.0, explain_listen=None)
    check = sub.add_parser("check-config", help="validate a Corefile and/or manifests without serving "
                           "(exit 0 when valid)", allow_abbrev=False)
    check.add_argument("corefile", metavar="COREFILE", nargs="?")
    check.add_argument("--manifests", nargs="+", action="extend", default=[], metavar="PATH",
                       help="validate these manifest files or directories (every problem, file:line and field)")
    check.add_argument("--resolv-conf", default=DEFAULT_RESOLV_CONF, metavar="PATH")
    check.add_argument("--dns-port", "-dns.port", dest="dns_port", type=port_number, default=53)
    return parser


class ConfigProblem(Exception):
    def __init__(self, field: str, reason: str, fix: str = ""):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.fix = field, reason, fix


def _source_overrides(args: argparse.Namespace, k: KubernetesConfig) -> None:
    """--manifests / --kubeconfig on the command line replace the kubernetes source of a Corefile."""
    if args.manifests:
        k.manifests, k.kubeconfig, k.endpoint, k.tls = list(args.manifests), None, None, None
    elif args.kubeconfig:
        k.manifests, k.kubeconfig, k.context = [], args.kubeconfig, args.context


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The single server block the flags describe (what `kdns serve` does without a Corefile)."""
    try:
        labels = parse_selector(args.labels) if args.labels else None
        ns_labels = parse_selector(args.namespace_labels) if args.namespace_labels else None
    except SelectorError as exc:
        raise ConfigProblem("--labels/--namespace-labels", str(exc)) from None
    use_api = bool(args.kubeconfig or args.in_cluster)
    if args.manifests and use_api:
        raise ConfigProblem("--manifests", "give either --manifests or --kubeconfig/--in-cluster")
    if not args.manifests and not use_api and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigProblem("--manifests", "no cluster source: give --manifests PATH or --kubeconfig PATH "
                                           "(or run in a pod), or a Corefile with -conf")
    zones = [normalize_zone(z) for z in (args.zone or DEFAULT_ZONES)]
    if not any(z and not z.endswith(("in-addr.arpa", "ip6.arpa")) for z in zones):
        raise ConfigProblem("--zone", "at least one forward zone (such as cluster.local) is required")
    k = KubernetesConfig(zones=zones, ttl=args.ttl, pods=args.pods, labels=labels, namespace_labels=ns_labels,
                         namespaces=frozenset(n.strip() for n in args.namespaces.split(",") if n.strip())
                         if args.namespaces else None,
                         kubeconfig=args.kubeconfig, context=args.context, manifests=list(args.manifests))
    forward = None
    if args.upstream != "none":
        try:
            host, port = parse_hostport(args.upstream, 53)
        except ValueError:
            raise ConfigProblem("--upstream", f"expected HOST:PORT or none, got {args.upstream!r}") from None
        forward = ForwardConfig(from_zone="", to=[(host, port)], to_text=[args.upstream])
    try:
        host, port = parse_hostport(args.listen, 53)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigProblem("--listen", f"expected HOST:PORT (port 0-65535), got {args.listen!r}") from None
    listeners = [("--listen", host, port)]
    for flag, address in (("--health-listen", args.health_listen), ("--ready-listen", args.ready_listen),
                          ("--metrics-listen", args.metrics_listen)):
        if address is not None:
            try:
                listeners.append((flag, *split_address(address)))
                if not 0 <= listeners[-1][2] <= 65535:
                    raise ValueError
            except ValueError:
                raise ConfigProblem(flag, f"expected HOST:PORT (port 0-65535), got {address!r}") from None
    clash = listener_clash(listeners)
    if clash is not None:
        raise ConfigProblem(clash[0], f"port {clash[2]} is also given to {clash[1]}: two listeners cannot share it",
                            "give each listener its own port (0 picks a free one)")
    block = BlockConfig(zones=[""], port=port, kubernetes=k, forward=forward,
                        autopath=AutopathConfig(zones=[""]) if args.autopath else None)
    return Settings(blocks=[block], health=args.health_listen, ready=args.ready_listen,
                    prometheus=args.metrics_listen, lameduck=args.lameduck)


def load_settings(args: argparse.Namespace) -> Settings:
    if args.corefile:
        settings = load_corefile(args.corefile, args.resolv_conf, args.dns_port)
        k = settings.kubernetes
        for block in settings.blocks:  # every kubernetes directive follows the one source
            if block.kubernetes is not None:
                _source_overrides(args, block.kubernetes)
        if k is None and (args.manifests or args.kubeconfig):
            raise ConfigProblem("--manifests", "the Corefile has no kubernetes directive to feed")
        return settings
    return settings_from_args(args)


def _source_field(args: argparse.Namespace) -> str:
    """The input an API client configuration came from, as the user gave it."""
    if args.kubeconfig:
        return "--kubeconfig"
    if args.corefile and not args.in_cluster:
        return f"{args.corefile} kubernetes"
    return "--in-cluster"


def _load(args: argparse.Namespace) -> Settings:
    try:
        settings = load_settings(args)
    except CorefileError as exc:
        fix = "correct the Corefile there (kdns check-config FILE)" if exc.line else "give -conf a readable Corefile"
        raise StartupFailure("bad_config", EXIT_CONFIG, file=exc.path, line=exc.line, column=exc.col,
                             reason=exc.message, fix=fix) from None
    except ConfigProblem as exc:
        raise bad_config(exc.field, exc.reason, exc.fix or "see kdns serve --help") from None
    k = settings.kubernetes
    if k is not None:
        check_manifest_paths(k.manifests, "--manifests" if args.manifests else f"{args.corefile} kubernetes manifests")
    return settings


def _port_map(args: argparse.Namespace) -> dict[int, int]:
    port_map = {}
    for item in args.port_map:
        try:
            src, dst = (int(x) for x in item.split("="))
            if not (0 < src < 65536 and 0 <= dst < 65536):
                raise ValueError
        except ValueError:
            raise bad_config("--port-map", f"expected FROM=TO port numbers, got {item!r}",
                             "e.g. --port-map 53=5353 (TO 0: a free port)") from None
        port_map[src] = dst
    return port_map


async def serve(args: argparse.Namespace, log: Logger) -> int:
    """Serve until SIGTERM/SIGINT (exit 0); a start-up failure raises StartupFailure, after cleaning up."""
    from .app import Runtime, show_address  # aiohttp and prometheus: check-config does not need them
    port_map = _port_map(args)
    settings = _load(args)
    if args.corefile:
        bind_host = args.bind if args.bind is not None else ""
    else:
        bind_host = parse_hostport(args.listen, 53)[0]
    api_options = dict(watch_timeout=args.api_watch_timeout, stall_timeout=args.api_stall_timeout,
                       backoff_max=args.api_backoff_max, page_size=args.api_page_size)
    worker = getattr(args, "worker", 0)
    stop = asyncio.Event()  # handlers first: a SIGTERM right after "listening" must stop us cleanly
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(settings, log, bind_host=bind_host, resolv_conf=args.resolv_conf,
                      tcp_idle_timeout=args.tcp_idle_timeout, poll_interval=args.poll_interval,
                      api_options=api_options, serviceaccount_dir=args.serviceaccount_dir,
                      reload_settings=lambda: load_settings(args), port_map=port_map,
                      tcp_max_connections=args.tcp_max_connections, negative_rate_limit=args.negative_rate_limit,
                      reuse_port=args.workers > 1, serve_http=worker == 0,
                      memory_budget=MemoryBudget(args.memory_budget) if args.memory_budget else None,
                      explain_listen=args.explain_listen)
    runtime.on_failure = stop.set  # the API refused us before the first sync
    try:
        await runtime.start()
    except StartupFailure:
        await runtime.shutdown()
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. an API client that cannot be configured
        from .sources.api import ConfigError
        await runtime.shutdown()
        if isinstance(exc, ConfigError):
            raise bad_config(_source_field(args), str(exc), exc.fix or "fix the files named in the reason") from None
        raise
    for (port, host), (_, _, bound) in sorted(runtime.listeners.items()):
        shown = show_address(host, bound)
        extra = {"worker": worker} if args.workers > 1 else {}
        log.info("listening", server=f"dns://:{port}", udp=shown, tcp=shown, **runtime.http_bound,
                 zones=",".join(z or "." for b in runtime.blocks if b.listener == (port, host) for z in b.config.zones),
                 loop=type(asyncio.get_running_loop()).__module__.split(".")[0], **extra)
    reporter = asyncio.create_task(_report_bad_packets(runtime, log, args.stats_interval))
    orphan_watch = asyncio.create_task(_exit_with_parent(stop)) if worker else None
    await stop.wait()
    if orphan_watch is not None:
        orphan_watch.cancel()
    if runtime.failure is not None:
        reporter.cancel()
        await runtime.shutdown()
        raise runtime.failure
    log.info("shutting_down", lameduck=runtime.settings.lameduck)
    reporter.cancel()
    await runtime.shutdown(runtime.settings.lameduck)
    log.info("stopped")
    return EXIT_OK


async def _exit_with_parent(stop: asyncio.Event, every: float = 1.0) -> None:
    """A worker stops when the first worker (its parent) is gone, even if it was killed."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(every)
    stop.set()


async def _report_bad_packets(runtime, log: Logger, every: float = 10.0) -> None:
    """One log line per interval when malformed packets arrived, and one when queries were dropped for
    overload (never one line per packet)."""
    from .transport import UDPReader
    last = (0, 0, 0)
    last_overload = 0
    while True:
        await asyncio.sleep(every)
        totals = [0, 0, 0]
        overload = 0
        for handler in runtime.handlers.values():
            s = handler.stats
            totals[0] += s["dropped"]
            totals[1] += s["formerr"]
            totals[2] += s["notimp"]
            overload += s["udp_backlog_dropped"]
        now = tuple(totals)
        if now != last:
            log.warning("bad_packets", dropped=now[0] - last[0], formerr=now[1] - last[1],
                        notimp=now[2] - last[2], total_dropped=now[0], total_formerr=now[1])
            last = now
        if overload != last_overload:
            log.warning("udp_overload", dropped=overload - last_overload, total_dropped=overload,
                        reason=f"more than {UDPReader.BACKLOG} UDP queries waited for an answer to be worked out; "
                        "cached answers were still served", fix="add CPU or replicas (deploy/ autoscaler)")
            last_overload = overload


def check_config(args: argparse.Namespace, log: Logger) -> int:
    if args.corefile is None and not args.manifests:
        print("check-config: give a COREFILE, --manifests PATH..., or both", file=sys.stderr)
        return 2
    status = 0 if args.corefile is None else _check_corefile(args)
    if args.manifests:
        from .sources.manifests import check_manifests
        problems, warnings, objects = check_manifests(args.manifests)
        for problem in warnings:
            print(f"warning: {problem}", file=sys.stderr)
        for problem in problems:
            print(str(problem), file=sys.stderr)
        if problems:
            print(f"manifests: {len(problems)} problem{'s' if len(problems) > 1 else ''}", file=sys.stderr)
            status = 1
        else:
            print(f"manifests: OK ({objects} objects)")
    return status


def _check_corefile(args: argparse.Namespace) -> int:
    try:
        settings = load_corefile(args.corefile, args.resolv_conf, args.dns_port)
    except CorefileError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for block in settings.blocks:
        plugins = [n for n, on in (("kubernetes", block.kubernetes), ("hosts", block.hosts),
                                   ("autopath", block.autopath), ("cache", block.cache), ("forward", block.forward),
                                   ("loadbalance", block.loadbalance), ("log", block.log), ("errors", block.errors),
                                   ("loop", block.loop)) if on] + list(block.plugins)
        zones = " ".join(z or "." for z in block.zones)
        print(f"{block.path or args.corefile}:{block.line}: server {zones} port {block.port}: "
              f"{', '.join(plugins) or 'no plugins'}")
    print(f"{args.corefile}: OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `kdns` console script: every start-up failure is one log line and a documented exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return exit_now(reported(lambda: _main(argv), Logger(fmt=early_log_format(argv)), "debug" in argv))


def _main(argv: list[str]) -> int:
    # `kdns -conf /etc/coredns/Corefile` (the coredns image's arguments) means `kdns serve -conf ...`
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "serve")
    if argv[0] == "serve" and "-version" in argv:
        from . import __version__
        print(f"kdns-{__version__}")
        return 0
    args = build_parser().parse_args(argv)
    log = Logger(fmt=getattr(args, "log_format", "text"), level=getattr(args, "log_level", "info"))
    if args.command == "check-config":
        return check_config(args, log)
    if args.command == "explain":
        from .explain_cli import explain_command
        return explain_command(args, _load)
    if args.workers > 1:
        _load(args)  # a configuration error is reported once, before any worker is forked
        return _serve_workers(args, log)
    return _run(args, log)


def _run(args: argparse.Namespace, log: Logger) -> int:
    """serve() on the chosen event loop: uvloop when installed (auto) or asked for."""
    runner = asyncio.run
    if args.loop in ("auto", "uvloop"):
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            if args.loop == "uvloop":
                raise bad_config("--loop", "uvloop is not installed", "pip install kdns[fast], or --loop asyncio")
    try:
        return runner(serve(args, log))
    except KeyboardInterrupt:
        return 0


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP: the kernel picks a free UDP port, whose TCP twin may be taken
    (then another is tried)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as udp, socket.socket(family, socket.SOCK_STREAM) as tcp:
            udp.bind((host or "0.0.0.0", 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind((host or "0.0.0.0", port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free for both UDP and TCP on {host or '0.0.0.0'} after 100 tries")


def _serve_workers(args: argparse.Namespace, log: Logger) -> int:
    """Fork N-1 workers before any event loop or thread exists; all bind the same ports with
    SO_REUSEPORT. A port 0 is resolved to one free port first, so every worker shares it."""
    if not args.corefile:
        host, port = parse_hostport(args.listen, 53)
        if port == 0:
            port = _free_port(host)
            args.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    else:
        resolved = []
        for item in args.port_map:
            src, _, dst = item.partition("=")
            if dst == "0" and src not in ("8080", "8181", "9153"):
                dst = str(_free_port(args.bind or ""))
            resolved.append(f"{src}={dst}")
        args.port_map = resolved
    children = []
    for worker in range(1, args.workers):
        pid = os.fork()
        if pid == 0:
            args.worker = worker
            code = 1
            try:
                code = reported(lambda: _run(args, log), log, args.log_level == "debug", worker=worker)
            finally:
                os._exit(code)
        children.append(pid)
    args.worker = 0
    try:
        code = _run(args, log)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
