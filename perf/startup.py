"""kdns start-up by cluster size: seconds to ready and RSS, from manifests and from the API double.

    .venv/bin/python perf/startup.py [--sizes 1000:10000,10000:100000] [--json PATH]

Manifests: a generated cluster (perf/gen_cluster.py) as YAML files; ready = the first answer to a
probe query (kdns loads the manifests before it listens). API: the same objects in the API double
(tests/apiserver.py, which lists in pages from one snapshot as the real API server does); ready =
/ready answers 200
(every resource's initial paged list done), then a full relist is forced (outage + compacted
history: every watch gets 410 Gone) and RSS is sampled every 20 ms until kdns logs `api_relisted`
for Services, EndpointSlices and Namespaces (the approach of perf/memory_relist.py, without its
cgroup). kdns is pinned to core 0, the API double's thread to core 1. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

PERF = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, PERF)
sys.path.insert(0, os.path.join(os.path.dirname(PERF), "tests"))

import gen_cluster  # noqa: E402
import servers  # noqa: E402

PROBE = "kubernetes.default.svc.cluster.local"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"1000:10000,10000:100000" -> [(services, endpoints), ...]"""
    out = []
    for item in text.split(","):
        svc, _, eps = item.partition(":")
        try:
            out.append((int(svc), int(eps)))
        except ValueError:
            raise SystemExit(f"--sizes: expected SERVICES:ENDPOINTS[,...], got {item!r}") from None
    return out


def from_manifests(services: int, endpoints: int, tmp: str, kdns_src: str | None = None,
                   timeout: float = 240.0, namespaces: int = 100, seed: int = 1) -> dict:
    """kdns started on generated YAML manifests: seconds to listening / first answer, VmRSS/VmHWM then."""
    data = os.path.join(tmp, f"startup-{services}-{endpoints}")
    summary = gen_cluster.generate(data, services, endpoints, namespaces, 0.1, seed=seed, zones=False,
                                   query_files=False)
    row = {"source": "manifests", "services": summary["services"], "endpoints": summary["endpoints"],
           "manifest_bytes": summary["manifest_bytes"], "manifest_files": summary["manifest_files"]}
    try:
        with servers.KdnsServer(os.path.join(data, "manifests"), metrics=False, src=kdns_src, cpu="0",
                                startup_timeout=timeout, probe_name=PROBE) as s:
            row.update(listening_s=s.listening_s, ready_s=s.ready_s, cpu_s=s.cpu_seconds(), **s.memory())
    except RuntimeError as exc:
        row["error"] = str(exc).splitlines()[0][:200]
    shutil.rmtree(data, ignore_errors=True)
    return row


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except OSError as exc:
        return getattr(exc, "code", 0) or 0


def _load_api(api, cluster) -> int:
    from apiserver import namespace
    objects = 0
    for ns in sorted({s.namespace for s in cluster}):
        api.apply(namespace(ns))
        objects += 1
    for svc in cluster:
        api.apply(gen_cluster._dict_service(svc))
        objects += 1
        for i in range(0, len(svc.endpoints), gen_cluster.MAX_SLICE):
            api.apply(gen_cluster._dict_slice(svc, i // gen_cluster.MAX_SLICE,
                                              svc.endpoints[i:i + gen_cluster.MAX_SLICE]))
            objects += 1
    return objects


def paged_api_server():
    """The API double (tests/apiserver.py): a list copies the kind's objects once, into a snapshot its
    pages are cut from, so a paged list of 100k objects is linear and measures kdns, not the double."""
    from apiserver import FakeApiServer

    return FakeApiServer(token="perf")


