"""Generated clusters served by a real kdns, every answer compared with the reference model (tests/model.py).

Clusters (hypothesis): services of every type, single- and dual-stack, with and without ports, named
and unnamed, several EndpointSlices per service with different port sets and address types,
ready / not-ready / unset endpoints, hostnames (duplicates too), pods, namespaces, ExternalNames in
and out of the zone. Queries: every name the cluster holds plus near misses, in random case, over
UDP and TCP. A second pair of tests drives clusters through single-object changes (add, modify,
delete, in random order) via the manifest source and via the API double, comparing after every step.

Budget: a fixed, derandomized set of examples sized for `./dev test`; KDNS_MODEL_EXAMPLES=N runs N
examples per test with fresh randomness (perf/fuzz runs).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from apiserver import FakeApiServer, write_kubeconfig
from harness import KdnsProcess, wait_until
from model import Expected, Model, dashed

LONG = int(os.environ.get("KDNS_MODEL_EXAMPLES", "0"))
# no shrinking: each example drives a live server, and the failure report already names the query
SETTINGS = dict(deadline=None, database=None, derandomize=not LONG, print_blob=True,
                phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
ZONE = "cluster.local"
NAMESPACES = ("a", "b", "kube-system")
SVC_NAMES = ("web", "db", "kube-dns", "mail")
PORTS = (("http", 80, "TCP"), ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("", 8080, "TCP"),
         ("grpc", 9000, "TCP"), ("sip", 5060, "SCTP"))
V4 = [f"10.244.0.{i}" for i in range(1, 9)]
V6 = [f"fd00:244::{i:x}" for i in range(1, 9)]
HOSTNAMES = ("web-0", "web-1", "db-0")
TARGETS = ("example.com", "WWW.Example.ORG.", "web.a.svc.cluster.local", "db.b.svc.cluster.local",
           "mail.a.svc.cluster.local", "nothing.a.svc.cluster.local", "10.1.2.3",
           "_http._tcp.web.a.svc.cluster.local", "dns-version.cluster.local", "cluster.local")
QTYPES = ("A", "AAAA", "SRV", "TXT", "ANY", "CNAME", "PTR")

# ------------------------------------------------------------------------------ generated clusters


@st.composite
def service(draw, ns: str, name: str, index: int):
    kind = draw(st.sampled_from(("ClusterIP", "NodePort", "LoadBalancer", "Headless", "Headless", "ExternalName")))
    ports = draw(st.lists(st.sampled_from(PORTS), max_size=3, unique_by=lambda p: p[0]))
    out = {"type": "ClusterIP" if kind in ("NodePort", "LoadBalancer") else kind, "object_type": kind, "ports": ports,
           "publish": draw(st.booleans()), "ips": [], "external": ""}
    if kind == "ExternalName":
        out["external"] = draw(st.sampled_from(TARGETS))
    elif kind != "Headless":
        families = draw(st.sampled_from(((4,), (6,), (4, 6), (6, 4))))
        out["ips"] = [f"10.96.0.{index}" if f == 4 else f"fd00:96::{index:x}" for f in families]
    return out


@st.composite
def endpoint_slice(draw, service_name: str, service_ports):
    family = draw(st.sampled_from(("IPv4", "IPv6")))
    pool = V4 if family == "IPv4" else V6
    named = [p for p in service_ports if p[0]]
    # the slice's own port set: some of the Service's (maybe other numbers, maybe no number), an
    # extra name, or none at all
    choices = [(n, draw(st.sampled_from((num, num + 1000, None))), proto) for n, num, proto in named]
    ports = draw(st.lists(st.sampled_from(choices + [("extra", 7000, "TCP"), ("", 8080, "TCP")]),
                          max_size=3, unique_by=lambda p: p[0]))
    endpoints = draw(st.lists(st.fixed_dictionaries({
        "addresses": st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True),
        "ready": st.sampled_from((True, True, False, None)),
        "terminating": st.booleans(),
        "hostname": st.sampled_from((None, None) + HOSTNAMES)}), max_size=3))
    return {"service": service_name, "family": family, "ports": ports, "endpoints": endpoints,
            "omit_ports": not ports and draw(st.booleans())}


@st.composite
def clusters(draw):
    namespaces = set(draw(st.lists(st.sampled_from(NAMESPACES + ("empty",)), min_size=1, max_size=4, unique=True)))
    services, slices, pods = {}, {}, {}
    index = 1
    for ns in sorted(namespaces - {"empty"}):
        for name in draw(st.lists(st.sampled_from(SVC_NAMES), max_size=3, unique=True)):
            services[(ns, name)] = draw(service(ns, name, index))
            index += 1
        for name in draw(st.lists(st.sampled_from(SVC_NAMES), max_size=3)):
            k = len([key for key in slices if key[0] == ns])
            ports = services.get((ns, name), {"ports": list(PORTS[:2])})["ports"]
            slices[(ns, f"{name}-{k}")] = draw(endpoint_slice(name, ports))
        for k, ips in enumerate(draw(st.lists(st.lists(st.sampled_from(V4 + V6), min_size=1, max_size=2, unique=True),
                                              max_size=2))):
            pods[(ns, f"pod-{k}")] = {"ips": ips}
    # sometimes an object in a namespace without its Namespace object (manifests: implicit)
    if draw(st.booleans()) and "a" in namespaces and len(namespaces) > 1:
        namespaces.discard("a")
    return {"zone": ZONE, "namespaces": namespaces, "services": services, "slices": slices, "pods": pods}


# ------------------------------------------------------------------------------ cluster -> API objects


def to_objects(cluster: dict) -> dict[tuple[str, str, str], dict]:
    objs: dict = {}
    for ns in cluster["namespaces"]:
        objs[("Namespace", "", ns)] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    for (ns, name), s in cluster["services"].items():
        spec: dict = {"type": s["object_type"] if s["object_type"] != "Headless" else "ClusterIP"}
        if s["ports"]:
            spec["ports"] = [{**({"name": n} if n else {}), "port": p, "protocol": proto} for n, p, proto in s["ports"]]
        if s["type"] == "ExternalName":
            spec["externalName"] = s["external"]
        elif s["type"] == "Headless":
            spec.update(clusterIP="None", clusterIPs=["None"])
        else:
            spec.update(clusterIP=s["ips"][0], clusterIPs=list(s["ips"]))
        if s["publish"]:
            spec["publishNotReadyAddresses"] = True
        objs[("Service", ns, name)] = {"apiVersion": "v1", "kind": "Service",
                                       "metadata": {"name": name, "namespace": ns}, "spec": spec}
    for (ns, name), sl in cluster["slices"].items():
        endpoints = []
        for ep in sl["endpoints"]:
            out: dict = {"addresses": list(ep["addresses"])}
            if ep["ready"] is not None:
                # serving/terminating do not change DNS (CoreDNS without terminating_endpoints)
                terminating = ep.get("terminating", False) and not ep["ready"]
                out["conditions"] = {"ready": ep["ready"], "serving": ep["ready"] or terminating,
                                     "terminating": terminating}
            if ep["hostname"]:
                out["hostname"] = ep["hostname"]
            endpoints.append(out)
        obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": sl["service"]}},
               "addressType": sl["family"], "endpoints": endpoints}
        if not sl.get("omit_ports"):
            obj["ports"] = [{"name": n, **({"port": p} if p is not None else {}), "protocol": proto}
                            for n, p, proto in sl["ports"]]
        objs[("EndpointSlice", ns, name)] = obj
    for (ns, name), pod in cluster["pods"].items():
        objs[("Pod", ns, name)] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
                                   "spec": {"containers": [{"name": "c", "image": "x"}]},
                                   "status": {"podIP": pod["ips"][0], "podIPs": [{"ip": ip} for ip in pod["ips"]]}}
    return objs


def with_markers(cluster: dict, generation: int) -> dict:
    """The cluster plus one marker per watched kind whose address moves with `generation`: once
    kdns answers every marker's new address, it has applied every change made before them."""
    c = {**cluster, "namespaces": set(cluster["namespaces"]) | {"zz", f"zz{generation}"},
         "services": dict(cluster["services"]), "slices": dict(cluster["slices"]), "pods": dict(cluster["pods"])}
    hi, lo = divmod(generation, 250)
    c["services"][("zz", "mark")] = {"type": "ClusterIP", "object_type": "ClusterIP", "ports": [],
                                     "publish": False, "ips": [f"10.255.{hi}.{lo + 1}"], "external": ""}
    c["services"][("zz", "markh")] = {"type": "Headless", "object_type": "Headless", "ports": [], "publish": False,
                                      "ips": [], "external": ""}
    c["slices"][("zz", "markh-0")] = {"service": "markh", "family": "IPv4", "ports": [], "omit_ports": True,
                                      "endpoints": [{"addresses": [f"10.254.{hi}.{lo + 1}"], "ready": True,
                                                     "hostname": None}]}
    c["pods"][("zz", "markp")] = {"ips": [f"10.253.{hi}.{lo + 1}"]}
    return c


