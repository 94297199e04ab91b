"""Reference model of a container's service-link environment: the kubelet's rules, then kdns-webhook's contract.

Part 1 is written from the kubelet source (kubernetes/kubernetes master, read 2026-11):
  pkg/kubelet/envvars/envvars.go        FromServices, makeEnvVariableName, makeLinkVariables
  pkg/kubelet/kubelet_pods.go           getServiceEnvVarMap, makeEnvironmentVariables
  third_party/forked/golang/expansion   Expand, MappingFuncFor (the `$(VAR)` syntax)
  pkg/apis/core/v1/helper               IsServiceIPSet
Part 2 is kdns-webhook's documented contract (webhook/README.md): which pods, which services, the
budget, and how the pod's own `env` and `envFrom` meet the injected variables.

Plain dicts in (v1 Service, Pod, ConfigMap and Secret data as the API holds them), plain dicts out.
Deliberately simple and slow, and sharing no code with webhook/ or kdns/: the property tests
(test_webhook_model.py) check the real webhook against it. Each rule names the source it follows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

# ====================================================================== part 1: the kubelet

# kubelet_pods.go: `var masterServices = sets.New[string]("kubernetes")`; they are looked up in
# metav1.NamespaceDefault.
MASTER_NAMESPACE = "default"
MASTER_SERVICES = ("kubernetes",)


class KubeletError(Exception):
    """makeEnvironmentVariables returned an error: the container does not start (CreateContainerConfigError)."""


def _spec(svc: Mapping) -> Mapping:
    return svc.get("spec") or {}


def _meta(obj: Mapping) -> Mapping:
    return obj.get("metadata") or {}


def is_service_ip_set(svc: Mapping) -> bool:
    """pkg/apis/core/v1/helper IsServiceIPSet: `ClusterIP != ClusterIPNone && ClusterIP != ""`.
    Only spec.clusterIP counts (an ExternalName service has none; headless has "None")."""
    ip = _spec(svc).get("clusterIP") or ""
    return ip != "None" and ip != ""


def make_env_variable_name(text: str) -> str:
    """envvars.go makeEnvVariableName: `strings.ToUpper(strings.Replace(str, "-", "_", -1))`
    (the TODO about leading digits and dots is not done upstream, so neither is it here)."""
    return text.replace("-", "_").upper()


def join_host_port(host: str, port: int) -> str:
    """Go net.JoinHostPort (used by makeLinkVariables since IPv6 support): a host with a colon is bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def from_services(services: Iterable[Mapping]) -> list[tuple[str, str]]:
    """envvars.go FromServices, in its order (duplicates kept, as the Go slice keeps them)."""
    result: list[tuple[str, str]] = []
    for svc in services:
        # FromServices: "ignore services where ClusterIP is "None" or empty"
        if not is_service_ip_set(svc):
            continue
        spec = _spec(svc)
        ip = spec["clusterIP"]  # Value: service.Spec.ClusterIP, verbatim (not clusterIPs, not canonicalised)
        ports = spec.get("ports") or []
        prefix = make_env_variable_name(_meta(svc)["name"])
        # "Host": <SVC>_SERVICE_HOST
        result.append((prefix + "_SERVICE_HOST", ip))
        # "First port - give it the backwards-compatible name": <SVC>_SERVICE_PORT = Ports[0].Port
        # (Ports[0] is indexed unchecked: the API requires a port on a service with a ClusterIP)
        name = prefix + "_SERVICE_PORT"
        result.append((name, str(ports[0]["port"])))
        # "All named ports": <SVC>_SERVICE_PORT_<PORTNAME> for each port with sp.Name != ""
        for sp in ports:
            if sp.get("name"):
                result.append((name + "_" + make_env_variable_name(sp["name"]), str(sp["port"])))
        # "Docker-compatible vars": makeLinkVariables
        result += _link_variables(svc)
    return result


