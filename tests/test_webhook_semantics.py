"""kdns-webhook: the kubelet's service-link rules, selection, budget, warnings and reinvocation,
through the real server over TLS; every patch is applied with the `jsonpatch` library.

Kubelet sources the golden cases follow: pkg/kubelet/envvars/envvars.go (FromServices,
makeEnvVariableName, makeLinkVariables) and pkg/kubelet/kubelet_pods.go (getServiceEnvVarMap,
makeEnvironmentVariables)."""

from __future__ import annotations

from webhook.envvars import join_host_port
from webhook.patch import pointer
from webhook.selection import Settings
from webhook_fixtures import BASE, KUBERNETES, certs, webhook  # noqa: F401 - fixtures
from webhook_harness import WebhookThread, container, decoded_patch, env_of, ns, pod, svc
from model_kubelet import from_services, pod_env

K8S_ENV = [
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
    ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
    ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
    ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
    ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
    ("KUBERNETES_PORT_443_TCP_PORT", "443"),
    ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
]


def names(env) -> list[str]:
    return [n for n, _ in env]


def prefixed(env, prefix: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in env if n.startswith(prefix)]


# ---------------------------------------------------------------- the kubelet's variables, exactly


def test_unnamed_port_and_dashes_golden(webhook):
    """envvars.go: name upper-cased with `-` -> `_`; an unnamed port has no _SERVICE_PORT_<NAME>;
    `_PORT` is the first port's URL; per port the URL, _PROTO, _PORT, _ADDR; master service first."""
    webhook.set_objects(*BASE, svc("shop", "redis-cache", "10.96.5.5", (6379,)))
    patched, response = webhook.admit(pod())
    assert env_of(patched) == K8S_ENV + [
        ("REDIS_CACHE_SERVICE_HOST", "10.96.5.5"),
        ("REDIS_CACHE_SERVICE_PORT", "6379"),
        ("REDIS_CACHE_PORT", "tcp://10.96.5.5:6379"),
        ("REDIS_CACHE_PORT_6379_TCP", "tcp://10.96.5.5:6379"),
        ("REDIS_CACHE_PORT_6379_TCP_PROTO", "tcp"),
        ("REDIS_CACHE_PORT_6379_TCP_PORT", "6379"),
        ("REDIS_CACHE_PORT_6379_TCP_ADDR", "10.96.5.5"),
    ]
    assert "warnings" not in response


def test_named_ports_udp_sctp_golden(webhook):
    """Every named port gets _SERVICE_PORT_<NAME> (dashes mapped); protocol lower-case in values,
    upper-case in names; _SERVICE_PORT and _PORT come from the first port, whatever its protocol."""
    webhook.set_objects(*BASE, svc("shop", "dns-proxy", "10.96.0.53", ("dns-udp", 53, "UDP"),
                                   ("dns-tcp", 53, "TCP"), ("sig-tran", 2905, "SCTP")))
    patched, _ = webhook.admit(pod())
    assert prefixed(env_of(patched), "DNS_PROXY_") == [
        ("DNS_PROXY_SERVICE_HOST", "10.96.0.53"),
        ("DNS_PROXY_SERVICE_PORT", "53"),
        ("DNS_PROXY_SERVICE_PORT_DNS_UDP", "53"),
        ("DNS_PROXY_SERVICE_PORT_DNS_TCP", "53"),
        ("DNS_PROXY_SERVICE_PORT_SIG_TRAN", "2905"),
        ("DNS_PROXY_PORT", "udp://10.96.0.53:53"),
        ("DNS_PROXY_PORT_53_UDP", "udp://10.96.0.53:53"),
        ("DNS_PROXY_PORT_53_UDP_PROTO", "udp"),
        ("DNS_PROXY_PORT_53_UDP_PORT", "53"),
        ("DNS_PROXY_PORT_53_UDP_ADDR", "10.96.0.53"),
        ("DNS_PROXY_PORT_53_TCP", "tcp://10.96.0.53:53"),
        ("DNS_PROXY_PORT_53_TCP_PROTO", "tcp"),
        ("DNS_PROXY_PORT_53_TCP_PORT", "53"),
        ("DNS_PROXY_PORT_53_TCP_ADDR", "10.96.0.53"),
        ("DNS_PROXY_PORT_2905_SCTP", "sctp://10.96.0.53:2905"),
        ("DNS_PROXY_PORT_2905_SCTP_PROTO", "sctp"),
        ("DNS_PROXY_PORT_2905_SCTP_PORT", "2905"),
        ("DNS_PROXY_PORT_2905_SCTP_ADDR", "10.96.0.53"),
    ]


