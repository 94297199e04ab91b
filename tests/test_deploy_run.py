"""What deploy/ describes, run here without a cluster or a container engine:

- the kdns container's command line (the image's ENTRYPOINT with the Deployment's args, the
  ConfigMap's Corefile, the image's and the Deployment's environment) answers DNS, and the ports
  its probes and Service name serve /health, /ready and /metrics; the same for the swapped coredns;
- the same command line, unmodified, in a private network namespace whose resolv.conf is a pod's,
  serving a double of the cluster that deploy/kind/verify creates, passes deploy/kind/verify/probe.sh
  (the conformance DNS names over UDP and TCP) — verify.sh's DNS half, offline;
- deploy/webhook/gen-certs.sh (with kubectl recording instead of a cluster) writes a Secret and a
  caBundle with which the webhook, run with its Deployment's args, is reached as
  kdns-webhook.kdns-system.svc and injects the probe pod's env — verify.sh's webhook half, offline;
- up.sh, verify.sh and rollback.sh run against recording stand-ins for docker, kind and kubectl:
  they apply exactly the checked kustomizations and patch files, and fail naming the broken step.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys

import dns.message
import dns.query
import pytest
import yaml
from cryptography import x509

from test_deploy import (DEPLOY, KUSTOMIZATIONS, ROOT, container, dockerfile, find, kdns_objects,
                         kind_kubernetes_version, kubectl, render, standalone, swapped_coredns, tool,
                         validate_strict, webhook_objects)
from harness import LoggedProcess, http_get, wait_until
from test_corefile import KUBEADM_BLOCK_CACHE

KIND = os.path.join(DEPLOY, "kind")


# ------------------------------------------------------------------------------ a process and its log


class Proc(LoggedProcess):
    """A subprocess whose merged output is collected line by line (tests/harness.py)."""

    def __init__(self, argv: list[str], env: dict | None = None, cwd: str = ROOT):
        super().__init__()
        self.argv = argv
        self.spawn(argv, env=env, cwd=cwd)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        return re.search(pattern, self.wait_for_log(pattern, timeout))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def container_env(c: dict) -> dict:
    """The environment the container gets: the image's ENV (not PATH), then the Deployment's env."""
    env = {k: v for k, v in dockerfile()["ENV"].items() if k != "PATH"}
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return env


def entrypoint_argv(c: dict) -> list[str]:
    """The container's command line, with the image's ENTRYPOINT (or the container's command) taken
    from the venv, where `pip install .` put the same console scripts the image has."""
    command = c.get("command") or dockerfile()["ENTRYPOINT"]
    args = c.get("args", dockerfile()["CMD"] if "command" not in c else [])
    return [tool(command[0]), *command[1:], *args]


def mounted(argv: list[str], c: dict, root) -> list[str]:
    """argv with every path under one of the container's volume mounts moved under `root` (not the
    program itself: the venv may well live under a path the pod mounts over, such as /tmp)."""
    out = argv[:1]
    for arg in argv[1:]:
        for m in c.get("volumeMounts", []):
            if arg == m["mountPath"] or arg.startswith(m["mountPath"] + "/"):
                arg = str(root) + arg
                break
        out.append(arg)
    return out


def write_mounts(c: dict, pod: dict, objs: list[dict], root) -> None:
    """Materialise the container's ConfigMap and Secret volumes under `root` as the kubelet would."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for m in c.get("volumeMounts", []):
        vol = volumes[m["name"]]
        target = root / m["mountPath"].lstrip("/")
        if "configMap" in vol:
            data = find(objs, "ConfigMap", vol["configMap"]["name"])["data"]
            items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                target.mkdir(parents=True, exist_ok=True)
                (target / item["path"]).write_text(data[item["key"]])
        elif "secret" in vol:
            data = find(objs, "Secret", vol["secret"]["secretName"])["data"]
            target.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (target / key).write_bytes(base64.b64decode(value))


# ------------------------------------------------------------------------------ kdns: ENTRYPOINT + args, unprivileged


KUBEADM_CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "coredns", "namespace": "kube-system"},
                     "data": {"Corefile": KUBEADM_BLOCK_CACHE}}


