"""Slotted views of Service / EndpointSlice / Endpoints / Pod / Namespace holding only what DNS needs.

Sources convert API objects (plain dicts, as YAML or JSON decode them) here, at the boundary,
and hand only these records inward. A field that is wrong raises ObjectError naming the field
path, so the caller can add the file and line.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, field
import reprlib
from collections.abc import Mapping
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class ObjectError(ValueError):
    """A Kubernetes object that cannot be used; `path` names the offending field."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str  # "" for an unnamed port
    port: int | None  # None only in an EndpointSlice: a port without a number ("all ports")
    protocol: str  # upper case: TCP, UDP, SCTP


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    kind: str  # "ClusterIP" (also NodePort/LoadBalancer), "Headless" or "ExternalName"
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    external_name: str = ""
    publish_not_ready: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    # spec.clusterIP exactly as the API holds it (cluster_ips are canonical): the kubelet writes
    # this string verbatim into <SVC>_SERVICE_HOST, and so does kdns-webhook
    cluster_ip: str = ""
    unserved: tuple[tuple[str, str], ...] = ()  # as EndpointSlice.unserved
    # served outside the cluster by the Corefile's k8s_external: spec.externalIPs and
    # status.loadBalancer.ingress (IPs, and hostnames as "host.name." with the trailing dot)
    external: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def headless(self) -> bool:
        return self.kind == "Headless"


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    hostname: str = ""
    pod_name: str = ""
    # a v1 Endpoints address carries the ports of its own subset; None: the ports of its slice
    ports: "tuple[ServicePort, ...] | None" = None
    zone: str = ""  # EndpointSlice endpoints[].zone (topology zone), for the kubernetes `zonal` option
    terminating: bool = False  # conditions.terminating: never changes an answer; kdns explain counts it


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """One EndpointSlice, or a v1 Endpoints object converted to the same shape (`legacy`)."""

    namespace: str
    name: str
    service: str
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    legacy: bool = False
    # (field path, reason) for each part the API accepted that DNS cannot serve; the rest is served
    unserved: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...] = ()
    hostname: str = ""
    subdomain: str = ""
    # (dnsPolicy, dnsConfig.searches, dnsConfig ndots or None, hostNetwork) when any differs from the
    # kubelet's defaults (ClusterFirst, none, none, false): what `kdns explain --from NS/POD` replays
    dns: tuple | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = field(default=())

    @property
    def key(self) -> tuple[str, str]:
        return ("", self.name)


# --------------------------------------------------------------------------------------------
# conversion helpers

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 4, 4


def _show(value: Any) -> str:
    """A bounded repr for error messages (a YAML alias bomb must not be expanded into one)."""
    return _REPR.repr(value)