def marker_queries(generation: int) -> list[tuple[str, str]]:
    hi, lo = divmod(generation, 250)
    return [("mark.zz.svc.cluster.local", f"10.255.{hi}.{lo + 1}"), ("markh.zz.svc.cluster.local", f"10.254.{hi}.{lo + 1}"),
            (f"10-253-{hi}-{lo + 1}.zz.pod.cluster.local", f"10.253.{hi}.{lo + 1}")]


# ------------------------------------------------------------------------------ queries


def _reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def queries(cluster: dict, rng: random.Random) -> list[tuple[str, str]]:
    names: set[tuple[str, str]] = set()
    add = lambda name, *types: names.update((name, t) for t in types)  # noqa: E731
    add(ZONE, "SOA", "NS", "A")
    add(f"dns-version.{ZONE}", "TXT", "A")
    add(f"ns.dns.{ZONE}", "A", "AAAA")
    add(f"dns.{ZONE}", "A")
    add(f"svc.{ZONE}", "A")
    add(f"nope.{ZONE}", "A")
    add("example.com", "A")
    for ns in NAMESPACES + ("empty", "zz"):
        add(f"{ns}.svc.{ZONE}", "A")
        add(f"{ns}.pod.{ZONE}", "A")
    for (ns, name), s in cluster["services"].items():
        base = f"{name}.{ns}.svc.{ZONE}"
        add(base, *QTYPES[:6])
        add(f"x{name}.{ns}.svc.{ZONE}", "A")
        add(f"{name}.zz.svc.{ZONE}", "A")
        add(f"a.b.c.{base}", "A")
        # search-path expansions of names a pod asks (ndots 5): <svc>.<ns> + each search domain
        add(f"{base}.{ns}.svc.{ZONE}", "A")
        add(f"{base}.svc.{ZONE}", "A")
        add(f"{name}.{ns}.{ZONE}", "A")
        add(base, "SOA", "NS")
        for proto in ("_tcp", "_udp", "_sctp"):
            add(f"{proto}.{base}", "SRV")
        for pname, _, proto in list(s["ports"]) + [p for sl in cluster["slices"].values() for p in sl["ports"]]:
            add(f"_{pname or 'x'}._{proto.lower()}.{base}", "SRV", "A")
        for ip in s["ips"]:
            add(_reverse_name(ip), "PTR")
        for host in HOSTNAMES:
            add(f"{host}.{base}", "A", "AAAA")
    for (ns, _), sl in cluster["slices"].items():
        for ep in sl["endpoints"]:
            for ip in ep["addresses"]:
                add(_reverse_name(ip), "PTR", "A")
                add(f"{dashed(ip)}.{sl['service']}.{ns}.svc.{ZONE}", "A", "AAAA")
    for (ns, _), pod in cluster["pods"].items():
        for ip in pod["ips"]:
            add(f"{dashed(ip)}.{ns}.pod.{ZONE}", "A", "AAAA")
            add(f"{dashed(ip)}.b.pod.{ZONE}", "A")
    add("9.9.99.10.in-addr.arpa", "PTR")
    add("10.in-addr.arpa", "PTR")
    add("244.10.in-addr.arpa", "PTR")
    add("0.244.10.in-addr.arpa", "PTR")
    add("in-addr.arpa", "SOA")
    add("ip6.arpa", "SOA")
    add(".".join("0d0f"[::-1]) + ".ip6.arpa", "PTR")  # f.d.0.0.ip6.arpa: above fd00::/16
    add(f"010-244-000-001.a.pod.{ZONE}", "A")
    # mixed case (0x20): answers must match case-insensitively
    return sorted((_mixed_case(name, rng), qtype) for name, qtype in names)


