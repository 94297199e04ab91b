"""The real kdns-webhook (aiohttp over TLS) checked against the reference model (model_kubelet.py).

Hypothesis generates clusters (namespaces with opt-in labels; ClusterIP v4/v6/dual-stack, NodePort,
LoadBalancer, headless, ExternalName services with one or more named/unnamed TCP/UDP/SCTP ports,
names with dashes and names whose variables clash, `kubernetes` in `default` or not), pods
(enableServiceLinks true/false/unset, several containers and initContainers, env with `$(VAR)`
references, valueFrom and envFrom with prefixes, the webhook's annotations) and webhook options
(opt-in, --keep-enable-service-links, budgets small enough to cut). Every AdmissionReview goes to
the real server, the answer's JSONPatch is applied with the `jsonpatch` library, and the environment
the kubelet (model) gives each container of the patched pod must equal the one the contract
(model) promises for the original pod. Then the patched pod is sent again (reinvocation): no change.

Budget: KDNS_MODEL_EXAMPLES examples (default 150, a few seconds; derandomized, so CI runs a
fixed set). `KDNS_MODEL_EXAMPLES=5000 pytest tests/test_webhook_model.py` runs a longer search.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

import model_kubelet as model
from fuzz_dns import fuzz_settings
from kdns.objects import service_from_dict
from webhook.selection import Settings
from webhook_fixtures import certs  # noqa: F401 - fixture
from webhook_harness import WebhookThread

EXAMPLES = int(os.environ.get("KDNS_MODEL_EXAMPLES", "150"))

# Names chosen so that variables clash: `foo` port 80 and `foo-port-80-tcp` both define
# FOO_PORT_80_TCP_PORT (Go map order decides in the kubelet); `web-api` and `web.api`-like prefixes.
SERVICE_NAMES = ["redis", "db", "api", "web-api", "web", "foo", "foo-port-80-tcp", "kubernetes", "a1", "x-y-z"]
NAMESPACES = ["default", "shop", "team-a"]
PORT_NAMES = ["http", "https", "grpc", "dns-tcp", "metrics", "p-1"]
PREFIXES = ["KUBERNETES", "REDIS", "API", "WEB_API", "FOO", "DB"]
ENV_NAMES = ([f"{p}_{s}" for p in PREFIXES for s in ("SERVICE_HOST", "SERVICE_PORT", "PORT", "PORT_80_TCP_ADDR",
                                                       "SERVICE_PORT_HTTP")]
             + ["APP_MODE", "LEVEL", "CFG_LEVEL", "URL", "TOKEN", "SERVICE_HOST"])
CONFIG_MAPS = {"settings": {"LEVEL": "debug", "SERVICE_HOST": "cm-host", "REDIS_SERVICE_HOST": "cm-redis",
                            "KUBERNETES_PORT": "cm-k"},
               "refs": {"host": "$(REDIS_SERVICE_HOST)", "mode": "fast"}}
SECRETS = {"creds": {"API_SERVICE_PORT": "s-9", "TOKEN": "t0k"}, "keys": {"k": "v"}}
# envFrom sources (each used at most once per container) and valueFrom references
ENV_FROM = [{"configMapRef": {"name": "settings"}}, {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
            {"configMapRef": {"name": "settings"}, "prefix": "REDIS_"}, {"secretRef": {"name": "creds"}},
            {"secretRef": {"name": "creds"}, "prefix": "DB_"}, {"configMapRef": {"name": "absent", "optional": True}}]
VALUE_FROM = [{"configMapKeyRef": {"name": "refs", "key": "host"}},
              {"configMapKeyRef": {"name": "refs", "key": "nope", "optional": True}},
              {"secretKeyRef": {"name": "keys", "key": "k"}}, {"fieldRef": {"fieldPath": "metadata.namespace"}}]
VALUE_TOKENS = [f"$({n})" for n in ENV_NAMES] + ["$$", "$", "$(", ")", "x", "://", "$x", "é", "$$(REDIS_PORT)"]
OPTIONS = [model.Options(),
           model.Options(require_opt_in=True),
           model.Options(keep_links=True),
           model.Options(budget=900),
           model.Options(budget=300, keep_links=True),
           model.Options(pod_budget=1800),
           model.Options(budget=0)]


# ---------------------------------------------------------------------------- strategies

@st.composite
def ports(draw) -> list[dict]:
    count = draw(st.integers(1, 3))
    names = draw(st.lists(st.sampled_from(PORT_NAMES), min_size=count, max_size=count, unique=True))
    numbers = draw(st.lists(st.sampled_from([80, 443, 53, 6379, 8080, 9000]) | st.integers(1, 65535),
                            min_size=count, max_size=count, unique=True))
    out = []
    for name, number in zip(names, numbers):
        port: dict = {"port": number}
        if count > 1 or draw(st.booleans()):  # the API allows an unnamed port only when it is the only one
            port["name"] = name
        protocol = draw(st.sampled_from([None, "TCP", "UDP", "SCTP"]))
        if protocol:
            port["protocol"] = protocol
        out.append(port)
    return out


def _v4(draw) -> str:
    return f"10.96.{draw(st.integers(0, 255))}.{draw(st.integers(1, 254))}"


def _v6(draw) -> str:
    return f"fd00:10:96::{draw(st.integers(1, 0xffff)):x}"


@st.composite
def service(draw, namespace: str, name: str) -> dict:
    kind = draw(st.sampled_from(["v4", "v4", "v6", "dual", "dual6", "v6-long", "NodePort", "LoadBalancer",
                                 "headless", "ExternalName"]))
    spec: dict = {"ports": draw(ports())}
    if kind == "ExternalName":
        spec.update(type="ExternalName", externalName="db.example.com")
    elif kind == "headless":
        spec.update(clusterIP="None", clusterIPs=["None"])
    else:
        ips = {"v6": [_v6(draw)], "dual": [_v4(draw), _v6(draw)], "dual6": [_v6(draw), _v4(draw)],
               "v6-long": [f"fd00:10:96:0:0:0:0:{draw(st.integers(1, 0xffff)):x}"]}.get(kind, [_v4(draw)])
        spec.update(clusterIP=ips[0], clusterIPs=ips)
        if kind in ("NodePort", "LoadBalancer"):
            spec["type"] = kind
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@st.composite
def clusters(draw) -> tuple[list[dict], list[dict]]:
    """(Namespace objects, Service objects)."""
    namespaces, services = [], []
    for ns in NAMESPACES:
        label = draw(st.sampled_from([None, None, "true", "false", "maybe"]))
        labels = {model.LABEL_LINKS: label} if label else {}
        namespaces.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
        names = draw(st.lists(st.sampled_from(SERVICE_NAMES)
                              | st.from_regex(r"[a-z]([-a-z0-9]{0,6}[a-z0-9])?", fullmatch=True),
                              max_size=6, unique=True))
        if ns == "default" and "kubernetes" not in names and draw(st.integers(0, 9)) > 0:
            services.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": ns},
                             "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                                      "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}})
        services += [draw(service(ns, name)) for name in names]
    return namespaces, services


@st.composite
def env_entries(draw) -> list[dict] | None:
    if draw(st.integers(0, 3)) == 0:
        return None
    out = []
    for _ in range(draw(st.integers(0, 5))):
        entry: dict = {"name": draw(st.sampled_from(ENV_NAMES))}
        how = draw(st.integers(0, 5))
        if how <= 3:
            entry["value"] = "".join(draw(st.lists(st.sampled_from(VALUE_TOKENS), max_size=4)))
        elif how == 4:
            entry["valueFrom"] = copy.deepcopy(draw(st.sampled_from(VALUE_FROM)))
        out.append(entry)  # how == 5: no value at all (the empty string)
    return out


@st.composite
def container(draw, name: str) -> dict:
    c: dict = {"name": name, "image": "busybox"}
    env = draw(env_entries())
    if env is not None:
        c["env"] = env
    sources = draw(st.lists(st.sampled_from(range(len(ENV_FROM))), max_size=2,
                            unique_by=lambda i: json.dumps(ENV_FROM[i].get("configMapRef")
                                                           or ENV_FROM[i]["secretRef"])))
    if sources:
        c["envFrom"] = [copy.deepcopy(ENV_FROM[i]) for i in sources]
    return c


@st.composite
def annotation_value(draw) -> str:
    entries = draw(st.lists(st.sampled_from(SERVICE_NAMES + ["shop/api", "team-a/redis", "default/kubernetes",
                                                             "team-a/kubernetes", "ghost/x", "Bad_Name", "a/b/c", "",
                                                             " redis ", "nothere", "shop/web-api", "team-a/foo"]),
                            max_size=5))
    return draw(st.sampled_from([",", ", "])).join(entries)


@st.composite
def pods(draw) -> tuple[dict, str]:
    """(the Pod object, the request's namespace)."""
    namespace = draw(st.sampled_from(NAMESPACES + ["ghost"]))
    meta: dict = {"name": "p"}
    if draw(st.booleans()):
        meta["namespace"] = namespace
    annotations = {}
    links = draw(st.sampled_from([None, None, "true", "false", "yes"]))
    if links:
        annotations[model.ANNOTATION_LINKS] = links
    if draw(st.integers(0, 2)) == 0:
        annotations[model.ANNOTATION_SERVICES] = draw(annotation_value())
    if draw(st.integers(0, 9)) == 0:  # copied from a pod the webhook mutated (`kubectl get -o yaml`)
        annotations[model.ANNOTATION_ORIGINAL] = draw(st.sampled_from(["true", "false", "maybe"]))
    if annotations or draw(st.booleans()):
        meta["annotations"] = annotations
    spec: dict = {"containers": [draw(container(f"c{i}")) for i in range(draw(st.integers(1, 3)))]}
    init = draw(st.integers(0, 2))
    if init:
        spec["initContainers"] = [draw(container(f"i{i}")) for i in range(init)]
    enable = draw(st.sampled_from([None, True, False]))
    if enable is not None:
        spec["enableServiceLinks"] = enable
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}, namespace


