"""Memory under a flood, inside the deploy/ memory limit: kdns in its own memory cgroup, a generated
cluster loaded, unique random names sent at full speed while a hot set is queried at a fixed rate.

    .venv/bin/python perf/memory_flood.py [--services 10000] [--endpoints 30000] [--limit 170Mi]
        [--seconds 60] [--flood-names 1000000] [--hot 200] [--hot-rate 500] [--budget 24Mi]

Checks and prints: kdns alive at the end, no OOM kill in its cgroup (memory.oom_control), every hot
answer correct and its share answered from the cache (kdns_answer_cache_hits over hot queries), RSS
at rest / peak / plateau (last 10 s) and the cgroup's peak usage. Exit 1 when a check fails.
Traffic goes to 127.0.0.1 only; the flood is bounded by --flood-names and --seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import socket
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "perf"))

import dns.message  # noqa: E402
import dns.rcode  # noqa: E402

from cgroup import MemoryCgroup  # noqa: E402
from gen_cluster import build_cluster, write_manifests  # noqa: E402
from harness import KdnsProcess, wait_until  # noqa: E402
from kdns.memory import format_size, parse_size  # noqa: E402
from memory_relist import api_serving, rss_of  # noqa: E402


def flood(port: int, names: int, seconds: float, namespaces: list[str], counter, repeat: int = 1) -> None:
    """Send `names` unique names (rN.<ns>.svc.cluster.local) evenly over `seconds` (1M in 60 s: 16.7k/s,
    above kdns's miss rate, so it is saturated all along); answers are read and discarded."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    start = time.monotonic()
    deadline = start + seconds
    rate = names / seconds  # spread over the whole run: at least what kdns can take, so it is never idle
    template = dns.message.make_query("x.example.", "A").to_wire()
    header, tail = template[:12], template[-4:]  # the name is rebuilt per query; type A class IN
    sent = 0
    rng = random.Random(7)
    while sent < names and time.monotonic() < deadline:
        if sent % repeat == 0:  # a new name, asked `repeat` times in a row
            label = f"r{sent:x}{rng.randrange(1 << 30):x}".encode()
        ns = namespaces[sent % len(namespaces)].encode()
        qname = b"".join(bytes([len(p)]) + p for p in (label, ns, b"svc", b"cluster", b"local")) + b"\x00"
        try:
            sock.send(header + qname + tail)
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
        if sent % 256 == 0:
            try:
                while True:
                    sock.recv(4096)
            except BlockingIOError:
                pass
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    counter.value = sent
    sock.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=30_000)
    p.add_argument("--namespaces", type=int, default=100)
    p.add_argument("--limit", default="170Mi", help="the cgroup memory limit (deploy/kdns: 170Mi)")
    p.add_argument("--budget", default=None, help="--memory-budget for kdns (default: kdns's default)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--flood-names", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=1,
                   help="ask each flood name this many times (2: every negative answer is admitted to the cache)")
    p.add_argument("--hot", type=int, default=200, help="names in the hot set")
    p.add_argument("--hot-rate", type=float, default=500.0, help="hot-set queries per second")
    p.add_argument("--source", choices=["manifests", "api"], default="manifests",
                   help="load the cluster from manifests on disk, or follow it through the API double")
    p.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="kdns-flood-")
    cluster = build_cluster(args.services, args.endpoints, args.namespaces, 0.1, 1)
    with contextlib.ExitStack() as stack:
        if args.source == "api":
            _, kubeconfig = stack.enter_context(api_serving(cluster, work))
            source = ["--kubeconfig", kubeconfig, "--ready-listen", "127.0.0.1:0"]
        else:
            write_manifests(cluster, os.path.join(work, "manifests"))
            source = ["--manifests", os.path.join(work, "manifests")]
        return run(args, cluster, source)