def _mixed_case(name: str, rng: random.Random) -> str:
    return "".join(ch.upper() if rng.random() < 0.3 else ch for ch in name)


# ------------------------------------------------------------------------------ comparing


def observed(msg: dns.message.Message) -> Expected:
    def records(section) -> frozenset:
        out = set()
        for rrset in section:
            owner = rrset.name.to_text().lower()
            rtype = dns.rdatatype.to_text(rrset.rdtype)
            for rd in rrset:
                if rtype == "SRV":
                    text = f"{rd.port} {rd.target.to_text().lower()}"
                elif rtype == "SOA":
                    text = f"{rd.mname.to_text().lower()} {rd.rname.to_text().lower()}"
                elif rtype in ("A", "AAAA"):
                    text = ipaddress.ip_address(rd.address).compressed
                elif rtype in ("CNAME", "PTR", "NS"):
                    text = rd.target.to_text().lower()
                else:
                    text = rd.to_text()
                out.add((owner, rtype, text))
        return frozenset(out)
    authority = tuple(sorted({dns.rdatatype.to_text(r.rdtype) for r in msg.authority}))
    return Expected(msg.rcode(), records(msg.answer), records(msg.additional), authority,
                    bool(msg.flags & dns.flags.AA), bool(msg.flags & dns.flags.TC))


