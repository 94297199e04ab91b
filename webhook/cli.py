"""Command line: `kdns-webhook serve ...` and `kdns-webhook gen-certs ...`."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys

from kdns.http import split_address
from kdns.index import ClusterIndex
from kdns.log import Logger
from kdns.startup import (EXIT_OK, ArgumentParser, StartupFailure, api_refused, bad_config, check_manifest_paths,
                          early_log_format, exit_now, listen_failed, positive, reported)

from .app import WebhookServer
from .certs import CertError, ReloadingTLS, generate
from .cluster import ServiceCatalog, manifest_catalog
from .selection import Settings

_SIZE = re.compile(r"^\s*(\d+)\s*(|k|ki|kib|m|mi|mib)\s*$", re.IGNORECASE)


def size(text: str) -> int:
    """A byte count: 65536, 64Ki, 1Mi (k and m are taken as Ki and Mi)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 65536, 64Ki or 1Mi, got {text!r}")
    unit = match.group(2).lower()[:1]
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="kdns-webhook",
                            description="Mutating admission webhook: service-link environment variables "
                                        "with the kubelet's semantics, bounded and selectable.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve POST /mutate (and /healthz, /readyz, /metrics) over TLS")
    serve.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT",
                       help="HTTPS address (port 0 picks a free port; default %(default)s)")
    serve.add_argument("--tls-cert", required=True, metavar="PATH", help="PEM certificate (chain); reloaded on change")
    serve.add_argument("--tls-key", required=True, metavar="PATH", help="PEM private key; reloaded on change")
    serve.add_argument("--cert-check-interval", type=positive, default=2.0, metavar="SECONDS",
                       help="how often the certificate files are checked for rotation (default %(default)s)")
    source = serve.add_argument_group("where services come from (one of)")
    source.add_argument("--kubeconfig", metavar="PATH", help="list and watch Services and Namespaces of this cluster")
    source.add_argument("--context", metavar="NAME", help="kubeconfig context (default: current-context)")
    source.add_argument("--in-cluster", action="store_true",
                        help="use the pod's service account (the default when KUBERNETES_SERVICE_HOST is set)")
    source.add_argument("--serviceaccount-dir", default="/var/run/secrets/kubernetes.io/serviceaccount", metavar="DIR")
    source.add_argument("--manifests", action="append", default=[], metavar="PATH",
                        help="YAML/JSON file or directory (repeatable), for local use; edits are followed")
    source.add_argument("--poll-interval", type=positive, default=0.25, metavar="SECONDS",
                        help="how often manifest files are checked for edits (default %(default)s)")
    source.add_argument("--api-backoff-max", type=positive, default=30.0, metavar="SECONDS",
                        help="cap of the API reconnect backoff (default %(default)s)")
    policy = serve.add_argument_group("what is injected")
    policy.add_argument("--require-opt-in", action="store_true",
                        help="mutate only pods annotated kdns.io/service-links=\"true\" (or kdns.io/services) or in "
                             "a namespace labelled kdns.io/service-links=true (default: every pod sent, unless it "
                             "opts out)")
    policy.add_argument("--keep-enable-service-links", action="store_true",
                        help="leave spec.enableServiceLinks alone (default: set it to false on mutated pods, so the "
                             "kubelet does not add its own unbounded copy at container start)")
    policy.add_argument("--budget", type=size, default=64 * 1024, metavar="BYTES",
                        help="most bytes of injected NAME=value per container (default 64Ki; the kernel's limit "
                             "for all of argv+env is about 2Mi)")
    policy.add_argument("--pod-budget", type=size, default=512 * 1024, metavar="BYTES",
                        help="most bytes injected across all containers of a pod (default 512Ki; etcd stores at "
                             "most ~1.5Mi per object)")
    limits = serve.add_argument_group("request limits")
    limits.add_argument("--max-body", type=size, default=3 * 1024 * 1024, metavar="BYTES",
                        help="largest AdmissionReview accepted (default 3Mi); larger gets 400")
    limits.add_argument("--request-timeout", type=positive, default=5.0, metavar="SECONDS",
                        help="time allowed to receive a request body (default %(default)s)")
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")

    gen = sub.add_parser("gen-certs", help="write a CA and a serving certificate for <service>.<namespace>.svc; "
                                           "print the caBundle")
    gen.add_argument("--service", required=True, help="the webhook's Service name")
    gen.add_argument("--namespace", required=True, help="the webhook's namespace")
    gen.add_argument("--out", required=True, metavar="DIR", help="writes ca.crt, ca.key, tls.crt, tls.key here")
    gen.add_argument("--cluster-domain", default="cluster.local")
    gen.add_argument("--host", action="append", default=[], metavar="NAME|IP",
                     help="extra subject alternative name, e.g. 127.0.0.1 for local use (repeatable)")
    gen.add_argument("--days", type=int, default=365, help="serving certificate validity (the CA gets 10x)")
    gen.add_argument("--new-ca", action="store_true", help="make a new CA even if DIR has one (changes the caBundle)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(require_opt_in=args.require_opt_in, disable_kubelet_links=not args.keep_enable_service_links,
                    budget=args.budget, pod_budget=args.pod_budget)