def test_ipv6_cluster_ip_is_bracketed_in_urls_only(webhook):
    """net.JoinHostPort brackets an IPv6 host in the URLs; _SERVICE_HOST and _ADDR stay bare."""
    webhook.set_objects(*BASE, svc("shop", "api6", "fd00:10:96::a", ("http", 80, "TCP"), ips=["fd00:10:96::a", "10.96.9.9"]))
    patched, _ = webhook.admit(pod())
    env = dict(env_of(patched))
    assert env["API6_SERVICE_HOST"] == "fd00:10:96::a"
    assert env["API6_PORT"] == env["API6_PORT_80_TCP"] == "tcp://[fd00:10:96::a]:80"
    assert env["API6_PORT_80_TCP_ADDR"] == "fd00:10:96::a"
    assert join_host_port("10.0.0.1", 5) == "10.0.0.1:5" and join_host_port("::1", 5) == "[::1]:5"


def test_first_cluster_ip_is_used_verbatim(webhook):
    """Only spec.clusterIP (the first of clusterIPs) is used, and as written: not re-formatted."""
    webhook.set_objects(*BASE,
                        svc("shop", "dual", "10.96.7.7", (80,), ips=["10.96.7.7", "fd00:10:96::7"]),
                        svc("shop", "odd", "FD00:10:96:0:0:0:0:B", (80,), ips=["FD00:10:96:0:0:0:0:B"]))
    patched, _ = webhook.admit(pod())
    env = dict(env_of(patched))
    assert env["DUAL_SERVICE_HOST"] == "10.96.7.7" and "fd00" not in " ".join(v for n, v in env.items() if "DUAL" in n)
    assert env["ODD_SERVICE_HOST"] == "FD00:10:96:0:0:0:0:B"
    assert env["ODD_PORT"] == "tcp://[FD00:10:96:0:0:0:0:B]:80"


def test_only_services_with_a_cluster_ip_of_the_pods_namespace(webhook):
    """Headless (clusterIP None) and ExternalName services are skipped, and so are other namespaces'
    services (but `kubernetes` of `default`); NodePort and LoadBalancer services have ClusterIPs."""
    webhook.set_objects(*BASE, ns("data"),
                        svc("shop", "search", "None", ("http", 9200, "TCP")),
                        svc("shop", "payments", None, external_name="payments.example.com"),
                        svc("shop", "edge", "10.96.3.3", (80,), type_="LoadBalancer"),
                        svc("shop", "node", "10.96.3.4", (80,), type_="NodePort"),
                        svc("data", "db", "10.96.4.4", (5432,)),
                        svc("default", "other", "10.96.4.5", (80,)))
    patched, _ = webhook.admit(pod())
    prefixes = sorted({n.split("_")[0] for n in names(env_of(patched))})
    assert prefixes == ["EDGE", "KUBERNETES", "NODE"]


