"""ClusterIndex: the single owner of cluster state, with the lookups the resolver needs.

Sources feed it objects (upsert / delete / replace); every applied change bumps `generation`
and tells subscribers which dependency keys it touched, so caches drop exactly what changed:

  ("svc", ns, name)  anything under <name>.<ns>.svc.<zone> (service, its slices, its endpoints)
  ("ns", ns)         existence of namespace <ns>
  ("pods", ns)       the pods of <ns> (pods verified)
  ("ip", ip)         PTR answers for <ip>
  ANY                every change (the apex SOA's serial and partial reverse names depend on it)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

from .history import History
from .objects import Endpoint, EndpointSlice, Namespace, Pod, Service, ServicePort

ANY = ("any",)
DepKey = tuple

Listener = Callable[[set], None]


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """One served address of a service: `name` is the endpoint's DNS label (hostname or dashed IP)."""

    name: str
    ip: str
    ready: bool
    pod_name: str
    # the ports of the slice this address came from; None when it lists none (the Service's apply)
    ports: tuple[ServicePort, ...] | None = None
    zone: str = ""  # the endpoint's topology zone (kubernetes `zonal`)


class ServiceView:
    """A service joined with its effective endpoints (EndpointSlices, else v1 Endpoints).

    The index gives it the slices; the endpoint records are built from them when first asked for and
    then kept (most services of a big cluster are never asked for: 100k records and their names are
    tens of MiB). ServiceView(service, records) holds the records given."""

    __slots__ = ("service", "_records", "_slices", "_pod_names")

    def __init__(self, service: Service, endpoints: "tuple[EndpointRecord, ...] | None" = None,
                 slices: tuple[EndpointSlice, ...] = (), pod_names: bool = False):
        self.service = service
        self._records = endpoints
        self._slices = slices  # sorted by name
        self._pod_names = pod_names

    @property
    def endpoints(self) -> tuple[EndpointRecord, ...]:
        if self._records is None:
            records: list[EndpointRecord] = []
            seen: set[tuple] = set()
            for sl in self._slices:
                ports = _listed_ports(sl)
                for ep in sl.endpoints:
                    records.extend(_endpoint_records(ep, ports, seen, self._pod_names))
            self._records = tuple(records)
        return self._records

    def served_endpoints(self) -> list[EndpointRecord]:
        """Endpoints DNS serves: ready ones, or all with publishNotReadyAddresses."""
        if self.service.publish_not_ready:
            return list(self.endpoints)
        return [e for e in self.endpoints if e.ready]

    def served_addresses(self) -> set[tuple[str, str]]:
        """(ip, endpoint name) of the served endpoints, without building the records."""
        if self._records is not None:
            return {(rec.ip, rec.name) for rec in self.served_endpoints()}
        publish = self.service.publish_not_ready
        return {(ip, _endpoint_name(ep, ip, self._pod_names)) for sl in self._slices for ep in sl.endpoints
                if ep.ready or publish for ip in ep.addresses}


def _endpoint_name(ep: Endpoint, ip: str, pod_names: bool) -> str:
    """An endpoint's DNS label: its hostname, its pod's name (CoreDNS endpoint_pod_names), or the dashed IP."""
    name = ep.hostname
    if not name and pod_names and ep.pod_name and len(ep.pod_name) < 64:
        name = ep.pod_name.lower()
    return name or dashed_ip(ip)


def _endpoint_records(ep: Endpoint, ports: tuple[ServicePort, ...] | None, seen: set,
                      pod_names: bool = False) -> Iterable[EndpointRecord]:
    for ip in ep.addresses:
        name = _endpoint_name(ep, ip, pod_names)
        own = (ep.ports or None) if ep.ports is not None else ports
        # the same name and address may come from several slices (one per port set during a
        # port change): each is kept with its own ports; only exact repeats are dropped
        key = (name, ip, ep.ready, own)
        if key in seen:
            continue
        seen.add(key)
        yield EndpointRecord(name, ip, ep.ready, ep.pod_name, own, ep.zone)


