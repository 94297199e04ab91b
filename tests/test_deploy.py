"""deploy/ validated offline, with the real tools on the real files: every kustomization renders
(`kubectl kustomize`), every rendered object validates strictly against the OpenAPI schemas of the
Kubernetes version the kind config runs (kubernetes-validate; cert-manager objects against a
strict subset of cert-manager.io/v1), the policy the issue sets (read-only RBAC, the CoreDNS-shaped
Deployment, probes and ports, the webhook configuration matching the webhook's Deployment and
Service), the Dockerfile (hadolint, and its ENTRYPOINT/CMD against the Deployments) and the scripts
(shellcheck, bash -n, set -euo pipefail, a step-naming failure handler).

The tools come from deploy/tools/install-validators.sh (./dev setup runs it). A missing tool is a
failure naming that script, never a skip. tests/test_deploy_run.py runs what these files describe.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from test_corefile import KUBEADM_BLOCK_CACHE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
VENV_BIN = os.path.dirname(sys.executable)
INSTALL = "deploy/tools/install-validators.sh (./dev setup runs it)"

# every kustomization under deploy/ must be one of these (a new one must be added here, and so
# gets rendered, validated and policy-checked like the rest)
KUSTOMIZATIONS = ["kdns", "kdns-with-service", "kdns-autoscaled", "webhook/base", "webhook/cert-manager",
                  "kind/verify"]
# kustomize Components (kind: Component): rendered, validated and checked through an overlay above
COMPONENTS = ["autoscaler"]
# the one Role that writes: the autoscaler's scale of Deployment/kdns (tests/test_deploy_autoscaler.py
# pins its rules exactly)
WRITERS = {("Role", "kube-system", "kdns-autoscaler")}
# manifests applied on their own (kubectl apply -f)
STANDALONE = ["kind/verify/probe-pod.yaml"]

READ_VERBS = {"get", "list", "watch"}


# ------------------------------------------------------------------------------ tools


def tool(name: str) -> str:
    """The venv's copy of a tool (pinned by pyproject's test extra), else the one on PATH."""
    for candidate in (os.path.join(VENV_BIN, name), shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"{name} is not installed: run {INSTALL}", pytrace=False)


def offline_env() -> dict:
    """No kubeconfig: nothing here may reach a cluster."""
    return dict(os.environ, KUBECONFIG=os.devnull)


def kubectl(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([tool("kubectl"), *args], input=stdin, capture_output=True, text=True, timeout=60,
                          env=offline_env())
    if proc.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed:\n{proc.stderr}", pytrace=False)
    return proc.stdout


def load_all(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.lru_cache(maxsize=None)
def _render(rel: str) -> str:
    return kubectl("kustomize", os.path.join(DEPLOY, rel))


def render(rel: str) -> list[dict]:
    """`kubectl kustomize deploy/<rel>`, as objects (a fresh copy each call)."""
    return load_all(_render(rel))


def standalone(rel: str) -> list[dict]:
    with open(os.path.join(DEPLOY, rel)) as f:
        return load_all(f.read())


def find(objs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> dict:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(hits) == 1, f"expected one {kind} {name or ''} in the render, found {len(hits)}"
    return hits[0]


def container(deploy: dict, name: str | None = None) -> dict:
    containers = deploy["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1, f"{deploy['metadata']['name']}: expected one container"
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def kind_kubernetes_version() -> str:
    """The Kubernetes version of deploy/kind/cluster.yaml's node image (all nodes must agree)."""
    with open(os.path.join(DEPLOY, "kind", "cluster.yaml")) as f:
        cluster = yaml.safe_load(f)
    images = {node["image"] for node in cluster["nodes"]}
    assert len(images) == 1, f"kind nodes run different images: {images}"
    image = images.pop()
    m = re.fullmatch(r"kindest/node:v(\d+\.\d+\.\d+)@sha256:[0-9a-f]{64}", image)
    assert m, f"kind node image {image!r} is not kindest/node:vX.Y.Z@sha256:<digest> (kind asks for the digest)"
    return m.group(1)


