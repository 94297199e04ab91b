"""The kubelet's service-link environment variables, as pure functions of services.

Mirrors kubernetes pkg/kubelet/envvars (FromServices, makeEnvVariableName, makeLinkVariables) and
the service selection of pkg/kubelet/kubelet_pods.go getServiceEnvVarMap. Nothing here does I/O.

Where the kubelet's result depends on Go's random map order (two services producing the same
variable name, e.g. `foo` port 80 and a service named `foo-port-80-tcp`), kdns is deterministic:
services are taken in `ordered()` order and the first one to define a name keeps it.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple

from kdns.objects import Service

MASTER_NAMESPACE = "default"  # metav1.NamespaceDefault
MASTER_SERVICES = frozenset({"kubernetes"})


class EnvVar(NamedTuple):
    name: str
    value: str

    @property
    def size(self) -> int:
        """Bytes this variable takes in a process environment: `NAME=value` plus the NUL."""
        return len(self.name.encode()) + len(self.value.encode()) + 2


def env_name(name: str) -> str:
    """makeEnvVariableName: upper-case, `-` -> `_` (dots and leading digits are left alone, as now)."""
    return name.upper().replace("-", "_")


def join_host_port(host: str, port: int) -> str:
    """Go's net.JoinHostPort: a host containing a colon (IPv6) is bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cluster_ip(service: Service) -> str:
    """spec.clusterIP (the first of spec.clusterIPs), or "" when the service has none."""
    if service.kind != "ClusterIP" or not service.cluster_ips:
        return ""
    return service.cluster_ip or service.cluster_ips[0]


def has_cluster_ip(service: Service) -> bool:
    """v1helper.IsServiceIPSet: a ClusterIP that is neither empty nor "None" (headless and
    ExternalName services have none)."""
    return cluster_ip(service) not in ("", "None")


def has_links(service: Service) -> bool:
    """Whether the service yields variables: a ClusterIP, and at least one port (the API requires
    one for such services; the kubelet would index ports[0] without checking)."""
    return has_cluster_ip(service) and bool(service.ports)


def service_env(service: Service) -> list[EnvVar]:
    """FromServices for one service, in the kubelet's order:
    <SVC>_SERVICE_HOST, <SVC>_SERVICE_PORT, <SVC>_SERVICE_PORT_<NAME> per named port,
    <SVC>_PORT (first port), then per port <SVC>_PORT_<port>_<PROTO>, _PROTO, _PORT, _ADDR."""
    if not has_links(service):
        return []
    host = cluster_ip(service)
    prefix = env_name(service.name)
    out = [EnvVar(prefix + "_SERVICE_HOST", host),
           EnvVar(prefix + "_SERVICE_PORT", str(service.ports[0].port))]
    for sp in service.ports:
        if sp.name:
            out.append(EnvVar(f"{prefix}_SERVICE_PORT_{env_name(sp.name)}", str(sp.port)))
    for i, sp in enumerate(service.ports):
        protocol = sp.protocol or "TCP"
        url = f"{protocol.lower()}://{join_host_port(host, sp.port)}"
        if i == 0:
            out.append(EnvVar(prefix + "_PORT", url))  # Docker special-cases the first port
        port_prefix = f"{prefix}_PORT_{sp.port}_{protocol.upper()}"
        out += [EnvVar(port_prefix, url),
                EnvVar(port_prefix + "_PROTO", protocol.lower()),
                EnvVar(port_prefix + "_PORT", str(sp.port)),
                EnvVar(port_prefix + "_ADDR", host)]
    return out


def service_env_count(service: Service) -> int:
    """len(service_env(service)) without building the strings (for budget reports)."""
    if not has_links(service):
        return 0
    return 3 + sum(1 for sp in service.ports if sp.name) + 4 * len(service.ports)


def kubelet_services(namespace: str, namespace_services: Mapping[str, Service],
                     master_services: Mapping[str, Service], enable_service_links: bool) -> list[Service]:
    """getServiceEnvVarMap's service set for a pod in `namespace`: the namespace's services with a
    ClusterIP when enableServiceLinks is on, plus always the master services (`kubernetes` in
    `default`); with links on, a same-named service in the pod's namespace wins over the master one.

    `namespace_services` and `master_services` map service name -> Service for `namespace` and
    for `default`. The result is in `ordered()` order."""
    chosen: dict[str, Service] = {}
    for name in MASTER_SERVICES:
        svc = master_services.get(name)
        if svc is not None and has_cluster_ip(svc):
            chosen[name] = svc
    if enable_service_links:
        for name, svc in namespace_services.items():
            if has_cluster_ip(svc):
                chosen[name] = svc  # the pod's namespace wins on a name clash
    return ordered(chosen.values())


def ordered(services: Iterable[Service]) -> list[Service]:
    """The order kdns writes services in: the master services first (the ones every pod gets and
    in-cluster clients need), then by name."""
    return sorted(services, key=lambda s: (s.name not in MASTER_SERVICES, s.name, s.namespace))


def from_services(services: Iterable[Service]) -> list[EnvVar]:
    """All variables of `services`, each name once (the first service to define it keeps it)."""
    seen: set[str] = set()
    out: list[EnvVar] = []
    for svc in services:
        for var in service_env(svc):
            if var.name not in seen:
                seen.add(var.name)
                out.append(var)
    return out
