"""Which pods get service links, and which variables: opt-in/opt-out, `kdns.io/services`, the budget.

Pure: (pod facts, catalog, settings) -> Plan. The kubelet's own rules live in envvars.py; this
module adds what the kubelet cannot do.

Selection, first match wins:
  1. pod annotation `kdns.io/service-links: "false"` -> left alone; `"true"` -> mutated
  2. pod annotation `kdns.io/services` present      -> mutated (it asks for links)
  3. namespace label `kdns.io/service-links: "false"` / `"true"`
  4. otherwise: mutated, unless the server runs with --require-opt-in
(Which pods the API server sends at all is the MutatingWebhookConfiguration's business.)

`kdns.io/services: "redis,db,payments/api"` replaces the namespace-wide set: `name` is a service
of the pod's namespace, `ns/name` one of another namespace. Variables are named after the
service name alone, as the kubelet names them, so `payments/api` gives `API_SERVICE_HOST`. Two
entries with the same service name would write the same variables: the first listed wins and the
later one is skipped with a warning. `kubernetes` (from `default`) is always added unless an
entry is itself named `kubernetes`, because the kubelet adds it to every container anyway.

Budget: services are taken in order (the master `kubernetes` first, then the listed order or by
name) while their variables fit in min(--budget, --pod-budget / containers) bytes of
`NAME=value\\0`; the first one that does not fit and all after it are left out, with a warning.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Mapping

from kdns.objects import Service

from .envvars import (MASTER_NAMESPACE, MASTER_SERVICES, EnvVar, env_name, has_cluster_ip, kubelet_services,
                      service_env, service_env_count)

ANNOTATION_LINKS = "kdns.io/service-links"
ANNOTATION_SERVICES = "kdns.io/services"
ANNOTATION_ORIGINAL = "kdns.io/original-enable-service-links"  # written on mutation: reinvocation reads it
LABEL_LINKS = "kdns.io/service-links"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_serials = itertools.count(1)


@dataclass(frozen=True)
class Settings:
    require_opt_in: bool = False
    disable_kubelet_links: bool = True  # set enableServiceLinks: false on mutated pods
    budget: int = 64 * 1024  # bytes of injected env per container
    pod_budget: int = 512 * 1024  # bytes of injected env across all containers of a pod
    max_warnings: int = 10


@dataclass
class Plan:
    variables: list[EnvVar] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dropped_services: int = 0
    dropped_variables: int = 0
    budget: int = 0
    used: int = 0
    serial: int = field(default_factory=lambda: next(_serials))  # unique per computed plan: answers are memoised by it


def selected(annotations: Mapping[str, str], namespace_labels: Mapping[str, str],
             settings: Settings, warnings: list[str]) -> tuple[bool, str]:
    """Whether the pod is mutated, and why."""
    value = annotations.get(ANNOTATION_LINKS)
    if value is not None:
        if value == "false":
            return False, f"opted out by pod annotation {ANNOTATION_LINKS}=false"
        if value == "true":
            return True, f"opted in by pod annotation {ANNOTATION_LINKS}=true"
        warnings.append(f"annotation {ANNOTATION_LINKS}: expected \"true\" or \"false\", got {value!r}; ignored")
    if ANNOTATION_SERVICES in annotations:
        return True, f"pod annotation {ANNOTATION_SERVICES}"
    label = namespace_labels.get(LABEL_LINKS)
    if label == "false":
        return False, f"opted out by namespace label {LABEL_LINKS}=false"
    if label == "true":
        return True, f"opted in by namespace label {LABEL_LINKS}=true"
    if settings.require_opt_in:
        return False, (f"not opted in (--require-opt-in: set pod annotation {ANNOTATION_LINKS}=\"true\" "
                       f"or namespace label {LABEL_LINKS}=true)")
    return True, "default"


def listed_services(text: str, namespace: str, catalog, warnings: list[str]) -> list[Service]:
    """Parse `kdns.io/services` and look the entries up; problems become warnings."""
    chosen: list[Service] = []
    by_prefix: dict[str, Service] = {}
    seen: set[tuple[str, str]] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        ns, sep, name = entry.rpartition("/")
        if not sep:
            ns = namespace
        if not _DNS_LABEL.match(name) or not _DNS_LABEL.match(ns):
            warnings.append(f"annotation {ANNOTATION_SERVICES}: {entry!r} is not a service name or "
                            "namespace/name; skipped")
            continue
        if (ns, name) in seen:
            continue
        seen.add((ns, name))
        svc = catalog.get(ns, name)
        if svc is None:
            warnings.append(f"annotation {ANNOTATION_SERVICES}: service {ns}/{name} not found; skipped")
            continue
        if not has_cluster_ip(svc):
            what = "an ExternalName service" if svc.kind == "ExternalName" else "headless (clusterIP None)"
            warnings.append(f"annotation {ANNOTATION_SERVICES}: {ns}/{name} is {what}: it has no ClusterIP, "
                            "so no link variables (use DNS)")
            continue
        prefix = env_name(name)
        first = by_prefix.get(prefix)
        if first is not None:
            warnings.append(f"annotation {ANNOTATION_SERVICES}: {ns}/{name} skipped: its variables {prefix}_* "
                            f"clash with {first.namespace}/{first.name}, listed first")
            continue
        by_prefix[prefix] = svc
        chosen.append(svc)
    for master in sorted(MASTER_SERVICES):
        if env_name(master) not in by_prefix:
            svc = catalog.get(MASTER_NAMESPACE, master)
            if svc is not None and has_cluster_ip(svc):
                chosen.insert(0, svc)
    return chosen


def plan(namespace: str, annotations: Mapping[str, str], enable_service_links: bool, containers: int,
         catalog, settings: Settings, warnings: list[str]) -> Plan:
    """The variables every container of the pod should have, within the budget; its warnings are
    added to `warnings`. The same inputs give the same plan until a service changes, so plans are
    memoised in the catalog (a namespace of thousands of services costs one computation, not one
    per pod). The Plan returned is shared: read it, do not change it."""
    budget = max(0, min(settings.budget, settings.pod_budget // max(1, containers)))
    key = (namespace, annotations.get(ANNOTATION_SERVICES), enable_service_links, budget,
           settings.disable_kubelet_links)
    # a plan reads the pod's namespace and `default` (kubernetes); a kdns.io/services list, any namespace
    depends = None if ANNOTATION_SERVICES in annotations else frozenset((namespace, MASTER_NAMESPACE))
    result = catalog.memo(key, depends, lambda: _plan(namespace, annotations, enable_service_links, budget, catalog,
                                                      settings))
    warnings.extend(result.warnings)
    return result


def _plan(namespace: str, annotations: Mapping[str, str], enable_service_links: bool, budget: int,
          catalog, settings: Settings) -> Plan:
    result = Plan(budget=budget)
    warnings = result.warnings
    if ANNOTATION_SERVICES in annotations:
        services = listed_services(annotations[ANNOTATION_SERVICES], namespace, catalog, warnings)
    else:
        services = kubelet_services(namespace, catalog.in_namespace(namespace),
                                    catalog.in_namespace(MASTER_NAMESPACE), enable_service_links)
    names: dict[str, Service] = {}
    for i, svc in enumerate(services):
        fresh = []
        for var in service_env(svc):
            owner = names.get(var.name)
            if owner is None:
                fresh.append(var)
            elif owner is not svc:
                warnings.append(f"{var.name} of service {svc.namespace}/{svc.name} not injected: already set by "
                                f"{owner.namespace}/{owner.name}")
        size = sum(v.size for v in fresh)
        if result.used + size > budget:
            rest = services[i:]
            result.dropped_services = len(rest)
            result.dropped_variables = sum(service_env_count(s) for s in rest)
            warnings.append(f"service-link budget of {budget} bytes per container reached: {len(rest)} of "
                            f"{len(services)} services ({result.dropped_variables} variables) not injected, "
                            f"from {rest[0].namespace}/{rest[0].name} on; use DNS names "
                            f"(<service>.<namespace>.svc) or list the ones needed in {ANNOTATION_SERVICES}")
            break
        result.used += size
        result.services.append(svc)
        for var in fresh:
            names[var.name] = svc
            result.variables.append(var)
    final_links = enable_service_links and not settings.disable_kubelet_links
    leftovers = master_leftovers(result.services, namespace, final_links, catalog)
    if leftovers:
        warnings.append(f"the kubelet still adds {MASTER_NAMESPACE}/kubernetes's {', '.join(leftovers[:3])}"
                        + (f" and {len(leftovers) - 3} more" if len(leftovers) > 3 else "")
                        + ", which the injected kubernetes service does not define")
    return result


def master_leftovers(services: list[Service], namespace: str, final_links: bool, catalog) -> list[str]:
    """Names of `kubernetes` in `default` that the kubelet adds to the mutated pod although the plan
    injects another `kubernetes` (of the pod's namespace, or listed): getServiceEnvVarMap always adds the
    master service unless, with enableServiceLinks on, one of the pod's own namespace replaces it."""
    master = catalog.get(MASTER_NAMESPACE, "kubernetes")
    ours = next((s for s in services if s.name == "kubernetes"), None)
    if master is None or not has_cluster_ip(master) or ours is None or ours.key == master.key:
        return []
    if final_links and ours.namespace == namespace:
        return []
    defined = {v.name for v in service_env(ours)}
    return [v.name for v in service_env(master) if v.name not in defined]