def test_kubernetes_service_rules(webhook):
    """getServiceEnvVarMap: `kubernetes` of `default` always; a same-named service of the pod's
    namespace wins when links are on; with enableServiceLinks false only the master one is left."""
    own = svc("shop", "kubernetes", "10.96.8.8", (8080,))
    webhook.set_objects(*BASE, own, svc("shop", "web", "10.96.8.9", (80,)))
    patched, _ = webhook.admit(pod())
    env = dict(env_of(patched))
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.8.8" and "KUBERNETES_SERVICE_PORT_HTTPS" not in env
    assert "WEB_SERVICE_HOST" in env

    patched, response = webhook.admit(pod(links=False))
    assert env_of(patched) == K8S_ENV  # links off: the master service only, and it is the default one
    assert patched["spec"]["enableServiceLinks"] is False
    assert patched["metadata"]["annotations"]["kdns.io/original-enable-service-links"] == "false"

    # a pod in `default` gets `kubernetes` once
    patched, _ = webhook.admit(pod("default"), namespace="default")
    assert names(env_of(patched)).count("KUBERNETES_SERVICE_HOST") == 1


def test_namespace_comes_from_the_request_when_the_object_has_none(webhook):
    webhook.set_objects(*BASE, ns("data"), svc("shop", "web", "10.96.8.9", (80,)), svc("data", "db", "10.96.4.4", (5432,)))
    patched, _ = webhook.admit(pod(namespace=None), namespace="data")
    assert "DB_SERVICE_HOST" in dict(env_of(patched)) and "WEB_SERVICE_HOST" not in dict(env_of(patched))


def test_a_name_clash_between_services_is_deterministic(webhook):
    """`foo` port 80 writes FOO_PORT_80_TCP_PORT=80; a service `foo-port-80-tcp` writes the same
    name (its _PORT). The kubelet's winner depends on Go map order; kdns keeps the first by name."""
    webhook.set_objects(*BASE, svc("shop", "foo", "10.96.1.1", (80,)), svc("shop", "foo-port-80-tcp", "10.96.1.2", (81,)))
    patched, response = webhook.admit(pod())
    env = env_of(patched)
    assert names(env).count("FOO_PORT_80_TCP_PORT") == 1 and dict(env)["FOO_PORT_80_TCP_PORT"] == "80"
    assert any("FOO_PORT_80_TCP_PORT" in w and "shop/foo" in w for w in response["warnings"])


# ---------------------------------------------------------------- containers, user env, JSONPatch


def test_every_container_and_init_container_absent_or_present_env(webhook):
    """A container without env gets `add .../env` with the array; one with env gets inserts in
    front of its own entries; initContainers are treated the same."""
    webhook.set_objects(*BASE)
    obj = pod(containers=[container("bare"), container("withenv", env=[{"name": "MODE", "value": "x"}])],
              init=[container("init", env=[])])
    patched, response = webhook.admit(obj)
    ops = decoded_patch(response)
    assert {"op": "add", "path": "/spec/containers/0/env",
            "value": [{"name": n, "value": v} for n, v in K8S_ENV]} in ops
    assert [op["path"] for op in ops if op["path"].startswith("/spec/containers/1/")] == \
        [f"/spec/containers/1/env/{i}" for i in range(len(K8S_ENV))]
    assert [op["path"] for op in ops if op["path"].startswith("/spec/initContainers/0/")] == \
        [f"/spec/initContainers/0/env/{i}" for i in range(len(K8S_ENV))]
    assert env_of(patched, "containers", 0) == K8S_ENV
    assert env_of(patched, "containers", 1) == K8S_ENV + [("MODE", "x")]
    assert env_of(patched, "initContainers", 0) == K8S_ENV


