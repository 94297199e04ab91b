"""What the kubelet puts in a container's environment, simulated from raw API objects (dicts).

Written from kubernetes pkg/kubelet/kubelet_pods.go (getServiceEnvVarMap, makeEnvironmentVariables),
pkg/kubelet/envvars/envvars.go and third_party/forked/golang/expansion, independently of the
webhook's code, so tests can check that a patched pod's environment equals what the kubelet would
have given the original pod. Go map order is replaced by sorted order (tests avoid the cases where
it matters).
"""

from __future__ import annotations


def _ip_set(svc: dict) -> bool:
    ip = (svc.get("spec") or {}).get("clusterIP") or ""
    return ip not in ("", "None")


def _name(text: str) -> str:
    return text.upper().replace("-", "_")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def from_services(services: list[dict]) -> list[tuple[str, str]]:
    out = []
    for svc in services:
        if not _ip_set(svc):
            continue
        spec = svc["spec"]
        ip, ports, prefix = spec["clusterIP"], spec["ports"], _name(svc["metadata"]["name"])
        out.append((prefix + "_SERVICE_HOST", ip))
        out.append((prefix + "_SERVICE_PORT", str(ports[0]["port"])))
        for sp in ports:
            if sp.get("name"):
                out.append((prefix + "_SERVICE_PORT_" + _name(sp["name"]), str(sp["port"])))
        for i, sp in enumerate(ports):
            proto = sp.get("protocol") or "TCP"
            url = f"{proto.lower()}://{_hostport(ip, sp['port'])}"
            if i == 0:
                out.append((prefix + "_PORT", url))
            pp = f"{prefix}_PORT_{sp['port']}_{proto.upper()}"
            out += [(pp, url), (pp + "_PROTO", proto.lower()), (pp + "_PORT", str(sp["port"])), (pp + "_ADDR", ip)]
    return out


def service_env_map(services: list[dict], namespace: str, enable_service_links: bool) -> dict[str, str]:
    chosen: dict[str, dict] = {}
    for svc in sorted(services, key=lambda s: (s["metadata"].get("namespace", "default"), s["metadata"]["name"])):
        if not _ip_set(svc):
            continue
        ns, name = svc["metadata"].get("namespace", "default"), svc["metadata"]["name"]
        if ns == "default" and name == "kubernetes":
            chosen.setdefault(name, svc)
        elif ns == namespace and enable_service_links:
            chosen[name] = svc
    return dict(from_services([chosen[k] for k in sorted(chosen)]))


def expand(value: str, lookup) -> str:
    """$(VAR) -> its value when defined, else left as is; $$ -> $."""
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                close = value.find(")", i + 2)
                if close != -1:
                    name = value[i + 2:close]
                    found = lookup(name)
                    out.append(found if found is not None else f"$({name})")
                    i = close + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


def container_env(pod: dict, container: dict, services: list[dict], config_maps: dict | None = None) -> dict[str, str]:
    """The environment the kubelet starts `container` of `pod` with (envFrom configMapRef supported)."""
    namespace = pod["metadata"].get("namespace", "default")
    links = pod["spec"].get("enableServiceLinks")
    service_env = service_env_map(services, namespace, True if links is None else links)
    tmp: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        data = (config_maps or {}).get(source["configMapRef"]["name"], {})
        for k, v in data.items():
            tmp[(source.get("prefix") or "") + k] = v
    for var in container.get("env") or []:
        value = var.get("value") or ""
        if value:
            value = expand(value, lambda n: tmp.get(n, service_env.get(n)))
        tmp[var["name"]] = value
    result = dict(tmp)
    for k, v in service_env.items():
        result.setdefault(k, v)
    return result


def pod_env(pod: dict, services: list[dict], config_maps: dict | None = None) -> dict[str, dict[str, str]]:
    """container name -> environment, for initContainers and containers."""
    out = {}
    for field in ("initContainers", "containers"):
        for c in pod["spec"].get(field) or []:
            out[f"{field}/{c['name']}"] = container_env(pod, c, services, config_maps)
    return out