def run(args, cluster, source: list[str]) -> int:
    limit = parse_size(args.limit)
    rng = random.Random(3)
    hot = [s for s in rng.sample(cluster, min(args.hot, len(cluster))) if not s.headless]
    namespaces = sorted({s.namespace for s in cluster})
    extra = ["--memory-budget", args.budget] if args.budget else []

    with MemoryCgroup(limit) as cg:
        with KdnsProcess(*source, "--metrics-listen", "127.0.0.1:0", *extra, startup_timeout=300,
                         wrap=cg.wrap) as kdns:
            pid = kdns.proc.pid
            if args.source == "api":
                wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, timeout=300, what="synced")
            for svc in hot:  # warm: each hot name asked twice (the second reuse admits it to the protected set)
                for _ in range(2):
                    reply = kdns.query(svc.fqdn)
                    assert [r.to_text() for rrset in reply.answer for r in rrset] == [svc.cluster_ip], svc.fqdn
            time.sleep(1.0)
            rest = rss_of(pid)
            samples: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    try:
                        samples.append((time.monotonic(), rss_of(pid)))
                    except OSError:
                        return
                    stop.wait(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            hits0 = kdns.metric("kdns_answer_cache_hits_total")
            counter = mp.Value("q", 0)
            proc = mp.Process(target=flood, args=(kdns.port, args.flood_names, args.seconds, namespaces, counter,
                                                  args.repeat))
            started = time.monotonic()
            proc.start()
            hot_sent = hot_ok = hot_bad = hot_lost = 0
            latencies: list[float] = []
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(1.0)
            sock.connect(("127.0.0.1", kdns.port))
            interval = 1.0 / args.hot_rate
            next_at = time.monotonic()
            while proc.is_alive() and time.monotonic() - started < args.seconds + 30:
                svc = hot[hot_sent % len(hot)]
                query = dns.message.make_query(svc.fqdn, "A")
                t0 = time.monotonic()
                sock.send(query.to_wire())
                hot_sent += 1
                try:
                    while True:
                        reply = dns.message.from_wire(sock.recv(4096))
                        if reply.id == query.id:
                            break
                except (socket.timeout, TimeoutError):
                    hot_lost += 1
                    continue
                latencies.append(time.monotonic() - t0)
                got = [r.to_text() for rrset in reply.answer for r in rrset]
                if reply.rcode() == dns.rcode.NOERROR and got == [svc.cluster_ip]:
                    hot_ok += 1
                else:
                    hot_bad += 1
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()
            proc.join(30)
            flood_seconds = time.monotonic() - started
            sock.close()
            hits = kdns.metric("kdns_answer_cache_hits_total") - hits0
            time.sleep(1.0)
            stop.set()
            sampler.join(5)
            alive = kdns.proc.poll() is None
            answered = kdns.metric("kdns_queries_total", proto="udp") if alive else None
            cache_bytes = kdns.metric("kdns_cache_bytes", cache="answers") if alive else None
        oom = cg.oom_kills()
        cg_peak = cg.peak()
    latencies.sort()
    tail = [r for t, r in samples if t >= samples[-1][0] - 10] if samples else [0]
    result = {
        "services": len(cluster), "endpoints": sum(len(s.endpoints) for s in cluster), "source": args.source,
        "limit": format_size(limit), "budget": args.budget or "default",
        "flood_sent": counter.value, "repeat": args.repeat, "flood_seconds": round(flood_seconds, 1),
        "kdns_udp_queries_received": answered,
        "rss_rest": format_size(rest), "rss_peak": format_size(max(r for _, r in samples)),
        "rss_plateau_last10s": format_size(max(tail)),
        "growth_over_rest": format_size(max(r for _, r in samples) - rest),
        "cgroup_peak": format_size(cg_peak) if cg_peak else None, "oom_kills": oom, "alive": alive,
        "answer_cache_bytes": cache_bytes,
        "hot_sent": hot_sent, "hot_correct": hot_ok, "hot_wrong": hot_bad, "hot_lost": hot_lost,
        "hot_cache_hit_share": round(hits / max(1, hot_ok + hot_bad), 4),
        "hot_p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "hot_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    ok = alive and oom == 0 and hot_bad == 0 and counter.value > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