def test_user_set_names_are_kept_and_warned(webhook):
    """The user wins: a name set in env (value or valueFrom) is never overridden, and a warning
    says so; a name already set to exactly the injected value is left alone silently."""
    webhook.set_objects(*BASE, svc("shop", "redis", "10.96.5.5", (6379,)))
    user = [{"name": "REDIS_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "REDIS_PORT", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "KUBERNETES_SERVICE_HOST", "value": "10.96.0.1"}]
    patched, response = webhook.admit(pod(containers=[container("app", env=user)]))
    env = env_of(patched)
    for name in ("REDIS_SERVICE_HOST", "REDIS_PORT", "KUBERNETES_SERVICE_HOST"):
        assert names(env).count(name) == 1
    assert dict(env)["REDIS_SERVICE_HOST"] == "127.0.0.1"
    assert env[-3:] == [(e["name"], e.get("value")) for e in user]
    assert len(response["warnings"]) == 1
    warning = response["warnings"][0]
    assert warning.startswith("kdns-webhook: container app:")
    assert "REDIS_SERVICE_HOST" in warning and "REDIS_PORT" in warning and "KUBERNETES_SERVICE_HOST" not in warning


def test_patched_env_equals_what_the_kubelet_computes(webhook):
    """The environment each container ends up with (simulated kubelet, patched pod with
    enableServiceLinks now false) equals the one the kubelet would give the original pod: user
    values win, $(VAR) references to service variables still expand because ours come first."""
    services = [*BASE, svc("shop", "redis", "10.96.5.5", (6379,)),
                svc("shop", "web-api", "fd00:10:96::20", ("http", 80, "TCP"), ("grpc", 9000, "TCP")),
                svc("shop", "search", "None", (9200,)), svc("other", "x", "10.96.6.6", (1,))]
    webhook.set_objects(*services)
    obj = pod(containers=[
        container("app", env=[{"name": "REDIS_URL", "value": "redis://$(REDIS_SERVICE_HOST):$(REDIS_SERVICE_PORT)"},
                              {"name": "WEB_API_SERVICE_PORT", "value": "8080"},
                              {"name": "API", "value": "$(WEB_API_PORT)/v1 $$(LITERAL) $(UNKNOWN)"}],
                  envFrom=[{"prefix": "CFG_", "configMapRef": {"name": "settings"}}]),
        container("sidecar")],
        init=[container("migrate", env=[{"name": "DSN", "value": "host=$(REDIS_SERVICE_HOST)"}])])
    config_maps = {"settings": {"LEVEL": "debug"}}
    patched, response = webhook.admit(obj)
    assert pod_env(patched, services, config_maps) == pod_env(obj, services, config_maps)
    app = pod_env(patched, services, config_maps)["containers/app"]
    assert app["REDIS_URL"] == "redis://10.96.5.5:6379"
    assert app["API"] == "tcp://[fd00:10:96::20]:80/v1 $(LITERAL) $(UNKNOWN)"
    assert app["WEB_API_SERVICE_PORT"] == "8080" and app["CFG_LEVEL"] == "debug"
    # and the kubelet adds nothing of its own beyond `kubernetes`, which the pod already sets
    assert patched["spec"]["enableServiceLinks"] is False
    # appended instead of prepended, the references would not expand:
    wrong = pod(containers=[container("app", env=obj["spec"]["containers"][0]["env"]
                                      + [{"name": n, "value": v} for n, v in env_of(patched)
                                         if n.startswith("REDIS_SERVICE")])], links=False)
    assert pod_env(wrong, services)["containers/app"]["REDIS_URL"] == "redis://$(REDIS_SERVICE_HOST):$(REDIS_SERVICE_PORT)"


def test_env_from_is_warned_about(webhook):
    """envFrom keys cannot be known at admission; a container that has envFrom and receives
    variables is warned that a key with an injected name no longer wins (prefixes are honoured)."""
    webhook.set_objects(*BASE)
    obj = pod(containers=[container("plain", envFrom=[{"configMapRef": {"name": "cfg"}}]),
                          container("prefixed", envFrom=[{"prefix": "APP_", "configMapRef": {"name": "cfg"}}]),
                          container("k8s", envFrom=[{"prefix": "KUBERNETES_", "secretRef": {"name": "s"}}])])
    _, response = webhook.admit(obj)
    warnings = response["warnings"]
    assert any("container plain: envFrom" in w for w in warnings)
    assert not any("container prefixed" in w for w in warnings)
    assert any("container k8s: envFrom" in w and "KUBERNETES_SERVICE_HOST" in w for w in warnings)


def test_json_pointer_escaping():
    assert pointer("metadata", "annotations", "kdns.io/original-enable-service-links") == \
        "/metadata/annotations/kdns.io~1original-enable-service-links"
    assert pointer("a~b/c", 0) == "/a~0b~1c/0"


def test_annotation_patch_with_and_without_annotations(webhook):
    webhook.set_objects(*BASE)
    _, response = webhook.admit(pod(annotations={"team": "shop"}))
    assert {"op": "add", "path": "/metadata/annotations/kdns.io~1original-enable-service-links",
            "value": "true"} in decoded_patch(response)
    patched, response = webhook.admit(pod())
    assert {"op": "add", "path": "/metadata/annotations",
            "value": {"kdns.io/original-enable-service-links": "true"}} in decoded_patch(response)
    obj = pod()
    del obj["metadata"]
    patched, _ = webhook.admit(obj)
    assert patched["metadata"] == {"annotations": {"kdns.io/original-enable-service-links": "true"}}


def test_enable_service_links_is_set_false_unless_configured(webhook, certs):
    webhook.set_objects(*BASE)
    patched, _ = webhook.admit(pod())
    assert patched["spec"]["enableServiceLinks"] is False
    patched, _ = webhook.admit(pod(links=True))
    assert patched["spec"]["enableServiceLinks"] is False
    with WebhookThread(certs, Settings(disable_kubelet_links=False), objects=BASE) as keep:
        patched, response = keep.admit(pod())
        assert "enableServiceLinks" not in patched["spec"] and env_of(patched) == K8S_ENV
        assert not any("enableServiceLinks" in op["path"] for op in decoded_patch(response))


def test_no_patch_when_there_is_nothing_to_do(webhook):
    """Links already off and every variable already set: the response carries no patch at all."""
    webhook.set_objects(*BASE)
    obj = pod(containers=[container("app", env=[{"name": n, "value": v} for n, v in K8S_ENV])], links=False)
    patched, response = webhook.admit(obj)
    assert patched == obj and set(response) == {"uid", "allowed"}


# ---------------------------------------------------------------- reinvocation


def test_reinvocation_adds_nothing_twice(webhook):
    webhook.set_objects(*BASE, svc("shop", "redis", "10.96.5.5", (6379,)))
    first, response = webhook.admit(pod(containers=[container("app", env=[{"name": "REDIS_PORT", "value": "x"}])]))
    assert response["warnings"]  # the shadowing is reported once...
    second, response = webhook.admit(first)
    assert second == first
    assert "patch" not in response and "patchType" not in response and "warnings" not in response  # ...not twice


def test_reinvocation_injects_into_a_container_added_meanwhile(webhook):
    """Another webhook adding a sidecar between two calls: only the sidecar gets variables, and it
    gets the namespace's services although spec.enableServiceLinks now reads false (the
    original value is kept in the kdns.io/original-enable-service-links annotation)."""
    webhook.set_objects(*BASE, svc("shop", "redis", "10.96.5.5", (6379,)))
    first, _ = webhook.admit(pod())
    first["spec"]["containers"].append(container("sidecar"))
    second, response = webhook.admit(first)
    assert [op["path"] for op in decoded_patch(response)] == ["/spec/containers/1/env"]
    assert env_of(second, "containers", 1) == env_of(second, "containers", 0)
    assert "REDIS_SERVICE_HOST" in dict(env_of(second, "containers", 1))


# ---------------------------------------------------------------- selection


def test_opt_out_by_annotation(webhook):
    webhook.set_objects(*BASE)
    patched, response = webhook.admit(pod(annotations={"kdns.io/service-links": "false"}))
    assert "patch" not in response
    assert "opted out by pod annotation kdns.io/service-links=false" in response["status"]["message"]
    assert "warnings" not in response


def test_opt_in_by_namespace_label_or_pod_annotation(certs):
    objects = [*BASE, ns("in", **{"kdns.io/service-links": "true"}), ns("out", **{"kdns.io/service-links": "false"})]
    with WebhookThread(certs, Settings(require_opt_in=True), objects=objects) as server:
        _, response = server.admit(pod(), namespace="shop")
        assert "patch" not in response and "not opted in" in response["status"]["message"]
        patched, _ = server.admit(pod("in"), namespace="in")
        assert env_of(patched) == K8S_ENV
        patched, _ = server.admit(pod(annotations={"kdns.io/service-links": "true"}))
        assert env_of(patched) == K8S_ENV
        patched, _ = server.admit(pod(annotations={"kdns.io/services": ""}))
        assert env_of(patched) == K8S_ENV
        # the pod's annotation beats the namespace's label, both ways
        _, response = server.admit(pod("in", annotations={"kdns.io/service-links": "false"}), namespace="in")
        assert "patch" not in response
        patched, _ = server.admit(pod("out", annotations={"kdns.io/service-links": "true"}), namespace="out")
        assert env_of(patched) == K8S_ENV
        # a value that is neither true nor false is reported and ignored
        _, response = server.admit(pod(annotations={"kdns.io/service-links": "yes"}))
        assert "patch" not in response
        assert any("kdns.io/service-links: expected \"true\" or \"false\", got 'yes'" in w for w in response["warnings"])
    # without --require-opt-in every pod sent is mutated, but a namespace labelled false is not
    with WebhookThread(certs, objects=objects) as server:
        patched, _ = server.admit(pod())
        assert env_of(patched) == K8S_ENV
        _, response = server.admit(pod("out"), namespace="out")
        assert "patch" not in response and "namespace label" in response["status"]["message"]


def test_services_annotation_lists_services_across_namespaces(webhook):
    webhook.set_objects(*BASE, ns("payments"), ns("data"),
                        svc("shop", "redis", "10.96.5.5", (6379,)), svc("shop", "db", "10.96.5.6", (5432,)),
                        svc("shop", "web", "10.96.5.7", (80,)), svc("payments", "api", "10.96.9.1", (443,)),
                        svc("data", "db", "10.96.9.2", (5432,)))
    patched, response = webhook.admit(pod(annotations={"kdns.io/services": " redis, db ,payments/api"}))
    env = env_of(patched)
    assert [n for n in names(env) if n.endswith("_SERVICE_HOST")] == \
        ["KUBERNETES_SERVICE_HOST", "REDIS_SERVICE_HOST", "DB_SERVICE_HOST", "API_SERVICE_HOST"]
    assert dict(env)["API_SERVICE_HOST"] == "10.96.9.1" and dict(env)["DB_SERVICE_HOST"] == "10.96.5.6"
    assert "warnings" not in response
    # a listed service replaces the namespace-wide set even where enableServiceLinks is false
    patched, _ = webhook.admit(pod(annotations={"kdns.io/services": "data/db"}, links=False))
    assert dict(env_of(patched))["DB_SERVICE_HOST"] == "10.96.9.2"


def test_services_annotation_clash_and_problems(webhook):
    webhook.set_objects(*BASE, ns("data"), svc("shop", "db", "10.96.5.6", (5432,)), svc("data", "db", "10.96.9.2", (5432,)),
                        svc("shop", "search", "None", (9200,)),
                        svc("shop", "ext", None, external_name="example.com"),
                        svc("shop", "kubernetes", "10.96.8.8", (8080,)))
    annotation = "data/db,db,missing,search,ext,Bad_Name,a/b/c,kubernetes"
    patched, response = webhook.admit(pod(annotations={"kdns.io/services": annotation}))
    env = dict(env_of(patched))
    assert env["DB_SERVICE_HOST"] == "10.96.9.2"  # listed first wins
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.8.8"  # the listed one, not default's
    assert sorted(n.split("_")[0] for n in env if n.endswith("_SERVICE_HOST")) == ["DB", "KUBERNETES"]
    text = "\n".join(response["warnings"])
    assert "shop/db skipped: its variables DB_* clash with data/db, listed first" in text
    assert "service shop/missing not found" in text
    assert "shop/search is headless" in text
    assert "shop/ext is an ExternalName service" in text
    assert "'Bad_Name' is not a service name" in text and "'a/b/c' is not a service name" in text


# ---------------------------------------------------------------- budget


def _env_bytes(env) -> int:
    return sum(len(n) + len(v or "") + 2 for n, v in env)


def _whole_services_within(services: list[dict], budget: int) -> list[dict]:
    """The leading services whose variables, as the kubelet writes them (model_kubelet, not the
    webhook's code), fit whole in `budget` bytes (name, value and 2 bytes each)."""
    fitting, used = [], 0
    for service in services:
        size = _env_bytes(from_services([service]))
        if used + size > budget:
            break
        fitting.append(service)
        used += size
    return fitting


def test_budget_cuts_whole_services_and_warns(certs):
    services = [svc("shop", f"svc-{i:02d}", f"10.96.1.{i}", (80,)) for i in range(20)]
    expected = _whole_services_within([KUBERNETES, *services], 2048)
    assert 1 < len(expected) < 21  # the budget cuts somewhere in the list, not at either end
    with WebhookThread(certs, Settings(budget=2048), objects=[*BASE, *services]) as server:
        patched, response = server.admit(pod(containers=[container("a"), container("b", env=[])]))
        env = env_of(patched)
        # the master service, then svc-00, svc-01... while whole services fit: the kubelet's variables for them
        assert env == from_services(expected)
        assert env_of(patched, "containers", 1) == env
        [warning] = response["warnings"]
        assert "budget of 2048 bytes per container reached" in warning
        assert f"{21 - len(expected)} of 21 services" in warning
        assert server.metric("kdns_webhook_budget_exceeded_total") == 1


def test_pod_budget_is_shared_between_containers(certs):
    services = [svc("shop", f"svc-{i:02d}", f"10.96.1.{i}", (80,)) for i in range(20)]
    expected = _whole_services_within([KUBERNETES, *services], 4096 // 4)
    assert 1 < len(expected) < 21
    with WebhookThread(certs, Settings(budget=64 * 1024, pod_budget=4096), objects=[*BASE, *services]) as server:
        patched, response = server.admit(pod(containers=[container(f"c{i}") for i in range(4)]))
        for i in range(4):
            assert env_of(patched, "containers", i) == from_services(expected)
        assert "budget of 1024 bytes per container" in response["warnings"][0]


def test_thousands_of_services_do_not_break_pod_start(certs):
    """kubernetes/kubernetes#92615: 1000+ services made the kubelet's env too big to exec. Here
    3000 services are cut to the 64 KiB default, and the kubelet's own copy is turned off (how fast
    that is belongs in perf/)."""
    services = [svc("big", f"service-number-{i:04d}", f"10.97.{i // 250}.{i % 250 + 1}", ("http", 80, "TCP"),
                    ("metrics", 9090, "TCP")) for i in range(3000)]
    with WebhookThread(certs, objects=[*BASE, ns("big"), *services]) as server:
        patched, response = server.admit(pod("big", containers=[container("a"), container("b")]), namespace="big")
        for i in range(2):
            assert 60 * 1024 < _env_bytes(env_of(patched, "containers", i)) <= 64 * 1024
        assert patched["spec"]["enableServiceLinks"] is False
        assert "services (" in response["warnings"][0] and "not injected" in response["warnings"][0]
