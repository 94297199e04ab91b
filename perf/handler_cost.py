"""CPU per query inside the query handler, without sockets: a cached hit, a never-seen NXDOMAIN (the
`uncached` shape), with and without prometheus metrics. Process time, best of 5 rounds, so load from
other processes moves it less than wall time would.

    .venv/bin/python perf/handler_cost.py [--services 1000]

The index is a generated cluster (perf/gen_cluster.py) loaded straight into a ClusterIndex; the handler
is a `.` server block with the kubernetes plugin, as tests/builders.handler_for builds it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "perf"))

import dns.message  # noqa: E402

from builders import clusterip, handler_for, namespace  # noqa: E402


def best(fn, rounds: int = 5) -> float:
    out = float("inf")
    for r in range(rounds):
        start = time.process_time()
        n = fn(r)
        out = min(out, (time.process_time() - start) / n)
    return out * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000)
    args = p.parse_args()
    objects = [namespace(f"ns{i}") for i in range(10)]
    objects += [clusterip(f"ns{i % 10}", f"svc{i}", f"10.96.{i // 250}.{i % 250 + 1}") for i in range(args.services)]
    _, handler = handler_for(*objects)
    client = ("10.0.0.1", 1)
    hot = dns.message.make_query("svc1.ns1.svc.cluster.local", "A").to_wire()
    handler.handle(hot, False, client)
    rounds = iter([[dns.message.make_query(f"u{r}x{i}.ns{i % 10}.svc.cluster.local", "A").to_wire()
                    for i in range(20_000)] for r in range(10)])  # never-seen names: 5 rounds per mode

    def hits(_: int) -> int:
        for _ in range(50_000):
            handler.handle(hot, False, client)
        return 50_000

    def misses(_: int) -> int:
        for q in next(queued):
            handler.handle(q, False, client)
        return 20_000

    for observe in (False, True):
        handler.observe = observe
        queued = iter([next(rounds) for _ in range(5)])
        hit, miss = best(hits), best(misses)
        print(f"prometheus {'on ' if observe else 'off'}: hit {hit:.2f} us, never-seen NXDOMAIN {miss:.2f} us, "
              f"ratio {miss / hit:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