# ---------------------------------------------------------------------------- the check


@pytest.fixture(scope="module")
def servers(certs):  # noqa: F811 - fixture
    """One real server per option set, started when first needed."""
    with contextlib.ExitStack() as stack:
        pool: dict[model.Options, WebhookThread] = {}

        def get(options: model.Options) -> WebhookThread:
            if options not in pool:
                settings = Settings(require_opt_in=options.require_opt_in, disable_kubelet_links=not options.keep_links,
                                    budget=options.budget, pod_budget=options.pod_budget)
                pool[options] = stack.enter_context(WebhookThread(certs, settings=settings))
            return pool[options]
        yield get


def environments(pod: dict, namespace: str, services: list[dict], expected: model.Options | None):
    """The kubelet's environments of `pod` (expected=None), or the contract's for it; a KubeletError
    (the container would not start) is a result too."""
    try:
        if expected is None:
            return model.pod_environments(pod, namespace, services, CONFIG_MAPS, SECRETS)
        return model.expected_environments(pod, namespace, services, expected, CONFIG_MAPS, SECRETS)
    except model.KubeletError as exc:
        return f"KubeletError: {exc}"


def _diff(a, b):
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return a, b
    return {k: {n: (a[k].get(n), b[k].get(n)) for n in sorted(set(a[k]) | set(b[k])) if a[k].get(n) != b[k].get(n)}
            for k in b}


