"""Every way `kdns` start-up can fail, run through the real console script: one structured log line
naming the input and the fix, the documented exit status, never a traceback or a signal."""

from __future__ import annotations

import io
import json
import re
import subprocess
import urllib.error
import urllib.request

import pytest
import trustme

from apiserver import FakeApiServer, endpointslice, namespace, service, write_kubeconfig
from harness import EXAMPLE
from startup_harness import DROP_NET_BIND_SERVICE, ENV, dead_port, failure, held_port, run_script, running


def run(*args: str, env: dict | None = None, timeout: float = 60, prefix: tuple = ()) -> subprocess.CompletedProcess:
    return run_script("kdns", *args, env=env, timeout=timeout, prefix=prefix)


def seeded_api(api: FakeApiServer) -> None:
    api.apply(namespace("default"))
    for i in range(20):
        api.apply(service("default", f"s{i}", f"10.96.0.{i + 10}"))
    api.apply(endpointslice("default", "s1", "s1-a", "10.244.0.5"))


# ------------------------------------------------------------------------------ the issue's two cases


def test_kubeconfig_that_is_not_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: v1\n: : bad\n")
    line = failure(run("serve", "--kubeconfig", str(path), "--listen", "127.0.0.1:0"), 2, "bad_config")
    assert "field=--kubeconfig" in line
    assert re.search(r'reason=".*broken\.yaml: line 2, column 1: invalid YAML: ', line), line


def test_listener_taken_while_the_api_source_runs_exits_1_not_abort(tmp_path):
    """Before: listen_failed, then SIGABRT (exit -6) from reflector threads alive at interpreter
    shutdown, about every second run. Now the listeners are bound before any thread starts."""
    holder = held_port()
    port = holder.getsockname()[1]
    try:
        with FakeApiServer() as api:
            seeded_api(api)
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token=api.token)
            corefile = tmp_path / "Corefile"
            corefile.write_text(f".:53 {{\n  kubernetes cluster.local {{\n    kubeconfig {kubeconfig}\n  }}\n"
                                f"  ready 127.0.0.1:0\n  prometheus 127.0.0.1:{port}\n}}\n")
            for _ in range(3):
                proc = run("-conf", str(corefile), "--bind", "127.0.0.1", "--port-map", "53=0")
                line = failure(proc, 1, "listen_failed")
                assert f"address=127.0.0.1:{port} listener=/metrics" in line
                assert f'reason="port {port} is already in use"' in line
            assert sum(api.list_count.values()) == 0  # no reflector ever ran
    finally:
        holder.close()


def test_two_listeners_on_one_port_is_a_config_error_and_check_config_says_where(tmp_path):
    corefile = tmp_path / "Corefile"
    corefile.write_text(f".:53 {{\n  kubernetes cluster.local {{\n    manifests {EXAMPLE}\n  }}\n"
                        "  ready 127.0.0.1:8999\n  prometheus 127.0.0.1:8999\n}\n")
    line = failure(run("-conf", str(corefile), "--bind", "127.0.0.1"), 2, "bad_config")
    assert f"file={corefile} line=6 column=3" in line and "port 8999 is also used by ready" in line
    check = run("check-config", str(corefile))
    assert check.returncode == 1
    assert check.stderr.startswith(f"{corefile}:6:3: prometheus: port 8999 is also used by ready"), check.stderr
    corefile.write_text(".:8080 {\n  health :8080\n}\n")  # a DNS port and an HTTP port
    check = run("check-config", str(corefile))
    assert check.returncode == 1 and f"{corefile}:2:3: health: port 8080 is also used by dns://:8080" in check.stderr


def test_two_flags_on_one_port(tmp_path):
    line = failure(run("serve", "--manifests", EXAMPLE, "--listen", "127.0.0.1:0", "--ready-listen", "127.0.0.1:5399",
                       "--metrics-listen", ":5399"), 2, "bad_config")
    assert "field=--metrics-listen" in line and "port 5399 is also given to --ready-listen" in line


# ------------------------------------------------------------------------------ ports


def test_dns_port_taken(tmp_path):
    holder = held_port()
    port = holder.getsockname()[1]
    try:
        line = failure(run("serve", "--manifests", EXAMPLE, "--listen", f"127.0.0.1:{port}"), 1, "listen_failed")
    finally:
        holder.close()
    assert f"address=127.0.0.1:{port} listener=dns://:{port}" in line and "already in use" in line
    assert f"ss -lntup 'sport = :{port}'" in line


