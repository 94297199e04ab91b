"""RSS of kdns following the API: at ready, and at its peak during a full relist (410 Gone after
compaction), for a generated cluster served by the API double (tests/apiserver.py), inside a memory
cgroup with the deploy/ limit.

    .venv/bin/python perf/memory_relist.py [--services 10000] [--endpoints 30000] [--limit 170Mi]

Prints JSON: seconds from start to ready, RSS at ready, RSS peak during the relist, the cgroup's
peak and OOM kills. Loopback only; bounded by --timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "perf"))

from apiserver import FakeApiServer, namespace, write_kubeconfig  # noqa: E402
from cgroup import MemoryCgroup  # noqa: E402
from gen_cluster import MAX_SLICE, _dict_service, _dict_slice, build_cluster  # noqa: E402
from harness import KdnsProcess, wait_until  # noqa: E402
from kdns.memory import format_size, parse_size  # noqa: E402


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def api_serving(cluster, work: str):
    """The API double holding `cluster` (namespaces, services, slices of <= 100 endpoints);
    yields (api, kubeconfig path)."""
    with FakeApiServer(token="t") as api:
        for ns in sorted({s.namespace for s in cluster}):
            api.apply(namespace(ns))
        for svc in cluster:
            api.apply(_dict_service(svc))
            for i in range(0, len(svc.endpoints), MAX_SLICE):
                api.apply(_dict_slice(svc, i // MAX_SLICE, svc.endpoints[i:i + MAX_SLICE]))
        kubeconfig = os.path.join(work, "kubeconfig")
        write_kubeconfig(kubeconfig, api.url, token="t")
        yield api, kubeconfig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=30_000)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--limit", default="170Mi")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    cluster = build_cluster(args.services, args.endpoints, args.namespaces, 0.1, 1)
    work = tempfile.mkdtemp(prefix="kdns-relist-")
    with api_serving(cluster, work) as (api, kubeconfig):
        with MemoryCgroup(parse_size(args.limit)) as cg:
            started = time.monotonic()
            with KdnsProcess("--kubeconfig", kubeconfig, "--ready-listen", "127.0.0.1:0",
                             startup_timeout=args.timeout, wrap=cg.wrap) as kdns:
                wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, timeout=args.timeout, what="ready")
                ready_s = time.monotonic() - started
                pid = kdns.proc.pid
                rss_ready = rss_of(pid)
                peak = [rss_ready]
                stop = threading.Event()

                def sample() -> None:
                    while not stop.is_set():
                        try:
                            peak.append(rss_of(pid))
                        except OSError:
                            return
                        stop.wait(0.05)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                mark = len(kdns.lines)
                # an outage during which history is compacted: every re-watch then gets 410 Gone
                api.set_down(True)
                api.apply(namespace("relist-marker"))
                api.compact()
                api.set_down(False)
                for kind in ("Service", "EndpointSlice", "Namespace"):
                    kdns.wait_for_log(rf"api_relisted resource={kind}\b", timeout=args.timeout, start=mark)
                relist_s = time.monotonic() - started - ready_s
                stop.set()
                sampler.join(5)
                alive = kdns.proc.poll() is None
            oom = cg.oom_kills()
            cg_peak = cg.peak()
    result = {"services": len(cluster), "endpoints": sum(len(s.endpoints) for s in cluster),
              "limit": args.limit, "ready_s": round(ready_s, 2), "rss_ready": format_size(rss_ready),
              "rss_peak_relist": format_size(max(peak)), "relist_s": round(relist_s, 2),
              "cgroup_peak": format_size(cg_peak) if cg_peak else None, "oom_kills": oom, "alive": alive}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if alive and oom == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