def check_admission(server: WebhookThread, cluster, pod: dict, namespace: str, options: model.Options) -> None:
    namespaces, services = cluster
    patched, response = server.admit(pod, namespace=namespace)
    annotations = pod["metadata"].get("annotations") or {}
    labels = next((n["metadata"]["labels"] for n in namespaces if n["metadata"]["name"] == namespace), {})
    if not model.is_selected(annotations, labels, options):
        assert "patch" not in response and patched == pod, "a pod that is not selected is left alone"
        return
    the_plan = model.plan(pod, namespace, services, options)
    # the environment: the kubelet (model) on the patched pod = the contract (model) on the original
    actual = environments(patched, namespace, services, None)
    expected = environments(pod, namespace, services, options)
    if actual != expected:
        pytest.fail(f"environment (webhook+kubelet, contract) differs: {_diff(actual, expected)}\n"
                    f"plan: {the_plan.variables}")
    # the patch's shape: the container's own env unchanged, after planned variables in plan order,
    # among them every one it does not set
    for field, i, c in model.containers(pod):
        own = c.get("env") or []
        got = patched["spec"][field][i].get("env") or []
        front = got[:len(got) - len(own)]
        assert got[len(front):] == own, f"{field}[{i}].env: the pod's own entries changed"
        names = {e["name"] for e in own}
        assert [(e["name"], e["value"]) for e in front] == [(n, v) for n, v in the_plan.variables
                                                             if n in {e["name"] for e in front}], f"{field}[{i}]"
        assert {n for n, _ in the_plan.variables} - names <= {e["name"] for e in front}, f"{field}[{i}]"
        assert ("env" in patched["spec"][field][i]) == ("env" in c or bool(front)), f"{field}[{i}]"
    if not options.keep_links:
        assert patched["spec"]["enableServiceLinks"] is False
    # without the webhook's extensions the contract is the kubelet itself, with Go's map in reverse kdns order
    has_env_from = any(c.get("envFrom") for _, _, c in model.containers(pod))
    own_master = any(s["metadata"] == {"name": "kubernetes", "namespace": namespace} and model.is_service_ip_set(s)
                     for s in services) and namespace != model.MASTER_NAMESPACE
    extensions = {model.ANNOTATION_SERVICES, model.ANNOTATION_ORIGINAL} & set(annotations)
    if not extensions and not the_plan.dropped and not has_env_from and not (
            own_master and model.enable_service_links(pod) and not options.keep_links):
        kubelet = model.pod_environments(pod, namespace, services, CONFIG_MAPS, SECRETS,
                                         map_order=lambda s: list(reversed(model.kdns_order(s))))
        assert expected == kubelet, f"contract, kubelet: {_diff(expected, kubelet)}"
    warned = any("budget" in w for w in response.get("warnings", []))
    injected = any(patched["spec"][f][i].get("env") != c.get("env") for f, i, c in model.containers(pod))
    if model.ANNOTATION_ORIGINAL not in annotations or injected:  # a reinvocation that adds nothing is quiet
        assert warned == bool(the_plan.dropped) or len(response.get("warnings", [])) >= 10, response.get("warnings")
    # reinvocation (reinvocationPolicy IfNeeded): the patched pod again changes nothing
    again, response2 = server.admit(patched, namespace=namespace)
    assert again == patched, f"reinvocation changed the pod: {response2}"