# ------------------------------------------------------------------------------ schema validation


# cert-manager's objects are in no Kubernetes schema, and no Debian or PyPI package ships
# cert-manager's CRD schemas in a form usable here (cloudcoil-models-cert-manager has them as
# models, but installs a pytest plugin that breaks this suite). So: a strict subset of
# cert-manager.io/v1 written from cert-manager's API reference, covering the fields deploy/ may use
# (anything else fails, even fields cert-manager has), with metadata checked against the Kubernetes
# ObjectMeta schema of the validated version.
_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_MAP = {"type": "object", "additionalProperties": _STR}


def _obj(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def _cert_manager_kind(kind: str, spec: dict) -> dict:
    return _obj({"apiVersion": {"const": "cert-manager.io/v1"}, "kind": {"const": kind},
                 "metadata": {"$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
                 "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


_ISSUER_SPEC = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                "properties": {"selfSigned": _obj({"crlDistributionPoints": _STRS}),
                               "ca": _obj({"secretName": _STR, "crlDistributionPoints": _STRS,
                                           "ocspServers": _STRS}, ("secretName",))}}
CERT_MANAGER_SCHEMAS = {
    "Certificate": _cert_manager_kind("Certificate", _obj({
        "secretName": _STR, "commonName": _STR, "dnsNames": _STRS, "ipAddresses": _STRS, "uris": _STRS,
        "duration": _STR, "renewBefore": _STR, "isCA": {"type": "boolean"}, "usages": _STRS,
        "revisionHistoryLimit": {"type": "integer"},
        "secretTemplate": _obj({"annotations": _MAP, "labels": _MAP}),
        "issuerRef": _obj({"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR}, ("name",)),
        "privateKey": _obj({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "rotationPolicy": {"enum": ["Never", "Always"]}, "size": {"type": "integer"}}),
    }, ("secretName", "issuerRef"))),
    "Issuer": _cert_manager_kind("Issuer", _ISSUER_SPEC),
    "ClusterIssuer": _cert_manager_kind("ClusterIssuer", _ISSUER_SPEC),
}


def validate_cert_manager(obj: dict, version: str) -> None:
    import jsonschema
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource
    schema = CERT_MANAGER_SCHEMAS.get(obj["kind"])
    assert schema is not None, f"no cert-manager schema for kind {obj['kind']}"
    release = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)][-1]
    definitions = kv.schema_contents(f"kubernetes-json-schema/v{release}-local-strict/_definitions.json", version)
    schema = dict(schema, **{"$id": f"https://kubernetes.io/api/{obj['kind'].lower()}/cert-manager/v1",
                             "$schema": "https://json-schema.org/draft/2020-12/schema"})
    registry = Resource.from_contents(definitions) @ Registry()
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata'].get('name')}"
        raise AssertionError("\n".join(f"{where}: {'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors))


def validate_strict(obj: dict, version: str) -> None:
    """Raise with a readable message if `obj` does not validate strictly for Kubernetes `version`."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, VersionNotSupportedError
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: run {INSTALL}", pytrace=False)
    if obj["apiVersion"].startswith("cert-manager.io/"):
        validate_cert_manager(obj, version)
        return
    where = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata'].get('name')}"
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{where}: {path}: {exc.message}") from None
    except SchemaNotFoundError as exc:
        raise AssertionError(f"{where}: {exc.message}") from None
    except VersionNotSupportedError:
        pytest.fail(f"kubernetes-validate has no schemas for Kubernetes {version} (the kind node image): "
                    f"raise its version in pyproject.toml", pytrace=False)


def test_every_kustomization_under_deploy_is_known():
    found = sorted(os.path.relpath(os.path.dirname(p), DEPLOY)
                   for p in glob.glob(os.path.join(DEPLOY, "**", "kustomization.yaml"), recursive=True))
    assert found == sorted(KUSTOMIZATIONS + COMPONENTS)


@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_kustomization_renders_and_validates_strictly(rel):
    version = kind_kubernetes_version()
    objs = render(rel)
    assert objs, f"deploy/{rel} renders nothing"
    errors = []
    for obj in objs:
        try:
            validate_strict(obj, version)
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, f"deploy/{rel} against Kubernetes {version}:\n" + "\n".join(errors)


@pytest.mark.parametrize("rel", STANDALONE)
def test_standalone_manifest_validates_strictly(rel):
    version = kind_kubernetes_version()
    for obj in standalone(rel):
        validate_strict(obj, version)


def test_validation_is_strict():
    """The validators above do reject what the API server would: a misspelt field in a Deployment,
    a misspelt field in a Certificate, a wrong type."""
    version = kind_kubernetes_version()
    deploy = find(render("kdns"), "Deployment", "kdns")
    container(deploy)["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolicyy"):
        validate_strict(deploy, version)
    deploy = find(render("kdns"), "Deployment", "kdns")
    deploy["spec"]["replicas"] = "two"
    with pytest.raises(AssertionError, match="replicas"):
        validate_strict(deploy, version)
    cert = find(render("webhook/cert-manager"), "Certificate")
    cert["spec"]["dnsName"] = cert["spec"].pop("dnsNames")
    with pytest.raises(AssertionError, match="dnsName"):
        validate_strict(cert, version)


def test_kind_config_pins_the_validated_version():
    version = kind_kubernetes_version()
    with open(os.path.join(DEPLOY, "kind", "cluster.yaml")) as f:
        cluster = yaml.safe_load(f)
    assert cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4" and cluster["kind"] == "Cluster"
    roles = [n["role"] for n in cluster["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 1, \
        "two nodes at least, so the two replicas of kdns and of the webhook can spread"
    import kubernetes_validate.utils as kv
    assert version.rsplit(".", 1)[0] in {v.rsplit(".", 1)[0] for v in kv.all_versions()}, \
        f"kubernetes-validate has no schemas for {version}"


# ------------------------------------------------------------------------------ RBAC


def all_rendered() -> list[dict]:
    return [obj for rel in KUSTOMIZATIONS for obj in render(rel)]


def rules_of(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", []) for verb in rule["verbs"]}


def test_rbac_is_read_only_everywhere():
    roles = [o for o in all_rendered() if o["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        name = role["metadata"]["name"]
        if (role["kind"], role["metadata"].get("namespace"), name) in WRITERS:
            continue
        assert "aggregationRule" not in role, name
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= READ_VERBS, f"{name}: verbs {rule['verbs']} (only get/list/watch)"
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule, name
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{name}: wildcard in {field}"


def test_kdns_clusterrole_is_list_watch_on_exactly_what_kdns_follows():
    role = find(render("kdns"), "ClusterRole", "system:kdns")
    want = {(group, resource, verb) for group, resource in (("", "services"), ("", "namespaces"), ("", "pods"),
                                                            ("discovery.k8s.io", "endpointslices"))
            for verb in ("list", "watch")}
    assert rules_of(role) == want


def test_webhook_clusterrole_reads_services_and_namespaces_only():
    role = find(render("webhook/base"), "ClusterRole", "kdns-webhook")
    assert rules_of(role) == {("", r, v) for r in ("services", "namespaces") for v in ("get", "list", "watch")}


@pytest.mark.parametrize("rel", ["kdns", "webhook/base"])
def test_each_deployment_runs_as_its_bound_service_account(rel):
    objs = render(rel)
    deploy = find(objs, "Deployment")
    ns = deploy["metadata"]["namespace"]
    sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    find(objs, "ServiceAccount", sa, ns)
    bindings = [b for b in objs if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
                and {"kind": "ServiceAccount", "name": sa, "namespace": ns} in b["subjects"]]
    assert bindings, f"no binding for ServiceAccount {ns}/{sa}"
    for binding in bindings:
        find(objs, binding["roleRef"]["kind"], binding["roleRef"]["name"])


# ------------------------------------------------------------------------------ kdns Deployment


def kdns_objects() -> tuple[dict, dict]:
    objs = render("kdns")
    return find(objs, "Deployment", "kdns", "kube-system"), find(objs, "ConfigMap", "kdns", "kube-system")


def ports_of(c: dict) -> dict[str, dict]:
    return {p["name"]: p for p in c["ports"]}


def test_kdns_deployment_is_shaped_like_kubeadms_coredns():
    deploy, _ = kdns_objects()
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert labels["k8s-app"] == "kube-dns", "the existing kube-dns Service selects k8s-app=kube-dns"
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["selector"]["matchLabels"] != {"k8s-app": "kube-dns"}, \
        "the selector must not also match CoreDNS's pods (side-by-side)"
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["dnsPolicy"] == "Default", "forward . /etc/resolv.conf must reach the node's resolvers"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in pod["tolerations"]
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in pod["tolerations"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchExpressions"] == [
        {"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]


def test_kdns_security_context():
    deploy, _ = kdns_objects()
    pod = deploy["spec"]["template"]["spec"]
    c = container(deploy)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0 and pod["securityContext"]["runAsGroup"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}
    assert "privileged" not in sc


@pytest.mark.parametrize("rel", ["kdns", "webhook/base"])
def test_read_only_root_fs_has_an_emptydir_tmp_and_no_bytecode_writes(rel):
    deploy = find(render(rel), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = container(deploy)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("TMPDIR") == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "/tmp must be an emptyDir"
    for path, mount in mounts.items():
        if "emptyDir" not in volumes[mount["name"]]:
            assert mount.get("readOnly") is True, f"{path} is mounted writable"


def test_resources_are_sized():
    deploy, _ = kdns_objects()
    res = container(deploy)["resources"]
    # CoreDNS's figures (perf/BENCH.md has no RSS figures yet; deploy/README.md "Resources")
    assert res == {"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"memory": "170Mi"}}
    res = container(find(render("webhook/base"), "Deployment"))["resources"]
    assert set(res["requests"]) == {"cpu", "memory"} and set(res["limits"]) == {"memory"}


def test_kdns_container_ports_and_probes_are_coredns_ones():
    deploy, _ = kdns_objects()
    c = container(deploy)
    ports = ports_of(c)
    assert {(p["containerPort"], p["protocol"]) for p in c["ports"]} == {
        (53, "UDP"), (53, "TCP"), (9153, "TCP"), (8080, "TCP"), (8181, "TCP")}
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live["httpGet"]["path"] == "/health" and ports[live["httpGet"]["port"]]["containerPort"] == 8080
    assert ready["httpGet"]["path"] == "/ready" and ports[ready["httpGet"]["port"]]["containerPort"] == 8181
    assert ports["metrics"]["containerPort"] == 9153
    assert (live["initialDelaySeconds"], live["timeoutSeconds"], live["failureThreshold"]) == (60, 5, 5)


def test_configmap_holds_the_kubeadm_corefile_mounted_where_the_args_say():
    deploy, cm = kdns_objects()
    assert cm["data"]["Corefile"] == KUBEADM_BLOCK_CACHE
    with open(os.path.join(DEPLOY, "kdns", "Corefile")) as f:
        assert f.read() == cm["data"]["Corefile"]
    c = container(deploy)
    conf = c["args"][c["args"].index("-conf") + 1]
    mount = next(m for m in c["volumeMounts"] if conf.startswith(m["mountPath"] + "/"))
    volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    item = next(i for i in volume["configMap"]["items"] if i["key"] == "Corefile")
    assert os.path.join(mount["mountPath"], item["path"]) == conf


def test_corefile_in_configmap_passes_kdns_check_config(tmp_path):
    _, cm = kdns_objects()
    path = tmp_path / "Corefile"
    path.write_text(cm["data"]["Corefile"])
    proc = subprocess.run([tool("kdns"), "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: OK" in proc.stdout
    # one server block, on the port the container declares for DNS
    assert re.findall(r"server (\S+) port (\d+)", proc.stdout) == [(".", "53")]


def test_check_config_rejects_a_broken_corefile(tmp_path):
    """...so the test above would catch a broken ConfigMap."""
    _, cm = kdns_objects()
    path = tmp_path / "Corefile"
    path.write_text(cm["data"]["Corefile"].replace("ttl 30", "ttl thirty"))
    proc = subprocess.run([tool("kdns"), "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and re.search(rf"{re.escape(str(path))}:\d+:\d+", proc.stderr), proc.stderr


def test_pdb_covers_kdns_pods():
    objs = render("kdns")
    deploy, pdb = find(objs, "Deployment", "kdns"), find(objs, "PodDisruptionBudget", "kdns")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_kube_dns_service_for_clusters_without_one():
    objs = render("kdns-with-service")
    svc = find(objs, "Service", "kube-dns", "kube-system")
    deploy = find(objs, "Deployment", "kdns")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == {"k8s-app": "kube-dns"} and svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["clusterIP"] == "10.96.0.10", "kind's and kubeadm's clusterDNS (10th address of 10.96.0.0/16)"
    ports = ports_of(container(deploy))
    for port in svc["spec"]["ports"]:
        target = ports[port["name"]]
        assert (port["targetPort"], port["protocol"]) == (target["containerPort"], target["protocol"])
    assert {p["name"] for p in svc["spec"]["ports"]} == {"dns", "dns-tcp", "metrics"}
    # the base alone must not carry a kube-dns Service (a kind cluster has one already)
    assert not [o for o in render("kdns") if o["kind"] == "Service"]


# ------------------------------------------------------------------------------ adoption: swap / side-by-side

# kubeadm's coredns objects as `kubeadm init` (and so kind) creates them (../shared/REFERENCE.md 1.3-1.4),
# for running the documented swap and side-by-side commands offline
KUBEADM_COREDNS = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 2
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      nodeSelector: {kubernetes.io/os: linux}
      tolerations:
      - {key: CriticalAddonsOnly, operator: Exists}
      - {key: node-role.kubernetes.io/control-plane, effect: NoSchedule}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector:
                matchExpressions: [{key: k8s-app, operator: In, values: [kube-dns]}]
              topologyKey: kubernetes.io/hostname
      containers:
      - name: coredns
        image: registry.k8s.io/coredns/coredns:v1.12.1
        imagePullPolicy: IfNotPresent
        resources:
          limits: {memory: 170Mi}
          requests: {cpu: 100m, memory: 100Mi}
        args: ["-conf", "/etc/coredns/Corefile"]
        volumeMounts:
        - {name: config-volume, mountPath: /etc/coredns, readOnly: true}
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        - {containerPort: 9153, name: metrics, protocol: TCP}
        - {containerPort: 8080, name: liveness-probe, protocol: TCP}
        - {containerPort: 8181, name: readiness-probe, protocol: TCP}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
          readOnlyRootFilesystem: true
        livenessProbe:
          httpGet: {path: /health, port: liveness-probe, scheme: HTTP}
          initialDelaySeconds: 60
          timeoutSeconds: 5
          successThreshold: 1
          failureThreshold: 5
        readinessProbe:
          httpGet: {path: /ready, port: readiness-probe, scheme: HTTP}
      dnsPolicy: Default
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items: [{key: Corefile, path: Corefile}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/cluster-service: "true", kubernetes.io/name: CoreDNS}
  annotations: {prometheus.io/port: "9153", prometheus.io/scrape: "true"}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
  - {name: metrics, port: 9153, protocol: TCP, targetPort: 9153}
"""


def kubeadm_object(tmp_path, kind: str) -> str:
    path = tmp_path / f"kubeadm-{kind.lower()}.yaml"
    path.write_text(yaml.safe_dump(next(o for o in load_all(KUBEADM_COREDNS) if o["kind"] == kind)))
    return str(path)


def swapped_coredns(tmp_path) -> dict:
    """The documented swap (kubectl patch deployment coredns --patch-file deploy/swap/kdns-image.yaml),
    applied with --local to kubeadm's coredns Deployment."""
    out = kubectl("-n", "kube-system", "patch", "--local", "-f", kubeadm_object(tmp_path, "Deployment"),
                  "--patch-file", os.path.join(DEPLOY, "swap", "kdns-image.yaml"), "-o", "yaml")
    return yaml.safe_load(out)


def selector_after(tmp_path, patch: str, start: str | None = None) -> dict:
    path = start or kubeadm_object(tmp_path, "Service")
    out = kubectl("-n", "kube-system", "patch", "--local", "-f", path, "--type", "merge",
                  "--patch-file", os.path.join(DEPLOY, "side-by-side", patch), "-o", "yaml")
    return yaml.safe_load(out)


def test_swap_changes_only_the_image(tmp_path):
    before = next(o for o in load_all(KUBEADM_COREDNS) if o["kind"] == "Deployment")
    after = swapped_coredns(tmp_path)
    validate_strict(after, kind_kubernetes_version())
    kdns_image = container(kdns_objects()[0])["image"]
    assert container(after)["image"] == kdns_image
    container(after)["image"] = container(before)["image"]
    assert after == before, "the swap patch must change nothing but the image"
    # what kdns then runs with: the coredns image's arguments, which the kdns image's CMD repeats
    assert container(after)["args"] == dockerfile()["CMD"]


def test_side_by_side_selector_moves_to_kdns_and_back(tmp_path):
    deploy, _ = kdns_objects()
    kdns_labels = deploy["spec"]["template"]["metadata"]["labels"]
    coredns_labels = next(o for o in load_all(KUBEADM_COREDNS)
                          if o["kind"] == "Deployment")["spec"]["template"]["metadata"]["labels"]

    def selects(svc: dict, labels: dict) -> bool:
        return svc["spec"]["selector"].items() <= labels.items()

    original = next(o for o in load_all(KUBEADM_COREDNS) if o["kind"] == "Service")
    assert selects(original, kdns_labels) and selects(original, coredns_labels)
    moved = selector_after(tmp_path, "select-kdns.yaml")
    validate_strict(moved, kind_kubernetes_version())
    assert selects(moved, kdns_labels) and not selects(moved, coredns_labels)
    moved_path = tmp_path / "moved.yaml"
    moved_path.write_text(yaml.safe_dump(moved))
    back = selector_after(tmp_path, "select-all.yaml", str(moved_path))
    assert back == original, "the rollback must restore kubeadm's Service exactly"


def test_documented_commands_use_the_checked_files():
    """The README and the kind scripts run the adoption steps with the files the tests above check."""
    with open(os.path.join(DEPLOY, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(DEPLOY, "kind", "up.sh")) as f:
        up = f.read()
    with open(os.path.join(DEPLOY, "kind", "rollback.sh")) as f:
        rollback = f.read()
    for text in (readme, up):
        assert "patch deployment coredns --patch-file" in text and "deploy/swap/kdns-image.yaml" in text
        assert "patch service kube-dns --type merge" in text and "side-by-side/select-kdns.yaml" in text
    for text in (readme, rollback):
        assert "rollout undo deployment/coredns" in text
        assert "side-by-side/select-all.yaml" in text
    for rel in KUSTOMIZATIONS:
        if rel != "kind/verify":
            assert f"kubectl apply -k deploy/{rel}" in readme, f"deploy/README.md does not say how to apply deploy/{rel}"


# ------------------------------------------------------------------------------ webhook


def webhook_objects(rel: str = "webhook/base") -> dict[str, dict]:
    objs = render(rel)
    return {"deploy": find(objs, "Deployment", "kdns-webhook"), "service": find(objs, "Service", "kdns-webhook"),
            "mwc": find(objs, "MutatingWebhookConfiguration"), "ns": find(objs, "Namespace"), "objs": objs}


def arg_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_webhook_configuration_is_safe():
    mwc = webhook_objects()["mwc"]
    assert len(mwc["webhooks"]) == 1
    hook = mwc["webhooks"][0]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 5
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    exprs = hook["namespaceSelector"]["matchExpressions"]
    assert {"key": "kdns.io/service-links", "operator": "In", "values": ["true"]} in exprs, "opt-in by label"
    excluded = next(e for e in exprs if e["key"] == "kubernetes.io/metadata.name")
    assert excluded["operator"] == "NotIn"
    assert {"kube-system", webhook_objects()["ns"]["metadata"]["name"]} <= set(excluded["values"])
    assert "caBundle" not in hook["clientConfig"], "set by gen-certs.sh or cert-manager, never committed"


def test_webhook_configuration_reaches_the_webhook_deployment():
    w = webhook_objects()
    ref = w["mwc"]["webhooks"][0]["clientConfig"]["service"]
    svc, deploy = w["service"], w["deploy"]
    assert (ref["namespace"], ref["name"]) == (svc["metadata"]["namespace"], svc["metadata"]["name"])
    assert ref["path"] == "/mutate"
    svc_port = next(p for p in svc["spec"]["ports"] if p["port"] == ref.get("port", 443))
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    c = container(deploy)
    target = next(p for p in c["ports"] if svc_port["targetPort"] in (p["name"], p["containerPort"]))
    assert svc_port["protocol"] == target["protocol"] == "TCP"
    # the port the container declares is the one the server listens on
    assert c["command"] == ["kdns-webhook"] and c["args"][0] == "serve"
    listen = arg_value(c["args"], "--listen")
    assert int(listen.rsplit(":", 1)[1]) == target["containerPort"]
    for probe, path in ((c["readinessProbe"], "/readyz"), (c["livenessProbe"], "/healthz")):
        assert probe["httpGet"]["path"] == path and probe["httpGet"]["scheme"] == "HTTPS"
        assert probe["httpGet"]["port"] in (target["name"], target["containerPort"])
    assert "--in-cluster" in c["args"]
    # the webhook never mutates its own pods
    assert w["ns"]["metadata"]["name"] == deploy["metadata"]["namespace"]


def test_webhook_tls_comes_from_the_secret_that_both_provisioners_write():
    w = webhook_objects()
    c = container(w["deploy"])
    volumes = {v["name"]: v for v in w["deploy"]["spec"]["template"]["spec"]["volumes"]}
    for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")):
        path = arg_value(c["args"], flag)
        mount = next(m for m in c["volumeMounts"] if path == os.path.join(m["mountPath"], key))
        assert volumes[mount["name"]]["secret"]["secretName"] == "kdns-webhook-tls"
    with open(os.path.join(DEPLOY, "webhook", "gen-certs.sh")) as f:
        script = f.read()
    svc = w["service"]["metadata"]
    assert "SECRET=${SECRET:-kdns-webhook-tls}" in script
    assert f"SERVICE=${{SERVICE:-{svc['name']}}}" in script and f"NAMESPACE=${{NAMESPACE:-{svc['namespace']}}}" in script
    assert f"WEBHOOK_CONFIG=${{WEBHOOK_CONFIG:-{w['mwc']['metadata']['name']}}}" in script


def test_cert_manager_overlay_issues_the_secret_and_injects_the_ca():
    w = webhook_objects("webhook/cert-manager")
    objs = w["objs"]
    cert = find(objs, "Certificate")
    ns = w["deploy"]["metadata"]["namespace"]
    svc = w["service"]["metadata"]["name"]
    assert cert["metadata"]["namespace"] == ns
    assert cert["spec"]["secretName"] == "kdns-webhook-tls"
    assert {f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"} <= set(cert["spec"]["dnsNames"])
    issuer = find(objs, cert["spec"]["issuerRef"]["kind"], cert["spec"]["issuerRef"]["name"])
    assert issuer["metadata"]["namespace"] == ns and "selfSigned" in issuer["spec"]
    annotations = w["mwc"]["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == f"{ns}/{cert['metadata']['name']}"
    # the overlay changes nothing else in the base
    base = {(o["kind"], o["metadata"]["name"]): o for o in render("webhook/base")}
    for obj in objs:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in base and obj["kind"] != "MutatingWebhookConfiguration":
            assert obj == base[key], key


# ------------------------------------------------------------------------------ images: one image, both programs


def dockerfile() -> dict:
    """The final stage's ENTRYPOINT, CMD, USER, ENV and the FROM lines of deploy's Dockerfile."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    out: dict = {"FROM": [], "ENV": {}}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            out["FROM"].append(rest.strip())
            out["ENV"] = {}  # ENV of the last stage only
        elif word in ("ENTRYPOINT", "CMD"):
            out[word] = json.loads(rest)
        elif word == "USER":
            out["USER"] = rest.strip()
        elif word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                out["ENV"][key] = value
    return out


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([tool("hadolint"), "--failure-threshold", "style", os.path.join(ROOT, "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_flag_problems(tmp_path):
    """...so the test above would catch them."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    proc = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3025" in proc.stdout


def test_dockerfile_shape():
    d = dockerfile()
    assert len(d["FROM"]) >= 2, "multi-stage"
    assert d["ENTRYPOINT"] == ["kdns"]
    assert d["CMD"] == ["-conf", "/etc/coredns/Corefile"], "the coredns image's arguments"
    uid, _, gid = d["USER"].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, "numeric non-root USER"
    assert d["ENV"]["PYTHONDONTWRITEBYTECODE"] == "1"
    assert d["ENV"]["PATH"].startswith("/opt/kdns/bin:")
    # the Deployments run as the image's user
    for deploy in (kdns_objects()[0], webhook_objects()["deploy"]):
        sc = deploy["spec"]["template"]["spec"]["securityContext"]
        assert f"{sc['runAsUser']}:{sc['runAsGroup']}" == d["USER"]


def test_deployments_run_the_image_as_built():
    d = dockerfile()
    kdns = container(kdns_objects()[0])
    webhook = container(webhook_objects()["deploy"])
    assert kdns["image"] == webhook["image"], "one image runs both"
    assert "command" not in kdns, "kdns runs the image's ENTRYPOINT"
    assert kdns["args"] == d["CMD"]
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        scripts = re.search(r"\[project\.scripts\]\n(.*?)(\n\[|\Z)", f.read(), re.S).group(1)
    assert {"kdns", "kdns-webhook"} <= set(re.findall(r"^([\w-]+)\s*=", scripts, re.M))
    assert d["ENTRYPOINT"][0] == "kdns" and webhook["command"] == ["kdns-webhook"]


def test_dockerignore_keeps_what_the_build_copies():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        rules = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "allow-list: the build context is only what the image needs"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        copies = re.findall(r"^COPY (?!--from)(.+)$", f.read(), re.M)
    sources = {s.rstrip("/") for line in copies for s in line.split()[:-1]}
    assert sources and sources <= allowed, sources - allowed
    # pip install . needs the package's readme and every package
    assert {"pyproject.toml", "README.md", "kdns", "webhook"} <= allowed


# ------------------------------------------------------------------------------ scripts


def scripts() -> list[str]:
    return sorted(glob.glob(os.path.join(DEPLOY, "**", "*.sh"), recursive=True))


def test_scripts_pass_shellcheck():
    proc = subprocess.run([tool("shellcheck"), "-x", "--severity=style", *scripts()], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_does_flag_problems(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    proc = subprocess.run([tool("shellcheck"), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "SC2086" in proc.stdout


@pytest.mark.parametrize("path", scripts(), ids=lambda p: os.path.relpath(p, DEPLOY))
def test_script_is_strict_bash(path):
    with open(path) as f:
        text = f.read()
    if path.endswith("lib.sh"):
        assert "trap on_error ERR" in text and "STEP=" in text
        return
    assert text.startswith("#!/usr/bin/env bash\n"), "bash"
    assert os.access(path, os.X_OK), "executable"
    assert "\nset -euo pipefail\n" in text
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if "/kind/" in path and "/verify/" not in path:
        # fails loudly, naming the step that broke
        assert 'lib.sh"' in text and "\nset -E" in text and re.search(r'^step "', text, re.M)
    if path.endswith("gen-certs.sh"):
        assert "trap '" in text and " ERR" in text and re.search(r'^step "', text, re.M)