def test_port_taken_with_workers_is_still_one_line():
    holder = held_port()
    port = holder.getsockname()[1]
    try:
        proc = run("serve", "--manifests", EXAMPLE, "--listen", f"127.0.0.1:{port}", "--workers", "2")
        line = failure(proc, 1, "listen_failed")
    finally:
        holder.close()
    assert f"address=127.0.0.1:{port}" in line and "already in use" in line


def test_port_53_without_net_bind_service_says_so():
    """Root without CAP_NET_BIND_SERVICE (dropped from the bounding set, as a pod without the
    capability runs) cannot bind port 53: the line says which capability is missing."""
    drop = DROP_NET_BIND_SERVICE
    line = failure(run("serve", "--manifests", EXAMPLE, "--listen", "127.0.0.1:53", prefix=drop), 1, "listen_failed")
    assert "address=127.0.0.1:53" in line and "lacks CAP_NET_BIND_SERVICE" in line
    assert "NET_BIND_SERVICE" in line.split("fix=")[1] and "--port-map 53=5353" in line
    line = failure(run("serve", "--manifests", EXAMPLE, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:80",
                       prefix=drop), 1, "listen_failed")
    assert "listener=/health" in line and "port 80 is below" in line


def test_address_not_on_this_host():
    line = failure(run("serve", "--manifests", EXAMPLE, "--listen", "192.0.2.1:5353"), 1, "listen_failed")
    assert "192.0.2.1 is not an address of this host" in line
    line = failure(run("serve", "--manifests", EXAMPLE, "--listen", "nope.invalid:5353"), 2, "listen_failed")
    assert "cannot resolve 'nope.invalid'" in line and "give an IP address" in line


# ------------------------------------------------------------------------------ flags and files


@pytest.mark.parametrize("args, field, reason", [
    (["serve", "--manifests", EXAMPLE, "--ttl", "x"], "--ttl", "expected a number 0-3600"),
    (["serve", "--manifests", EXAMPLE, "--ttl", "9999"], "--ttl", "ttl must be between 0 and 3600"),
    (["serve", "--manifests", EXAMPLE, "--bogus"], "--bogus", "unrecognized arguments: --bogus"),
    (["serve", "--manifests", EXAMPLE, "--pods", "all"], "--pods", "invalid choice: 'all'"),
    (["serve", "--manifests", EXAMPLE, "--listen", "127.0.0.1:x"], "--listen", "expected HOST:PORT"),
    (["serve", "--manifests", EXAMPLE, "--metrics-listen", "127.0.0.1:99999"], "--metrics-listen", "port 0-65535"),
    (["serve", "--manifests", EXAMPLE, "--labels", "a in (b"], "--labels/--namespace-labels", ""),
    (["serve", "--manifests", EXAMPLE, "--upstream", "10.0.0.1:x"], "--upstream", "expected HOST:PORT or none"),
    (["serve", "--manifests", EXAMPLE, "--workers", "0"], "--workers", "expected a whole number 1 or more, got '0'"),
    (["serve", "--manifests", EXAMPLE, "--poll-interval", "-1"], "--poll-interval", "expected a number above 0"),
    (["serve", "--manifests", EXAMPLE, "--tcp-max-connections", "0"], "--tcp-max-connections", "1 or more"),
    (["serve", "--manifests", EXAMPLE, "--stats-interval", "nan"], "--stats-interval", "expected a number above 0"),
    (["-conf", "Corefile", "-dns.port", "70000"], "--dns-port", "at most 65535, got '70000'"),
    (["serve", "--listen", "127.0.0.1:0"], "--manifests", "no cluster source"),
    (["serve", "--manifests", "/nonexistent/cluster.yaml"], "--manifests",
     "/nonexistent/cluster.yaml: cannot read: No such file or directory"),
    (["-conf", "Corefile", "--port-map", "53"], "--port-map", "expected FROM=TO"),
])
def test_bad_flags_exit_2(args, field, reason):
    if args[0] == "serve" and "--listen" not in args:
        args = [*args, "--listen", "127.0.0.1:0"]  # were the flag accepted, never take a fixed port
    line = failure(run(*args, timeout=30), 2, "bad_config")
    assert f"field={field} " in line or f'field="{field}" ' in line, line
    assert reason in line