@fuzz_settings(EXAMPLES)
@given(cluster=clusters(), pod_and_ns=pods(), options=st.sampled_from(OPTIONS))
def test_webhook_agrees_with_the_kubelet_model(servers, cluster, pod_and_ns, options):
    pod, namespace = pod_and_ns
    server = servers(options)
    server.set_objects(*cluster[0], *cluster[1])
    check_admission(server, cluster, pod, namespace, options)


# ---------------------------------------------------------------------------- what the model found
# Each was a disagreement between the webhook and the model; the kubelet source decided (see the
# docstrings). They run through the same check as the generated cases.

KUBERNETES = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
              "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                       "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}
REDIS = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis", "namespace": "shop"},
         "spec": {"clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"], "ports": [{"port": 6379}]}}
NAMESPACE_OBJECTS = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {}}}
                     for n in NAMESPACES]


def _admit_one(servers, services: list[dict], env: list[dict], namespace: str = "shop"):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": namespace},
           "spec": {"containers": [{"name": "app", "image": "busybox", "env": env}]}}
    server = servers(model.Options())
    server.set_objects(*NAMESPACE_OBJECTS, *services)
    check_admission(server, (NAMESPACE_OBJECTS, services), pod, namespace, model.Options())
    patched, response = server.admit(pod, namespace=namespace)
    return model.pod_environments(patched, namespace, services, CONFIG_MAPS, SECRETS)["containers/app"], response