def _reverse_entries(view: "ServiceView | None") -> set[tuple[str, str]]:
    """(ip, endpoint name or "") pairs a service view puts in the reverse map."""
    if view is None:
        return set()
    service = view.service
    out = set()
    if service.kind == "ClusterIP":
        out.update((ip, "") for ip in service.cluster_ips)
    if service.kind != "ExternalName":
        out.update(view.served_addresses())
    return out


def _reverse_addresses(view: ServiceView) -> set[str]:
    """The addresses of _reverse_entries(view), without the endpoint names."""
    service = view.service
    out = set(service.cluster_ips) if service.kind == "ClusterIP" else set()
    if service.kind != "ExternalName":
        publish = service.publish_not_ready
        out.update(ip for sl in view._slices for ep in sl.endpoints if ep.ready or publish for ip in ep.addresses)
    return out


def _listed_ports(sl: EndpointSlice) -> tuple[ServicePort, ...] | None:
    """A slice's ports; None when it lists none. A slice whose listed ports were all left out
    (numbers SRV cannot carry) still lists ports: its endpoints do not take the Service's."""
    if sl.ports or any(path.startswith("ports[") for path, _ in sl.unserved):
        return sl.ports
    return None


def _named(slices: tuple[EndpointSlice, ...], name: str) -> EndpointSlice | None:
    return next((sl for sl in slices if sl.name == name), None)


def _without(slices: tuple[EndpointSlice, ...], name: str) -> tuple[EndpointSlice, ...]:
    return tuple(sl for sl in slices if sl.name != name)


def dashed_ip(ip: str) -> str:
    """The spec's system-assigned endpoint name: 10.244.1.7 -> 10-244-1-7, fd00::1 -> fd00--1."""
    name = ip.replace(".", "-").replace(":", "-")
    if name.startswith("-"):
        name = "0" + name
    if name.endswith("-"):
        name = name + "0"
    return name