@pytest.mark.parametrize("variant", ["deploy/kdns", "swap"])
def test_kdns_command_line_serves_dns_and_its_probe_ports(tmp_path, variant):
    """Start the container's exact command line outside a container, adding only what running
    unprivileged here needs (Corefile ports mapped to free ones, loopback, the example cluster as
    the source instead of the in-cluster API, a resolv.conf), then check it over every port the
    Deployment declares, through the names its probes use."""
    if variant == "swap":
        deploy, objs = swapped_coredns(tmp_path), [KUBEADM_CONFIGMAP]
    else:
        deploy, cm = kdns_objects()
        objs = [cm]
    c, pod = container(deploy), deploy["spec"]["template"]["spec"]
    write_mounts(c, pod, objs, tmp_path)
    argv = mounted(entrypoint_argv(c), c, tmp_path)
    assert argv[1:3] == ["-conf", str(tmp_path / "etc/coredns/Corefile")], "the coredns image's arguments"

    ports = {p["name"]: p for p in c["ports"]}
    http_map = {p["containerPort"]: free_tcp_port() for p in c["ports"] if p["containerPort"] != 53}
    dns_ports = {p["containerPort"] for p in c["ports"] if p["name"] in ("dns", "dns-tcp")}
    assert dns_ports == {53} and {ports["dns"]["protocol"], ports["dns-tcp"]["protocol"]} == {"UDP", "TCP"}
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    extra = ["--port-map", "53=0", *[x for src, dst in http_map.items() for x in ("--port-map", f"{src}={dst}")],
             "--bind", "127.0.0.1", "--manifests", os.path.join(ROOT, "examples", "cluster.yaml"),
             "--resolv-conf", str(resolv)]
    env = dict(os.environ, **container_env(c))
    with Proc(argv + extra, env=env) as kdns:
        m = kdns.wait_for(r"listening server=dns://:(\d+) udp=127\.0\.0\.1:(\d+) .*health=\S+:(\d+) "
                          r"ready=\S+:(\d+) metrics=\S+:(\d+)")
        corefile_port, udp, health, ready, metrics = (int(g) for g in m.groups())
        assert corefile_port in dns_ports, "the Corefile serves DNS on the port the container declares"
        # every HTTP listener is one of the container's ports (mapped), none is unexpected
        assert {health, ready, metrics} == set(http_map.values())
        for tcp in (False, True):
            q = dns.message.make_query("kubernetes.default.svc.cluster.local", "A")
            r = (dns.query.tcp if tcp else dns.query.udp)(q, "127.0.0.1", port=udp, timeout=3)
            assert [rd.to_text() for rrset in r.answer for rd in rrset] == ["10.96.0.1"]
        live, readiness = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
        live_port = http_map[ports[live["port"]]["containerPort"]]
        ready_port = http_map[ports[readiness["port"]]["containerPort"]]
        assert http_get(f"http://127.0.0.1:{live_port}{live['path']}") == (200, "OK")
        wait_until(lambda: http_get(f"http://127.0.0.1:{ready_port}{readiness['path']}")[0] == 200, timeout=15,
                   interval=0.1, what="ready")
        status, body = http_get(f"http://127.0.0.1:{http_map[ports['metrics']['containerPort']]}/metrics")
        assert status == 200 and "coredns_dns_requests_total" in body
        assert re.search(r"^kdns_", body, re.M), "verify.sh tells kdns from CoreDNS by its kdns_ series"


# ------------------------------------------------------------------------------ a double of the kind verify cluster

BACKEND_IP = "10.244.1.5"
SERVICE_IP = "10.96.120.7"
KUBERNETES_IP = "10.96.0.1"


def verify_cluster() -> list[dict]:
    """What the API of the kind cluster holds once verify.sh has applied deploy/kind/verify: its
    objects, with the ClusterIP, pod IP and EndpointSlices the control plane would add, plus the
    `kubernetes` and `kube-dns` Services."""
    objs = [o for o in render("kind/verify") if o["kind"] in ("Namespace", "Service", "Pod")]
    objs += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in ("default", "kube-system")]
    objs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
                 "spec": {"clusterIP": KUBERNETES_IP, "clusterIPs": [KUBERNETES_IP],
                          "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}})
    objs.append(find(render("kdns-with-service"), "Service", "kube-dns"))
    pods = [o for o in objs if o["kind"] == "Pod"]
    for p in pods:
        p["status"] = {"phase": "Running", "podIP": BACKEND_IP, "podIPs": [{"ip": BACKEND_IP}]}
    slices = []
    for svc in [o for o in objs if o["kind"] == "Service" and o["metadata"]["namespace"] == "kdns-verify"]:
        spec = svc["spec"]
        if spec.get("type") == "ExternalName":
            continue
        if spec.get("clusterIP") != "None":
            spec["clusterIP"], spec["clusterIPs"] = SERVICE_IP, [SERVICE_IP]
        endpoints = []
        for p in pods:
            if spec["selector"].items() <= p["metadata"]["labels"].items():
                ep = {"addresses": [BACKEND_IP], "conditions": {"ready": True},
                      "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": "kdns-verify"}}
                # the endpoint controller names an endpoint only for a headless Service that is the
                # pod's subdomain
                if spec.get("clusterIP") == "None" and p["spec"].get("subdomain") == svc["metadata"]["name"]:
                    ep["hostname"] = p["spec"]["hostname"]
                endpoints.append(ep)
        slices.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": f"{svc['metadata']['name']}-abcde", "namespace": "kdns-verify",
                                    "labels": {"kubernetes.io/service-name": svc["metadata"]["name"]}},
                       "addressType": "IPv4", "endpoints": endpoints,
                       "ports": [{"name": p["name"], "port": p.get("targetPort", p["port"]), "protocol": p["protocol"]}
                                 for p in spec["ports"]]})
    version = kind_kubernetes_version()
    for obj in objs + slices:
        validate_strict(obj, version)  # the double is made of valid objects too
    return objs + slices