def test_bug_optional_reference_left_unset_gets_the_service_value(servers):
    """makeEnvironmentVariables `continue`s past a configMapKeyRef marked optional whose key is
    missing: the name stays unset and "Append remaining service env vars" adds the service's value.
    The webhook took the name as set by the pod and injected nothing, so the container lost
    REDIS_SERVICE_HOST. Fixed: such a name is injected in front too (the pod's entry still wins
    when the key exists)."""
    env, _ = _admit_one(servers, [KUBERNETES, REDIS], [
        {"name": "REDIS_SERVICE_HOST", "valueFrom": {"configMapKeyRef": {"name": "refs", "key": "nope",
                                                                          "optional": True}}}])
    assert env["REDIS_SERVICE_HOST"] == "10.96.5.5"
    env, _ = _admit_one(servers, [KUBERNETES, REDIS], [
        {"name": "REDIS_SERVICE_HOST", "valueFrom": {"configMapKeyRef": {"name": "refs", "key": "host",
                                                                          "optional": True}}}])
    assert env["REDIS_SERVICE_HOST"] == "$(REDIS_SERVICE_HOST)"  # the key's (unexpanded) value wins


def test_bug_reference_before_the_pods_own_definition(servers):
    """`URL=$(REDIS_SERVICE_HOST)` declared before the pod's own REDIS_SERVICE_HOST: the kubelet
    expands it with MappingFuncFor(tmpEnv, serviceEnv), and tmpEnv does not have the name yet, so
    URL gets the service's address. The webhook injected nothing (the pod sets the name) and, with
    enableServiceLinks off, URL kept `$(REDIS_SERVICE_HOST)`. Fixed as above."""
    env, _ = _admit_one(servers, [KUBERNETES, REDIS], [
        {"name": "URL", "value": "redis://$(REDIS_SERVICE_HOST)"}, {"name": "REDIS_SERVICE_HOST", "value": "mine"},
        {"name": "AFTER", "value": "$(REDIS_SERVICE_HOST)"}])
    assert (env["URL"], env["REDIS_SERVICE_HOST"], env["AFTER"]) == ("redis://10.96.5.5", "mine", "mine")


def test_a_namespace_kubernetes_service_and_the_master_leftovers_are_warned(servers):
    """getServiceEnvVarMap lets a `kubernetes` service of the pod's namespace replace the master one
    only while enableServiceLinks is on; the mutated pod has it off, so the kubelet adds the names of
    default/kubernetes that the namespace's own does not define. The webhook cannot remove variables
    the kubelet adds: the contract (model) says so, and the webhook now warns."""
    own = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "shop"},
           "spec": {"clusterIP": "10.96.9.9", "clusterIPs": ["10.96.9.9"], "ports": [{"name": "api", "port": 6443}]}}
    env, response = _admit_one(servers, [KUBERNETES, own], [])
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.9.9" and env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert any("still adds default/kubernetes's KUBERNETES_SERVICE_PORT_HTTPS" in w for w in response["warnings"])