class ClusterIndex:
    def __init__(self, implicit_namespaces: bool = False, namespaces: Iterable[str] | None = None,
                 namespace_selector=None, endpoint_pod_names: bool = False):
        # implicit_namespaces: a namespace named by any object exists (manifest mode).
        # namespaces / namespace_selector: only these namespaces are exposed (CoreDNS `namespaces`,
        # `namespace_labels`); objects elsewhere are kept but answer NXDOMAIN.
        self.implicit_namespaces = implicit_namespaces
        self.allowed_namespaces = frozenset(namespaces) if namespaces else None
        self.namespace_selector = namespace_selector
        # CoreDNS endpoint_pod_names: an endpoint without hostname is named after its pod (< 64 chars)
        self.endpoint_pod_names = endpoint_pod_names
        self.generation = 0
        self.serial = int(time.time())
        self.synced = False
        self.services: dict[tuple[str, str], Service] = {}
        # (ns, svc) -> its slices, by name (a tuple, the views share it: a service has a few; 10k dicts
        # would cost ~2 MiB more)
        self.slices: dict[tuple[str, str], tuple[EndpointSlice, ...]] = {}
        self.legacy: dict[tuple[str, str], EndpointSlice] = {}  # (ns, svc) -> converted v1 Endpoints
        self.slice_owner: dict[tuple[str, str], str] = {}  # (ns, slice name) -> svc
        self.pods: dict[tuple[str, str], Pod] = {}
        self.pod_ips: dict[tuple[str, str], set[str]] = {}  # (ns, ip) -> pod names
        self._pod_ns: dict[str, dict[str, int]] = {}  # ip -> {namespace: pods}
        self.namespaces: dict[str, Namespace] = {}
        self._ns_refs: dict[str, int] = {}
        self.views: dict[tuple[str, str], ServiceView] = {}
        # ip -> (ns, svc) of the service whose view names it -- or a set of those when several do
        # (rare); one tuple per service, shared by its addresses; reverse_names() reads the names
        self.reverse: dict[str, tuple | set] = {}
        self._listeners: list[Listener] = []
        self._batch: set | None = None
        self.history = History()  # the last changes applied, for `kdns explain`
        self._dirty: set[tuple[str, str]] = set()  # services whose view a batch changed, built at commit

    # ---------------------------------------------------------------- subscription / batching

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def begin(self) -> None:
        """Start a batch: listeners hear about all changes once, at commit()."""
        if self._batch is None:
            self._batch = set()

    def commit(self) -> None:
        if self._batch is not None and self._dirty:
            # each service's view once per batch: a bulk load upserts a service and then each of its slices
            dirty, self._dirty = self._dirty, set()
            for key in dirty:
                self._build_view(key, self._batch)
        touched, self._batch = self._batch, None
        if touched:
            self._notify(touched)

    def _touch(self, keys: Iterable[DepKey]) -> None:
        keys = set(keys)
        keys.add(ANY)
        self.generation += 1
        self.serial = max(self.serial + 1, int(time.time()))
        if self._batch is not None:
            self._batch |= keys
        else:
            self._notify(keys)

    def _notify(self, keys: set) -> None:
        for listener in self._listeners:
            listener(keys)

    def mark_synced(self, synced: bool = True) -> None:
        if self.synced != synced:
            self.synced = synced
            self._touch(())

    # ---------------------------------------------------------------- namespaces

    def namespace_exists(self, ns: str) -> bool:
        """Whether names under <ns> are served: it exists and passes the namespace filters."""
        if self.allowed_namespaces is not None and ns not in self.allowed_namespaces:
            return False
        if self.namespace_selector is not None:
            obj = self.namespaces.get(ns)
            return obj is not None and self.namespace_selector.matches(obj.labels)
        return ns in self.namespaces or (self.implicit_namespaces and self._ns_refs.get(ns, 0) > 0)

    def _ref(self, ns: str, delta: int, touched: set) -> None:
        before = self.namespace_exists(ns)
        count = self._ns_refs.get(ns, 0) + delta
        if count:
            self._ns_refs[ns] = count
        else:
            self._ns_refs.pop(ns, None)
        if before != self.namespace_exists(ns):
            touched.add(("ns", ns))

    # ---------------------------------------------------------------- upsert / delete

    def upsert(self, obj: Service | EndpointSlice | Pod | Namespace) -> None:
        touched: set = set()
        if isinstance(obj, Service):
            old = self.services.get(obj.key)
            if old == obj:
                return
            self.services[obj.key] = obj
            if old is None:
                self._ref(obj.namespace, 1, touched)
            self._rebuild_view(obj.key, touched)
            created = old is None
        elif isinstance(obj, EndpointSlice):
            svc_key = (obj.namespace, obj.service)
            if obj.legacy:
                if self.legacy.get(svc_key) == obj:
                    return
                created = svc_key not in self.legacy
                if created:
                    self._ref(obj.namespace, 1, touched)
                self.legacy[svc_key] = obj
            else:
                old_owner = self.slice_owner.get(obj.key)
                if old_owner is not None and _named(self.slices.get((obj.namespace, old_owner), ()), obj.name) == obj:
                    return
                if old_owner is not None and old_owner != obj.service:
                    # the slice moved to another service (label changed)
                    self._drop_slice(obj.namespace, obj.name, touched)
                    old_owner = None
                created = old_owner is None
                if created:
                    self._ref(obj.namespace, 1, touched)
                self.slices[svc_key] = tuple(sorted(_without(self.slices.get(svc_key, ()), obj.name) + (obj,),
                                                    key=lambda sl: sl.name))
                self.slice_owner[obj.key] = obj.service
            self._rebuild_view(svc_key, touched)
        elif isinstance(obj, Pod):
            old = self.pods.get(obj.key)
            if old == obj:
                return
            created = old is None
            if old is not None:
                self._unindex_pod(old)
            else:
                self._ref(obj.namespace, 1, touched)
            self.pods[obj.key] = obj
            for ip in obj.ips:
                self.pod_ips.setdefault((obj.namespace, ip), set()).add(obj.name)
                by_ns = self._pod_ns.setdefault(ip, {})
                by_ns[obj.namespace] = by_ns.get(obj.namespace, 0) + 1
            touched.add(("pods", obj.namespace))
        elif isinstance(obj, Namespace):
            if self.namespaces.get(obj.name) == obj:
                return
            created = obj.name not in self.namespaces
            self.namespaces[obj.name] = obj
            touched.add(("ns", obj.name))  # existence or labels (namespace_selector) changed
        else:  # pragma: no cover - programming error
            raise TypeError(f"cannot index {type(obj).__name__}")
        self._record(obj, "created" if created else "updated")
        self._touch(touched)

    def _record(self, obj, action: str) -> None:
        kind = "Endpoints" if isinstance(obj, EndpointSlice) and obj.legacy else type(obj).__name__
        self.history.add(kind, getattr(obj, "namespace", ""), obj.name, action, obj,
                         obj.service if isinstance(obj, EndpointSlice) else "")

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete by kind ("Service", "EndpointSlice", "Endpoints", "Pod", "Namespace")."""
        touched: set = set()
        service = ""
        if kind == "Service":
            if self.services.pop((namespace, name), None) is None:
                return
            self._ref(namespace, -1, touched)
            self._rebuild_view((namespace, name), touched)
        elif kind == "EndpointSlice":
            if (namespace, name) not in self.slice_owner:
                return
            service = self.slice_owner[(namespace, name)]
            self._drop_slice(namespace, name, touched)
        elif kind == "Endpoints":
            if self.legacy.pop((namespace, name), None) is None:
                return
            service = name
            self._ref(namespace, -1, touched)
            self._rebuild_view((namespace, name), touched)
        elif kind == "Pod":
            pod = self.pods.pop((namespace, name), None)
            if pod is None:
                return
            self._unindex_pod(pod)
            self._ref(namespace, -1, touched)
            touched.add(("pods", namespace))
        elif kind == "Namespace":
            if self.namespaces.pop(name, None) is None:
                return
            touched.add(("ns", name))
        else:  # pragma: no cover
            raise ValueError(f"unknown kind {kind}")
        self.history.add(kind, namespace, name, "deleted", None, service)
        self._touch(touched)

    def remove(self, obj: Service | EndpointSlice | Pod | Namespace) -> None:
        if isinstance(obj, EndpointSlice) and obj.legacy:
            self.delete("Endpoints", obj.namespace, obj.service)
        elif isinstance(obj, Namespace):
            self.delete("Namespace", "", obj.name)
        else:
            self.delete(type(obj).__name__, obj.namespace, obj.name)

    def _drop_slice(self, namespace: str, name: str, touched: set) -> None:
        svc = self.slice_owner.pop((namespace, name))
        group = _without(self.slices.get((namespace, svc), ()), name)
        if group:
            self.slices[(namespace, svc)] = group
        else:
            self.slices.pop((namespace, svc), None)
        self._ref(namespace, -1, touched)
        self._rebuild_view((namespace, svc), touched)

    def _unindex_pod(self, pod: Pod) -> None:
        for ip in pod.ips:
            by_ns = self._pod_ns.get(ip)
            if by_ns is not None:
                by_ns[pod.namespace] -= 1
                if not by_ns[pod.namespace]:
                    del by_ns[pod.namespace]
                if not by_ns:
                    del self._pod_ns[ip]
            names = self.pod_ips.get((pod.namespace, ip))
            if names is not None:
                names.discard(pod.name)
                if not names:
                    del self.pod_ips[(pod.namespace, ip)]

    # ---------------------------------------------------------------- derived views

    def _rebuild_view(self, key: tuple[str, str], touched: set) -> None:
        touched.add(("svc", *key))
        if self._batch is not None:
            self._dirty.add(key)  # built at commit()
        else:
            self._build_view(key, touched)

    def _build_view(self, key: tuple[str, str], touched: set) -> None:
        service = self.services.get(key)
        old_view = self.views.get(key)
        old_reverse = _reverse_entries(old_view) if old_view is not None else set()
        if service is None:
            self.views.pop(key, None)
            new_reverse: set = set()
        else:
            slices = self.slices.get(key, ())
            if not slices and key in self.legacy:
                slices = (self.legacy[key],)
            view = ServiceView(service, slices=slices, pod_names=self.endpoint_pod_names)
            self.views[key] = view
            if old_view is None:  # a new service (as in a bulk load): its addresses, their names not needed
                for ip in _reverse_addresses(view):
                    self._reverse_add(ip, key)
                    touched.add(("ip", ip))
                return
            new_reverse = _reverse_entries(view)
        old_ips = {ip for ip, _ in old_reverse}
        new_ips = {ip for ip, _ in new_reverse}
        owner = key  # one tuple per service, shared by its addresses
        for ip in old_ips - new_ips:
            self._reverse_remove(ip, owner)
        for ip in new_ips - old_ips:
            self._reverse_add(ip, owner)
        touched.update(("ip", ip) for ip, _ in old_reverse ^ new_reverse)

    def _reverse_add(self, ip: str, entry: tuple) -> None:
        current = self.reverse.get(ip)
        if current is None:
            self.reverse[ip] = entry
        elif isinstance(current, set):
            current.add(entry)
        elif current != entry:
            self.reverse[ip] = {current, entry}

    def _reverse_remove(self, ip: str, entry: tuple) -> None:
        current = self.reverse.get(ip)
        if current is None:
            return
        if isinstance(current, set):
            current.discard(entry)
            if len(current) == 1:
                self.reverse[ip] = next(iter(current))
            elif not current:
                del self.reverse[ip]
        elif current == entry:
            del self.reverse[ip]

    # ---------------------------------------------------------------- queries (for the resolver)

    def keys(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every stored object of `kind` (namespaces: ("", name))."""
        if kind == "Service":
            return list(self.services)
        if kind == "EndpointSlice":
            return list(self.slice_owner)
        if kind == "Pod":
            return list(self.pods)
        if kind == "Namespace":
            return [("", name) for name in self.namespaces]
        raise ValueError(f"unknown kind {kind}")

    def get(self, kind: str, namespace: str, name: str) -> Service | EndpointSlice | Pod | Namespace | None:
        """The stored object of `kind` (not legacy Endpoints), or None."""
        if kind == "Service":
            return self.services.get((namespace, name))
        if kind == "EndpointSlice":
            owner = self.slice_owner.get((namespace, name))
            return None if owner is None else _named(self.slices.get((namespace, owner), ()), name)
        if kind == "Pod":
            return self.pods.get((namespace, name))
        if kind == "Namespace":
            return self.namespaces.get(name)
        raise ValueError(f"unknown kind {kind}")

    def view(self, namespace: str, name: str) -> ServiceView | None:
        return self.views.get((namespace, name))

    def pod_namespace(self, ip: str) -> str | None:
        """The namespace of the pod holding `ip` (autopath with pods verified); None if unknown or ambiguous."""
        by_ns = self._pod_ns.get(ip)
        if by_ns and len(by_ns) == 1:
            return next(iter(by_ns))
        return None

    def pod_with_ip(self, namespace: str, ip: str) -> bool:
        return (namespace, ip) in self.pod_ips

    def reverse_names(self, ip: str) -> list[tuple[str, str, str]]:
        """(ns, svc, endpoint name) owning `ip`; a ClusterIP hides endpoint names for the same IP."""
        current = self.reverse.get(ip)
        owners = current if isinstance(current, set) else ([current] if current else [])
        entries = sorted((ns, svc, name) for ns, svc in owners
                         for addr, name in _reverse_entries(self.views.get((ns, svc))) if addr == ip)
        services = [e for e in entries if not e[2]]
        return services or entries