def test_bad_flag_in_json_logs():
    proc = run("serve", "--manifests", EXAMPLE, "--ttl", "x", "--log-format", "json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    record = json.loads(proc.stderr.strip())
    assert record["level"] == "error" and record["event"] == "bad_config" and record["field"] == "--ttl"


def test_corefile_unreadable_or_not_text(tmp_path):
    line = failure(run("-conf", str(tmp_path / "missing")), 2, "bad_config")
    assert f"file={tmp_path / 'missing'} line=0 column=0" in line and "No such file or directory" in line
    line = failure(run("-conf", str(tmp_path)), 2, "bad_config")
    assert "Is a directory" in line
    binary = tmp_path / "Corefile"
    binary.write_bytes(b".:53 {\n  whoami\n}\n\xff\xfe\n")
    line = failure(run("-conf", str(binary)), 2, "bad_config")
    assert f"file={binary} line=4" in line and "not UTF-8 text" in line


def test_corefile_manifests_path_missing(tmp_path):
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n  kubernetes cluster.local {\n    manifests /nonexistent/dir\n  }\n}\n")
    line = failure(run("-conf", str(corefile), "--port-map", "53=0"), 2, "bad_config")
    assert f'field="{corefile} kubernetes manifests"' in line and "/nonexistent/dir: cannot read" in line


def test_a_broken_manifest_is_not_a_startup_failure(tmp_path):
    """Documented: a file that exists but is broken is logged with file:line and the rest served."""
    (tmp_path / "bad.yaml").write_text("kind: Service\n  bad: [\n")
    with running("kdns", "serve", "--manifests", str(tmp_path), "--listen", "127.0.0.1:0", errors=True) as proc:
        proc.wait_for_log(r"manifest_error file=.*bad\.yaml line=2", timeout=20)
        proc.wait_for_log(r"INFO listening ", timeout=20)


# ------------------------------------------------------------------------------ kubeconfig, token, CA, TLS


def _kubeconfig(path, cluster: dict, user: dict) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


def test_kubeconfig_problems(tmp_path):
    ca = trustme.CA()
    other = trustme.CA().issue_cert("x")
    mine = ca.issue_cert("kdns")
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    cert.write_bytes(mine.cert_chain_pems[0].bytes())
    key.write_bytes(other.private_key_pem.bytes())  # not the certificate's key
    server = {"server": "https://127.0.0.1:6443"}
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    cases = [
        (str(tmp_path / "missing.yaml"), "missing.yaml: cannot read: No such file or directory"),
        (str(tmp_path / "list.yaml"), "list.yaml: not a kubeconfig: the document is a list"),
        (_kubeconfig(tmp_path / "noserver.yaml", {}, {"token": "t"}), "no usable API server URL"),
        (_kubeconfig(tmp_path / "ca.yaml", {**server, "certificate-authority": str(cert.parent / "nope.crt")},
                     {"token": "t"}), "nope.crt"),
        (_kubeconfig(tmp_path / "cadata.yaml", {**server, "certificate-authority-data": "bm90IGEgY2VydA=="},
                     {"token": "t"}), "certificate authority (inline -data in the kubeconfig): not usable PEM"),
        (_kubeconfig(tmp_path / "pair.yaml", server, {"client-certificate": str(cert), "client-key": str(key)}),
         f"client certificate {cert} and key {key}: not usable PEM (KEY_VALUES_MISMATCH)"),
        (_kubeconfig(tmp_path / "tokenfile.yaml", server, {"tokenFile": str(tmp_path / "no-token")}), "no-token"),
    ]
    for path, reason in cases:
        line = failure(run("serve", "--kubeconfig", path, "--listen", "127.0.0.1:0"), 2, "bad_config")
        assert "field=--kubeconfig" in line and reason in line, (path, line)