@fuzz_settings(max(10, EXAMPLES // 6))
@given(cluster=clusters(), pod_and_ns=pods(), cut=st.integers(0, 20), delta=st.sampled_from([-1, 0, 1]))
def test_budget_cut_point(certs, cluster, pod_and_ns, cut, delta):  # noqa: F811 - fixture
    """Budgets at a service boundary and one byte either side: the webhook takes exactly the
    services that fit (README "Budget")."""
    pod, namespace = pod_and_ns
    pod["metadata"].pop("annotations", None)
    whole = model.plan(pod, namespace, cluster[1], model.Options(budget=10 ** 9, pod_budget=10 ** 9))
    if not whole.used:
        return
    options = model.Options(budget=max(0, whole.used[min(cut, len(whole.used) - 1)] + delta), pod_budget=10 ** 9)
    settings = Settings(budget=options.budget, pod_budget=options.pod_budget)
    with WebhookThread(certs, settings=settings, objects=[*cluster[0], *cluster[1]]) as server:
        check_admission(server, cluster, pod, namespace, options)


def _change(server: WebhookThread, upsert: list[dict] = (), delete: list[tuple[str, str]] = ()) -> None:
    """Change single services in the running server's index (one event each, as a watch brings them)."""
    async def run():
        server.index.begin()
        for obj in upsert:
            server.index.upsert(service_from_dict(obj))
        for ns, name in delete:
            server.index.delete("Service", ns, name)
        server.index.commit()
    asyncio.run_coroutine_threadsafe(run(), server.loop).result(10)


def test_remembered_plans_follow_service_changes(servers):
    """Plans are memoised per namespace until a service they read changes: after each single
    change (in the pod's namespace, in `default`, in a namespace a kdns.io/services entry names,
    elsewhere), the answers agree with the model again."""
    server = servers(model.Options())
    redis_elsewhere = copy.deepcopy(REDIS)
    redis_elsewhere["metadata"]["namespace"] = "team-a"
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
             "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    listed = copy.deepcopy(plain)
    listed["metadata"]["annotations"] = {model.ANNOTATION_SERVICES: "team-a/redis"}
    services = [KUBERNETES, REDIS, redis_elsewhere]
    server.set_objects(*NAMESPACE_OBJECTS, *services)
    for index, ip in ((1, "10.96.7.7"), (0, "10.96.0.2"), (2, "10.96.8.8"), (1, "fd00::9"), (None, None)):
        for pod in (plain, listed):
            check_admission(server, (NAMESPACE_OBJECTS, services), pod, "shop", model.Options())
        services = copy.deepcopy(services)
        if index is None:
            break
        services[index]["spec"].update(clusterIP=ip, clusterIPs=[ip])
        _change(server, upsert=[services[index]])
    _change(server, delete=[("shop", "redis"), ("team-a", "redis")])
    for pod in (plain, listed):
        check_admission(server, (NAMESPACE_OBJECTS, services[:1]), pod, "shop", model.Options())


@fuzz_settings(max(20, EXAMPLES // 3))
@given(variables=st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=12)), max_size=6),
       has_env=st.booleans(), key=st.text(max_size=8))
def test_patch_text_is_what_json_dumps_gives(variables, has_env, key):
    """The webhook writes env entries as pre-encoded JSON (patch.encode); the text must be exactly
    json.dumps of the same operations, whatever the names and values hold."""
    from webhook.envvars import EnvVar
    from webhook.patch import ContainerResult, ContainerView, Encoded, encode, env_ops
    container = ContainerView("initContainers", 1, "c", [{"name": "Q"}] if has_env else None, [])
    ops = env_ops(ContainerResult(container, [EnvVar(n, v) for n, v in variables], [], []))
    ops += [{"op": "add", "path": "/metadata/annotations/" + key, "value": key},
            {"op": "add", "path": "/x", "value": False}]
    plain = [dict(op, value=json.loads(op["value"])) if isinstance(op["value"], Encoded) else op for op in ops]
    assert encode(ops) == json.dumps(plain, separators=(",", ":"))


def test_bug_a_bad_original_annotation_is_replaced_so_reinvocation_agrees(servers):
    """A pod that arrives with `kdns.io/original-enable-service-links: maybe` (copied from another
    pod by hand): the first call read enableServiceLinks (unset: on, so shop/kubernetes replaced
    default/kubernetes) but left the bad annotation, so the reinvocation read the `false` we had
    just written and injected default/kubernetes's names too. Fixed: the bad value is replaced by
    the setting the first call used."""
    own = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "shop"},
           "spec": {"clusterIP": "10.96.9.9", "clusterIPs": ["10.96.9.9"], "ports": [{"name": "api", "port": 6443}]}}
    services = [KUBERNETES, own, REDIS]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "shop", "annotations": {model.ANNOTATION_ORIGINAL: "maybe"}},
           "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    server = servers(model.Options())
    server.set_objects(*NAMESPACE_OBJECTS, *services)
    check_admission(server, (NAMESPACE_OBJECTS, services), pod, "shop", model.Options())
    patched, response = server.admit(pod, namespace="shop")
    assert patched["metadata"]["annotations"][model.ANNOTATION_ORIGINAL] == "true"
    assert any("got 'maybe'; replaced" in w for w in response["warnings"])


def test_the_load_benchmark_runs_clean():
    """perf/webhook_load.py end to end at a small size and a low rate: every admission answered,
    correct, with the budget engaged (its figures belong in perf/BENCH.md, not here)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "perf", "webhook_load.py"), "--services", "600",
                          "--rates", "20", "--duration", "1", "--timeout", "20", "--wait-quiet", "0", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (result,) = json.loads(out.stdout)["results"]
    assert result["requests"] == result["answered"] == 20 and result["errors"] == 0
    assert 0 < result["first_env_bytes"] <= 64 * 1024
