"""Why a name under a kubernetes zone has no records (the spec's rule that said no), and the nearest name that has."""

from __future__ import annotations

from dnslib import QTYPE

from .index import ClusterIndex, ServiceView
from .resolver import Resolver, _is_ip, parse_dashed_ip

NEAR_MISS = 2  # edit distance of a name offered as "did you mean"
MAX_SCAN = 20000  # services compared for a near miss in other namespaces (edit distance is slow in Python)


class Diagnosis:
    """Why a name under a kubernetes zone has no records, and the nearest name that has."""

    def __init__(self, index: ClusterIndex, resolver: Resolver, zone, rel: tuple, qtype: int, labels=None,
                 unfiltered: ClusterIndex | None = None):
        self.index, self.resolver, self.zone, self.rel, self.qtype = index, resolver, zone, rel, qtype
        self.cfg = resolver.config
        self.labels = labels  # the kubernetes `labels` selector, if any
        self.unfiltered = unfiltered

    def run(self) -> tuple[str, list[str]]:
        rel = self.rel
        if not rel:
            return f"the zone apex {self.zone.name} has no {QTYPE.get(self.qtype)} records (SOA and NS only)", []
        if self.zone.reverse:
            return "no Service or endpoint has this address (reverse lookup)", []
        kind = rel[-1]
        if kind == "svc":
            return self._svc(rel[:-1])
        if kind == "pod":
            return self._pod(rel[:-1])
        if rel in (("dns-version",), ("ns", "dns"), ("dns",)):
            return "this special name has no records of the asked type", []
        return (f"not a cluster name: names under {self.zone.name} are <service>.<namespace>.svc.{self.zone.name} "
                f"or <ip>.<namespace>.pod.{self.zone.name}"), self._whole_name_hints(rel)

    def _whole_name_hints(self, rel: tuple) -> list[str]:
        # `web.shop` asked as `web.shop.cluster.local`: a service name missing its `svc`
        if len(rel) == 2 and self.index.view(rel[1], rel[0]) is not None:
            return [f"did you mean {rel[0]}.{rel[1]}.svc.{self.zone.name}? (Service {rel[1]}/{rel[0]} exists)"]
        return []

    def _namespace_gone(self, ns: str) -> tuple[str, list[str]]:
        index = self.index
        if index.allowed_namespaces is not None and ns not in index.allowed_namespaces:
            held = sorted(n for o, n in self.unfiltered.services if o == ns) if self.unfiltered is not None else []
            return (f"namespace {ns!r} is excluded by the kubernetes `namespaces` filter "
                    f"(served: {', '.join(sorted(index.allowed_namespaces))})"), \
                ([f"namespace {ns} has {len(held)} Service(s) in the source ({', '.join(held[:3])})"]
                 if held else []) + \
                [f"add {ns} to the kubernetes plugin's `namespaces` list to serve it"]
        if index.namespace_selector is not None:
            if ns in index.namespaces:
                return f"namespace {ns!r} exists but does not match the `namespace_labels` filter", []
        hints = [f"did you mean namespace {n}? ({_edits(ns, n)} edit{'s' if _edits(ns, n) > 1 else ''})"
                 for n in _near(ns, self._namespaces())]
        return f"no namespace {ns!r} (no Namespace object, nothing in it)", hints

    def _namespaces(self) -> set[str]:
        index = self.index
        names = set(index.namespaces) | set(index._ns_refs)
        return {n for n in names if index.namespace_exists(n)}

    def _svc(self, parts: tuple) -> tuple[str, list[str]]:
        n = len(parts)
        zone = self.zone.name
        if n == 0:
            return f"svc.{zone} is an empty non-terminal: it holds no records", []
        ns = parts[-1]
        if not self.index.namespace_exists(ns):
            return self._namespace_gone(ns)
        if n == 1:
            return f"a namespace name ({ns}.svc.{zone}) holds no records (NODATA)", []
        name = parts[-2]
        view = self.index.view(ns, name)
        if view is None:
            return f"no Service {name!r} in namespace {ns!r}", self._service_hints(ns, name)
        svc = view.service
        if n > 4:
            return f"too many labels below Service {ns}/{name}: no such name", []
        if n == 2:
            return self._service_negative(view)
        if n == 3:
            label = parts[0]
            if label.startswith("_"):
                return (f"Service {ns}/{name} has no named port with protocol {label[1:].upper()} "
                        "(SRV names need named ports)"), []
            served = view.served_endpoints()
            names = sorted({e.name for e in served})
            if svc.kind == "ExternalName":
                return f"Service {ns}/{name} is an ExternalName: it has no endpoint names", []
            if label not in names:
                hints = [f"did you mean {m}.{name}.{ns}.svc.{zone}?" for m in _near(label, names)]
                shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else "none"
                return f"no endpoint named {label!r} among the served endpoints of {ns}/{name} ({shown})", hints
            return f"endpoint {label} of {ns}/{name} has no {QTYPE.get(self.qtype)} address", []
        ports = ", ".join(f"_{p.name}._{p.protocol.lower()}" for p in svc.ports if p.name) or "no named ports"
        return f"Service {ns}/{name} has no SRV name {parts[0]}.{parts[1]} (ports: {ports})", []

    def _service_negative(self, view: ServiceView) -> tuple[str, list[str]]:
        svc = view.service
        ref = f"{svc.namespace}/{svc.name}"
        if svc.kind == "ExternalName":
            if _is_ip(svc.external_name):
                return (f"ExternalName Service {ref} points at an IP address ({svc.external_name}): a CNAME "
                        "cannot, so the name does not exist"), ["use a Service without selector and an "
                                                                  "EndpointSlice for a fixed IP"]
            return f"ExternalName Service {ref} -> {svc.external_name}: the target does not resolve", []
        served = view.served_endpoints()
        total = len(view.endpoints)
        ready = sum(1 for e in view.endpoints if e.ready)
        terminating = self._terminating(svc.namespace, svc.name)
        counts = f"{total} endpoint{'s' if total != 1 else ''}, {ready} ready" + \
            (f", {terminating} terminating" if terminating else "")
        if svc.kind == "Headless" and not served:
            fix = "no pod matches the selector" if total == 0 else \
                "wait for the pods to pass their readiness probes, or set publishNotReadyAddresses: true"
            return f"headless Service {ref} has no ready endpoints ({counts}): a headless name has nothing " \
                   "to answer", [fix]
        if svc.kind == "ClusterIP" and self.cfg.ignore_empty_service and not served:
            return f"Service {ref} has no ready endpoints ({counts}) and `ignore empty_service` is set", []
        families = sorted({"AAAA" if ":" in ip else "A" for ip in (svc.cluster_ips if svc.kind == "ClusterIP"
                                                                    else [e.ip for e in served])})
        return (f"Service {ref} ({svc.kind}, {counts}) has no {QTYPE.get(self.qtype)} records"
                + (f"; it has {'/'.join(families)} only" if families else "")), []

    def _terminating(self, ns: str, name: str) -> int:
        """Addresses of the service's slices whose endpoint is terminating (the index's views drop the flag)."""
        slices = self.index.slices.get((ns, name), ())
        return sum(len(ep.addresses) for sl in slices for ep in sl.endpoints if ep.terminating)

    def _service_hints(self, ns: str, name: str) -> list[str]:
        index = self.index
        hints = [f"did you mean {name}.{other}? (Service {other}/{name} exists)"
                 for other, n in sorted(index.services) if n == name and other != ns and index.namespace_exists(other)]
        in_ns = sorted(n for o, n in index.services if o == ns)
        hints += [f"did you mean {m}.{ns}? (a typo: {_edits(name, m)} edit{'s' if _edits(name, m) > 1 else ''})"
                  for m in _near(name, in_ns)]
        if not hints and len(index.services) <= MAX_SCAN:  # the live endpoint runs on the server's loop
            elsewhere = sorted({(n, o) for o, n in index.services if o != ns and index.namespace_exists(o)})
            hints += [f"did you mean {m}.{o}? (Service {o}/{m})" for m, o in elsewhere
                      if m in _near(name, [m])][:3]
        if index.services.get((ns, name)) is None and name in {n for _, n in index.services} and not hints:
            hints.append(f"a Service {name} exists only in namespaces kdns does not serve")
        raw = self.unfiltered.services.get((ns, name)) if self.unfiltered is not None else None
        if raw is not None and self.labels is not None:
            hints.insert(0, f"Service {ns}/{name} exists in the source but the kubernetes `labels` filter "
                            f"({self.labels.text}) leaves it out: its labels do not match")
        elif self.labels is not None and self.unfiltered is None:
            hints.append(f"the kubernetes `labels` filter ({self.labels.text}) hides Services whose labels "
                         "do not match")
        return hints

    def _pod(self, parts: tuple) -> tuple[str, list[str]]:
        if self.cfg.pods == "disabled":
            return "pod records are disabled (kubernetes `pods disabled`, the default)", \
                ["set `pods insecure` (or verified) in the kubernetes plugin to serve <ip>.<ns>.pod names"]
        if not parts:
            return "pod.<zone> is an empty non-terminal", []
        ns = parts[-1]
        if not self.index.namespace_exists(ns):
            return self._namespace_gone(ns)
        if len(parts) != 2:
            return f"pod names are <a-b-c-d>.{ns}.pod.{self.zone.name}", []
        ip = parse_dashed_ip(parts[0])
        if ip is None:
            return f"{parts[0]!r} is not a dashed IP address (10-244-1-7, fd00--7)", []
        if self.cfg.pods == "verified" and not self.index.pod_with_ip(ns, ip):
            return f"no pod with IP {ip} in namespace {ns} (`pods verified`)", []
        return f"{ip} has no {QTYPE.get(self.qtype)} form", []


def _edits(a: str, b: str, cap: int = NEAR_MISS + 1) -> int:
    """Levenshtein distance, stopping early once it exceeds `cap`."""
    if abs(len(a) - len(b)) >= cap:
        return cap
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) >= cap:
            return cap
        prev = cur
    return prev[-1]


def _near(word: str, pool) -> list[str]:
    """Names of `pool` within NEAR_MISS edits of `word` (not itself), nearest first."""
    scored = sorted((_edits(word, other), other) for other in pool if other != word)
    limit = 1 if len(word) <= 4 else NEAR_MISS  # two edits turn any short name into another
    return [other for d, other in scored if d <= limit][:3]
