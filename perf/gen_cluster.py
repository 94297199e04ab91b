"""Synthetic cluster generator: Kubernetes manifests kdns serves, the same data as RFC 1035 zone files
(for Knot / NSD / the dnslib baseline), and dnsperf query files for several query mixes.

    .venv/bin/python perf/gen_cluster.py --out /tmp/cluster [--services 10000] [--endpoints 30000]
        [--namespaces 100] [--headless-share 0.1] [--queries 10000] [--unique-queries 200000]
        [--seed 1] [--format yaml|json] [--no-zones] [--no-queries]

Zone TTLs: kdns's default (5 s); perf/run.py writes them with the kubeadm Corefile's `ttl 30`.

Writes under OUT:
  manifests/<namespace>.yaml   Namespace, Services (clusterIP or None, named ports), EndpointSlices
                               (kubernetes.io/service-name label, addressType IPv4, <=100 endpoints per
                               slice, hostnames on the headless services' endpoints)
  zones/cluster.local.zone     what kdns answers for those manifests (A, SRV, endpoint A, NS, SOA, TXT)
  zones/in-addr.arpa.zone      PTR for every ClusterIP and endpoint address
  upstream/example.test.zone   the outside zone a local upstream serves for the forward-* mixes (a
                               wildcard A, so every name gets an answer)
  queries/<mix>.txt            dnsperf input ("name TYPE" per line), mixes listed in MIXES
  cluster.json                 counts and a few sample names

Deterministic for a given seed. Everything is addresses in 10.0.0.0/8 as *data*; no traffic is sent.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field

ZONE = "cluster.local"
TTL = 5  # kdns default --ttl
TXT_TTL = 28800  # dns-version TXT (kdns, CoreDNS)
OUTSIDE_ZONE = "example.test"  # the local upstream's zone: forwarded names (forward-* mixes)
OUTSIDE_TTL = 3600  # longer than the kubeadm `cache 30`, so the cache's own cap applies

SERVICE_CIDR_BASE = int(ipaddress.IPv4Address("10.96.1.0"))  # 10.96.0.0/12; 10.96.0.x kept for system
POD_CIDR_BASE = int(ipaddress.IPv4Address("10.128.0.1"))  # 10.128.0.0/10 fits 4M endpoints
MAX_SLICE = 100  # endpoints per EndpointSlice, as the Kubernetes controller does

WORDS = ("api", "web", "db", "cache", "auth", "orders", "payments", "search", "queue", "worker",
         "billing", "cart", "catalog", "checkout", "gateway", "inventory", "ledger", "mail", "media", "users")

# (name, service port, target port, protocol); every service has the first, some have the others
PORTS = (("http", 80, 8080, "TCP"), ("grpc", 9090, 9090, "TCP"), ("metrics", 9100, 9100, "TCP"),
         ("dns", 53, 5353, "UDP"))

OUTSIDE = ("www.example.com", "api.github.com", "registry.npmjs.org", "pypi.org", "s3.amazonaws.com",
           "login.microsoftonline.com", "storage.googleapis.com", "sqs.us-east-1.amazonaws.com",
           "hooks.slack.com", "api.stripe.com", "sentry.io", "auth0.com", "cdn.jsdelivr.net",
           "db.internal.example.net", "smtp.mailgun.org", "ocsp.digicert.com")

MIXES = {
    "a": "cluster A hits (ClusterIP services)",
    "srv": "SRV _port._proto.<svc>.<ns>.svc (ClusterIP and headless)",
    "headless": "headless service A (every ready endpoint)",
    "nxdomain": "NXDOMAIN: missing services in existing namespaces",
    "ptr": "PTR of ClusterIPs and endpoint addresses",
    "search": "ndots:5 search-path expansions of outside names (NXDOMAIN)",
    "mixed": "80% A hits, 10% SRV, 10% NXDOMAIN",
    "uncached": "NXDOMAIN, every name asked once: each query is a cache miss (run it as one pass)",
    "forward-cached": f"outside names ({OUTSIDE_ZONE}, from a pool of 2,000) answered by the `cache` plugin after "
                      "one pass through `forward` to the local upstream (Knot)",
    "forward-miss": f"outside names, every one new: each goes through `forward` to the local upstream "
                    f"(Knot, a wildcard in {OUTSIDE_ZONE} answers them)",
    "flood": "a hot set of 200 cluster A names at a fixed rate (perf/loadgen.py) while unique random "
             "cluster names (NXDOMAIN) arrive at full speed from dnsperf",
}


@dataclass
class Endpoint:
    ip: str
    hostname: str  # "" for ClusterIP services' endpoints (their DNS name is the dashed IP)
    pod: str


@dataclass
class Svc:
    namespace: str
    name: str
    headless: bool
    cluster_ip: str  # "" when headless
    ports: list  # [(name, port, target, proto)]
    endpoints: list = field(default_factory=list)

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{ZONE}"


def dashed(ip: str) -> str:
    return ip.replace(".", "-")


def ep_label(ep: Endpoint) -> str:
    return ep.hostname or dashed(ep.ip)


def reverse_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


# ------------------------------------------------------------------------------------------- model


def build_cluster(services: int, endpoints: int, namespaces: int, headless_share: float, seed: int) -> list[Svc]:
    """The cluster model: system services first, then `services` generated ones over `namespaces`."""
    rng = random.Random(seed)
    out = [Svc("default", "kubernetes", False, "10.96.0.1", [("https", 443, 6443, "TCP")]),
           Svc("kube-system", "kube-dns", False, "10.96.0.10",
               [("dns", 53, 53, "UDP"), ("dns-tcp", 53, 53, "TCP"), ("metrics", 9153, 9153, "TCP")])]
    out[0].endpoints = [Endpoint("10.0.0.2", "", "")]  # the API server (not a pod)
    out[1].endpoints = [Endpoint("10.0.0.3", "", "coredns-0"), Endpoint("10.0.0.4", "", "coredns-1")]
    n_headless = round(services * headless_share)
    headless_ids = set(rng.sample(range(services), n_headless)) if n_headless else set()
    gen: list[Svc] = []
    for i in range(services):
        ns = f"ns-{i % namespaces:03d}"
        name = f"{WORDS[(i // namespaces) % len(WORDS)]}-{i:05d}"
        headless = i in headless_ids
        ports = [PORTS[0]]
        if rng.random() < 0.5:
            ports.append(PORTS[1])
        if rng.random() < 0.3:
            ports.append(PORTS[2])
        if rng.random() < 0.05:
            ports.append(PORTS[3])
        ip = "" if headless else str(ipaddress.IPv4Address(SERVICE_CIDR_BASE + i))
        gen.append(Svc(ns, name, headless, ip, ports))
    # endpoints: one per service (while there are enough), the rest spread uniformly at random
    counts = [0] * services
    if services:
        for i in range(min(endpoints, services)):
            counts[i] = 1
        for _ in range(max(0, endpoints - services)):
            counts[rng.randrange(services)] += 1
    next_ip = POD_CIDR_BASE
    for svc, count in zip(gen, counts):
        for k in range(count):
            ip = str(ipaddress.IPv4Address(next_ip))
            next_ip += 1
            pod = f"{svc.name}-{k}" if svc.headless else f"{svc.name}-{rng.getrandbits(40):010x}"
            svc.endpoints.append(Endpoint(ip, f"{svc.name}-{k}" if svc.headless else "", pod))
    return out + gen


# ------------------------------------------------------------------------------------------- manifests


def _yaml_service(svc: Svc) -> str:
    ports = "".join(f"  - name: {n}\n    port: {p}\n    targetPort: {t}\n    protocol: {proto}\n"
                    for n, p, t, proto in svc.ports)
    return (f"---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {svc.name}\n  namespace: {svc.namespace}\n"
            f"  labels:\n    app: {svc.name}\nspec:\n  type: ClusterIP\n"
            f"  clusterIP: {'None' if svc.headless else svc.cluster_ip}\n"
            f"  selector:\n    app: {svc.name}\n  ports:\n{ports}")


def _yaml_slice(svc: Svc, idx: int, chunk: list[Endpoint]) -> str:
    eps = []
    for ep in chunk:
        text = f"- addresses: [\"{ep.ip}\"]\n  conditions:\n    ready: true\n"
        if ep.hostname:
            text += f"  hostname: {ep.hostname}\n"
        if ep.pod:
            text += f"  targetRef:\n    kind: Pod\n    namespace: {svc.namespace}\n    name: {ep.pod}\n"
        eps.append(text)
    ports = "".join(f"- name: {n}\n  port: {t}\n  protocol: {proto}\n" for n, _, t, proto in svc.ports)
    return (f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n"
            f"  name: {svc.name}-{idx:05x}\n  namespace: {svc.namespace}\n"
            f"  labels:\n    kubernetes.io/service-name: {svc.name}\n"
            f"addressType: IPv4\nendpoints:\n{''.join(eps)}ports:\n{ports}")


def _dict_service(svc: Svc) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc.name, "namespace": svc.namespace, "labels": {"app": svc.name}},
            "spec": {"type": "ClusterIP", "clusterIP": "None" if svc.headless else svc.cluster_ip,
                     "selector": {"app": svc.name},
                     "ports": [{"name": n, "port": p, "targetPort": t, "protocol": proto}
                               for n, p, t, proto in svc.ports]}}


def _dict_slice(svc: Svc, idx: int, chunk: list[Endpoint]) -> dict:
    eps = []
    for ep in chunk:
        d = {"addresses": [ep.ip], "conditions": {"ready": True}}
        if ep.hostname:
            d["hostname"] = ep.hostname
        if ep.pod:
            d["targetRef"] = {"kind": "Pod", "namespace": svc.namespace, "name": ep.pod}
        eps.append(d)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc.name}-{idx:05x}", "namespace": svc.namespace,
                         "labels": {"kubernetes.io/service-name": svc.name}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": n, "port": t, "protocol": proto} for n, _, t, proto in svc.ports]}


def write_manifests(cluster: list[Svc], outdir: str, fmt: str = "yaml") -> int:
    """One file per namespace (as a GitOps tree would hold them). Returns the number of files."""
    os.makedirs(outdir, exist_ok=True)
    by_ns: dict[str, list[Svc]] = {}
    for svc in cluster:
        by_ns.setdefault(svc.namespace, []).append(svc)
    for ns, svcs in by_ns.items():
        if fmt == "json":
            items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}]
            for svc in svcs:
                items.append(_dict_service(svc))
                for idx in range(0, len(svc.endpoints), MAX_SLICE):
                    items.append(_dict_slice(svc, idx // MAX_SLICE, svc.endpoints[idx: idx + MAX_SLICE]))
            with open(os.path.join(outdir, f"{ns}.json"), "w") as fh:
                json.dump({"apiVersion": "v1", "kind": "List", "items": items}, fh, separators=(",", ":"))
            continue
        parts = [f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"]
        for svc in svcs:
            parts.append(_yaml_service(svc))
            for idx in range(0, len(svc.endpoints), MAX_SLICE):
                parts.append(_yaml_slice(svc, idx // MAX_SLICE, svc.endpoints[idx: idx + MAX_SLICE]))
        with open(os.path.join(outdir, f"{ns}.yaml"), "w") as fh:
            fh.write("".join(parts))
    return len(by_ns)


# ------------------------------------------------------------------------------------------- zone files


def _named(ports):
    return [p for p in ports if p[0]]


def zone_records(cluster: list[Svc], ttl: int = TTL):
    """Yield (zone, owner, ttl, type, rdata) — exactly what kdns answers (default flags, or `ttl N`)."""
    z = ZONE
    soa_ttl = min(ttl, 300)
    yield z, f"{z}.", soa_ttl, "SOA", f"ns.dns.{z}. hostmaster.{z}. 1 7200 1800 86400 {ttl}"
    yield z, f"{z}.", ttl, "NS", f"ns.dns.{z}."
    kube_dns = next(s for s in cluster if (s.namespace, s.name) == ("kube-system", "kube-dns"))
    yield z, f"ns.dns.{z}.", ttl, "A", kube_dns.cluster_ip
    yield z, f"dns-version.{z}.", TXT_TTL, "TXT", '"1.1.0"'
    r = "in-addr.arpa"
    yield r, f"{r}.", soa_ttl, "SOA", f"ns.dns.{r}. hostmaster.{r}. 1 7200 1800 86400 {ttl}"
    yield r, f"{r}.", ttl, "NS", f"ns.dns.{z}."
    for svc in cluster:
        owner = svc.fqdn + "."
        named = _named(svc.ports)
        if not svc.headless:
            yield z, owner, ttl, "A", svc.cluster_ip
            weight = max(1, 100 // len(named)) if named else 0
            bare = set()
            for pname, port, _, proto in named:
                # SRV on the bare name lists every named port (CoreDNS); _port._proto one each.
                # (Two ports with one number, as kube-dns's dns/dns-tcp, make one record in a zone.)
                if port not in bare:
                    bare.add(port)
                    yield z, owner, ttl, "SRV", f"0 {weight} {port} {owner}"
                yield z, f"_{pname}._{proto.lower()}.{owner}", ttl, "SRV", f"0 100 {port} {owner}"
            yield r, reverse_name(svc.cluster_ip) + ".", ttl, "PTR", owner
        else:
            eps = svc.endpoints
            for ep in eps:
                yield z, owner, ttl, "A", ep.ip
            if eps and named:
                bare_weight = max(1, 100 // (len(eps) * len(named)))
                one_weight = max(1, 100 // len(eps))
                for pname, _, target_port, proto in named:
                    for ep in eps:
                        target = f"{ep_label(ep)}.{owner}"
                        yield z, owner, ttl, "SRV", f"0 {bare_weight} {target_port} {target}"
                        yield z, f"_{pname}._{proto.lower()}.{owner}", ttl, "SRV", f"0 {one_weight} {target_port} {target}"
        for ep in svc.endpoints:
            # endpoint names exist for ClusterIP services' endpoints too (CoreDNS, kdns)
            yield z, f"{ep_label(ep)}.{owner}", ttl, "A", ep.ip
            yield r, reverse_name(ep.ip) + ".", ttl, "PTR", f"{ep_label(ep)}.{owner}"


def write_zones(cluster: list[Svc], outdir: str, ttl: int = TTL) -> dict[str, int]:
    os.makedirs(outdir, exist_ok=True)
    files = {ZONE: open(os.path.join(outdir, f"{ZONE}.zone"), "w"),
             "in-addr.arpa": open(os.path.join(outdir, "in-addr.arpa.zone"), "w")}
    counts = dict.fromkeys(files, 0)
    try:
        for fh in files.values():
            fh.write("; generated by perf/gen_cluster.py; absolute names only\n")
        for zone, owner, rttl, rtype, rdata in zone_records(cluster, ttl):
            files[zone].write(f"{owner} {rttl} IN {rtype} {rdata}\n")
            counts[zone] += 1
    finally:
        for fh in files.values():
            fh.close()
    return counts


def write_outside_zone(outdir: str) -> str:
    """The zone the local upstream (Knot) serves for the forward-* mixes: a wildcard A record, so
    every name under it, each unique forward-miss name included, gets a positive answer."""
    os.makedirs(outdir, exist_ok=True)
    z = OUTSIDE_ZONE
    path = os.path.join(outdir, f"{z}.zone")
    with open(path, "w") as fh:
        fh.write(f"; generated by perf/gen_cluster.py: the forward-* mixes' upstream zone\n"
                 f"{z}. {OUTSIDE_TTL} IN SOA ns.{z}. hostmaster.{z}. 1 7200 1800 86400 300\n"
                 f"{z}. {OUTSIDE_TTL} IN NS ns.{z}.\n"
                 f"ns.{z}. {OUTSIDE_TTL} IN A 192.0.2.53\n"
                 f"*.{z}. {OUTSIDE_TTL} IN A 192.0.2.80\n")
    return path


# ------------------------------------------------------------------------------------------- queries


def query_mixes(cluster: list[Svc], n: int, seed: int, unique: int = 200_000, hot: int = 200,
                outside_names: int = 2_000) -> dict[str, list[str]]:
    rng = random.Random(seed + 1)
    gen = [s for s in cluster if s.namespace.startswith("ns-")] or cluster
    cip = [s for s in gen if not s.headless] or [s for s in cluster if not s.headless]
    headless = [s for s in gen if s.headless and s.endpoints]
    namespaces = sorted({s.namespace for s in gen})
    srv_pool = [(s, p) for s in gen if (not s.headless or s.endpoints) for p in _named(s.ports)]
    addrs = [s.cluster_ip for s in cip] + [ep.ip for s in gen for ep in s.endpoints]
    existing = {(s.namespace, s.name) for s in cluster}

    def a_hit():
        return f"{rng.choice(cip).fqdn} A"

    def srv():
        s, (pname, _, _, proto) = rng.choice(srv_pool)
        return f"_{pname}._{proto.lower()}.{s.fqdn} SRV"

    def nx():
        while True:
            ns = rng.choice(namespaces)
            name = f"missing-{rng.randrange(1_000_000):06d}"
            if (ns, name) not in existing:
                return f"{name}.{ns}.svc.{ZONE} A"

    def search():
        # what a pod in <ns> with ndots:5 sends before the real name: A and AAAA for each suffix
        outside = rng.choice(OUTSIDE)
        ns = rng.choice(namespaces)
        suffix = rng.choice((f"{ns}.svc.{ZONE}", f"svc.{ZONE}", ZONE))
        return f"{outside}.{suffix} {rng.choice(('A', 'AAAA'))}"

    mixes = {
        "a": [a_hit() for _ in range(n)],
        "srv": [srv() for _ in range(n)] if srv_pool else [],
        "headless": [f"{rng.choice(headless).fqdn} A" for _ in range(n)] if headless else [],
        "nxdomain": [nx() for _ in range(n)],
        "ptr": [f"{reverse_name(rng.choice(addrs))} PTR" for _ in range(n)],
        "search": [search() for _ in range(n)],
    }
    mixed = []
    for _ in range(n):
        x = rng.random()
        mixed.append(a_hit() if x < 0.8 else srv() if x < 0.9 else nx())
    mixes["mixed"] = mixed
    if unique:
        # distinct names ("u<k>-..." never collides with a generated service name)
        mixes["uncached"] = [f"u{k:07d}-{rng.randrange(1 << 20):05x}.{namespaces[k % len(namespaces)]}.svc.{ZONE} A"
                             for k in range(unique)]
        # unique outside names, each forwarded to the upstream (its wildcard answers them all)
        mixes["forward-miss"] = [f"m{k:07d}-{rng.randrange(1 << 20):05x}.{OUTSIDE_ZONE} A" for k in range(unique)]
        # the flood's background: unique cluster names ("f<k>-...", never a service, never asked twice)
        mixes["flood"] = [f"f{k:07d}-{rng.randrange(1 << 20):05x}.{namespaces[k % len(namespaces)]}.svc.{ZONE} A"
                          for k in range(2 * unique)]  # twice: a full-speed flood must outlast the hot set's run
    # outside names from a fixed pool, asked again and again: after one pass all from the cache plugin
    pool = [f"host-{k:05d}.{rng.choice(WORDS)}.{OUTSIDE_ZONE}" for k in range(max(1, outside_names))]
    mixes["forward-cached"] = [f"{rng.choice(pool)} A" for _ in range(n)]
    # the flood's hot set: a few cluster A names, asked at a fixed rate while the flood runs
    hot_set = sorted({a_hit() for _ in range(hot)})
    mixes["flood-hot"] = [rng.choice(hot_set) for _ in range(n)]
    return {k: v for k, v in mixes.items() if v}


def write_queries(mixes: dict[str, list[str]], outdir: str) -> None:
    os.makedirs(outdir, exist_ok=True)
    for name, lines in mixes.items():
        with open(os.path.join(outdir, f"{name}.txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------- entry


def generate(out: str, services: int = 10_000, endpoints: int = 30_000, namespaces: int = 100,
             headless_share: float = 0.1, queries: int = 10_000, seed: int = 1, fmt: str = "yaml",
             zones: bool = True, query_files: bool = True, unique_queries: int = 200_000, ttl: int = TTL) -> dict:
    """Manifests, zone files (answers with this TTL; upstream/ holds the forward-* mixes' outside zone)
    and query files under `out`. Returns the summary also written to cluster.json."""
    started = time.monotonic()
    namespaces = max(1, min(namespaces, services or 1))
    cluster = build_cluster(services, endpoints, namespaces, headless_share, seed)
    files = write_manifests(cluster, os.path.join(out, "manifests"), fmt)
    summary = {
        "services": len(cluster), "generated_services": services,
        "headless_services": sum(s.headless for s in cluster),
        "endpoints": sum(len(s.endpoints) for s in cluster), "namespaces": namespaces + 2,
        "manifest_files": files, "format": fmt, "seed": seed,
        "manifest_bytes": sum(os.path.getsize(os.path.join(out, "manifests", f))
                              for f in os.listdir(os.path.join(out, "manifests"))),
        "sample_a": cluster[-1].fqdn if services else cluster[0].fqdn,
    }
    if zones:
        summary["zone_records"] = write_zones(cluster, os.path.join(out, "zones"), ttl)
        write_outside_zone(os.path.join(out, "upstream"))
    if query_files:
        mixes = query_mixes(cluster, queries, seed, unique_queries)
        write_queries(mixes, os.path.join(out, "queries"))
        summary["queries"] = {k: len(v) for k, v in mixes.items()}
    summary["seconds"] = round(time.monotonic() - started, 2)
    with open(os.path.join(out, "cluster.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=30_000)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--headless-share", type=float, default=0.1, help="share of headless services (0-1)")
    p.add_argument("--queries", type=int, default=10_000, help="lines per query file")
    p.add_argument("--unique-queries", type=int, default=200_000,
                   help="lines of the 'uncached' mix (every name distinct; 0: no such file)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")
    p.add_argument("--no-zones", action="store_true", help="skip the zone files")
    p.add_argument("--no-queries", action="store_true", help="skip the query files")
    a = p.parse_args()
    if not 0 <= a.headless_share <= 1:
        p.error("--headless-share must be between 0 and 1")
    summary = generate(a.out, a.services, a.endpoints, a.namespaces, a.headless_share, a.queries, a.seed,
                       a.format, not a.no_zones, not a.no_queries, a.unique_queries)
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
