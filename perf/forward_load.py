"""forward-miss under dnsperf, for A/B runs of two kdns builds: kdns (kubeadm Corefile, core 0) forwards
unique names to Knot serving perf/gen_cluster.py's wildcard outside zone (core 1, with dnsperf).
Prints QPS and QPS per kdns core (from /proc CPU time) per round; --profile adds a py-spy summary.

    .venv/bin/python perf/forward_load.py [--src DIR] [--rounds 3] [--seconds 6] [--profile]

--src: a directory holding a `kdns/` package to run instead of the work tree's (e.g. `git archive REV kdns`).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "perf"))

import gen_cluster  # noqa: E402
import servers  # noqa: E402

MANIFEST = ("apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\n"
            "spec: {clusterIP: 10.96.0.1, ports: [{port: 443}]}\n")


def dnsperf_figure(out: str, label: str) -> float:
    line = next((ln for ln in out.splitlines() if label in ln), None)
    if line is None:
        raise SystemExit(f"dnsperf printed no {label!r}:\n{out[-500:]}")
    return float(line.split()[-1])


def pyspy_top(raw: str, n: int = 25) -> None:
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    with open(raw) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            c = int(count)
            samples += c
            frames = [f.split(" (")[0] for f in stack.split(";")]
            own[frames[-1]] += c
            for f in set(frames):
                total[f] += c
    print(f"py-spy: {samples} samples; total% self% function")
    for f, c in total.most_common(n + 8)[8:]:
        print(f"{100 * c / samples:6.1f} {100 * own[f] / samples:6.1f}  {f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", help="a directory with a kdns/ package to run instead of the work tree's")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("--profile", action="store_true", help="py-spy the first round")
    args = p.parse_args()
    if not (servers.which("knotd") and servers.which("dnsperf")):
        raise SystemExit("needs knotd and dnsperf (perf/setup.sh)")
    tmp = tempfile.mkdtemp(prefix="kdns-forward-load-")
    try:
        gen_cluster.write_outside_zone(os.path.join(tmp, "upstream"))
        manifest = os.path.join(tmp, "cluster.yaml")
        with open(manifest, "w") as fh:
            fh.write(MANIFEST)
        with servers.KnotServer(os.path.join(tmp, "upstream"), cpu="1", startup_timeout=60,
                                probe_name=f"probe.{gen_cluster.OUTSIDE_ZONE}") as knot, \
                servers.KdnsServer(manifest, corefile=servers.kubeadm_corefile(f"{servers.HOST}:{knot.port}"),
                                   src=args.src, cpu="0") as kdns:
            for r in range(args.rounds):
                names = os.path.join(tmp, f"names{r}.txt")
                with open(names, "w") as fh:
                    for i in range(args.seconds * 60_000):  # more than kdns answers in the time: none repeats
                        fh.write(f"f{r}x{i}-{random.randrange(1 << 20):05x}.{gen_cluster.OUTSIDE_ZONE} A\n")
                before = kdns.cpu_seconds()
                load = subprocess.Popen(["taskset", "-c", "1", "dnsperf", "-s", servers.HOST, "-p", str(kdns.port),
                                         "-d", names, "-l", str(args.seconds), "-n", "1", "-c", "4", "-q", "200",
                                         "-t", "1"], stdout=subprocess.PIPE, text=True)
                spy = os.path.join(ROOT, ".venv", "bin", "py-spy")
                raw = os.path.join(tmp, "profile.txt")
                if args.profile and r == 0 and os.path.exists(spy):
                    subprocess.run(["taskset", "-c", "1", spy, "record", "--pid", str(kdns.pid), "--duration",
                                    str(max(1, args.seconds - 2)), "--rate", "250", "--format", "raw", "--output",
                                    raw, "--nonblocking"], capture_output=True, timeout=args.seconds + 60)
                out = load.communicate(timeout=args.seconds + 60)[0]
                cpu = kdns.cpu_seconds() - before
                qps = dnsperf_figure(out, "Queries per second")
                runtime = dnsperf_figure(out, "Run time (s)")
                lost = re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out)
                print(f"round {r}: {qps:,.0f} QPS, kdns CPU {100 * cpu / runtime:.0f}%, "
                      f"{qps * runtime / cpu:,.0f} QPS per kdns core, lost {lost.group(1) if lost else '?'}%")
                if args.profile and r == 0 and os.path.exists(raw):
                    pyspy_top(raw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