def compare(kdns: KdnsProcess, cluster: dict, rng: random.Random, implicit: bool, limit: int | None = None) -> None:
    model = Model({**cluster, "implicit_namespaces": implicit})
    asked = queries(cluster, rng)
    if limit is not None and len(asked) > limit:
        asked = rng.sample(asked, limit)
    problems = []
    for name, qtype in asked:
        want = model.expected(name, qtype)
        for tcp in (False, True):
            msg = dns.message.make_query(name, qtype, use_edns=0, payload=1232)
            if tcp:
                got = observed(dns.query.tcp(msg, "127.0.0.1", port=kdns.port, timeout=5))
            else:
                got = observed(dns.query.udp(msg, "127.0.0.1", port=kdns.port, timeout=5))
            if got != want:
                problems.append(f"{name} {qtype} {'tcp' if tcp else 'udp'}:\n  kdns : {got}\n  model: {want}")
    assert not problems, f"{len(problems)} answers differ from the model; first:\n" + "\n".join(problems[:4])


# ------------------------------------------------------------------------------ serving


class ManifestFeed:
    """Feeds clusters to a running kdns through one manifest file, rewritten atomically."""

    implicit = True

    def __init__(self, path):
        self.path = path
        self.generation = 0

    def write(self, cluster: dict) -> None:
        self.generation += 1
        objs = to_objects(with_markers(cluster, self.generation))
        tmp = f"{self.path}.tmp~"
        with open(tmp, "w") as fh:
            fh.write("---\n".join(json.dumps(o) + "\n" for o in objs.values()))
        os.replace(tmp, self.path)


class ApiFeed:
    """Feeds clusters through the API double: only the objects that changed, then the markers."""

    implicit = False

    def __init__(self, api: FakeApiServer):
        self.api = api
        self.generation = 0
        self.current: dict = {}

    def write(self, cluster: dict, rng: random.Random | None = None) -> None:
        self.generation += 1
        wanted = to_objects(with_markers(cluster, self.generation))
        marker_keys = [k for k in wanted if k[1] == "zz" or k[2].startswith("zz")]
        changes = [k for k in set(wanted) | set(self.current)
                   if k not in marker_keys and wanted.get(k) != self.current.get(k)]
        (rng or random.Random(self.generation)).shuffle(changes)
        for key in changes + marker_keys:
            if key in wanted:
                if wanted[key] != self.current.get(key):
                    self.api.apply(wanted[key])
            else:
                self.api.delete(key[0], key[1], key[2])
        self.current = wanted


def applied(kdns: KdnsProcess, feed) -> None:
    def markers_seen() -> bool:
        for name, ip in marker_queries(feed.generation):
            msg = kdns.query(name)
            if [rd.to_text() for rrset in msg.answer for rd in rrset] != [ip]:
                return False
        return kdns.query(f"zz{feed.generation}.svc.{ZONE}").rcode() == 0
    wait_until(markers_seen, timeout=15, interval=0.02, what=f"generation {feed.generation} served")