# ------------------------------------------------------------------------------ verify.sh's DNS half, offline

DRIVER = r'''
import json, os, subprocess, sys, threading, time, urllib.request, urllib.error
cfg = json.load(open(sys.argv[1]))
out = {"log": [], "http": {}, "probe": None, "error": None}
subprocess.run([cfg["ip"], "link", "set", "lo", "up"], check=True)
subprocess.run([cfg["mount"], "--bind", cfg["pod_resolv_conf"], "/etc/resolv.conf"], check=True)
proc = subprocess.Popen(cfg["argv"], cwd=cfg["cwd"], env=cfg["env"], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
threading.Thread(target=lambda: [out["log"].append(l.rstrip()) for l in proc.stdout], daemon=True).start()

def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()[:2000]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:2000]
    except OSError as e:
        return 0, str(e)

try:
    deadline = time.time() + 20
    while not any(" listening " in l for l in list(out["log"])):
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("kdns did not start listening")
        time.sleep(0.05)
    for name, (port, path) in cfg["http"].items():
        deadline = time.time() + 15
        while True:
            status, body = get(port, path)
            if status == 200 or time.time() > deadline:
                break
            time.sleep(0.1)
        out["http"][name] = [port, path, status, body]
    p = subprocess.run(["bash", cfg["probe"], *cfg["probe_args"]], capture_output=True, text=True, timeout=240)
    out["probe"] = {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
except Exception as exc:
    out["error"] = repr(exc)
finally:
    proc.kill()
    proc.wait()
    json.dump(out, sys.stdout)
'''


