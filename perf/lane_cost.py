"""The Python cost per query of kdns's two UDP lanes, without system calls.

--lane direct (the default) -- the direct forward path: kdns with the kubeadm Corefile (its
`forward` upstream a socket swapped for an in-memory one once opened) takes every name new, outside the cluster,
as its UDP reader hands it over (QueryHandler.fast); the forwarder's datagrams are answered in memory with one A
record each and read back through Upstream._readable. Prints the microseconds per query of each side (the
query's way up: fast path, forwarding record, send queue; the reply's way back: read, `cache` plugin, metrics,
hand-off), the least of the rounds after the first. --ops also counts the bytecodes each kdns function runs per
query (sys.settrace: slow, one round traced). For A/B runs of two builds, alternate them: a single run moves ±5%.

--lane front -- the front answers (the exact query bytes seen before, answered by the UDP reader with one dict
lookup): UDPReader._readable over wake-ups of 64 plain cluster queries (examples/cluster.yaml's ClusterIP names,
A and AAAA), its socket swapped for one fed from memory (C-level callables: recvfrom, sendto), against perf/
ceiling.py's ReplayReader.readable replaying the same answers on the same feed -- the reader's cost over the
ceiling responder's, without the kernel's (run.py's `a` mix at saturation measures them with it).

    .venv/bin/python perf/lane_cost.py [--lane direct|front] [--src DIR] [--queries 20000] [--rounds 8] [--ops]

--src: a directory holding a `kdns/` package to measure instead of the work tree's (`git archive REV kdns`).
perf/forward_load.py measures the same path whole, sockets and dnsperf included.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
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
        manifests = os.path.join(ROOT, "examples", "cluster.yaml")
        if args.services:
            import gen_cluster
            gen_cluster.generate(os.path.join(tmp, "cluster"), args.services, args.services * 3, zones=False,
                                 unique_queries=0)
            manifests = os.path.join(tmp, "cluster", "manifests")
            with open(os.path.join(tmp, "cluster", "queries", "a.txt")) as fh:
                args.names = [line.split()[0] for line in fh if line.strip()]
        corefile = os.path.join(tmp, "Corefile")
        with open(corefile, "w") as fh:
            fh.write(servers.kubeadm_corefile(UPSTREAM))
        ports = ["--port-map", "53=0", "--port-map", "8080=0", "--port-map", "8181=0", "--port-map", "9153=0"]
        settings = load_settings(build_parser().parse_args(
            ["serve", "--corefile", corefile, "--bind", "127.0.0.1", *ports, "--manifests", manifests]))
        runtime = Runtime(settings, Logger(stream=io.StringIO()), bind_host="127.0.0.1",
                          port_map={53: 0, 8080: 0, 8181: 0, 9153: 0})
        await runtime.start()
        try:
            print(run_front(runtime, args) if args.lane == "front" else run(runtime, args))
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


FRONT_NAMES = ["kubernetes.default", "kube-dns.kube-system", "gateway.shop", "api.shop", "payments.shop",
               "legacy-api.shop", "search.shop", "db.data", "cache.data"]
WAKE = 64  # datagrams per wake-up (the reader's READS): a reader at saturation


def cluster_query(qid: int, name: str, qtype: int) -> bytes:
    wire = b"".join(bytes((len(label),)) + label.encode() for label in name.rstrip(".").split("."))
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + wire + b"\0" + struct.pack("!2H", qtype, 1)


def spell(name: str, k: int) -> str:
    """The name as written the k-th way (k = 0: as is): its letters' case at random -- a different query, the
    same answer, so as many fronts as the mix's distinct names (dnsperf's `a` file: 10,000) without a cluster."""
    if k == 0:
        return name
    return "".join(c.upper() if random.random() < 0.5 else c for c in name)


class FeedSocket:
    """A UDP socket in memory for one reader: `feed()` sets recvfrom to hand out one wake-up's datagrams and
    sendto to keep the answers (both C-level callables, so the measured cost is the reader's own)."""

    def __init__(self):
        self.sent: dict[bytes, tuple] = {}
        self.sendto = self.sent.__setitem__
        self.recvfrom = None

    def feed(self, datagrams: list[tuple[bytes, tuple]]) -> None:
        self.recvfrom = functools.partial(next, iter(datagrams))

    def close(self) -> None:
        pass


def run_front(runtime, args) -> str:
    """The front lane: kdns's UDP reader and the ceiling's, on the same wake-ups of front answers."""
    import socket

    reader = next(iter(runtime.listeners.values()))[0]
    loop = asyncio.get_running_loop()
    loop.remove_reader(reader._fd)
    # the reader asks the kernel's queue size once a wake-up (FIONREAD): a socket with a datagram waiting
    pending = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pending.bind(("127.0.0.1", 0))
    pending.sendto(b"x", pending.getsockname())
    reader._fd = pending.fileno()
    real, sock = reader.sock, FeedSocket()
    try:
        reader.sock = sock
        return front_rounds(reader, sock, args)
    finally:
        reader.sock = real
        reader._fd = real.fileno()
        pending.close()


def front_rounds(reader, sock: FeedSocket, args) -> str:
    from ceiling import ReplayReader
    client = ("127.0.0.1", 40000)
    random.seed(1)
    if args.names:  # a generated cluster's `a` mix
        queries = list({cluster_query(0, name, 1): None for name in args.names})
    else:
        queries = list({cluster_query(0, spell(f"{name}.svc.cluster.local", k), qtype): None
                        for name in FRONT_NAMES for qtype in (1, 28) for k in range(args.spellings)})
    for _ in range(4):  # cached, then fronts
        for i in range(0, len(queries), WAKE):
            sock.feed([(queries[(i + j) % len(queries)], client) for j in range(WAKE)])
            reader._readable()
            while reader.backlog:
                reader._drain()
    fronts = reader.front
    asked = len(queries)
    queries = [q for q in queries if q[2:] in fronts]
    if len(queries) < asked // 2:
        raise SystemExit(f"only {len(queries)} of {asked} queries became front answers")
    # the ceiling replays kdns's own answers, keyed as it keys them (the question section)
    answers = {q[12:]: b"\0\0" + fronts[q[2:]].tail for q in queries}
    ceiling = ReplayReader(answers, FeedSocket())
    wakeups = []
    for i in range(max(1, args.queries // WAKE)):
        wake = []
        for j in range(WAKE):
            q = queries[(i * WAKE + j) % len(queries)]
            wake.append((struct.pack("!H", (i * WAKE + j) & 0xFFFF) + q[2:], client))
        wakeups.append(wake)
    n = len(wakeups) * WAKE
    rounds = {"kdns": [], "ceiling": []}
    for r in range(args.rounds):
        for name, target, call in (("kdns", sock, reader._readable), ("ceiling", ceiling.sock, ceiling.readable)):
            target.sent.clear()
            gc.collect()
            t = 0.0
            for wake in wakeups:
                target.feed(wake)
                t0 = time.perf_counter()
                call()
                t += time.perf_counter() - t0
                if len(target.sent) != WAKE:
                    raise SystemExit(f"{name}: {len(target.sent)} answers to {WAKE} queries")
                target.sent.clear()
            rounds[name].append(t / n * 1e6)
    reader.handler.flush()
    kdns_us, ceiling_us = min(rounds["kdns"][1:]), min(rounds["ceiling"][1:])
    return (f"{args.src or 'work tree'}: front answers {kdns_us:.3f} us, ceiling {ceiling_us:.3f} us per query, "
            f"{(kdns_us - ceiling_us) * 1000:+.0f} ns (least of {args.rounds - 1} rounds of {n:,}; "
            f"{len(queries)} of {asked} distinct queries front answers)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lane", choices=("direct", "front"), default="direct",
                   help="direct: the direct forward path; front: the UDP reader's front answers (vs the ceiling)")
    p.add_argument("--services", type=int, default=0,
                   help="front lane: a generated cluster of this many services (perf/gen_cluster.py) and its `a` "
                        "mix's names, instead of examples/cluster.yaml's")
    p.add_argument("--spellings", type=int, default=1,
                   help="front lane: ways each name is spelt (letter case), for as many distinct fronts")
    p.add_argument("--src", help="a directory with a kdns/ package to measure instead of the work tree's")
    p.add_argument("--queries", type=int, default=20000, help="queries per round")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--ops", action="store_true", help="count bytecodes per kdns function (one more round, traced)")
    args = p.parse_args()
    args.names = None
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