@pytest.fixture(scope="module")
def manifest_kdns(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "cluster.yaml"
    feed = ManifestFeed(path)
    feed.write({"zone": ZONE, "namespaces": set(), "services": {}, "slices": {}, "pods": {}})
    with KdnsProcess("--manifests", str(path), "--pods", "verified", "--poll-interval", "0.05") as kdns:
        yield kdns, feed


@pytest.fixture(scope="module")
def api_kdns(tmp_path_factory):
    with FakeApiServer() as api:
        feed = ApiFeed(api)
        feed.write({"zone": ZONE, "namespaces": set(), "services": {}, "slices": {}, "pods": {}})
        kubeconfig = write_kubeconfig(tmp_path_factory.mktemp("model-api") / "kubeconfig", api.url, token=api.token)
        with KdnsProcess("--kubeconfig", kubeconfig, "--pods", "verified", "--api-backoff-max", "0.3") as kdns:
            yield kdns, feed


def _serve(served, cluster: dict) -> None:
    kdns, feed = served
    feed.write(cluster)
    applied(kdns, feed)


# ------------------------------------------------------------------------------ the tests


@settings(max_examples=LONG or 25, **SETTINGS)
@given(cluster=clusters(), seed=st.integers(0, 2 ** 32 - 1))
def test_generated_clusters_from_manifests_match_the_model(manifest_kdns, cluster, seed):
    _serve(manifest_kdns, cluster)
    compare(manifest_kdns[0], with_markers(cluster, manifest_kdns[1].generation), random.Random(seed), implicit=True)


@settings(max_examples=LONG or 12, **SETTINGS)
@given(cluster=clusters(), seed=st.integers(0, 2 ** 32 - 1))
def test_generated_clusters_from_the_api_match_the_model(api_kdns, cluster, seed):
    _serve(api_kdns, cluster)
    compare(api_kdns[0], with_markers(cluster, api_kdns[1].generation), random.Random(seed), implicit=False)


def _steps(start: dict, end: dict, order: list[int]):
    """Clusters from `start` to `end`, one object added, changed or removed per step, in `order`."""
    keys = [(part, key) for part in ("namespaces", "services", "slices", "pods")
            for key in sorted(set(start[part]) | set(end[part]), key=str)
            if (key in start[part]) != (key in end[part]) or
            (part != "namespaces" and start[part].get(key) != end[part].get(key))]
    keys = [keys[i] for i in dict.fromkeys(i % len(keys) for i in order)] if keys else []
    current = {**start, **{p: (set(start[p]) if p == "namespaces" else dict(start[p]))
                           for p in ("namespaces", "services", "slices", "pods")}}
    for part, key in keys:
        if part == "namespaces":
            current["namespaces"] = set(current["namespaces"]) ^ {key}
        elif key in end[part]:
            current[part] = {**current[part], key: end[part][key]}
        else:
            current[part] = {k: v for k, v in current[part].items() if k != key}
        yield current


def _drive(served, start: dict, end: dict, order: list[int], seed: int, implicit: bool) -> None:
    rng = random.Random(seed)
    _serve(served, start)
    for cluster in _steps(start, end, order):
        _serve(served, cluster)
        compare(served[0], with_markers(cluster, served[1].generation), rng, implicit=implicit, limit=60)


CHANGES = dict(start=clusters(), end=clusters(), order=st.lists(st.integers(0, 50), min_size=1, max_size=8),
               seed=st.integers(0, 2 ** 32 - 1))


@settings(max_examples=LONG or 5, **SETTINGS)
@given(**CHANGES)
def test_changes_through_manifests_match_the_model_after_every_step(manifest_kdns, start, end, order, seed):
    _drive(manifest_kdns, start, end, order, seed, implicit=True)


@settings(max_examples=LONG or 5, **SETTINGS)
@given(**CHANGES)
def test_changes_through_the_api_match_the_model_after_every_step(api_kdns, start, end, order, seed):
    _drive(api_kdns, start, end, order, seed, implicit=False)