def netns_prefix() -> list[str]:
    """unshare into new network, mount and PID namespaces (with a user namespace when not root):
    whatever the driver started dies with it, even if the test is interrupted."""
    unshare = tool("unshare")
    tool("ip")
    base = [unshare, "--net", "--mount", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        base[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run([*base, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        message = f"cannot make a private network namespace ({' '.join(base)}): {probe.stderr.strip()}"
        pytest.fail(message, pytrace=False)
    return base


def test_kind_verify_probe_passes_against_the_deployment_command_line(tmp_path):
    """verify.sh's DNS checks without kind: kdns runs the Deployment's command line exactly (no port
    mapping, no bind address: port 53 on every interface) in its own network namespace, following a
    double of the verify cluster instead of the in-cluster API, and deploy/kind/verify/probe.sh
    resolves the conformance names through a pod's resolv.conf, over UDP and TCP, dig and getent."""
    for name in ("dig", "getent"):
        tool(name)
    prefix = netns_prefix()
    deploy, cm = kdns_objects()
    c, pod = container(deploy), deploy["spec"]["template"]["spec"]
    write_mounts(c, pod, [cm], tmp_path)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump_all(verify_cluster()))
    upstream = tmp_path / "node-resolv.conf"
    upstream.write_text("nameserver 192.0.2.53\n")  # the node's resolver: unreachable in the empty namespace
    ns = find(render("kind/verify"), "Namespace")["metadata"]["name"]
    pod_resolv = tmp_path / "pod-resolv.conf"
    # what the kubelet writes for a ClusterFirst pod (REFERENCE 1.6), the kube-dns ClusterIP being kdns here
    pod_resolv.write_text(f"search {ns}.svc.cluster.local svc.cluster.local cluster.local\n"
                          f"nameserver 127.0.0.1\noptions ndots:5\n")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    config = {
        "argv": mounted(entrypoint_argv(c), c, tmp_path) + ["--manifests", str(cluster), "--resolv-conf", str(upstream)],
        "cwd": ROOT, "env": dict(os.environ, **container_env(c)), "pod_resolv_conf": str(pod_resolv),
        "http": {"liveness": [ports[c["livenessProbe"]["httpGet"]["port"]], c["livenessProbe"]["httpGet"]["path"]],
                 "readiness": [ports[c["readinessProbe"]["httpGet"]["port"]], c["readinessProbe"]["httpGet"]["path"]],
                 "metrics": [ports["metrics"], "/metrics"]},
        "probe": os.path.join(KIND, "verify", "probe.sh"), "ip": tool("ip"), "mount": tool("mount"),
        "probe_args": [ns, BACKEND_IP, SERVICE_IP, KUBERNETES_IP],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = subprocess.run([*prefix, sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    log = "\n".join(out["log"][-40:])
    assert out["error"] is None, f"{out['error']}\nkdns log:\n{log}"
    assert "listening server=dns://:53 udp=[::]:53" in log or "udp=0.0.0.0:53" in log or "udp=:53" in log, log
    for name, (port, path, status, body) in out["http"].items():
        assert status == 200, f"{name} probe GET :{port}{path} -> {status} {body}\nkdns log:\n{log}"
    assert "# HELP" in out["http"]["metrics"][3]
    probe = out["probe"]
    assert probe["rc"] == 0, f"probe.sh failed:\n{probe['stdout']}{probe['stderr']}\nkdns log:\n{log}"
    assert re.search(r"^(\d+) checks, 0 failed$", probe["stdout"], re.M), probe["stdout"]
    assert "FAIL" not in probe["stdout"]
    assert probe["stdout"].count("ok    notcp") == probe["stdout"].count("ok    tcp  ") > 10


# ------------------------------------------------------------------------------ port 53 as UID 65532, the image's way

NONROOT_DRIVER = r'''
import json, os, subprocess, sys, time
import dns.message, dns.query
cfg = json.load(open(sys.argv[1]))
subprocess.run([cfg["ip"], "link", "set", "lo", "up"], check=True)
out = {}

def attempt(name):
    proc = subprocess.Popen(cfg["argv"], env=cfg["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    answer, deadline = None, time.time() + 15
    while time.time() < deadline and proc.poll() is None and answer is None:
        try:
            reply = dns.query.udp(dns.message.make_query("kubernetes.default.svc.cluster.local", "A"), "127.0.0.1",
                                  port=53, timeout=0.5)
            answer = [rd.to_text() for rrset in reply.answer for rd in rrset]
        except Exception:
            time.sleep(0.1)
    proc.kill()
    log = proc.communicate()[0]
    out[name] = {"answer": answer, "log": log[-3000:]}

attempt("with_file_capability")
subprocess.run([cfg["setcap"], "-r", cfg["interpreter"]], check=True)
attempt("without_file_capability")
json.dump(out, sys.stdout)
'''


def dockerfile_run(containing: str) -> str:
    """The shell command of the Dockerfile's RUN instruction that contains `containing`."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    runs = [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ") and containing in line]
    assert len(runs) == 1, f"expected one RUN with {containing!r}"
    return runs[0]


def test_image_binds_port_53_as_its_user_with_only_net_bind_service(tmp_path):
    """The Dockerfile's own setcap step, run on a scratch /opt/kdns venv, gives `kdns` what the
    coredns binary has: as UID 65532, with NET_BIND_SERVICE the only capability in the bounding set
    (kubeadm's securityContext), the Deployment's command line binds port 53 and answers; without
    the file capability the same bind is refused (so this test can tell)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (setcap, setpriv), as CI and the build machines have", pytrace=False)
    for name in ("setcap", "setpriv"):
        tool(name)
    prefix = netns_prefix()
    import tempfile
    scratch = tempfile.mkdtemp(prefix="kdns-image-")  # world-readable, unlike pytest's tmp_path
    try:
        os.chmod(scratch, 0o755)
        opt = os.path.join(scratch, "opt", "kdns")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", opt], check=True)
        site = subprocess.run([os.path.join(opt, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        venv_site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(site, "kdns-dev.pth"), "w") as f:  # what `pip install .` gives the image
            f.write(f"{ROOT}\n{venv_site}\n")
        script = os.path.join(opt, "bin", "kdns")
        with open(script, "w") as f:  # the console script pip writes
            f.write(f"#!{opt}/bin/python\nimport sys\nfrom kdns.cli import main\nsys.exit(main())\n")
        os.chmod(script, 0o755)
        step = dockerfile_run("setcap").replace("/opt/kdns", opt)
        env = dict(os.environ, PATH=f"{os.path.dirname(tool('setcap'))}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        proc = subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"the Dockerfile's step failed here: {step}\n{proc.stderr}"
        with open(script) as f:
            assert f.readline() == f"#!{opt}/bin/python-netbind\n"
        deploy, cm = kdns_objects()
        c = container(deploy)
        for name, text in (("Corefile", cm["data"]["Corefile"]), ("resolv.conf", "nameserver 192.0.2.53\n")):
            with open(os.path.join(scratch, name), "w") as f:
                f.write(text)
        cluster = os.path.join(scratch, "cluster.yaml")
        with open(os.path.join(ROOT, "examples", "cluster.yaml")) as src, open(cluster, "w") as f:
            f.write(src.read())
        sc = deploy["spec"]["template"]["spec"]["securityContext"]
        caps = c["securityContext"]["capabilities"]
        bounding = "-all," + ",".join(f"+{cap.lower()}" for cap in caps["add"])
        argv = [tool("setpriv"), f"--reuid={sc['runAsUser']}", f"--regid={sc['runAsGroup']}", "--clear-groups",
                f"--bounding-set={bounding}", "--inh-caps=-all", script, *c["args"]]
        argv[argv.index("/etc/coredns/Corefile")] = os.path.join(scratch, "Corefile")
        argv += ["--manifests", cluster, "--resolv-conf", os.path.join(scratch, "resolv.conf")]
        config = {"argv": argv, "env": dict(os.environ, **container_env(c)),
                  "interpreter": os.path.join(opt, "bin", "python-netbind"), "ip": tool("ip"), "setcap": tool("setcap")}
        with open(os.path.join(scratch, "config.json"), "w") as f:
            json.dump(config, f)
        with open(os.path.join(scratch, "driver.py"), "w") as f:
            f.write(NONROOT_DRIVER)
        proc = subprocess.run([*prefix, sys.executable, os.path.join(scratch, "driver.py"),
                               os.path.join(scratch, "config.json")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        good, bad = out["with_file_capability"], out["without_file_capability"]
        assert good["answer"] == ["10.96.0.1"], good["log"]
        assert "listening server=dns://:53" in good["log"]
        assert bad["answer"] is None and "lacks CAP_NET_BIND_SERVICE" in bad["log"], bad["log"]
    finally:
        subprocess.run(["rm", "-rf", scratch], check=False)


# ------------------------------------------------------------------------------ stand-ins for docker, kind, kubectl

STUB = r'''#!PYTHON
"""Records each call (tool, args, stdin, KUBECONFIG) and answers from STUB_RESPONSES."""
import json, os, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
line = " ".join([tool, *args])
stdin = sys.stdin.read() if args[-2:] == ["-f", "-"] else None
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"tool": tool, "args": args, "stdin": stdin, "kubeconfig": os.environ.get("KUBECONFIG")}) + "\n")
fail = os.environ.get("STUB_FAIL")
if fail and line.startswith(fail):
    sys.stderr.write(f"stub: {line}: failing as asked\n")
    sys.exit(3)
if tool == "kubectl" and "create" in args and "--dry-run=client" in args:
    os.environ["KUBECONFIG"] = os.devnull
    os.execv(os.environ["REAL_KUBECTL"], ["kubectl", *args])
for pattern, output in json.loads(os.environ.get("STUB_RESPONSES", "[]")):
    if pattern in line:
        sys.stdout.write(output)
        break
'''


class Stubs:
    def __init__(self, tmp_path, tools=("docker", "kind", "kubectl"), responses=(), fail: str | None = None,
                 with_webhook_cli: bool = True):
        self.bin = tmp_path / "stub-bin"
        self.bin.mkdir(exist_ok=True)
        self.log = tmp_path / "stub.log"
        stub = self.bin / "stub.py"
        stub.write_text(STUB.replace("PYTHON", sys.executable))
        stub.chmod(0o755)
        for name in tools:
            (self.bin / name).symlink_to(stub)
        if with_webhook_cli:
            (self.bin / "kdns-webhook").symlink_to(tool("kdns-webhook"))
        self.env = dict(os.environ, PATH=f"{self.bin}:/usr/bin:/bin", STUB_LOG=str(self.log),
                        STUB_RESPONSES=json.dumps(list(responses)), REAL_KUBECTL=tool("kubectl"),
                        TMPDIR=str(tmp_path))
        self.env.pop("KUBECONFIG", None)
        self.env.pop("KDNS_KUBECONFIG", None)
        if fail:
            self.env["STUB_FAIL"] = fail

    def run(self, script: str, **env) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", script], env=dict(self.env, **env), capture_output=True, text=True,
                              timeout=120, cwd=str(self.bin.parent))

    def calls(self, tool_name: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in calls if tool_name is None or c["tool"] == tool_name]


def kubectl_calls(stubs: Stubs, verb: str) -> list[list[str]]:
    return [c["args"] for c in stubs.calls("kubectl") if verb in c["args"]]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


MWC_COUNT = ("get mutatingwebhookconfiguration kdns-service-links -o jsonpath={range .webhooks[*]}x{end}", "x")


# ------------------------------------------------------------------------------ gen-certs.sh + the webhook


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    """deploy/webhook/gen-certs.sh against recording kubectl, with the real kdns-webhook."""
    tmp = tmp_path_factory.mktemp("gen-certs")
    stubs = Stubs(tmp, tools=("kubectl",), responses=[MWC_COUNT])
    proc = stubs.run(os.path.join(DEPLOY, "webhook", "gen-certs.sh"))
    assert proc.returncode == 0, proc.stderr
    applied = [c for c in stubs.calls("kubectl") if c["stdin"] is not None]
    assert len(applied) == 1
    secret = yaml.safe_load(applied[0]["stdin"])
    patches = kubectl_calls(stubs, "patch")
    assert len(patches) == 1
    return {"secret": secret, "patch": patches[0], "stderr": proc.stderr}


def test_gen_certs_writes_the_mounted_secret(provisioned):
    secret = provisioned["secret"]
    validate_strict(secret, kind_kubernetes_version())
    w = webhook_objects()
    volume = next(v for v in w["deploy"]["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    assert secret["type"] == "kubernetes.io/tls"
    assert (secret["metadata"]["namespace"], secret["metadata"]["name"]) == (
        w["deploy"]["metadata"]["namespace"], volume["secret"]["secretName"])
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    svc = w["service"]["metadata"]
    assert f"{svc['name']}.{svc['namespace']}.svc" in names


def test_gen_certs_sets_the_ca_bundle_of_the_rendered_configuration(provisioned, tmp_path):
    args = provisioned["patch"]
    w = webhook_objects()
    assert args[:3] == ["patch", "mutatingwebhookconfiguration", w["mwc"]["metadata"]["name"]]
    assert flag(args, "--type") == "json"
    ops = json.loads(flag(args, "-p"))
    assert [op["path"] for op in ops] == [f"/webhooks/{i}/clientConfig/caBundle" for i in range(len(w["mwc"]["webhooks"]))]
    assert base64.b64decode(ops[0]["value"]) == base64.b64decode(provisioned["secret"]["data"]["ca.crt"])
    # the patch applies to the rendered configuration, and the result is still valid
    path = tmp_path / "mwc.yaml"
    path.write_text(yaml.safe_dump(w["mwc"]))
    patched = yaml.safe_load(kubectl("patch", "--local", "-f", str(path), "--type", "json", "-p", flag(args, "-p"),
                                     "-o", "yaml"))
    validate_strict(patched, kind_kubernetes_version())
    assert patched["webhooks"][0]["clientConfig"]["caBundle"] == ops[0]["value"]


class ServiceConnection(http.client.HTTPSConnection):
    """HTTPS to `addr` verified as `host` (the name the API server uses: <svc>.<ns>.svc)."""

    def __init__(self, addr: str, host: str, port: int, context: ssl.SSLContext):
        super().__init__(host, port, context=context, timeout=10)
        self._addr = addr

    def connect(self) -> None:
        sock = socket.create_connection((self._addr, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def test_webhook_command_line_is_reached_as_its_service_and_injects_env(provisioned, tmp_path):
    """The webhook container's command line (tls paths under the mounted Secret that gen-certs.sh
    wrote, the verify cluster double instead of --in-cluster, a free loopback port for 8443) is
    called the way the API server calls it: TLS verified with the caBundle for the Service's DNS
    name, the configuration's path; it injects the probe pod's service-link env."""
    w = webhook_objects()
    c, pod = container(w["deploy"]), w["deploy"]["spec"]["template"]["spec"]
    write_mounts(c, pod, [provisioned["secret"]], tmp_path)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump_all(verify_cluster()))
    argv = mounted(entrypoint_argv(c), c, tmp_path)
    argv[argv.index("--in-cluster"):argv.index("--in-cluster") + 1] = ["--manifests", str(cluster)]
    argv[argv.index("--listen") + 1] = "127.0.0.1:0"
    ca = base64.b64decode(json.loads(flag(provisioned["patch"], "-p"))[0]["value"]).decode()
    ctx = ssl.create_default_context(cadata=ca)
    ref = w["mwc"]["webhooks"][0]["clientConfig"]["service"]
    host = f"{ref['name']}.{ref['namespace']}.svc"
    with Proc(argv, env=dict(os.environ, **container_env(c))) as webhook:
        port = int(webhook.wait_for(r"listening address=https://127\.0\.0\.1:(\d+)").group(1))

        def request(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
            conn = ServiceConnection("127.0.0.1", host, port, ctx)
            try:
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        for probe in (c["readinessProbe"], c["livenessProbe"]):
            wait_until(lambda: request("GET", probe["httpGet"]["path"])[0] == 200, timeout=15, interval=0.1,
                       what=probe["httpGet"]["path"])
        probe_pod = standalone("kind/verify/probe-pod.yaml")[0]
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": {"uid": "0b6d6c1e-kind-verify", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                              "resource": {"group": "", "version": "v1", "resource": "pods"},
                              "namespace": probe_pod["metadata"]["namespace"], "operation": "CREATE",
                              "object": probe_pod}}
        status, body = request("POST", ref["path"], json.dumps(review).encode())
    assert status == 200, body
    response = json.loads(body)["response"]
    assert response["allowed"] is True and response["uid"] == "0b6d6c1e-kind-verify"
    ops = json.loads(base64.b64decode(response["patch"]))
    env = {op["value"]["name"]: op["value"]["value"] for op in ops
           if op["path"].startswith("/spec/containers/0/env") and isinstance(op["value"], dict)}
    if not env:  # a container without env gets one `add .../env` with the whole array
        env = {e["name"]: e["value"] for op in ops if op["path"] == "/spec/containers/0/env" for e in op["value"]}
    assert env["TEST_SERVICE_2_SERVICE_HOST"] == SERVICE_IP, "what verify.sh checks with printenv"
    assert env["KUBERNETES_SERVICE_HOST"] == KUBERNETES_IP
    assert {"op": "add", "path": "/spec/enableServiceLinks", "value": False} in ops


# ------------------------------------------------------------------------------ up.sh / verify.sh / rollback.sh


def applied_kustomizations(stubs: Stubs) -> list[str]:
    return [os.path.relpath(flag(args, "-k"), DEPLOY) for args in kubectl_calls(stubs, "-k")]


def patch_files(stubs: Stubs) -> list[str]:
    return [os.path.relpath(flag(args, "--patch-file"), DEPLOY) for args in kubectl_calls(stubs, "--patch-file")]


@pytest.mark.parametrize("mode", ["side-by-side", "swap"])
def test_up_sh_builds_loads_and_applies_the_checked_manifests(tmp_path, mode):
    stubs = Stubs(tmp_path, responses=[MWC_COUNT])
    proc = stubs.run(os.path.join(KIND, "up.sh"), MODE=mode)
    assert proc.returncode == 0, proc.stderr
    calls = [[c["tool"], *c["args"]] for c in stubs.calls()]
    kubeconfig = str(tmp_path / "kdns-kind-kdns.kubeconfig")
    create = next(c for c in calls if c[:3] == ["kind", "create", "cluster"])
    assert flag(create, "--config") == os.path.join(KIND, "cluster.yaml") and flag(create, "--kubeconfig") == kubeconfig
    assert ["docker", "build", "-t", "kdns:dev", ROOT] in calls
    assert ["kind", "load", "docker-image", "kdns:dev", "--name", "kdns"] in calls
    assert calls.index(["docker", "build", "-t", "kdns:dev", ROOT]) < calls.index(
        ["kind", "load", "docker-image", "kdns:dev", "--name", "kdns"])
    # every kubectl talks to the kind cluster's own kubeconfig, never the user's current context
    assert {c["kubeconfig"] for c in stubs.calls("kubectl")} == {kubeconfig}
    applied = applied_kustomizations(stubs)
    assert set(applied) <= set(KUSTOMIZATIONS)
    if mode == "swap":
        assert applied == ["webhook/base"] and patch_files(stubs) == ["swap/kdns-image.yaml"]
    else:
        assert applied == ["kdns", "webhook/base"] and patch_files(stubs) == ["side-by-side/select-kdns.yaml"]
    for rel in patch_files(stubs):
        assert os.path.isfile(os.path.join(DEPLOY, rel))
    # gen-certs.sh ran: the Secret, then the caBundle, then the rollout wait
    assert any(c["stdin"] and "kdns-webhook-tls" in c["stdin"] for c in stubs.calls("kubectl"))
    assert kubectl_calls(stubs, "mutatingwebhookconfiguration")
    assert ["kubectl", "-n", "kdns-system", "rollout", "status", "deployment/kdns-webhook", "--timeout=180s"] == calls[-1]
    assert "==> up.sh: done" in proc.stderr


def test_up_sh_with_cert_manager_applies_the_overlay(tmp_path):
    stubs = Stubs(tmp_path)
    proc = stubs.run(os.path.join(KIND, "up.sh"), WEBHOOK_CERTS="cert-manager")
    assert proc.returncode == 0, proc.stderr
    assert applied_kustomizations(stubs) == ["kdns", "webhook/cert-manager"]
    assert not [c for c in stubs.calls("kubectl") if c["stdin"]], "no self-signed Secret with cert-manager"


@pytest.mark.parametrize("mode", ["side-by-side", "swap"])
def test_rollback_sh_undoes_up_sh(tmp_path, mode):
    stubs = Stubs(tmp_path, responses=[("kind get clusters", "kdns\n")])
    proc = stubs.run(os.path.join(KIND, "rollback.sh"), MODE=mode)
    assert proc.returncode == 0, proc.stderr
    deleted = [os.path.relpath(flag(a, "-k"), DEPLOY) for a in kubectl_calls(stubs, "delete") if "-k" in a]
    if mode == "swap":
        assert ["-n", "kube-system", "rollout", "undo", "deployment/coredns"] in kubectl_calls(stubs, "undo")
        assert deleted == ["webhook/base"] and patch_files(stubs) == []
    else:
        assert patch_files(stubs) == ["side-by-side/select-all.yaml"]
        assert deleted == ["webhook/base", "kdns"]


VERIFY_RESPONSES = [
    ("kind get clusters", "kdns\n"),
    ("kind get kubeconfig", "apiVersion: v1\nkind: Config\n"),
    ("get service kube-dns -o go-template", "app.kubernetes.io/name=kdns,k8s-app=kube-dns,"),
    ("-o jsonpath={range .items[*]}", "kdns-6d9f-a=kdns:dev\nkdns-6d9f-b=kdns:dev\n"),
    ("-o jsonpath={.items[*].metadata.name}", "kdns-6d9f-a kdns-6d9f-b"),
    ("get --raw", "# HELP kdns_build_info\nkdns_build_info{version=\"0.1.0\"} 1\n"),
    ("clientConfig.caBundle}", "LS0tLS1CRUdJTi=="),
    ("get pod dns-querier-1 -o jsonpath={.status.podIP}", BACKEND_IP),
    ("get service test-service-2 -o jsonpath={.spec.clusterIP}", SERVICE_IP),
    ("get service kubernetes -o jsonpath={.spec.clusterIP}", KUBERNETES_IP),
    ("env[*].name}", "KUBERNETES_SERVICE_HOST TEST_SERVICE_2_SERVICE_HOST TEST_SERVICE_2_SERVICE_PORT"),
    ("{.spec.enableServiceLinks}", "false"),
    ("printenv TEST_SERVICE_2_SERVICE_HOST", SERVICE_IP + "\n"),
    ("bash /probe/probe.sh", "35 checks, 0 failed\n"),
]


def test_verify_sh_checks_in_order_and_runs_the_probe(tmp_path):
    stubs = Stubs(tmp_path, responses=VERIFY_RESPONSES)
    proc = stubs.run(os.path.join(KIND, "verify.sh"))
    assert proc.returncode == 0, proc.stderr
    assert applied_kustomizations(stubs) == ["kind/verify"]
    applied_files = [flag(a, "-f") for a in kubectl_calls(stubs, "apply") if "-f" in a]
    assert applied_files == [os.path.join(KIND, "verify", "probe-pod.yaml")]
    probe = next(a for a in kubectl_calls(stubs, "exec") if "/probe/probe.sh" in a)
    assert probe[probe.index("/probe/probe.sh") + 1:] == ["kdns-verify", BACKEND_IP, SERVICE_IP, KUBERNETES_IP]
    # the probe script is mounted from the ConfigMap the kustomization generates, where probe-pod.yaml says
    probe_pod = standalone("kind/verify/probe-pod.yaml")[0]
    volume = probe_pod["spec"]["volumes"][0]
    cm = find(render("kind/verify"), "ConfigMap", volume["configMap"]["name"])
    with open(os.path.join(KIND, "verify", "probe.sh")) as f:
        assert cm["data"]["probe.sh"] == f.read()
    mount = probe_pod["spec"]["containers"][0]["volumeMounts"][0]
    assert os.path.join(mount["mountPath"], "probe.sh") == "/probe/probe.sh"
    assert "==> verify.sh: done" in proc.stderr


@pytest.mark.parametrize("override, fail, step", [
    (("-o jsonpath={range .items[*]}", "coredns-5d78-a=registry.k8s.io/coredns/coredns:v1.12.1\n"), None,
     "checking every pod behind kube-system/kube-dns runs kdns:dev"),
    (("env[*].name}", "KUBERNETES_SERVICE_HOST"), None,
     "checking kdns-webhook wrote the service-link variables into the probe pod"),
    (None, "kubectl -n kdns-verify exec dns-probe -- bash /probe/probe.sh",
     "resolving the conformance DNS names over UDP and TCP"),
], ids=["image-check", "env-check", "probe"])
def test_verify_sh_fails_naming_the_step(tmp_path, override, fail, step):
    responses = [override] if override else []
    responses += [r for r in VERIFY_RESPONSES if not override or r[0] != override[0]]
    stubs = Stubs(tmp_path, responses=responses, fail=fail)
    proc = stubs.run(os.path.join(KIND, "verify.sh"))
    assert proc.returncode != 0
    assert re.search(rf"verify\.sh: FAILED (\(exit \d+\) )?at step: {re.escape(step)}", proc.stderr), proc.stderr


@pytest.mark.parametrize("script, missing", [("up.sh", "docker"), ("verify.sh", "kind"), ("rollback.sh", "kind"),
                                             ("down.sh", "kind")])
def test_kind_scripts_say_which_tool_is_missing(tmp_path, script, missing):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dirname", "basename"):
        (bin_dir / name).symlink_to(f"/usr/bin/{name}")
    proc = subprocess.run([tool("bash"), os.path.join(KIND, script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)})
    assert proc.returncode == 1
    assert f"{script}: FAILED at step: checking tools" in proc.stderr and f"{missing} is not installed" in proc.stderr


@pytest.mark.parametrize("fail, step", [
    ("kind create cluster", "creating kind cluster kdns"),
    ("docker build", "building image kdns:dev"),
    ("kubectl apply -k", "deploying kdns next to CoreDNS"),
])
def test_up_sh_fails_naming_the_step(tmp_path, fail, step):
    stubs = Stubs(tmp_path, responses=[MWC_COUNT], fail=fail)
    proc = stubs.run(os.path.join(KIND, "up.sh"))
    assert proc.returncode == 3, proc.stderr
    assert re.search(rf"up\.sh: FAILED \(exit 3\) at step: {re.escape(step)}", proc.stderr), proc.stderr


def test_gen_certs_fails_naming_the_step(tmp_path):
    stubs = Stubs(tmp_path, tools=("kubectl",), responses=[MWC_COUNT], fail="kubectl apply -f -")
    proc = stubs.run(os.path.join(DEPLOY, "webhook", "gen-certs.sh"))
    assert proc.returncode == 3
    assert "gen-certs: FAILED (exit 3) at step: writing Secret kdns-system/kdns-webhook-tls" in proc.stderr
    assert not kubectl_calls(stubs, "patch"), "no caBundle for a Secret that was not written"
