"""The direct forward path's Python cost per query, without system calls: kdns with the kubeadm Corefile (its
`forward` upstream a socket swapped for an in-memory one once opened) takes every name new, outside the cluster,
as its UDP reader hands it over (QueryHandler.fast); the forwarder's datagrams are answered in memory with one A
record each and read back through Upstream._readable. Prints the microseconds per query of each side (the
query's way up: fast path, forwarding record, send queue; the reply's way back: read, `cache` plugin, metrics,
hand-off), the least of the rounds after the first. --ops also counts the bytecodes each kdns function runs per
query (sys.settrace: slow, one round traced). For A/B runs of two builds, alternate them: a single run moves ±5%.

    .venv/bin/python perf/lane_cost.py [--src DIR] [--queries 20000] [--rounds 8] [--ops]

--src: a directory holding a `kdns/` package to measure instead of the work tree's (`git archive REV kdns`).
perf/forward_load.py measures the same path whole, sockets and dnsperf included.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import io
import os
import random
import struct
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "perf"))

import servers  # noqa: E402

UPSTREAM = "127.0.0.1:9"  # never reached: its socket is swapped for a MemorySocket before the first send

BATCH = 256  # queries up, then their replies back (under max_concurrent)
ANSWER = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x0a\x00\x00\x01"  # the name: A 10.0.0.1, TTL 3600


class MemorySocket:
    """The upstream socket, in memory: what is sent is kept; recv() hands back the replies put in `inbox`."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.inbox: list[bytes] = []

    def send(self, packet: bytes) -> int:
        self.sent.append(packet)
        return len(packet)

    def recv(self, size: int) -> bytes:
        if not self.inbox:
            raise BlockingIOError
        return self.inbox.pop()

    def close(self) -> None:
        pass


class OpCounter:
    """Bytecodes and calls per kdns function (sys.settrace with opcode events)."""

    def __init__(self):
        self.ops: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()

    def __call__(self, frame, event, arg):
        code = frame.f_code
        name = f"{os.path.basename(code.co_filename)}:{code.co_name}"
        if event == "call":
            if f"{os.sep}kdns{os.sep}" not in code.co_filename:
                return None
            self.calls[name] += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            self.ops[name] += 1
        return self


def query(qid: int, n: int) -> bytes:
    labels = [f"n{n}x{random.randrange(1 << 30)}".encode(), b"outside", b"example"]
    name = b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
    return struct.pack("!6H", qid & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"


def reply_to(packet: bytes) -> bytes:
    qend = packet.index(b"\x00\x01\x00\x01", 12) + 4
    return packet[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + packet[12:qend] + ANSWER


async def measure(args) -> None:
    """kdns started on the kubeadm Corefile, measured (run), stopped."""
    from kdns.app import Runtime
    from kdns.cli import build_parser, load_settings
    from kdns.log import Logger

    with tempfile.TemporaryDirectory() as tmp:
        corefile = os.path.join(tmp, "Corefile")
        with open(corefile, "w") as fh:
            fh.write(servers.kubeadm_corefile(UPSTREAM))
        ports = ["--port-map", "53=0", "--port-map", "8080=0", "--port-map", "8181=0", "--port-map", "9153=0"]
        settings = load_settings(build_parser().parse_args(
            ["serve", "--corefile", corefile, "--bind", "127.0.0.1", *ports,
             "--manifests", os.path.join(ROOT, "examples", "cluster.yaml")]))
        runtime = Runtime(settings, Logger(stream=io.StringIO()), bind_host="127.0.0.1",
                          port_map={53: 0, 8080: 0, 8181: 0, 9153: 0})
        await runtime.start()
        try:
            print(run(runtime, args))
        finally:
            await runtime.shutdown()


def run(runtime, args) -> str:
    """The measurement, on a started runtime: the report's lines."""
    reader = next(iter(runtime.listeners.values()))[0]
    handler = reader.handler
    upstream = handler.blocks[0].forwarder.upstreams[0].upstream
    answers: list[bytes] = []

    def send(response: bytes, client) -> None:
        answers.append(response)

    client = ("127.0.0.1", 40000)
    counter = OpCounter() if args.ops else None
    rounds = []
    for r in range(args.rounds):
        queries = [query(i, r * args.queries + i) for i in range(args.queries)]
        answers.clear()
        gc.collect()
        if counter is not None and r == args.rounds - 1:
            sys.settrace(counter)
        up = back = 0.0
        for i in range(0, len(queries), BATCH):
            t0 = time.perf_counter()
            for q in queries[i:i + BATCH]:
                handler.count_udp(1)
                if handler.fast(q, False, client, send) is not True:
                    raise SystemExit("a query did not take the direct forward path")
            channel = upstream._channels[-1]
            if not isinstance(channel.sock, MemorySocket):  # opened by the first send: swapped before it goes
                asyncio.get_running_loop().remove_reader(channel.fd)
                channel.sock.close()
                channel.sock = MemorySocket()
            upstream._flush()
            t1 = time.perf_counter()
            sock = channel.sock
            sock.inbox = [reply_to(p) for p in reversed(sock.sent)]
            sock.sent.clear()
            t2 = time.perf_counter()
            upstream._readable(channel)
            t3 = time.perf_counter()
            up += t1 - t0
            back += t3 - t2
        sys.settrace(None)
        if len(answers) != len(queries):
            raise SystemExit(f"{len(answers)} answers to {len(queries)} queries")
        rounds.append((up / len(queries) * 1e6, back / len(queries) * 1e6))
    lines = []
    if counter is not None:
        total = sum(counter.ops.values())
        lines.append(f"bytecodes per query {total / args.queries:.0f}, "
                     f"calls {sum(counter.calls.values()) / args.queries:.1f}")
        for name, n in counter.ops.most_common(25):
            lines.append(f"{n / args.queries:7.1f} {counter.calls[name] / args.queries:5.2f}  {name}")
    timed = rounds[1:] if counter is None else rounds[1:-1]
    best = min(timed, key=sum)
    lines.append(f"{args.src or 'work tree'}: up {best[0]:.2f} us, back {best[1]:.2f} us, {sum(best):.2f} us per "
                 f"query (least of {len(timed)} rounds of {args.queries:,})")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", help="a directory with a kdns/ package to measure instead of the work tree's")
    p.add_argument("--queries", type=int, default=20000, help="queries per round")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--ops", action="store_true", help="count bytecodes per kdns function (one more round, traced)")
    args = p.parse_args()
    if args.rounds < 2:
        p.error("--rounds: at least 2 (the first is not counted)")
    if args.ops:
        args.rounds += 1
    sys.path.insert(0, os.path.abspath(args.src) if args.src else ROOT)
    import kdns
    if args.src and not os.path.abspath(kdns.__file__).startswith(os.path.abspath(args.src)):
        raise SystemExit(f"--src: imported kdns from {kdns.__file__}")
    asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