def _link_variables(svc: Mapping) -> list[tuple[str, str]]:
    """envvars.go makeLinkVariables."""
    spec = _spec(svc)
    prefix = make_env_variable_name(_meta(svc)["name"])
    out: list[tuple[str, str]] = []
    for i, sp in enumerate(spec.get("ports") or []):
        # `protocol := string(corev1.ProtocolTCP); if sp.Protocol != "" { protocol = string(sp.Protocol) }`
        protocol = sp.get("protocol") or "TCP"
        host_port = join_host_port(spec["clusterIP"], sp["port"])
        url = f"{protocol.lower()}://{host_port}"
        if i == 0:
            out.append((prefix + "_PORT", url))  # "Docker special-cases the first port."
        # portPrefix := fmt.Sprintf("%s_PORT_%d_%s", prefix, sp.Port, strings.ToUpper(protocol))
        port_prefix = f"{prefix}_PORT_{sp['port']}_{protocol.upper()}"
        out += [(port_prefix, url),
                (port_prefix + "_PROTO", protocol.lower()),
                (port_prefix + "_PORT", str(sp["port"])),
                (port_prefix + "_ADDR", spec["clusterIP"])]
    return out


MapOrder = Callable[[list[Mapping]], list[Mapping]]


def by_name(services: list[Mapping]) -> list[Mapping]:
    """A default for Go's map iteration order: by service name."""
    return sorted(services, key=lambda s: _meta(s)["name"])


def service_set(services: Iterable[Mapping], namespace: str, enable_service_links: bool) -> dict[str, Mapping]:
    """kubelet_pods.go getServiceEnvVarMap, its `serviceMap` (service name -> Service)."""
    service_map: dict[str, Mapping] = {}
    for svc in services:  # `services, err := kl.serviceLister.List(labels.Everything())`: every namespace
        # "ignore services where ClusterIP is "None" or empty"
        if not is_service_ip_set(svc):
            continue
        name, ns = _meta(svc)["name"], _meta(svc).get("namespace") or "default"
        # "We always want to add environment variables for master services from the default
        # namespace, even if enableServiceLinks is false." -- and only if not already there, so a
        # same-named service of the pod's namespace (next branch, unconditional assignment) wins
        # whatever order the lister returns them in.
        if ns == MASTER_NAMESPACE and name in MASTER_SERVICES:
            service_map.setdefault(name, svc)
        # "We also add environment variables for other services in the same namespace, if
        # enableServiceLinks is true."
        elif ns == namespace and enable_service_links:
            service_map[name] = svc
    return service_map


def service_env_map(services: Iterable[Mapping], namespace: str, enable_service_links: bool,
                    map_order: MapOrder = by_name) -> dict[str, str]:
    """kubelet_pods.go getServiceEnvVarMap: `for key := range serviceMap` (Go's random map order,
    here `map_order`), FromServices of that list, then `m[e.Name] = e.Value`: the last service to
    define a name wins."""
    chosen = map_order(list(service_set(services, namespace, enable_service_links).values()))
    m: dict[str, str] = {}
    for name, value in from_services(chosen):
        m[name] = value
    return m


