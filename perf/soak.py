"""Soak: queries at a fixed rate while services churn through the API double; every answer is
checked against the states the API had, and kdns's RSS is sampled.

    .venv/bin/python perf/soak.py [--seconds 60] [--rate 2000] [--services 200] [--churn-interval 0.02]

Every change is confirmed: after applying it, the churner asks kdns until it serves the new state
(a change not served within --confirm-timeout counts as unserved). An answer is right if it is a
state the service had that kdns could serve during the query: applied to the API before the answer
came back, and not yet replaced by a state kdns had been seen serving before the query was sent.
No time window is assumed for the watch event. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
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
from harness import KdnsProcess, wait_until  # noqa: E402

NS = "soak"


@dataclass
class History:
    """Per service: its states in order (address, None once deleted), when each was applied to the
    API and when kdns was first seen serving it (monotonic seconds; None: not confirmed yet)."""

    applied: list = field(default_factory=list)
    states: list = field(default_factory=list)
    confirmed: list = field(default_factory=list)

    def add(self, when: float, state: str | None) -> int:
        self.applied.append(when)
        self.states.append(state)
        self.confirmed.append(None)
        return len(self.states) - 1

    def allowed(self, sent: float, received: float) -> set:
        """States kdns may answer for a query sent and answered at these times: applied before the
        answer came, and not replaced before the query was sent by a later state kdns was seen serving."""
        out = set()
        replaced = None  # the earliest confirmation of any later state
        for j in range(len(self.states) - 1, -1, -1):
            if self.applied[j] <= received and (replaced is None or replaced >= sent):
                out.add(self.states[j])
            if self.confirmed[j] is not None and (replaced is None or self.confirmed[j] < replaced):
                replaced = self.confirmed[j]
        return out


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


class Prober:
    """The churner's own client: asks kdns about one service until it serves the expected state."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.qid = 0

    def confirm(self, name: str, state: str | None, timeout: float) -> float | None:
        """When kdns was first seen answering `state` for `name` (None: not within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.qid = (self.qid + 1) & 0xFFFF
            self.sock.send(_query(f"{name}.{NS}.svc.cluster.local", self.qid))
            self.sock.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
            try:
                while True:
                    qid, rcode, ip = _parse(self.sock.recv(512))
                    if qid == self.qid:
                        break
            except socket.timeout:
                continue
            if rcode != 2 and (ip if rcode == 0 else None) == state:
                return time.monotonic()
        return None

    def close(self) -> None:
        self.sock.close()


def run(seconds: float = 60, rate: int = 2000, services: int = 200, churn_interval: float = 0.02,
        seed: int = 1, quiet: bool = False, api_restart_every: float = 0.0, min_restarts: int = 0,
        min_changes: int = 0, max_seconds: float | None = None, confirm_timeout: float = 10.0) -> dict:
    """Query for at least `seconds`, and until `min_restarts` API restarts and `min_changes` service
    changes are done (never longer than `max_seconds`, default seconds + 60)."""
    rng = random.Random(seed)
    histories = {f"svc-{i}": History() for i in range(services)}
    result = {"queries": 0, "answers": 0, "wrong": 0, "lost": 0, "servfail": 0, "changes": 0, "examples": [],
              "api_restarts": 0, "unserved": 0}
    max_seconds = max_seconds if max_seconds is not None else seconds + 60
    with FakeApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        api.apply(namespace(NS))
        for i, name in enumerate(histories):
            ip = f"10.{100 + i // 250}.{i % 250}.1"
            api.apply(service(NS, name, ip))
            histories[name].add(time.monotonic(), ip)
        kubeconfig = write_kubeconfig(os.path.join(tmp, "kubeconfig"), api.url, token=api.token)
        with KdnsProcess("--kubeconfig", kubeconfig, "--ready-listen", "127.0.0.1:0",
                         "--api-backoff-max", "0.5") as kdns:
            wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, timeout=30, what="kdns ready")
            ready = time.monotonic()
            for h in histories.values():
                h.confirmed[0] = ready
            pid = kdns.proc.pid
            rss = [(0.0, rss_kib(pid))]
            stop = threading.Event()
            prober = Prober(kdns.port)

            def confirm(name: str, index: int) -> None:
                h = histories[name]
                h.confirmed[index] = prober.confirm(name, h.states[index], confirm_timeout)
                if h.confirmed[index] is None:
                    result["unserved"] += 1
                    if len(result["examples"]) < 5:
                        result["examples"].append((name, "not served", h.states[index]))

            def churn() -> None:
                version = 0
                next_restart = time.monotonic() + api_restart_every if api_restart_every else float("inf")
                while not stop.is_set():
                    if time.monotonic() >= next_restart:
                        # an API server restart: streams cut, a few changes made while it is down,
                        # history compacted, so the watches get 410 and relist
                        mark = len(kdns.lines)
                        api.set_down(True)
                        kdns.wait_for_log(r"api_disconnected resource=Service", timeout=30, start=mark)
                        changed = []
                        for _ in range(5):
                            name = rng.choice(list(histories))
                            version += 1
                            ip = f"10.250.{version // 250 % 250}.{version % 250 + 1}"
                            api.apply(service(NS, name, ip))
                            changed.append((name, histories[name].add(time.monotonic(), ip)))
                        api.compact()
                        mark = len(kdns.lines)
                        api.set_down(False)
                        kdns.wait_for_log(r"api_relisted resource=Service", timeout=30, start=mark)
                        for name, index in changed:
                            if index == len(histories[name].states) - 1:  # the last change to it
                                confirm(name, index)
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
                        index = h.add(time.monotonic(), ip)
                    else:
                        api.delete("Service", NS, name)
                        index = h.add(time.monotonic(), None)
                    confirm(name, index)
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
            end, cap = start + seconds, start + max_seconds
            qid = 0
            next_sample = start + 1
            interval = 1.0 / rate
            next_send = start
            while time.monotonic() < cap and (time.monotonic() < end or result["api_restarts"] < min_restarts
                                              or result["changes"] < min_changes):
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
            elapsed = time.monotonic() - start
            stop.set()
            churner.join(max_seconds)
            drain = time.monotonic() + 5
            while sent and time.monotonic() < drain:
                receive()
                time.sleep(0.005)
            rss.append((time.monotonic() - start, rss_kib(pid)))
            sock.close()
            prober.close()
            alive = kdns.proc.poll() is None
            errors = [line for line in kdns.lines if "internal_error" in line or "Traceback" in line]
    result["lost"] = len(sent)
    for t_sent, t_recv, name, rcode, ip in checked:
        result["answers"] += 1
        if rcode == 2:
            result["servfail"] += 1
            continue
        got = ip if rcode == 0 else None
        allowed = histories[name].allowed(t_sent, t_recv)
        if got not in allowed:
            result["wrong"] += 1
            if len(result["examples"]) < 5:
                result["examples"].append((name, got, sorted(map(str, allowed))))
    result["relists"] = sum(1 for line in kdns.lines if "api_relist resource=Service" in line)
    result.update(seconds=round(elapsed, 1), rate=rate, services=services,
                  achieved_qps=round(result["answers"] / elapsed),
                  rss_start_kib=rss[0][1], rss_end_kib=rss[-1][1], rss_max_kib=max(r for _, r in rss),
                  alive=alive, internal_errors=len(errors))
    if not quiet:
        print(format_table(result))
    return result


def format_table(r: dict) -> str:
    return "\n".join([
        "| soak seconds | target qps | answered qps | service changes | API restarts (relists) | wrong answers | "
        "unserved changes | SERVFAIL | lost | RSS start → end (max) MiB | alive | internal errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {r['seconds']} | {r['rate']} | {r['achieved_qps']} | {r['changes']} | {r['api_restarts']} ({r['relists']}) | "
        f"{r['wrong']} | {r['unserved']} | {r['servfail']} | "
        f"{r['lost']} | {r['rss_start_kib'] / 1024:.1f} → {r['rss_end_kib'] / 1024:.1f} "
        f"({r['rss_max_kib'] / 1024:.1f}) | {r['alive']} | {r['internal_errors']} |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--churn-interval", type=float, default=0.02)
    parser.add_argument("--confirm-timeout", type=float, default=10.0,
                        help="seconds kdns has to serve a change before it counts as unserved")
    parser.add_argument("--api-restart-every", type=float, default=0.0, metavar="SECONDS",
                        help="restart the API double this often (streams cut, history compacted -> relist)")
    args = parser.parse_args()
    r = run(args.seconds, args.rate, args.services, args.churn_interval,
            api_restart_every=args.api_restart_every, confirm_timeout=args.confirm_timeout)
    for example in r["examples"]:
        print("wrong:", example)
    return 0 if r["wrong"] == 0 and r["unserved"] == 0 and r["alive"] and not r["internal_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
