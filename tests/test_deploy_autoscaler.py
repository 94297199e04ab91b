"""deploy/autoscaler: the optional cluster-proportional-autoscaler component for kdns, rendered through
deploy/kdns-autoscaled and checked offline (strict schema validation runs in tests/test_deploy.py with
the other kustomizations): it targets the kdns Deployment, its parameters are ones the autoscaler
knows, its RBAC is the least it needs, and the replica counts those parameters give."""

from __future__ import annotations

import json
import math

import pytest

from test_deploy import DEPLOY, WRITERS, container, find, render, rules_of

NS = "kube-system"
# the fields of the cluster-proportional-autoscaler's linear mode (pkg/autoscaler/controller/linearcontroller);
# it decodes JSON leniently, so a misspelt key would be silently ignored: only these are allowed
LINEAR_KEYS = {"coresPerReplica", "nodesPerReplica", "min", "max", "preventSinglePointFailure",
               "includeUnschedulableNodes"}


@pytest.fixture(scope="module")
def objs() -> list[dict]:
    return render("kdns-autoscaled")


def args_of(c: dict) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in c["command"][1:] if a.startswith("--") and "=" in a)


def linear_replicas(params: dict, nodes: int, cores: int) -> int:
    """The autoscaler's linear formula (its README), for checking what these parameters do."""
    replicas = max(math.ceil(cores / params["coresPerReplica"]) if params.get("coresPerReplica") else 0,
                   math.ceil(nodes / params["nodesPerReplica"]) if params.get("nodesPerReplica") else 0)
    if params.get("preventSinglePointFailure") and nodes > 1:
        replicas = max(replicas, 2)
    replicas = max(replicas, params.get("min", 1))
    if params.get("max"):
        replicas = min(replicas, params["max"])
    return replicas


def test_overlay_is_deploy_kdns_plus_the_component(objs):
    base = {(o["kind"], o["metadata"]["name"]) for o in render("kdns")}
    here = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert base <= here
    assert here - base == {("ServiceAccount", "kdns-autoscaler"), ("ClusterRole", "system:kdns-autoscaler"),
                           ("ClusterRoleBinding", "system:kdns-autoscaler"), ("Role", "kdns-autoscaler"),
                           ("RoleBinding", "kdns-autoscaler"), ("ConfigMap", "kdns-autoscaler"),
                           ("Deployment", "kdns-autoscaler")}


def test_kdns_replicas_are_left_to_the_autoscaler(objs):
    assert "replicas" not in find(objs, "Deployment", "kdns", NS)["spec"]
    assert find(render("kdns"), "Deployment", "kdns", NS)["spec"]["replicas"] == 2  # the base keeps its own


def test_autoscaler_targets_the_kdns_deployment_and_its_configmap(objs):
    c = container(find(objs, "Deployment", "kdns-autoscaler", NS))
    assert c["image"].startswith("registry.k8s.io/cpa/cluster-proportional-autoscaler:v")
    assert c["command"][0] == "/cluster-proportional-autoscaler"
    args = args_of(c)
    assert args["namespace"] == NS
    kind, _, name = args["target"].partition("/")
    assert kind == "Deployment"
    find(objs, "Deployment", name, NS)  # the target exists in this render
    cm = find(objs, "ConfigMap", args["configmap"], NS)
    assert json.loads(args["default-params"]) == {"linear": json.loads(cm["data"]["linear"])}, \
        "--default-params and the ConfigMap must agree"


def test_parameters_are_known_to_the_autoscaler_and_scale_as_intended(objs):
    params = json.loads(find(objs, "ConfigMap", "kdns-autoscaler", NS)["data"]["linear"])
    assert set(params) <= LINEAR_KEYS, f"unknown keys {set(params) - LINEAR_KEYS}"
    assert params["coresPerReplica"] > 0 and params["nodesPerReplica"] > 0
    # never below the base's 2 replicas (the PodDisruptionBudget and anti-affinity assume two)
    assert linear_replicas(params, nodes=1, cores=2) == 2
    assert linear_replicas(params, nodes=16, cores=64) == 2
    assert linear_replicas(params, nodes=100, cores=400) == 7  # ceil(100 / 16)
    assert linear_replicas(params, nodes=100, cores=3200) == 13  # ceil(3200 / 256): big nodes


def test_rbac_is_the_least_the_autoscaler_needs(objs):
    cluster_role = find(objs, "ClusterRole", "system:kdns-autoscaler")
    assert rules_of(cluster_role) == {("", "nodes", "list"), ("", "nodes", "watch")}
    role = find(objs, "Role", "kdns-autoscaler", NS)
    assert ("Role", NS, "kdns-autoscaler") in WRITERS
    assert sorted((r["apiGroups"], r["resources"], r["resourceNames"], sorted(r["verbs"])) for r in role["rules"]) \
        == sorted([(["apps"], ["deployments/scale"], ["kdns"], ["get", "update"]),
                   ([""], ["configmaps"], ["kdns-autoscaler"], ["get"])])
    for kind, name, role_kind in (("ClusterRoleBinding", "system:kdns-autoscaler", "ClusterRole"),
                                  ("RoleBinding", "kdns-autoscaler", "Role")):
        binding = find(objs, kind, name)
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kdns-autoscaler", "namespace": NS}]
    deploy = find(objs, "Deployment", "kdns-autoscaler", NS)
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "kdns-autoscaler"


def test_autoscaler_pod_is_locked_down(objs):
    deploy = find(objs, "Deployment", "kdns-autoscaler", NS)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(deploy)["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}
    res = container(deploy)["resources"]
    assert set(res["requests"]) == {"cpu", "memory"} and set(res["limits"]) == {"memory"}
    assert pod["priorityClassName"] == "system-cluster-critical"


def test_component_is_not_a_standalone_kustomization():
    with open(f"{DEPLOY}/autoscaler/kustomization.yaml") as fh:
        assert "kind: Component" in fh.read()
