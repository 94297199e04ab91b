"""Every way `kdns-webhook serve` start-up can fail, through the real console script: one structured
log line naming the input and the fix, the documented exit status, never a traceback or a signal."""

from __future__ import annotations

import re

import pytest

from apiserver import FakeApiServer, namespace, service, write_kubeconfig
from harness import EXAMPLE
from startup_harness import DROP_NET_BIND_SERVICE, dead_port, failure, held_port, run_script, running
from webhook_harness import Client


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    proc = run_script("kdns-webhook", "gen-certs", "--service", "kdns-webhook", "--namespace", "kdns-system",
                      "--out", str(out), "--host", "127.0.0.1")
    assert proc.returncode == 0, proc.stderr
    return out


def serve(certs, *args: str, prefix: tuple = ()):
    return run_script("kdns-webhook", "serve", "--tls-cert", str(certs / "tls.crt"), "--tls-key",
                      str(certs / "tls.key"), *args, prefix=prefix)


@pytest.mark.parametrize("args, field, reason", [
    (["--manifests", EXAMPLE, "--budget", "lots"], "--budget", "expected a size such as 65536"),
    (["--manifests", EXAMPLE, "--request-timeout", "soon"], "--request-timeout",
     "expected a number above 0, got 'soon'"),
    (["--manifests", EXAMPLE, "--nope"], "--nope", "unrecognized arguments: --nope"),
    (["--manifests", "/nonexistent/services.yaml"], "--manifests", "/nonexistent/services.yaml: cannot read"),
    (["--manifests", EXAMPLE, "--listen", "127.0.0.1:70000"], "--listen", "out of range"),
])
def test_bad_flags_exit_2(certs, args, field, reason):
    line = failure(serve(certs, "--listen", "127.0.0.1:0", *args), 2, "bad_config")
    assert f"field={field} " in line and reason in line, line


def test_required_flag_missing():
    line = failure(run_script("kdns-webhook", "serve", "--manifests", EXAMPLE), 2, "bad_config")
    assert "field=--tls-cert" in line and "the following arguments are required: --tls-cert, --tls-key" in line


def test_tls_pair_that_does_not_match(certs, tmp_path):
    other = tmp_path / "other"
    assert run_script("kdns-webhook", "gen-certs", "--service", "x", "--namespace", "y", "--out", str(other)
                      ).returncode == 0
    proc = run_script("kdns-webhook", "serve", "--tls-cert", str(certs / "tls.crt"), "--tls-key",
                      str(other / "tls.key"), "--manifests", EXAMPLE, "--listen", "127.0.0.1:0")
    line = failure(proc, 2, "bad_config")
    assert "field=--tls-cert/--tls-key" in line and "kdns-webhook gen-certs" in line


def test_kubeconfig_that_is_not_yaml(certs, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: v1\n: : bad\n")
    line = failure(serve(certs, "--kubeconfig", str(path), "--listen", "127.0.0.1:0"), 2, "bad_config")
    assert "field=--kubeconfig" in line and "broken.yaml: line 2, column 1: invalid YAML" in line


def test_port_taken(certs):
    holder = held_port()
    port = holder.getsockname()[1]
    try:
        line = failure(serve(certs, "--manifests", EXAMPLE, "--listen", f"127.0.0.1:{port}"), 1, "listen_failed")
    finally:
        holder.close()
    assert f"address=127.0.0.1:{port}" in line and "already in use" in line


def test_port_443_without_net_bind_service(certs):
    line = failure(serve(certs, "--manifests", EXAMPLE, "--listen", "127.0.0.1:443", prefix=DROP_NET_BIND_SERVICE),
                   1, "listen_failed")
    assert "port 443 is below" in line and "lacks CAP_NET_BIND_SERVICE" in line


@pytest.mark.parametrize("token, forbid, expect", [
    ("wrong-token", None, "status=401"),
    (None, "Namespace", 'missing="list namespaces"'),
])
def test_api_refuses_exits_3(certs, tmp_path, token, forbid, expect):
    with FakeApiServer() as api:
        api.apply(namespace("default"))
        api.apply(service("default", "kubernetes", "10.96.0.1"))
        if forbid:
            api.forbid(forbid, user="system:serviceaccount:kdns-system:kdns-webhook")
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token=token or api.token)
        line = failure(serve(certs, "--kubeconfig", kubeconfig, "--listen", "127.0.0.1:0"), 3, "api_refused")
    assert expect in line, line
    if forbid:
        assert "grant system:serviceaccount:kdns-system:kdns-webhook list and watch on namespaces" in line
        assert "see deploy/webhook/base/rbac.yaml" in line


def test_api_unreachable_is_not_ready_and_keeps_running(certs, tmp_path):
    server = f"http://127.0.0.1:{dead_port()}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server, token="t")
    with running("kdns-webhook", "serve", "--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key"),
                 "--kubeconfig", kubeconfig, "--listen", "127.0.0.1:0", "--api-backoff-max", "0.2",
                 "--log-level", "debug") as proc:
        line = proc.wait_for_log(r"INFO listening ", timeout=20)
        client = Client(int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1)), str(certs / "ca.crt"))
        line = proc.wait_for_log(r"WARNING api_disconnected resource=", timeout=20)
        assert f"server={server}" in line and "retries with backoff" in line, line
        mark = len(proc.lines)
        proc.wait_for_log(r"DEBUG api_retry_failed resource=.*Connection refused", timeout=20, start=mark)
        status, body = client.request("GET", "/readyz")
        assert status == 503 and b"not ready" in body