def _get(obj: Mapping[str, Any], path: str, kind: type | tuple[type, ...], default: Any = None,
         required: bool = False) -> Any:
    cur: Any = obj
    walked = []
    for part in path.split("."):
        walked.append(part)
        if type(cur) is not dict and not isinstance(cur, Mapping):  # dict first: ABC checks are slow
            raise ObjectError(".".join(walked[:-1]), "expected a mapping")
        if part not in cur or cur[part] is None:
            if required:
                raise ObjectError(path, "required field is missing")
            return default
        cur = cur[part]
    if not isinstance(cur, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        names = " or ".join("mapping" if k is Mapping else k.__name__ for k in kinds)
        raise ObjectError(path, f"expected {names}, got {type(cur).__name__} {_show(cur)}")
    return cur


def _name(obj: Mapping[str, Any]) -> str:
    name = _get(obj, "metadata.name", str, required=True)
    if not name:
        raise ObjectError("metadata.name", "must not be empty")
    return name


def _namespace(obj: Mapping[str, Any], default_namespace: str) -> str:
    # interned: every object of a namespace shares one string (the index holds 100k+ of them)
    return sys.intern(_get(obj, "metadata.namespace", str, default=default_namespace) or default_namespace)


def _is_map(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)  # dict first: the ABC check is slow


_SHARED: dict = {}  # equal immutable values (port lists, port names) shared by every record holding one


def _shared(value: Any) -> Any:
    if len(_SHARED) > 50_000:  # churn in a long run: start over rather than grow
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


def _labels(obj: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    labels = _get(obj, "metadata.labels", Mapping, default={})
    out = []
    for k, v in labels.items():
        if not isinstance(k, (str, int, float, bool)) or not isinstance(v, (str, int, float, bool)):
            raise ObjectError("metadata.labels", f"label keys and values must be strings, got {_show(k)}: {_show(v)}")
        out.append((sys.intern(str(k)), str(v)))  # keys (app, team, ...) repeat across objects
    return tuple(sorted(out))


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}").fullmatch


def _ip(value: Any, path: str) -> str:
    """Canonical text of an IP address. IPv4 with leading zeros ("010.001.002.003", which the API's
    sloppy parser still accepts on old objects) is read as decimal, as Go's ParseIPSloppy does."""
    if not isinstance(value, str):
        raise ObjectError(path, f"expected an IP address string, got {_show(value)}")
    if _CANONICAL_IPV4(value):  # the common case, ~5x faster than ipaddress; the string is kept as given
        return value
    if "%" not in value:
        try:
            return ipaddress.ip_address(value).compressed
        except ValueError:
            octets = value.split(".")
            if len(octets) == 4 and all(o.isascii() and o.isdigit() and len(o) <= 3 for o in octets) \
                    and all(int(o) < 256 for o in octets):
                return ".".join(str(int(o)) for o in octets)
    raise ObjectError(path, f"not an IP address: {_show(value)}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _list(obj: Mapping[str, Any], path: str) -> list:
    return _get(obj, path, list, default=[])


_PROTOCOLS = {p: p for p in ("TCP", "UDP", "SCTP")}


def _port_fields(item: Any, p: str) -> tuple[str, Any, str]:
    """(name, raw port number, protocol) of one ports[] entry; protocol defaults to TCP as the API does."""
    if not isinstance(item, Mapping):
        raise ObjectError(p, "expected a mapping")
    name = item.get("name") or ""
    if not isinstance(name, str):
        raise ObjectError(f"{p}.name", f"expected a string, got {_show(name)}")
    raw = item.get("protocol") or "TCP"
    protocol = _PROTOCOLS.get(raw) if isinstance(raw, str) else None
    if protocol is None:
        raise ObjectError(f"{p}.protocol", f"expected TCP, UDP or SCTP, got {_show(raw)}")
    number = item.get("port")
    if isinstance(number, bool) or (number is not None and not isinstance(number, int)):
        raise ObjectError(f"{p}.port", f"expected a port number, got {_show(number)}")
    return name, number, protocol


def _ports(items: list, path: str) -> tuple[ServicePort, ...]:
    """Service / v1 Endpoints ports: the API requires a number 1-65535 on each."""
    ports = []
    for i, item in enumerate(items):
        p = f"{path}[{i}]"
        name, number, protocol = _port_fields(item, p)
        if number is None or not 0 < number < 65536:
            raise ObjectError(f"{p}.port", f"expected a port number 1-65535, got {_show(number)}")
        ports.append(_shared(ServicePort(name=_shared(name), port=number, protocol=protocol)))
    return _shared(tuple(ports))


def _slice_ports(items: list, unserved: list) -> tuple[ServicePort, ...]:
    """EndpointSlice ports. The API accepts a port without a number ("all ports": kept as None, the
    resolver takes the Service's port of that name) and does not range-check numbers: a number SRV
    cannot carry is left out and noted in `unserved`, the rest of the slice is served."""
    ports = []
    for i, item in enumerate(items):
        p = f"ports[{i}]"
        name, number, protocol = _port_fields(item, p)
        if number is not None and not 0 < number < 65536:
            unserved.append((f"{p}.port", f"{number} is not a port number 1-65535: "
                             f"no SRV record for port {name or '(unnamed)'}"))
            continue
        ports.append(_shared(ServicePort(name=_shared(name), port=number, protocol=protocol)))
    return _shared(tuple(ports))


_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def service_from_dict(obj: Mapping[str, Any], default_namespace: str = "default") -> Service:
    name = sys.intern(_name(obj))  # shared with its slices' `service` and the index's keys
    namespace = _namespace(obj, default_namespace)
    stype = _get(obj, "spec.type", str, default="ClusterIP")
    ports = _ports(_list(obj, "spec.ports"), "spec.ports")
    publish = bool(_get(obj, "spec.publishNotReadyAddresses", bool, default=False))
    labels = _labels(obj)
    if stype == "ExternalName":
        ext = _get(obj, "spec.externalName", str, required=True).rstrip(".").lower()
        if not ext:
            raise ObjectError("spec.externalName", "must not be empty for type ExternalName")
        # the API accepts an IP as externalName (it is a valid DNS subdomain) but a CNAME cannot point
        # at an address: the name answers NXDOMAIN, as in CoreDNS
        unserved = ((("spec.externalName", f"{ext} is an IP address, not a name a CNAME can point at: "
                      "the service name answers NXDOMAIN"),) if _is_ip(ext) else ())
        return Service(namespace, name, "ExternalName", ports=ports, external_name=ext,
                       publish_not_ready=publish, labels=labels, unserved=unserved)
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise ObjectError("spec.type", f"unknown service type {_show(stype)}")
    cluster_ip = _get(obj, "spec.clusterIP", str, default="")
    cluster_ips = _list(obj, "spec.clusterIPs")
    if cluster_ip == "None" or cluster_ips == ["None"]:
        return Service(namespace, name, "Headless", ports=ports, publish_not_ready=publish,
                       labels=labels)
    if not cluster_ips and not cluster_ip:
        raise ObjectError("spec.clusterIP", "required field is missing (set an address, or "
                          "\"None\" for a headless service: kdns does not allocate addresses)")
    ips = [_ip(v, f"spec.clusterIPs[{i}]") for i, v in enumerate(cluster_ips)]
    if cluster_ip:
        first = _ip(cluster_ip, "spec.clusterIP")
        if ips and ips[0] != first:
            raise ObjectError("spec.clusterIPs[0]", f"must equal spec.clusterIP {_show(cluster_ip)}")
        if not ips:
            ips = [first]
    return Service(namespace, name, "ClusterIP", cluster_ips=tuple(ips), ports=ports,
                   publish_not_ready=publish, labels=labels,
                   cluster_ip=cluster_ip or (cluster_ips[0] if isinstance(cluster_ips[0], str) else ips[0]),
                   external=_external(obj))


def _external(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """spec.externalIPs, then status.loadBalancer.ingress ip/hostname (hostnames end with a dot)."""
    out = [_ip(v, f"spec.externalIPs[{i}]") for i, v in enumerate(_list(obj, "spec.externalIPs"))]
    for i, ing in enumerate(_list(obj, "status.loadBalancer.ingress")):
        if not isinstance(ing, Mapping):
            raise ObjectError(f"status.loadBalancer.ingress[{i}]", "expected a mapping")
        if ing.get("ip"):
            out.append(_ip(ing["ip"], f"status.loadBalancer.ingress[{i}].ip"))
        elif isinstance(ing.get("hostname"), str) and ing["hostname"]:
            out.append(ing["hostname"].rstrip(".").lower() + ".")
    return tuple(dict.fromkeys(out))


def endpointslice_from_dict(obj: Mapping[str, Any], default_namespace: str = "default", *,
                            pod_names: bool = True) -> EndpointSlice | None:
    """Convert a discovery.k8s.io/v1 EndpointSlice; None when DNS serves nothing of it (addressType
    FQDN, or no kubernetes.io/service-name label: it belongs to no Service). pod_names=False leaves
    out the endpoints' pod names (only the kubernetes `endpoint_pod_names` option reads them: 100k
    endpoints, ~7 MiB).

    What the API rejects raises ObjectError; what it accepts is served as far as DNS can carry it,
    and any part left out is listed in `unserved` (see _slice_ports)."""
    name = _name(obj)
    namespace = _namespace(obj, default_namespace)
    labels = _get(obj, "metadata.labels", Mapping, default={})
    address_type = _get(obj, "addressType", str, required=True)
    if address_type not in ("IPv4", "IPv6", "FQDN", "IP"):  # "IP": deprecated, still on old objects
        raise ObjectError("addressType", f"expected IPv4, IPv6 or FQDN, got {_show(address_type)}")
    service = labels.get(SERVICE_NAME_LABEL)
    if service is not None and not isinstance(service, str):
        raise ObjectError(f"metadata.labels.{SERVICE_NAME_LABEL}", f"expected a string, got {_show(service)}")
    if address_type == "FQDN" or not service:
        return None
    service = sys.intern(service)
    unserved: list[tuple[str, str]] = []
    endpoints = []
    ipv4 = address_type == "IPv4"
    for i, ep in enumerate(_list(obj, "endpoints")):  # field paths are built only for an error
        if not _is_map(ep):
            raise ObjectError(f"endpoints[{i}]", "expected a mapping")
        addrs = ep.get("addresses")
        if not isinstance(addrs, list) or not addrs:
            raise ObjectError(f"endpoints[{i}].addresses", "required: a non-empty list of addresses")
        if ipv4 and len(addrs) == 1 and type(addrs[0]) is str and _CANONICAL_IPV4(addrs[0]):
            ips = (addrs[0],)  # the common case, without the general checks below
        else:
            ips = tuple(_slice_address(a, address_type, f"endpoints[{i}].addresses[{j}]") for j, a in enumerate(addrs))
        conditions = ep.get("conditions") or {}
        if not _is_map(conditions):
            raise ObjectError(f"endpoints[{i}].conditions", "expected a mapping")
        ready = conditions.get("ready")
        if ready is not None and not isinstance(ready, bool):
            raise ObjectError(f"endpoints[{i}].conditions.ready", f"expected true or false, got {_show(ready)}")
        hostname = ep.get("hostname") or ""
        if hostname:
            if not isinstance(hostname, str):
                raise ObjectError(f"endpoints[{i}].hostname", f"expected a string, got {_show(hostname)}")
            hostname = hostname.lower()
            if not _LABEL.fullmatch(hostname):
                raise ObjectError(f"endpoints[{i}].hostname",
                                  f"not a DNS label (a-z, 0-9, '-', at most 63): {_show(hostname)}")
        pod_name = ""
        if pod_names:
            target = ep.get("targetRef") or {}
            pod_name = target.get("name", "") if _is_map(target) and target.get("kind", "Pod") == "Pod" else ""
            pod_name = pod_name if isinstance(pod_name, str) else ""
        zone = ep.get("zone") or ""
        if zone:
            if not isinstance(zone, str):
                raise ObjectError(f"endpoints[{i}].zone", f"expected a string, got {_show(zone)}")
            zone = sys.intern(zone)
        # ready unset means ready (discovery API; CoreDNS endpointsliceReady); serving, terminating,
        # nodeName and hints do not change what DNS serves (zone does, with the kubernetes `zonal` option)
        endpoints.append(Endpoint(ips, ready is not False, hostname, pod_name, None, zone,
                                  conditions.get("terminating") is True))
    ports = _slice_ports(_list(obj, "ports"), unserved)
    return EndpointSlice(namespace, name, service, tuple(endpoints), ports, unserved=tuple(unserved))


def _slice_address(value: Any, address_type: str, path: str) -> str:
    ip = _ip(value, path)
    if address_type == "IPv4" and ":" in ip:
        # the API's IPv4 check accepts an IPv4-mapped IPv6 form (::ffff:10.1.2.3): it is that IPv4 address
        mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        if mapped is None:
            raise ObjectError(path, f"{ip} does not match addressType IPv4")
        return str(mapped)
    if address_type == "IPv6" and ":" not in ip:
        raise ObjectError(path, f"{ip} does not match addressType IPv6")
    return ip


def endpoints_from_dict(obj: Mapping[str, Any], default_namespace: str = "default", *,
                        pod_names: bool = True) -> EndpointSlice:
    """Convert a v1 Endpoints object: one legacy slice named after the service (pod_names: as
    endpointslice_from_dict)."""
    name = _name(obj)
    namespace = _namespace(obj, default_namespace)
    endpoints: list[Endpoint] = []
    ports: list[ServicePort] = []
    for i, subset in enumerate(_list(obj, "subsets")):
        p = f"subsets[{i}]"
        if not isinstance(subset, Mapping):
            raise ObjectError(p, "expected a mapping")
        subset_ports = subset.get("ports") or []
        if not isinstance(subset_ports, list):
            raise ObjectError(f"{p}.ports", f"expected a list, got {type(subset_ports).__name__}")
        own_ports = _ports(subset_ports, f"{p}.ports")
        for port in own_ports:
            if port not in ports:
                ports.append(port)
        for field_name, ready in (("addresses", True), ("notReadyAddresses", False)):
            items = subset.get(field_name) or []
            if not isinstance(items, list):
                raise ObjectError(f"{p}.{field_name}", f"expected a list, got {type(items).__name__}")
            for j, addr in enumerate(items):
                q = f"{p}.{field_name}[{j}]"
                if not isinstance(addr, Mapping):
                    raise ObjectError(q, "expected a mapping")
                ip = _ip(addr.get("ip"), f"{q}.ip")
                hostname = addr.get("hostname") or ""
                if not isinstance(hostname, str):
                    raise ObjectError(f"{q}.hostname", f"expected a string, got {_show(hostname)}")
                target = addr.get("targetRef") or {}
                pod_name = target.get("name", "") if isinstance(target, Mapping) else ""
                endpoints.append(Endpoint((ip,), ready=ready, hostname=hostname.lower(),
                                          pod_name=pod_name if pod_names and isinstance(pod_name, str) else "",
                                          ports=own_ports))
    return EndpointSlice(namespace, name, name, tuple(endpoints), tuple(ports), legacy=True)


def pod_from_dict(obj: Mapping[str, Any], default_namespace: str = "default") -> Pod:
    name = _name(obj)
    namespace = _namespace(obj, default_namespace)
    ips: list[str] = []
    for i, item in enumerate(_list(obj, "status.podIPs")):
        if not isinstance(item, Mapping):
            raise ObjectError(f"status.podIPs[{i}]", "expected a mapping with an ip field")
        ips.append(_ip(item.get("ip"), f"status.podIPs[{i}].ip"))
    pod_ip = _get(obj, "status.podIP", str, default="")
    if pod_ip:
        first = _ip(pod_ip, "status.podIP")
        if first not in ips:
            ips.insert(0, first)
    hostname = _get(obj, "spec.hostname", str, default="")
    subdomain = _get(obj, "spec.subdomain", str, default="")
    return Pod(namespace, name, tuple(ips), hostname.lower(), subdomain.lower(), _pod_dns(obj))


def _pod_dns(obj: Mapping[str, Any]) -> tuple | None:
    """A pod's resolver settings when they are not the kubelet's defaults (see Pod.dns)."""
    policy = _get(obj, "spec.dnsPolicy", str, default="ClusterFirst")
    host_network = _get(obj, "spec.hostNetwork", bool, default=False)
    searches: list[str] = []
    for i, item in enumerate(_list(obj, "spec.dnsConfig.searches")):
        if not isinstance(item, str):
            raise ObjectError(f"spec.dnsConfig.searches[{i}]", f"expected a string, got {_show(item)}")
        searches.append(item.lower().rstrip("."))
    ndots = None
    for i, option in enumerate(_list(obj, "spec.dnsConfig.options")):
        if isinstance(option, Mapping) and option.get("name") == "ndots":
            value = option.get("value")
            if not (isinstance(value, str) and value.isdigit()):
                raise ObjectError(f"spec.dnsConfig.options[{i}].value", f"expected a number, got {_show(value)}")
            ndots = min(int(value), 15)  # glibc caps it at 15
    if (policy, searches, ndots, host_network) == ("ClusterFirst", [], None, False):
        return None
    return (policy, tuple(searches), ndots, host_network)


def namespace_from_dict(obj: Mapping[str, Any]) -> Namespace:
    return Namespace(_name(obj), _labels(obj))