async def serve(args: argparse.Namespace, log: Logger) -> int:
    """Serve until SIGTERM/SIGINT (exit 0); a start-up failure raises StartupFailure, after cleaning up."""
    try:
        host, port = split_address(args.listen)
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
    except ValueError as exc:
        raise bad_config("--listen", str(exc), "e.g. --listen 0.0.0.0:8443") from None
    use_api = bool(args.kubeconfig or args.in_cluster)
    if args.manifests and use_api:
        raise bad_config("--manifests", "give either --manifests or --kubeconfig/--in-cluster",
                         "drop one of them")
    if not args.manifests and not use_api:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise bad_config("--manifests", "no source of services",
                             "give --kubeconfig PATH, --in-cluster or --manifests PATH")
        use_api = True
    try:
        tls = ReloadingTLS(args.tls_cert, args.tls_key, log)
    except CertError as exc:
        raise bad_config("--tls-cert/--tls-key", str(exc),
                         "give a PEM certificate and its unencrypted private key "
                         "(kdns-webhook gen-certs, or the Secret of cert-manager)") from None
    check_manifest_paths(args.manifests)

    api_source = manifest_source = None
    if use_api:
        from kdns.sources.api import ApiSource, ConfigError, build_api_client  # heavy import
        try:
            api_client, where = build_api_client(args.kubeconfig, args.context, args.serviceaccount_dir)
        except ConfigError as exc:
            raise bad_config("--kubeconfig" if args.kubeconfig else "--in-cluster", str(exc),
                             exc.fix or "fix the files named in the reason") from None
        index = ClusterIndex()
        catalog = ServiceCatalog(index)
        api_source = ApiSource(api_client, index, log, ["Service", "Namespace"], backoff_max=args.api_backoff_max)
        log.info("api_source", server=api_client.configuration.host, config=where, resources="Service,Namespace")
    else:
        catalog, manifest_source = manifest_catalog(args.manifests, log)

    server = WebhookServer(catalog, _settings(args), log, tls, max_body=args.max_body,
                           request_timeout=args.request_timeout,
                           ready_check=api_source.ready if api_source is not None else None)
    try:
        bound = await server.start(host, port)
    except OSError as exc:
        await server.stop()
        raise listen_failed(exc, args.listen, "--listen (https)", port) from None
    log.info("listening", address=f"https://{bound}", paths="/mutate /healthz /readyz /metrics",
             services=len(catalog), synced=catalog.synced)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    failures: list[StartupFailure] = []
    tasks = [asyncio.create_task(tls.run(args.cert_check_interval))]
    if manifest_source is not None:
        tasks.append(asyncio.create_task(manifest_source.run(args.poll_interval)))
    if api_source is not None:
        def refused(kind: str, verb: str, failure) -> None:
            failures.append(api_refused(kind, failure.status, verb, api_source.server, where, failure.message,
                                        rbac="deploy/webhook/base/rbac.yaml"))
            stop.set()
        api_source.on_refused = refused
        api_source.start()
    await stop.wait()
    if not failures:
        log.info("shutting_down")
    if api_source is not None:
        api_source.stop()
    for task in tasks:
        task.cancel()
    await server.stop()
    if failures:
        raise failures[0]
    return EXIT_OK


def gen_certs(args: argparse.Namespace) -> int:
    try:
        made = generate(args.service, args.namespace, args.out, cluster_domain=args.cluster_domain,
                        hosts=tuple(args.host), days=args.days, new_ca=args.new_ca)
    except (CertError, OSError, ValueError) as exc:
        print(f"kdns-webhook gen-certs: {exc}", file=sys.stderr)
        return 1
    print(f"{'reused' if made.reused_ca else 'wrote'} CA {made.ca_cert} (key {made.ca_key})", file=sys.stderr)
    print(f"wrote {made.tls_cert} and {made.tls_key} for {', '.join(made.dns_names)}", file=sys.stderr)
    print("caBundle (stdout) goes in the MutatingWebhookConfiguration's clientConfig.caBundle", file=sys.stderr)
    print(made.ca_bundle)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `kdns-webhook` console script: every start-up failure is one log line and a documented exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return exit_now(reported(lambda: _main(argv), Logger(fmt=early_log_format(argv)), "debug" in argv))


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gen-certs":
        return gen_certs(args)
    try:
        return asyncio.run(serve(args, Logger(fmt=args.log_format, level=args.log_level)))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
