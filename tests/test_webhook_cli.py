"""`kdns-webhook` as a user runs it: gen-certs, then serve (as a subprocess) from manifests or a
cluster's API (the API double), with live changes, certificate rotation, bad configuration, and
the README's example round trip."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import pytest
from cryptography import x509

from apiserver import FakeApiServer, write_kubeconfig
from webhook_harness import ROOT, WebhookProcess, decoded_patch, env_of, ns, pod, svc, wait_until

FAST = ("--cert-check-interval", "0.1", "--poll-interval", "0.05")


def gen_certs(out, *extra: str) -> tuple[subprocess.CompletedProcess, object]:
    proc = subprocess.run([sys.executable, "-m", "webhook", "gen-certs", "--service", "kdns-webhook",
                           "--namespace", "kdns-system", "--out", str(out), "--host", "127.0.0.1", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr

    class Made:  # the paths WebhookProcess needs
        ca_cert = os.path.join(out, "ca.crt")
        tls_cert = os.path.join(out, "tls.crt")
        tls_key = os.path.join(out, "tls.key")
    return proc, Made


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return gen_certs(tmp_path_factory.mktemp("certs"))[1]


def write_yaml(path, *objects) -> None:
    tmp = f"{path}.tmp~"
    with open(tmp, "w") as fh:
        fh.write("\n---\n".join(json.dumps(o) for o in objects))  # JSON is YAML
    os.replace(tmp, path)


def test_gen_certs_prints_the_ca_bundle(tmp_path):
    proc, made = gen_certs(tmp_path / "c")
    with open(made.ca_cert, "rb") as fh:
        assert proc.stdout.strip() == base64.b64encode(fh.read()).decode()
    assert "kdns-webhook.kdns-system.svc" in proc.stderr and "127.0.0.1" in proc.stderr
    again, _ = gen_certs(tmp_path / "c")
    assert again.stdout == proc.stdout and "reused CA" in again.stderr
    renewed, _ = gen_certs(tmp_path / "c", "--new-ca")
    assert renewed.stdout != proc.stdout


def test_serve_from_manifests_follows_edits(tmp_path, certs):
    cluster = tmp_path / "cluster.yaml"
    write_yaml(cluster, ns("shop"), svc("default", "kubernetes", "10.96.0.1", ("https", 443, "TCP")))
    with WebhookProcess(certs, "--manifests", str(cluster), *FAST) as hook:
        assert hook.request("GET", "/readyz") == (200, b"ok\n")
        assert hook.request("GET", "/healthz") == (200, b"ok\n")
        patched, _ = hook.admit(pod())
        assert [n for n, _ in env_of(patched)][0] == "KUBERNETES_SERVICE_HOST"
        write_yaml(cluster, ns("shop"), svc("default", "kubernetes", "10.96.0.1", ("https", 443, "TCP")),
                   svc("shop", "cart", "FD00:10:96::C", (8080,)))
        got = wait_until(lambda: dict(env_of(hook.admit(pod())[0])).get("CART_PORT"), timeout=5, what="edit served")
        assert got == "tcp://[FD00:10:96::C]:8080"  # spec.clusterIP as written, through kdns's manifest source
        assert hook.wait_for_log(r"admission uid=uid-\d+ pod=shop/p outcome=mutated injected=15")


def test_serve_from_the_api(tmp_path, certs):
    with FakeApiServer() as api:
        api.apply(ns("default"))
        api.apply(ns("shop"))
        api.apply(svc("default", "kubernetes", "10.96.0.1", ("https", 443, "TCP")))
        api.apply(svc("shop", "db", "10.96.5.6", ("pg", 5432, "TCP")))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token=api.token)
        api.set_down(True)
        with WebhookProcess(certs, "--kubeconfig", kubeconfig, "--api-backoff-max", "0.2", *FAST) as hook:
            # API unreachable: not ready, and pods are allowed unchanged (fail open) with a warning
            status, text = hook.request("GET", "/readyz")
            assert status == 503 and b"waiting for the first list" in text
            _, response = hook.admit(pod())
            assert "patch" not in response and "not synced" in response["warnings"][0]
            api.set_down(False)
            wait_until(lambda: hook.request("GET", "/readyz")[0] == 200, timeout=10, what="ready")
            patched, _ = hook.admit(pod())
            assert dict(env_of(patched))["DB_SERVICE_PORT_PG"] == "5432"
            # a service created later arrives by watch; a namespace label opting out, too
            api.apply(svc("shop", "cache", "fd00:10:96:0:0:0:0:7", (6379,)))
            wait_until(lambda: "CACHE_SERVICE_HOST" in dict(env_of(hook.admit(pod())[0])), timeout=5, what="watch")
            assert dict(env_of(hook.admit(pod())[0]))["CACHE_SERVICE_HOST"] == "fd00:10:96:0:0:0:0:7"
            api.apply(ns("shop", **{"kdns.io/service-links": "false"}))
            wait_until(lambda: "patch" not in hook.admit(pod())[1], timeout=5, what="namespace label")
            assert hook.metric("kdns_webhook_admissions_total", outcome="unsynced") == 1


def test_certificate_rotation_in_a_running_server(tmp_path):
    _, made = gen_certs(tmp_path / "tls")
    with WebhookProcess(made, "--manifests", os.path.join(ROOT, "examples", "cluster.yaml"), *FAST) as hook:
        before = x509.load_der_x509_certificate(hook.peer_certificate()).serial_number
        mark = len(hook.lines)
        gen_certs(tmp_path / "tls")  # same CA, new serving certificate, written over the old files
        hook.wait_for_log(r"cert_reloaded serial=", timeout=5, start=mark)
        after = x509.load_der_x509_certificate(hook.peer_certificate()).serial_number
        with open(made.tls_cert, "rb") as fh:
            assert after != before and after == x509.load_pem_x509_certificate(fh.read()).serial_number
        assert hook.admit(pod())[1]["allowed"]


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "/nonexistent/tls.crt", "--tls-key", "/nonexistent/tls.key", "--manifests", "x"],
     "--tls-cert /nonexistent/tls.crt: No such file or directory"),
    (["--tls-cert", "{cert}", "--tls-key", "{cert}", "--manifests", "x"], "not a PEM private key"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}"], "no source of services"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--manifests", "x", "--kubeconfig", "y"], "give either"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--kubeconfig", "/nonexistent"], "bad_config field=--kubeconfig"),
    (["--tls-cert", "{cert}", "--tls-key", "{key}", "--manifests", "x", "--listen", "nope"], "expected HOST:PORT"),
])
def test_bad_configuration_exits_2_with_a_message(certs, args, message):
    args = [a.format(cert=certs.tls_cert, key=certs.tls_key) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    proc = subprocess.run([sys.executable, "-m", "webhook", "serve", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env=env)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_readme_example_round_trip(certs):
    """webhook/README.md's example request, sent to `serve --manifests examples/cluster.yaml`,
    gets exactly the decoded patch the README shows."""
    with open(os.path.join(ROOT, "webhook", "README.md")) as fh:
        text = fh.read()
    blocks = {name: json.loads(body) for name, body in
              re.findall(r"<!-- example-(request|patch) -->\n```json\n(.*?)\n```", text, re.S)}
    with WebhookProcess(certs, "--manifests", os.path.join(ROOT, "examples", "cluster.yaml")) as hook:
        response = hook.post_review(blocks["request"])
    assert response["uid"] == blocks["request"]["request"]["uid"] and response["allowed"] is True
    assert decoded_patch(response) == blocks["patch"]
    assert response["patch"].startswith(re.search(r'"patch": "(\w+)…"', text).group(1))