def from_api(services: int, endpoints: int, tmp: str, kdns_src: str | None = None, timeout: float = 240.0,
             relist: bool = True, namespaces: int = 100, seed: int = 1) -> dict:
    """kdns following the API double holding the generated cluster: seconds to /ready 200 and RSS then;
    with relist, the RSS peak while a forced full relist runs."""
    from apiserver import write_kubeconfig
    cluster = gen_cluster.build_cluster(services, endpoints, namespaces, 0.1, seed)
    row: dict = {"source": "api", "services": len(cluster), "endpoints": sum(len(s.endpoints) for s in cluster)}
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1} if os.cpu_count() and os.cpu_count() > 1 else mask)
    try:
        api = paged_api_server().__enter__()  # its thread inherits core 1
    finally:
        os.sched_setaffinity(0, mask)
    try:
        row["objects"] = _load_api(api, cluster)
        kubeconfig = write_kubeconfig(os.path.join(tmp, "kubeconfig"), api.url, token="perf")
        srv = servers.KdnsServer(None, metrics=False, src=kdns_src, cpu="0", startup_timeout=timeout,
                                 probe_name=PROBE, extra=["--kubeconfig", kubeconfig,
                                                          "--ready-listen", f"{servers.HOST}:0"])
        try:
            srv.start()
        except RuntimeError as exc:
            row["error"] = str(exc).splitlines()[0][:200]
            return row
        try:
            import re
            line = srv.wait_for_log(srv.ready_pattern, time.monotonic() + 1)
            ready_port = int(re.search(r"ready=[\[\]\w.:]*:(\d+)", line).group(1))
            deadline = srv.started_at + timeout
            while _get(f"http://{servers.HOST}:{ready_port}/ready") != 200:
                if time.monotonic() > deadline or srv.proc.poll() is not None:
                    row["error"] = "not ready before the deadline:\n" + srv.log_tail(5)
                    return row
                time.sleep(0.02)
            row["ready_s"] = time.monotonic() - srv.started_at
            row["cpu_s"] = srv.cpu_seconds()  # kdns's own CPU to ready: steadier than wall time on a shared machine
            row["listening_s"] = srv.listening_s
            mem = srv.memory()
            row["VmRSS"], row["VmHWM"] = mem.get("VmRSS"), mem.get("VmHWM")
            if relist:
                row.update(_relist_peak(api, srv, timeout))
        finally:
            srv.stop()
    finally:
        api.__exit__(None, None, None)
    return row


def _relist_peak(api, srv, timeout: float) -> dict:
    """Force a full relist (outage, then history compacted: every re-watch gets 410 Gone); sample
    VmRSS every 20 ms until kdns logged api_relisted for all three resources."""
    peak = [srv.memory().get("VmRSS", 0)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            v = srv.memory().get("VmRSS")
            if v is None:
                return
            peak.append(v)
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    with srv._cond:
        mark = len(srv.lines)
    t0 = time.monotonic()
    sampler.start()
    try:
        from apiserver import namespace
        api.set_down(True)
        api.apply(namespace("relist-marker"))
        api.compact()
        api.set_down(False)
        deadline = time.monotonic() + timeout
        for kind in ("Service", "EndpointSlice", "Namespace"):
            while True:
                with srv._cond:
                    if any(f"api_relisted resource={kind}" in ln for ln in srv.lines[mark:]):
                        break
                if time.monotonic() > deadline:
                    return {"relist_error": f"no api_relisted for {kind} within {timeout:.0f}s"}
                time.sleep(0.02)
    finally:
        stop.set()
        sampler.join(5)
    return {"relist_s": time.monotonic() - t0, "rss_peak_relist": max(peak),
            "VmHWM_after_relist": srv.memory().get("VmHWM")}


def sweep(sizes: list[tuple[int, int]], tmp: str, kdns_src: str | None = None, timeout: float = 240.0,
          api: bool = True, log=print) -> list[dict]:
    rows = []
    for services, endpoints in sizes:
        for source, probe in (("manifests", from_manifests), ("api", from_api)):
            if source == "api" and not api:
                continue
            row = probe(services, endpoints, tmp, kdns_src, timeout)
            row.update(gen_services=services, gen_endpoints=endpoints)
            rows.append(row)
            log(f"start-up from {source} {services}/{endpoints}: {row}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000:10000,10000:100000", help="SERVICES:ENDPOINTS[,...]")
    p.add_argument("--no-api", dest="api", action="store_false", help="manifests only")
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="kdns-startup-")
    try:
        rows = sweep(parse_sizes(a.sizes), tmp, timeout=a.timeout, api=a.api,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
