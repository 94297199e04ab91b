"""CPU per forwarded query in kdns's process: the kubeadm Corefile's `.` block (kubernetes, prometheus,
forward, cache 30, loadbalance), every name new, each through `forward` to an upstream in another
process (a fork answering every query with one A record), the answer cached and handed back. No client
socket: queries go straight into QueryHandler.handle in batches of 200, the batch's answers awaited.
Process time of this process only (the upstream's is not counted), best of 5 rounds.

    .venv/bin/python perf/forward_cost.py [--queries 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import dns.message  # noqa: E402

from builders import build, clusterip, namespace  # noqa: E402

from kdns.cache import AnswerCache  # noqa: E402
from kdns.config import settings_from_corefile  # noqa: E402
from kdns.forward import Forwarder  # noqa: E402
from kdns.log import Logger  # noqa: E402
from kdns.metrics import DnsMetrics  # noqa: E402
from kdns.pipeline import Block  # noqa: E402
from kdns.respcache import ResponseCache  # noqa: E402
from kdns.server import QueryHandler  # noqa: E402

A_RECORD = bytes.fromhex("c00c000100010000012c0004c0000250")  # the question's name, A, IN, TTL 300, 192.0.2.80


def upstream_process() -> tuple[int, int]:
    """(pid, port) of a forked UDP responder: each query back with QR/RA set and one A record."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        try:
            deadline = time.monotonic() + 600  # bounded, whatever happens to the parent
            sock.settimeout(1)
            while time.monotonic() < deadline:
                try:
                    data, addr = sock.recvfrom(4096)
                except socket.timeout:
                    continue
                end = 12
                while data[end]:
                    end += data[end] + 1
                end += 5
                sock.sendto(data[:2] + bytes((data[2] | 0x80, 0x80)) + b"\x00\x01\x00\x01\x00\x00\x00\x00"
                            + data[12:end] + A_RECORD, addr)
        finally:
            os._exit(0)
    sock.close()
    return pid, port


def corefile(port: int) -> str:
    return f""".:53 {{
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . 127.0.0.1:{port} {{
       max_concurrent 1000
    }}
    cache 30
    loadbalance
}}
"""


async def measure(port: int, queries: int) -> float:
    settings = settings_from_corefile(corefile(port), "Corefile")
    (bc,) = settings.blocks
    index, resolver = build(namespace("default"), clusterip("default", "kubernetes", "10.96.0.1"))
    log = Logger(stream=io.StringIO())
    answers = AnswerCache()
    block = Block(bc, index, answers, log, DnsMetrics(), resolver=resolver, forwarder=Forwarder(bc.forward, log),
                  cache=ResponseCache(bc.cache, own_zones=bc.kubernetes.zones))
    handler = QueryHandler([block], log, answers=answers)
    handler.observe = True
    best = float("inf")
    for r in range(6):
        packets = [dns.message.make_query(f"r{r}n{i}.example.test", "A").to_wire() for i in range(queries)]
        start = time.process_time()
        for i in range(0, queries, 200):
            pending = [handler.handle(p, False, ("10.0.0.1", 5353)) for p in packets[i:i + 200]]
            results = await asyncio.gather(*(p for p in pending if not isinstance(p, bytes)))
            if len(results) != len(pending) or any(not x or x[3] & 0x0F for x in results):
                raise SystemExit(f"round {r}: not every query was answered NOERROR by the upstream")
        if r:  # the first round warms up
            best = min(best, (time.process_time() - start) / queries)
    block.forwarder.close()
    return best * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=20_000)
    args = p.parse_args()
    pid, port = upstream_process()
    try:
        try:
            import uvloop
            loop_factory = uvloop.new_event_loop
        except ImportError:
            loop_factory = asyncio.new_event_loop
        loop = loop_factory()
        us = loop.run_until_complete(measure(port, args.queries))
        loop.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    print(f"forward miss (kubeadm block, prometheus on): {us:.2f} us CPU per query in kdns's process "
          f"= {1e6 / us:,.0f} per core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
