"""CPU per forwarded query in kdns's process: the kubeadm Corefile's `.` block (kubernetes, prometheus,
forward, cache 30, loadbalance), every name new, each through `forward` to an upstream in another
process (a fork answering every query with one A record), the answer cached and handed back. No client
socket: queries go straight into the handler in batches of 200, the batch's answers awaited -- as kdns's
UDP reader asks (QueryHandler.fast: the direct forward path) and through the full path (handle).
Process time of this process only (the upstream's is not counted), best of 5 rounds.

    .venv/bin/python perf/forward_cost.py [--queries 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import dns.message  # noqa: E402

from builders import forward_handler  # noqa: E402

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


async def measure(port: int, queries: int, full: bool) -> float:
    handler = forward_handler(port)
    block = handler.blocks[0]
    client = ("10.0.0.1", 5353)
    loop = asyncio.get_running_loop()
    best = float("inf")
    for r in range(6):
        packets = [dns.message.make_query(f"r{r}n{i}.example.test", "A").to_wire() for i in range(queries)]
        start = time.process_time()
        for i in range(0, queries, 200):
            batch = packets[i:i + 200]
            results: list = []
            if full:  # the full path (QueryHandler.handle: parse, pipeline, a future per query)
                pending = [handler.handle(p, False, client) for p in batch]
            else:  # as kdns's UDP reader asks: forwarded at once, answered to `sink` from the forwarder's callback
                waiter = loop.create_future()

                def sink(response: bytes, addr, results=results, waiter=waiter) -> None:
                    results.append(response)
                    if len(results) == len(batch) and not waiter.done():
                        waiter.set_result(None)

                pending = []
                for p in batch:
                    handler.count_udp(1)
                    out = handler.fast(p, False, client, sink)
                    if out is not True:
                        pending.append(handler.slow(p, False, client, out))
                if len(batch) > len(pending):
                    pending.append(waiter)  # done when the sink has the whole batch
            results.extend(x for x in pending if isinstance(x, bytes))
            results.extend(x for x in await asyncio.gather(*(p for p in pending if not isinstance(p, bytes)))
                           if x is not None)
            if len(results) != len(batch) or any(not x or x[3] & 0x0F for x in results):
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
        costs = {full: loop.run_until_complete(measure(port, args.queries, full)) for full in (False, True)}
        loop.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    for full, us in costs.items():
        how = "full path (handle)" if full else "as the UDP reader asks (fast)"
        print(f"forward miss (kubeadm block, prometheus on), {how}: {us:.2f} us CPU per query in kdns's process "
              f"= {1e6 / us:,.0f} per core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
