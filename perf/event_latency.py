"""Event-to-answer latency: from a change at the source to the changed answer on the wire.

API mode: the aiohttp API double (tests/apiserver.py) applies a Service change, which it writes to
the open watch stream; a tight UDP query loop measures when kdns first answers the new address.
Manifest mode: the same through an atomically replaced YAML file (bounded by --poll-interval).

    .venv/bin/python perf/event_latency.py [--changes 300] [--mode api|manifests|both]

Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import struct
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from apiserver import FakeApiServer, namespace, service, write_kubeconfig  # noqa: E402
from harness import KdnsProcess  # noqa: E402

NAME = "probe.bench.svc.cluster.local"


def _query(name: str, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


def _answer_ip(reply: bytes) -> str | None:
    # the A record is the last 4 bytes of a one-answer reply
    ancount = struct.unpack_from("!H", reply, 6)[0]
    if ancount != 1:
        return None
    return socket.inet_ntoa(reply[-4:])


def wait_for_ip(sock: socket.socket, port: int, want: str, deadline: float) -> float:
    qid = 0
    while time.monotonic() < deadline:
        qid = (qid + 1) & 0xFFFF
        sock.sendto(_query(NAME, qid), ("127.0.0.1", port))
        try:
            reply = sock.recv(512)
        except socket.timeout:
            continue
        if _answer_ip(reply) == want:
            return time.monotonic()
    raise TimeoutError(f"{want} not served before the deadline")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def measure(kdns_args: list[str], change, changes: int) -> list[float]:
    """Start kdns, then `changes` times: change the probe's address and time until it is served."""
    latencies = []
    with KdnsProcess(*kdns_args) as kdns, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        wait_for_ip(sock, kdns.port, "10.100.0.1", time.monotonic() + 10)
        for i in range(changes):
            ip = f"10.100.{(i + 2) // 250}.{(i + 2) % 250 + 1}"
            start = time.monotonic()
            change(ip)
            latencies.append(wait_for_ip(sock, kdns.port, ip, start + 5) - start)
    return latencies


def run_api(changes: int) -> list[float]:
    with FakeApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        api.apply(namespace("bench"))
        api.apply(service("bench", "probe", "10.100.0.1"))
        kubeconfig = write_kubeconfig(os.path.join(tmp, "kubeconfig"), api.url, token=api.token)
        return measure(["--kubeconfig", kubeconfig], lambda ip: api.apply(service("bench", "probe", ip)), changes)


def run_manifests(changes: int, poll: float) -> list[float]:
    template = ("apiVersion: v1\nkind: Service\nmetadata: {{name: probe, namespace: bench}}\n"
                "spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cluster.yaml")

        def write(ip: str) -> None:
            with open(path + ".tmp", "w") as fh:
                fh.write(template.format(ip=ip))
            os.replace(path + ".tmp", path)

        write("10.100.0.1")
        return measure(["--manifests", tmp, "--poll-interval", str(poll)], write, changes)


def report(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"| {label} | {len(ms)} | {percentile(ms, 50):.2f} | {percentile(ms, 99):.2f} | {max(ms):.2f} | "
            f"{statistics.mean(ms):.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--mode", choices=["api", "manifests", "both"], default="both")
    parser.add_argument("--poll-interval", type=float, default=0.25)
    args = parser.parse_args()
    rows = []
    if args.mode in ("api", "both"):
        rows.append(report("API watch event → answer", run_api(args.changes)))
    if args.mode in ("manifests", "both"):
        rows.append(report(f"manifest file edit → answer (poll {args.poll_interval}s)",
                           run_manifests(min(args.changes, 60), args.poll_interval)))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| path | changes | p50 ms | p99 ms | max ms | mean ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
