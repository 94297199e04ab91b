"""Soak: queries at a fixed rate while services churn through the API double; every answer is
checked against the state the API had, and kdns's RSS is sampled.

    .venv/bin/python perf/soak.py [--seconds 60] [--rate 2000] [--services 200] [--churn-interval 0.02]

An answer is right if it equals the state of that service at some moment between (query sent -
--lag) and (answer received): --lag allows for the watch event still being on its way (measured
event-to-answer p99 is under 1 ms; the default allows 50 ms). Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from apiserver import FakeApiServer, namespace, service, write_kubeconfig  # noqa: E402
from harness import KdnsProcess  # noqa: E402

NS = "soak"


@dataclass
class History:
    """Per service: times (monotonic) and the address from then on (None: deleted)."""

    times: list = field(default_factory=list)
    states: list = field(default_factory=list)

    def add(self, when: float, state: str | None) -> None:
        self.times.append(when)
        self.states.append(state)

    def states_between(self, start: float, end: float) -> set:
        i = max(0, bisect.bisect_right(self.times, start) - 1)
        j = bisect.bisect_right(self.times, end)
        return set(self.states[i:max(j, i + 1)])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _query(name: str, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


def _parse(reply: bytes) -> tuple[int, int, str | None]:
    qid, flags, _, an, _, _ = struct.unpack_from("!HHHHHH", reply)
    rcode = flags & 0x0F
    ip = socket.inet_ntoa(reply[-4:]) if rcode == 0 and an == 1 else None
    return qid, rcode, ip


def run(seconds: float = 60, rate: int = 2000, services: int = 200, churn_interval: float = 0.02,
        lag: float = 0.05, seed: int = 1, quiet: bool = False, api_restart_every: float = 0.0) -> dict:
    rng = random.Random(seed)
    histories = {f"svc-{i}": History() for i in range(services)}
    result = {"queries": 0, "answers": 0, "wrong": 0, "lost": 0, "servfail": 0, "changes": 0, "examples": [],
              "api_restarts": 0}
    with FakeApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        api.apply(namespace(NS))
        for i, name in enumerate(histories):
            ip = f"10.{100 + i // 250}.{i % 250}.1"
            api.apply(service(NS, name, ip))
            histories[name].add(time.monotonic(), ip)
        kubeconfig = write_kubeconfig(os.path.join(tmp, "kubeconfig"), api.url, token=api.token)
        with KdnsProcess("--kubeconfig", kubeconfig, "--ready-listen", "127.0.0.1:0",
                         "--api-backoff-max", "0.5") as kdns:
            deadline = time.monotonic() + 20
            while kdns.get("ready", "/ready")[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("kdns did not become ready")
                time.sleep(0.05)
            pid = kdns.proc.pid
            rss = [(0.0, rss_kib(pid))]
            stop = threading.Event()

            def churn() -> None:
                version = 0
                next_restart = time.monotonic() + api_restart_every if api_restart_every else float("inf")
                while not stop.is_set():
                    if time.monotonic() >= next_restart:
                        # an API server restart: streams cut, a few changes made while it is down,
                        # history compacted, so the watches get 410 and relist. kdns cannot know the
                        # changes before it reconnects: they count from the moment it has.
                        mark = len(kdns.lines)
                        api.set_down(True)
                        changed = []
                        for _ in range(5):
                            name = rng.choice(list(histories))
                            version += 1
                            ip = f"10.250.{version // 250 % 250}.{version % 250 + 1}"
                            api.apply(service(NS, name, ip))
                            changed.append((name, ip))
                        stop.wait(0.3)
                        api.compact()
                        api.set_down(False)
                        kdns.wait_for_log(r"api_relisted resource=Service", timeout=10, start=mark)
                        now = time.monotonic()
                        for name, ip in changed:
                            histories[name].add(now, ip)
                        result["api_restarts"] += 1
                        result["changes"] += len(changed)
                        next_restart = time.monotonic() + api_restart_every
                        continue
                    name = rng.choice(list(histories))
                    h = histories[name]
                    version += 1
                    if h.states[-1] is None or rng.random() < 0.8:
                        ip = f"10.{200 + version // 60000 % 50}.{version // 250 % 240}.{version % 250 + 1}"
                        api.apply(service(NS, name, ip))
                        h.add(time.monotonic(), ip)
                    else:
                        api.delete("Service", NS, name)
                        h.add(time.monotonic(), None)
                    result["changes"] += 1
                    stop.wait(churn_interval)

            sent: dict[int, tuple[float, str]] = {}
            checked: list = []
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            names = list(histories)

            def receive() -> None:
                while True:
                    try:
                        data = sock.recv(512)
                    except BlockingIOError:
                        return
                    now = time.monotonic()
                    qid, rcode, ip = _parse(data)
                    info = sent.pop(qid, None)
                    if info is not None:
                        checked.append((info[0], now, info[1], rcode, ip))

            churner = threading.Thread(target=churn, daemon=True)
            churner.start()
            start = time.monotonic()
            end = start + seconds
            qid = 0
            next_sample = start + 1
            interval = 1.0 / rate
            next_send = start
            while time.monotonic() < end:
                now = time.monotonic()
                while next_send <= now:
                    qid = (qid + 1) & 0xFFFF
                    name = rng.choice(names)
                    sent[qid] = (time.monotonic(), name)
                    sock.sendto(_query(f"{name}.{NS}.svc.cluster.local", qid), ("127.0.0.1", kdns.port))
                    result["queries"] += 1
                    next_send += interval
                receive()
                if now >= next_sample:
                    rss.append((now - start, rss_kib(pid)))
                    next_sample += 1
                time.sleep(min(0.001, max(0.0, next_send - time.monotonic())))
            stop.set()
            churner.join(5)
            drain = time.monotonic() + 1
            while sent and time.monotonic() < drain:
                receive()
                time.sleep(0.005)
            rss.append((time.monotonic() - start, rss_kib(pid)))
            sock.close()
            alive = kdns.proc.poll() is None
            errors = [line for line in kdns.lines if "internal_error" in line or "Traceback" in line]
    result["lost"] = len(sent)
    for t_sent, t_recv, name, rcode, ip in checked:
        result["answers"] += 1
        if rcode == 2:
            result["servfail"] += 1
            continue
        got = ip if rcode == 0 else None
        allowed = histories[name].states_between(t_sent - lag, t_recv)
        if got not in allowed:
            result["wrong"] += 1
            if len(result["examples"]) < 5:
                result["examples"].append((name, got, sorted(map(str, allowed))))
    result["relists"] = sum(1 for line in kdns.lines if "api_relist resource=Service" in line)
    result.update(seconds=seconds, rate=rate, services=services, achieved_qps=round(result["answers"] / seconds),
                  rss_start_kib=rss[0][1], rss_end_kib=rss[-1][1], rss_max_kib=max(r for _, r in rss),
                  alive=alive, internal_errors=len(errors))
    if not quiet:
        print(format_table(result))
    return result


def format_table(r: dict) -> str:
    return "\n".join([
        "| soak seconds | target qps | answered qps | service changes | API restarts (relists) | wrong answers | "
        "SERVFAIL | lost | RSS start → end (max) MiB | alive | internal errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {r['seconds']} | {r['rate']} | {r['achieved_qps']} | {r['changes']} | {r['api_restarts']} ({r['relists']}) | "
        f"{r['wrong']} | {r['servfail']} | "
        f"{r['lost']} | {r['rss_start_kib'] / 1024:.1f} → {r['rss_end_kib'] / 1024:.1f} "
        f"({r['rss_max_kib'] / 1024:.1f}) | {r['alive']} | {r['internal_errors']} |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--churn-interval", type=float, default=0.02)
    parser.add_argument("--lag", type=float, default=0.05)
    parser.add_argument("--api-restart-every", type=float, default=0.0, metavar="SECONDS",
                        help="restart the API double this often (streams cut, history compacted -> relist)")
    args = parser.parse_args()
    r = run(args.seconds, args.rate, args.services, args.churn_interval, args.lag,
            api_restart_every=args.api_restart_every)
    for example in r["examples"]:
        print("wrong:", example)
    return 0 if r["wrong"] == 0 and r["alive"] and not r["internal_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