def test_corefile_endpoint_tls_files(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    corefile = tmp_path / "Corefile"
    for files, reason in [(f"{junk} {junk} {tmp_path}/missing-ca.crt", "missing-ca.crt: cannot read: No such file"),
                          (f"{junk} {junk} {junk}", f"certificate authority {junk}: not usable PEM")]:
        corefile.write_text(".:53 {\n  kubernetes cluster.local {\n    endpoint https://127.0.0.1:6443\n"
                            f"    tls {files}\n  }}\n}}\n")
        line = failure(run("-conf", str(corefile), "--port-map", "53=0", "--bind", "127.0.0.1"), 2, "bad_config")
        assert f'field="{corefile} kubernetes"' in line and reason in line, line


def test_wrong_context_names_it(tmp_path):
    path = _kubeconfig(tmp_path / "k.yaml", {"server": "https://127.0.0.1:6443"}, {"token": "t"})
    line = failure(run("serve", "--kubeconfig", path, "--context", "prod", "--listen", "127.0.0.1:0"), 2,
                   "bad_config")
    assert "prod" in line and "kubectl config get-contexts" in line


def test_in_cluster_problems(tmp_path):
    line = failure(run("serve", "--in-cluster", "--listen", "127.0.0.1:0"), 2, "bad_config")
    assert "field=--in-cluster" in line and "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set" in line
    pod_env = dict(ENV, KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT="6443")
    sa = tmp_path / "sa"
    sa.mkdir()
    args = ("serve", "--serviceaccount-dir", str(sa), "--listen", "127.0.0.1:0")  # in a pod: the default source
    line = failure(run(*args, env=pod_env), 2, "bad_config")
    assert f"{sa}/token: cannot read: No such file or directory" in line and "automountServiceAccountToken" in line
    (sa / "token").write_text("")
    assert f"{sa}/token: empty" in failure(run(*args, env=pod_env), 2, "bad_config")
    (sa / "token").write_text("a-token")
    assert f"{sa}/ca.crt: cannot read" in failure(run(*args, env=pod_env), 2, "bad_config")
    (sa / "ca.crt").write_text("not a certificate\n")
    line = failure(run(*args, env=pod_env), 2, "bad_config")
    assert f"certificate authority {sa}/ca.crt: not usable PEM" in line


# ------------------------------------------------------------------------------ the API refuses or is away


def test_api_rejects_the_token_exits_3(tmp_path):
    with FakeApiServer() as api:
        seeded_api(api)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token="stale-token")
        line = failure(run("serve", "--kubeconfig", kubeconfig, "--listen", "127.0.0.1:0"), 3, "api_refused")
    assert "status=401" in line and f"server={api.url}" in line and "does not accept the credentials" in line
    assert f"credentials=\"kubeconfig {kubeconfig}\"" in line


@pytest.mark.parametrize("kind, verbs, missing", [
    ("EndpointSlice", ("list", "watch"), "list endpointslices.discovery.k8s.io"),
    ("Service", ("watch",), "watch services"),
])
def test_api_forbids_a_resource_exits_3_naming_the_rbac_rule(tmp_path, kind, verbs, missing):
    with FakeApiServer() as api:
        seeded_api(api)
        api.forbid(kind, *verbs)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token=api.token)
        line = failure(run("serve", "--kubeconfig", kubeconfig, "--listen", "127.0.0.1:0"), 3, "api_refused")
    assert "status=403" in line and f'missing="{missing}"' in line, line
    resource, _, group = missing.split()[1].partition(".")
    assert (f'grant system:serviceaccount:kube-system:kdns list and watch on {missing.split()[1]} '
            f'(ClusterRole rule apiGroups: [\\"{group}\\"], resources: [\\"{resource}\\"]') in line, line


def test_api_unreachable_keeps_retrying_not_ready_and_stops_cleanly(tmp_path):
    dead = dead_port()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{dead}", token="t")
    with running("kdns", "serve", "--kubeconfig", kubeconfig, "--listen", "127.0.0.1:0", "--ready-listen",
                 "127.0.0.1:0", "--api-backoff-max", "0.2", "--log-level", "debug") as proc:
        line = proc.wait_for_log(r"INFO listening ", timeout=20)
        ready = int(re.search(r"ready=127\.0\.0\.1:(\d+)", line).group(1))
        line = proc.wait_for_log(r"WARNING api_disconnected resource=", timeout=20)
        assert f"server=http://127.0.0.1:{dead}" in line and "retries with backoff" in line, line
        for _ in range(3):  # retrying, not exiting
            mark = len(proc.lines)
            proc.wait_for_log(r"DEBUG api_retry_failed resource=.*Connection refused", timeout=20, start=mark)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ready}/ready", timeout=5)
            raise AssertionError("/ready answered 200 with the API unreachable")
        except urllib.error.HTTPError as err:
            assert err.code == 503 and "kubernetes" in err.read().decode()


def test_sigterm_while_following_the_api_exits_0(tmp_path):
    """Reflector threads blocked in a watch at shutdown never turn into SIGABRT."""
    with FakeApiServer() as api:
        seeded_api(api)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token=api.token)
        for _ in range(3):
            with running("kdns", "serve", "--kubeconfig", kubeconfig, "--listen", "127.0.0.1:0") as proc:
                proc.wait_for_log(r"INFO api_synced resource=EndpointSlice", timeout=20)


# ------------------------------------------------------------------------------ bugs


def test_an_unexpected_exception_is_one_line_and_exit_70():
    from kdns.log import Logger
    from kdns.startup import EXIT_INTERNAL, reported
    stream = io.StringIO()
    assert reported(lambda: {}["missing"], Logger(stream=stream)) == EXIT_INTERNAL
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "ERROR internal_error error=\"KeyError: 'missing'\" at=test_startup.py:" in lines[0]
