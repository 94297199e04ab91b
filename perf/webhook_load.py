"""Admission load on kdns-webhook: latency at fixed offered rates, with 10k services in the namespace.

    .venv/bin/python perf/webhook_load.py [--services 10000] [--rates 200,1000] [--duration 10]
        [--connections 64] [--timeout 5] [--wait-quiet 60] [--json]

Writes a manifest (`default/kubernetes` and N ClusterIP services in namespace `load`), starts the
real server as a subprocess (`python -m webhook serve --manifests ... --listen 127.0.0.1:0`, TLS
with a fresh CA, default options, so the 64 KiB budget is engaged: N services are far more than
fit), waits for /readyz, then for each rate sends Pod CREATE AdmissionReviews for a one-container
pod in `load`, open loop: request k is due at start + k/rate whatever the server does, and its
latency counts from that due time, so a slow server cannot slow the generator down and hide its
own latency (no coordinated omission). If this process falls behind its schedule the report says
so (`send_lag_ms`): the figures then include the generator's lag.

Bounded: rate x duration requests per rate, each with --timeout; loopback only. An error is a
non-200 answer, a timeout, a connection error, or an answer that is not an AdmissionReview for the
same uid that allows the pod with a JSONPatch and the budget warning. The first answer is also
decoded and applied with `jsonpatch` and its environment checked against the budget. Every pod is
the same, so an answer that equals a fully checked one byte for byte apart from its uid is right
without parsing its ~140 KB again (the generator shares the machine); any other is parsed and checked.
The machine is shared: the run first waits (--wait-quiet) for other processes to go quiet, and
reports the CPU they used during each rate (`others_cpu_pct`, % of one core), and the server's
and this generator's own CPU time per answered request, which contention does not inflate much.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time

import aiohttp
import jsonpatch
import yaml

import servers as procs
from run import machine, wait_quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = 64 * 1024  # the server's default --budget, which this run relies on


def write_manifest(path: str, services: int) -> None:
    """default/kubernetes and `services` ClusterIP services (one or two ports) in namespace `load`."""
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "load"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}]
    for i in range(services):
        ip = f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        ports = [{"name": "http", "port": 80, "protocol": "TCP"}]
        if i % 3 == 0:
            ports.append({"name": "metrics", "port": 9090, "protocol": "TCP"})
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i:05d}", "namespace": "load"},
                     "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": ports}})
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


def request_body(uid: str) -> bytes:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "load-", "namespace": "load"},
           "spec": {"containers": [{"name": "app", "image": "busybox"}]}}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "load",
        "operation": "CREATE", "userInfo": {"username": "load"}, "object": pod}}).encode()


class Server:
    """The webhook as a subprocess; its log goes to a file (the port is read from it)."""

    def __init__(self, tmp: str, manifest: str, startup_timeout: float = 120.0):
        from webhook.certs import generate
        self.certs = generate("kdns-webhook", "kdns-system", tmp, hosts=("127.0.0.1",))
        self.log_path = os.path.join(tmp, "webhook.log")
        self.manifest, self.startup_timeout = manifest, startup_timeout

    def __enter__(self) -> "Server":
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "webhook", "serve", "--manifests", self.manifest,
                                      "--listen", "127.0.0.1:0", "--tls-cert", self.certs.tls_cert,
                                      "--tls-key", self.certs.tls_key], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            match = re.search(r"listening.*address=https://127\.0\.0\.1:(\d+)", open(self.log_path).read())
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"webhook exited ({self.proc.returncode}): {open(self.log_path).read()[-2000:]}")
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"webhook not listening within {self.startup_timeout}s")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.certs.ca_cert)


def check_answer(status: int, body: bytes, uid: str) -> str | None:
    """None if the answer is right, else what is wrong."""
    if status != 200:
        return f"HTTP {status}"
    response = json.loads(body).get("response") or {}
    if response.get("uid") != uid or response.get("allowed") is not True or response.get("patchType") != "JSONPatch":
        return f"unexpected response {str(response)[:200]}"
    if not any("budget" in w for w in response.get("warnings") or []):
        return "no budget warning: the budget was not engaged"
    return None


class SameAnswer:
    """Whether an answer is a checked answer with another uid: the bytes around the uid compared."""

    def __init__(self, body: bytes, uid: str):
        marker = b'"uid": ' + json.dumps(uid).encode()
        if body.count(marker) != 1:
            raise AssertionError(f"uid {uid!r} not found once in the answer")
        self.prefix, self.suffix = body.split(marker)
        self.prefix += b'"uid": '

    def matches(self, body: bytes, uid: str) -> bool:
        middle = len(body) - len(self.prefix) - len(self.suffix)
        return (middle > 0 and body.startswith(self.prefix) and body.endswith(self.suffix)
                and body[len(self.prefix):len(self.prefix) + middle] == json.dumps(uid).encode())


def check_first(body: bytes) -> int:
    """Apply the first answer's patch; return the injected environment's size (must fit the budget)."""
    response = json.loads(body)["response"]
    pod = json.loads(request_body("x"))["request"]["object"]
    patched = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"]))).apply(pod)
    env = patched["spec"]["containers"][0]["env"]
    size = sum(len(e["name"].encode()) + len(e["value"].encode()) + 2 for e in env)
    if not 0 < size <= BUDGET or patched["spec"]["enableServiceLinks"] is not False:
        raise AssertionError(f"first answer: {len(env)} variables, {size} bytes (budget {BUDGET})")
    return size


async def wait_ready(session: aiohttp.ClientSession, base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(base + "/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("webhook /readyz not 200 in time")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_rate(session: aiohttp.ClientSession, url: str, rate: float, duration: float, timeout: float,
                   tag: str) -> dict:
    loop = asyncio.get_running_loop()
    count = int(rate * duration)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lags: list[float] = []
    first: list[bytes] = []
    same: list[SameAnswer] = []  # the first right answer, as a template

    async def one(k: int, due: float) -> None:
        uid = f"{tag}-{k}"
        try:
            async with session.post(url, data=request_body(uid), headers={"Content-Type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                status = resp.status
        except asyncio.TimeoutError:
            errors["timeout"] = errors.get("timeout", 0) + 1
            return
        except aiohttp.ClientError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        latencies.append(loop.time() - due)
        if status == 200 and same and same[0].matches(body, uid):
            return
        problem = check_answer(status, body, uid)
        if problem:
            errors[problem[:60]] = errors.get(problem[:60], 0) + 1
        elif not first:
            first.append(body)
            same.append(SameAnswer(body, uid))

    start = loop.time() + 0.1
    tasks = []
    for k in range(count):
        due = start + k / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(loop.time() - due)
        tasks.append(asyncio.create_task(one(k, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    return {"offered_rps": rate, "requests": count, "answered": len(latencies),
            "achieved_rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(max(latencies, default=float("nan")) * 1000, 2),
            "errors": sum(errors.values()), "error_kinds": errors,
            "send_lag_ms_p99": round(percentile(lags, 0.99) * 1000, 2),
            "first_env_bytes": check_first(first[0]) if first else None}


async def main_async(args: argparse.Namespace, server: Server) -> list[dict]:
    base = f"https://127.0.0.1:{server.port}"
    connector = aiohttp.TCPConnector(limit=args.connections, ssl=server.context())
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_ready(session, base)
        await run_rate(session, base + "/mutate", 20, 1, args.timeout, "warmup")  # connections, first plan
        results = []
        for rate in args.rates:
            exclude = {os.getpid(), server.proc.pid}
            before, started = procs.foreign_cpu_snapshot(exclude), time.monotonic()
            cpu = procs.cpu_seconds([server.proc.pid]), procs.cpu_seconds([os.getpid()])
            result = await run_rate(session, base + "/mutate", rate, args.duration, args.timeout, f"r{rate:g}")
            others = procs.foreign_cpu_seconds(before, procs.foreign_cpu_snapshot(exclude))
            result["others_cpu_pct"] = round(others / (time.monotonic() - started) * 100)
            # CPU per answered admission: what the figures cost, whatever else the machine was doing
            answered = max(1, result["answered"])
            server_cpu = procs.cpu_seconds([server.proc.pid]) - cpu[0]
            client_cpu = procs.cpu_seconds([os.getpid()]) - cpu[1]
            result["server_cpu_ms_per_request"] = round(server_cpu / answered * 1e3, 2)
            result["client_cpu_ms_per_request"] = round(client_cpu / answered * 1e3, 2)
            results.append(result)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[200.0, 1000.0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate (requests = rate x this)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--wait-quiet", type=float, default=60.0, help="wait up to this long for a quiet machine")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    with tempfile.TemporaryDirectory(prefix="kdns-webhook-load-") as tmp:
        manifest = os.path.join(tmp, "cluster.yaml")
        write_manifest(manifest, args.services)
        with Server(tmp, manifest) as server:
            results = asyncio.run(main_async(args, server))
    m = machine()
    if args.json:
        print(json.dumps({"machine": m, "services": args.services, "duration_s": args.duration,
                          "others_cpu_pct_before": quiet, "results": results}))
    else:
        print(f"machine: \"{m['cpu']}\", {m['cores']} cores, Python {m['python']}, {m['date']}; "
              f"{args.services} services in the namespace, {args.duration:g} s per rate, "
              f"{args.connections} connections; others used "
              + ("(not measured)" if quiet is None else f"{round(quiet)}% of a core") + " just before")
        for r in results:
            print(f"offered {r['offered_rps']:>6g}/s  answered {r['answered']}/{r['requests']} "
                  f"({r['achieved_rps']}/s)  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  max {r['max_ms']} ms  "
                  f"errors {r['errors']} {r['error_kinds'] or ''}  send lag p99 {r['send_lag_ms_p99']} ms  "
                  f"env {r['first_env_bytes']} B  others {r['others_cpu_pct']}% of a core  CPU per request: "
                  f"server {r['server_cpu_ms_per_request']} ms, client {r['client_cpu_ms_per_request']} ms")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