def expand(text: str, mapping: Callable[[str], str]) -> str:
    """third_party/forked/golang/expansion Expand + tryReadVariableName, rune by rune:
    `$$` -> `$`; `$(NAME)` -> mapping(NAME) (the name runs to the first `)`); `$(` with no `)` and
    `$x` are copied as they are; a `$` as the last character is copied."""
    out: list[str] = []
    checkpoint, cursor = 0, 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1:]
            if rest[0] == "$":  # "Escaped operator; return it."
                read, is_var, advance = "$", False, 1
            elif rest[0] == "(":  # "Scan to expression closer"
                close = rest.find(")", 1)
                if close != -1:
                    read, is_var, advance = rest[1:close], True, close + 1
                else:  # "Incomplete reference; return it."
                    read, is_var, advance = "$(", False, 1
            else:  # "an operator that doesn't begin an expression": the operator and the first rune
                read, is_var, advance = "$" + rest[0], False, 1
            out.append(mapping(read) if is_var else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def mapping_func_for(*contexts: Mapping[str, str]) -> Callable[[str], str]:
    """expansion.MappingFuncFor: the first context that has the name; otherwise `$(NAME)` unchanged."""
    def mapping(name: str) -> str:
        for context in contexts:
            if name in context:
                return context[name]
        return f"$({name})"
    return mapping


def _field_ref(pod: Mapping, namespace: str, path: str) -> str:
    """podFieldSelectorRuntimeValue, for the pod fields known at admission."""
    if path == "metadata.name":
        return _meta(pod).get("name") or ""
    if path == "metadata.namespace":
        return namespace
    if path == "spec.serviceAccountName":
        return (pod.get("spec") or {}).get("serviceAccountName") or ""
    raise NotImplementedError(f"fieldRef {path} is not in the model")


def make_environment_variables(pod: Mapping, container: Mapping, namespace: str, service_env: Mapping[str, str],
                               config_maps: Mapping[str, Mapping[str, str]] | None = None,
                               secrets: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """kubelet_pods.go makeEnvironmentVariables, given the service env (getServiceEnvVarMap's result)."""
    config_maps, secrets = config_maps or {}, secrets or {}
    tmp_env: dict[str, str] = {}

    def source(kind: str, ref: Mapping) -> Mapping[str, str] | None:
        store = config_maps if kind == "configMap" else secrets
        data = store.get(ref.get("name") or "")
        if data is None:
            if ref.get("optional"):  # "ignore error when marked optional"
                return None
            raise KubeletError(f"{kind} {namespace}/{ref.get('name')} not found")
        return data

    # "Env will override EnvFrom variables. Process EnvFrom first then allow Env to replace existing values."
    for env_from in container.get("envFrom") or []:
        ref = env_from.get("configMapRef") or env_from.get("secretRef")
        data = source("configMap" if "configMapRef" in env_from else "secret", ref)
        for key, value in (data or {}).items():
            tmp_env[(env_from.get("prefix") or "") + key] = value  # `k = envFrom.Prefix + k`
    # `mappingFunc = expansion.MappingFuncFor(tmpEnv, serviceEnv)`: tmpEnv is the live map, so a
    # reference sees envFrom and the entries declared before it, then the service variables
    mapping = mapping_func_for(tmp_env, service_env)
    for var in container.get("env") or []:
        runtime_val = var.get("value") or ""
        if runtime_val != "":
            runtime_val = expand(runtime_val, mapping)  # "Step 1a: expand variable references"
        elif var.get("valueFrom") is not None:  # "Step 1b: resolve alternate env var sources"
            value_from = var["valueFrom"]
            if "fieldRef" in value_from:
                runtime_val = _field_ref(pod, namespace, value_from["fieldRef"]["fieldPath"])
            else:
                kind = "configMap" if "configMapKeyRef" in value_from else "secret"
                ref = value_from.get("configMapKeyRef") or value_from.get("secretKeyRef")
                data = source(kind, ref)
                if data is None:
                    continue  # optional and missing: the variable is not set at all
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise KubeletError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
                runtime_val = data[ref["key"]]
        tmp_env[var["name"]] = runtime_val
    # "Append the env vars", then "Append remaining service env vars" not present in tmpEnv
    result = dict(tmp_env)
    for key, value in service_env.items():
        if key not in tmp_env:
            result[key] = value
    return result


def enable_service_links(pod: Mapping) -> bool:
    """pkg/apis/core/v1/defaults.go SetDefaults_PodSpec: a nil enableServiceLinks becomes true
    (DefaultEnableServiceLinks) before the kubelet reads `*pod.Spec.EnableServiceLinks`."""
    value = (pod.get("spec") or {}).get("enableServiceLinks")
    return True if value is None else value


def containers(pod: Mapping) -> list[tuple[str, int, Mapping]]:
    """(field, index, container) for initContainers and containers: the kubelet builds the
    environment of each the same way (generateContainerConfig -> makeEnvironmentVariables)."""
    spec = pod.get("spec") or {}
    return [(field, i, c) for field in ("initContainers", "containers") for i, c in enumerate(spec.get(field) or [])]


def pod_environments(pod: Mapping, namespace: str, services: Iterable[Mapping],
                     config_maps: Mapping | None = None, secrets: Mapping | None = None,
                     map_order: MapOrder = by_name) -> dict[str, dict[str, str]]:
    """"<field>/<name>" -> the environment the kubelet starts that container with."""
    service_env = service_env_map(services, namespace, enable_service_links(pod), map_order)
    return {f"{field}/{c['name']}": make_environment_variables(pod, c, namespace, service_env, config_maps, secrets)
            for field, _, c in containers(pod)}


def pod_env(pod: Mapping, services: Iterable[Mapping], config_maps: Mapping | None = None) -> dict[str, dict[str, str]]:
    """pod_environments for a pod that names its namespace (metadata.namespace, default `default`)."""
    return pod_environments(pod, _meta(pod).get("namespace") or "default", list(services), config_maps)


# ====================================================================== part 2: kdns-webhook's contract

# Disagreements the property tests found between the webhook and this model, and the decision:
#  1. A name the pod sets only through an optional configMapKeyRef/secretKeyRef (missing key:
#     makeEnvironmentVariables `continue`s, the name stays unset, the service's value is appended),
#     or refers to as $(NAME) before its own definition (MappingFuncFor(tmpEnv, serviceEnv) falls
#     back to the service's value): the kubelet gives the service's value; the webhook injected
#     nothing. Webhook fixed (patch.py _needs_service_value).
#  2. A `kubernetes` service in the pod's namespace: getServiceEnvVarMap lets it replace the master
#     only while enableServiceLinks is on; on the mutated pod it is off, so the kubelet adds the
#     master's other names. The webhook cannot remove them: contract below says so (links_after),
#     the webhook now warns, README documents it.
#  3. A bad kdns.io/original-enable-service-links value made the reinvocation read the `false` the
#     first call wrote. Webhook fixed (the bad value is replaced).
# webhook/README.md, "What the kubelet cannot do"
ANNOTATION_LINKS = "kdns.io/service-links"
ANNOTATION_SERVICES = "kdns.io/services"
ANNOTATION_ORIGINAL = "kdns.io/original-enable-service-links"
LABEL_LINKS = "kdns.io/service-links"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS-1123 label: what a name or namespace can be


@dataclass(frozen=True)
class Options:
    """The webhook's flags that change what it writes."""
    require_opt_in: bool = False  # --require-opt-in
    keep_links: bool = False  # --keep-enable-service-links
    budget: int = 64 * 1024  # --budget
    pod_budget: int = 512 * 1024  # --pod-budget


def is_selected(annotations: Mapping[str, str], namespace_labels: Mapping[str, str], options: Options) -> bool:
    """README "Selection": in order, first match decides."""
    value = annotations.get(ANNOTATION_LINKS)
    if value in ("true", "false"):
        return value == "true"  # any other value is warned about and ignored
    if ANNOTATION_SERVICES in annotations:
        return True
    label = namespace_labels.get(LABEL_LINKS)
    if label in ("true", "false"):
        return label == "true"
    return not options.require_opt_in


def _find(services: Iterable[Mapping], namespace: str, name: str) -> Mapping | None:
    for svc in services:
        if _meta(svc)["name"] == name and (_meta(svc).get("namespace") or "default") == namespace:
            return svc
    return None


def chosen_services(text: str, namespace: str, services: list[Mapping]) -> list[Mapping]:
    """README "Chosen services": `kdns.io/services` entries in order, `name` (pod's namespace) or
    `ns/name`, blanks around an entry ignored; malformed, not found, headless and ExternalName entries
    skipped; of two entries with the same variable prefix the first listed wins; `kubernetes` of
    `default` first unless an entry is itself named `kubernetes`."""
    out: list[Mapping] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split("/")
        if len(parts) > 2 or not all(_LABEL.match(p) for p in parts):
            continue  # malformed
        ns, name = (parts[0], parts[1]) if len(parts) == 2 else (namespace, parts[0])
        svc = _find(services, ns, name)
        if svc is None or not is_service_ip_set(svc):
            continue
        if any(make_env_variable_name(_meta(o)["name"]) == make_env_variable_name(name) for o in out):
            continue  # the clash rule: the first listed wins
        out.append(svc)
    if not any(make_env_variable_name(_meta(o)["name"]) == "KUBERNETES" for o in out):
        master = _find(services, MASTER_NAMESPACE, "kubernetes")
        if master is not None and is_service_ip_set(master):
            out.insert(0, master)
    return out


def kdns_order(services: Iterable[Mapping]) -> list[Mapping]:
    """README: "services in the order `kubernetes` first, then by name"."""
    return sorted(services, key=lambda s: (_meta(s)["name"] not in MASTER_SERVICES, _meta(s)["name"]))


def _size(name: str, value: str) -> int:
    return len(name.encode()) + len(value.encode()) + 2  # README "Budget": bytes of `NAME=value\0`


@dataclass
class Plan:
    variables: list[tuple[str, str]]  # in the order they are injected
    services: list[Mapping]  # the ones injected (whole)
    dropped: list[Mapping]  # cut by the budget
    budget: int
    used: list[int]  # bytes used after each service taken


def plan(pod: Mapping, namespace: str, services: list[Mapping], options: Options) -> Plan:
    """The variables every container gets (README "What it writes" and "Budget")."""
    annotations = _meta(pod).get("annotations") or {}
    if ANNOTATION_SERVICES in annotations:
        ordered = chosen_services(annotations[ANNOTATION_SERVICES], namespace, services)
    else:
        original = annotations.get(ANNOTATION_ORIGINAL)  # a reinvocation: what the pod asked for at first
        links = original == "true" if original in ("true", "false") else enable_service_links(pod)
        ordered = kdns_order(service_set(services, namespace, links).values())
    count = len(containers(pod))
    budget = max(0, min(options.budget, options.pod_budget // max(1, count)))
    # "Where the kubelet's own result depends on Go's map order ... the first service in its order
    # keeps the name": the kubelet's `m[e.Name] = e.Value` with the map iterated in reverse kdns order.
    result = Plan([], [], [], budget, [])
    used = 0
    for i, svc in enumerate(ordered):
        fresh = [(n, v) for n, v in from_services([svc]) if n not in dict(result.variables)]
        size = sum(_size(n, v) for n, v in fresh)
        if used + size > budget:  # "the first service that does not fit and all after it are left out"
            result.dropped = ordered[i:]
            break
        used += size
        result.variables += fresh
        result.services.append(svc)
        result.used.append(used)
    return result


def expected_environments(pod: Mapping, namespace: str, services: list[Mapping], options: Options,
                          config_maps: Mapping | None = None,
                          secrets: Mapping | None = None) -> dict[str, dict[str, str]]:
    """What each container of `pod` starts with once the webhook has mutated it (README "What it
    writes"): the planned variables, then whatever the kubelet still adds at container start
    (`kubernetes` always; everything the spec does not set with --keep-enable-service-links);
    the pod's own `env` wins, and its `$(VAR)` references see the planned values where the
    kubelet's would have seen the service's; an `envFrom` key named like a planned variable no
    longer wins."""
    the_plan = plan(pod, namespace, services, options)
    planned = dict(the_plan.variables)
    links_after = enable_service_links(pod) if options.keep_links else False
    service_env = dict(planned)
    for name, value in service_env_map(services, namespace, links_after).items():
        service_env.setdefault(name, value)
    out = {}
    for field, _, c in containers(pod):
        # README: "a key named like one of them no longer wins" (where the container's own env sets
        # the name, its value wins over both anyway)
        cms = {k: {key: v for key, v in data.items() if _prefixed(c, "configMapRef", k, key) not in planned}
               for k, data in (config_maps or {}).items()}
        secs = {k: {key: v for key, v in data.items() if _prefixed(c, "secretRef", k, key) not in planned}
                for k, data in (secrets or {}).items()}
        out[f"{field}/{c['name']}"] = make_environment_variables(pod, c, namespace, service_env, cms, secs)
    return out


def _prefixed(container: Mapping, kind: str, source: str, key: str) -> str | None:
    """The name `key` of `source` takes in the container through envFrom (None if not used that way).
    A source listed twice with different prefixes is not generated by the tests."""
    for env_from in container.get("envFrom") or []:
        ref = env_from.get(kind)
        if ref is not None and ref.get("name") == source:
            return (env_from.get("prefix") or "") + key
    return None
