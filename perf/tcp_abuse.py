"""TCP abuse while UDP is measured: idle connections up to the limit, slowloris senders and
never-reading pipeliners against kdns, with UDP latency sampled before and during.

    .venv/bin/python perf/tcp_abuse.py [--connections 1000] [--seconds 10] [--rate 2000]

Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import EXAMPLE, KdnsProcess  # noqa: E402

NAME = "kubernetes.default.svc.cluster.local"


def _query(qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in NAME.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


def udp_latencies(port: int, seconds: float, rate: int) -> tuple[list[float], int]:
    """Paced UDP queries for `seconds`; returns (latencies in ms, lost)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent: dict[int, float] = {}
    lat: list[float] = []
    interval, qid = 1.0 / rate, 0
    start = time.monotonic()
    next_send = start
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        while next_send <= now:
            qid = (qid + 1) & 0xFFFF
            sent[qid] = time.monotonic()
            sock.sendto(_query(qid), ("127.0.0.1", port))
            next_send += interval
        while True:
            try:
                data = sock.recv(512)
            except BlockingIOError:
                break
            t0 = sent.pop(struct.unpack_from("!H", data)[0], None)
            if t0 is not None:
                lat.append((time.monotonic() - t0) * 1000)
        time.sleep(0.0005)
    drain = time.monotonic() + 1
    while sent and time.monotonic() < drain:
        try:
            data = sock.recv(512)
            t0 = sent.pop(struct.unpack_from("!H", data)[0], None)
            if t0 is not None:
                lat.append((time.monotonic() - t0) * 1000)
        except BlockingIOError:
            time.sleep(0.001)
    sock.close()
    return lat, len(sent)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 100)), hard))
    rows = []
    with KdnsProcess("--manifests", EXAMPLE, "--tcp-max-connections", str(args.connections),
                     "--tcp-idle-timeout", "10") as kdns:
        base, base_lost = udp_latencies(kdns.port, args.seconds / 2, args.rate)
        rows.append(("no TCP load", 0, base, base_lost))
        stop = threading.Event()
        held: list[socket.socket] = []
        opened = refused = 0
        for _ in range(args.connections + 100):  # 100 beyond the limit must be closed at once
            s = socket.create_connection(("127.0.0.1", kdns.port), timeout=5)
            held.append(s)
            opened += 1

        def slowloris() -> None:  # re-open and trickle one byte at a time, bounded by the stop flag
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", kdns.port), timeout=2) as s:
                        for b in b"\x00\x30":
                            s.sendall(bytes([b]))
                            if stop.wait(0.5):
                                return
                except OSError:
                    stop.wait(0.1)

        threads = [threading.Thread(target=slowloris, daemon=True) for _ in range(20)]
        for t in threads:
            t.start()
        during, during_lost = udp_latencies(kdns.port, args.seconds, args.rate)
        stop.set()
        for s in held:
            s.settimeout(0.01)
            try:
                if s.recv(1) == b"":
                    refused += 1
            except (socket.timeout, ConnectionResetError):
                pass
            except OSError:
                refused += 1
            s.close()
        rows.append((f"{opened} idle + 20 slowloris TCP connections", opened, during, during_lost))
        alive = kdns.proc.poll() is None
    print(f"TCP limit {args.connections}: {refused} of {opened} idle connections were closed by kdns "
          f"(the ones over the limit, plus any past the 10 s idle timeout); kdns alive: {alive}")
    print("| UDP while | connections opened | answers | lost | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, n, lat, lost in rows:
        print(f"| {label} | {n} | {len(lat)} | {lost} | {statistics.median(lat):.3f} | {pct(lat, 99):.3f} | "
              f"{max(lat):.3f} |")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
