"""Soak: queries at a fixed rate while services churn through the API double; every answer is
checked against the state the API had, and kdns's RSS is sampled.

    .venv/bin/python perf/soak.py [--seconds 60] [--rate 2000] [--services 200] [--churn-interval 0.02]
        [--api-restart-every S [--api-down-seconds 2]] [--compact-every S] [--catchup-allowance 2]

An answer is right if it equals the state of that service at some moment between (query sent -
--lag) and (answer received): --lag allows for the watch event still being on its way (measured
event-to-answer p99 is under 1 ms; the default allows 50 ms). Loopback only; bounded in time.

API restarts: the double refuses connections for --api-down-seconds and drops the open ones, as a
restarting apiserver does; the churn goes on meanwhile (recorded when the API changed, not when kdns
could know), and the history is compacted before it listens again, so every re-watch gets 410 and
relists. --compact-every compacts throughout as well, as etcd does. An answer that shows an older
state is *stale*: expected while the API is unreachable (kdns serves the last state it had), counted
per restart after the API's return (the "stale seconds": from the return to the last stale answer
received), and *wrong* when it comes more than --catchup-allowance after the return, or outside any
restart, or was never the service's state at all.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import re
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from apiserver import FakeApiServer, kubeconfig_args, namespace, service  # noqa: E402
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

    def replaced_at(self, state: str | None, before: float) -> float:
        """When the last period in which the service had `state`, begun before `before`, ended."""
        j = bisect.bisect_right(self.times, before)
        for k in range(j - 1, -1, -1):
            if self.states[k] == state:
                return self.times[k + 1] if k + 1 < len(self.times) else float("inf")
        return float("-inf")


@dataclass
class Restart:
    """One API outage: when the double stopped answering, and when it listened again."""

    down_at: float
    up_at: float = float("inf")
    stale_answers: int = 0  # stale answers to queries sent after up_at (beyond the allowance: also wrong)
    stale_seconds: float = 0.0  # from up_at to the last of those answers


def judge(checked: list, histories: dict, restarts: list, lag: float, allowance: float, result: dict) -> None:
    """Sort every answer into right, SERVFAIL, stale (while down / after the return, within the
    allowance) or wrong; fill result and each Restart's staleness figures."""
    for t_sent, t_recv, name, rcode, ip in checked:
        result["answers"] += 1
        if rcode == 2:
            result["servfail"] += 1
            continue
        got = ip if rcode == 0 else None
        if got in histories[name].states_between(t_sent - lag, t_recv):
            continue
        # the restart this answer may be stale from: the last one that went down before it came
        restart = next((r for r in reversed(restarts) if r.down_at <= t_recv), None)
        if restart is None or got not in histories[name].states_between(restart.down_at - lag, t_recv):
            result["wrong"] += 1  # never the state since (or no restart at all): wrong as without restarts
            _example(result, histories, name, got, t_sent, t_recv, lag)
            continue
        if t_sent < restart.up_at:
            result["stale_while_down"] += 1
            continue
        in_allowance = t_sent <= restart.up_at + allowance
        # past the allowance, only a state replaced before the return is this restart's staleness
        # (a later one should have come by watch event: late, it is wrong as without restarts)
        if in_allowance or histories[name].replaced_at(got, t_recv) <= restart.up_at:
            restart.stale_answers += 1
            restart.stale_seconds = max(restart.stale_seconds, t_recv - restart.up_at)
        if in_allowance:
            continue
        result["wrong"] += 1
        _example(result, histories, name, got, t_sent, t_recv, lag)


def _example(result: dict, histories: dict, name: str, got: str | None, t_sent: float, t_recv: float,
             lag: float) -> None:
    if len(result["examples"]) < 5:
        allowed = histories[name].states_between(t_sent - lag, t_recv)
        late = t_sent - histories[name].replaced_at(got, t_recv)
        result["examples"].append((name, got, sorted(map(str, allowed)), f"asked {late:.3f}s after it was replaced"))


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
        lag: float = 0.05, seed: int = 1, quiet: bool = False, api_restart_every: float = 0.0,
        api_down_seconds: float = 0.3, compact_every: float = 0.0, catchup_allowance: float = 5.0) -> dict:
    rng = random.Random(seed)
    histories = {f"svc-{i}": History() for i in range(services)}
    restarts: list[Restart] = []
    result = {"queries": 0, "answers": 0, "wrong": 0, "lost": 0, "servfail": 0, "changes": 0, "examples": [],
              "stale_while_down": 0, "compactions": 0}
    with FakeApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        api.apply(namespace(NS))
        for i, name in enumerate(histories):
            ip = f"10.{100 + i // 250}.{i % 250}.1"
            histories[name].add(time.monotonic(), ip)
            api.apply(service(NS, name, ip))
        with KdnsProcess(*kubeconfig_args(api, tmp), "--ready-listen", "127.0.0.1:0",
                         "--metrics-listen", "127.0.0.1:0") as kdns:
            deadline = time.monotonic() + 20
            while kdns.get("ready", "/ready")[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("kdns did not become ready")
                time.sleep(0.05)
            pid = kdns.proc.pid
            rss = [(0.0, rss_kib(pid))]
            stop = threading.Event()

            def churn() -> None:
                # goes on while the API is unreachable too: its state changes, kdns cannot know yet
                version = 0
                while not stop.is_set():
                    name = rng.choice(list(histories))
                    h = histories[name]
                    version += 1
                    if h.states[-1] is None or rng.random() < 0.8:
                        ip = f"10.{200 + version // 60000 % 50}.{version // 250 % 240}.{version % 250 + 1}"
                        h.add(time.monotonic(), ip)  # before the API has it: the judge's window covers both
                        api.apply(service(NS, name, ip))
                    else:
                        h.add(time.monotonic(), None)
                        api.delete("Service", NS, name)
                    result["changes"] += 1
                    stop.wait(churn_interval)

            def restarter() -> None:
                # the API process goes away (connections refused), history is compacted, it listens again
                while not stop.wait(api_restart_every):
                    restart = Restart(down_at=time.monotonic())
                    restarts.append(restart)
                    api.set_unreachable(True)
                    stop.wait(api_down_seconds)
                    api.compact()
                    api.set_unreachable(False)
                    restart.up_at = time.monotonic()

            def compactor() -> None:
                while not stop.wait(compact_every):
                    api.compact()
                    result["compactions"] += 1

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

            helpers = [threading.Thread(target=churn, daemon=True)]
            if api_restart_every:
                helpers.append(threading.Thread(target=restarter, daemon=True))
            if compact_every:
                helpers.append(threading.Thread(target=compactor, daemon=True))
            for thread in helpers:
                thread.start()
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
            for thread in helpers:
                thread.join(10)
            drain = time.monotonic() + 1
            while sent and time.monotonic() < drain:
                receive()
                time.sleep(0.005)
            rss.append((time.monotonic() - start, rss_kib(pid)))
            sock.close()
            alive = kdns.proc.poll() is None
            errors = [line for line in kdns.lines if "internal_error" in line or "Traceback" in line]
            relists = [line for line in kdns.lines if " api_relist " in line]
            catchups = [float(m.group(1)) for line in kdns.lines
                        if (m := re.search(r"api_relisted .*catchup_seconds=([\d.]+)", line))]
    result["lost"] = len(sent)
    judge(checked, histories, restarts, lag, catchup_allowance, result)
    result.update(seconds=seconds, rate=rate, services=services, achieved_qps=round(result["answers"] / seconds),
                  rss_start_kib=rss[0][1], rss_end_kib=rss[-1][1], rss_max_kib=max(r for _, r in rss),
                  alive=alive, internal_errors=len(errors), api_restarts=len(restarts),
                  relists=sum(" resource=Service " in line for line in relists), relists_all=len(relists),
                  relist_retries=sum("retry_in=" in line for line in relists),
                  stale_after_return=[r.stale_answers for r in restarts],
                  stale_seconds=[round(r.stale_seconds, 3) for r in restarts],
                  catchup_max=max(catchups, default=0.0), catchup_allowance=catchup_allowance)
    if not quiet:
        print(format_table(result))
    return result


def format_table(r: dict) -> str:
    rows = [
        "| soak seconds | target qps | answered qps | service changes | API restarts (relists: Service / all) | "
        "wrong answers | SERVFAIL | lost | RSS start → end (max) MiB | alive | internal errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {r['seconds']} | {r['rate']} | {r['achieved_qps']} | {r['changes']} | {r['api_restarts']} "
        f"({r['relists']} / {r['relists_all']}) | {r['wrong']} | {r['servfail']} | "
        f"{r['lost']} | {r['rss_start_kib'] / 1024:.1f} → {r['rss_end_kib'] / 1024:.1f} "
        f"({r['rss_max_kib'] / 1024:.1f}) | {r['alive']} | {r['internal_errors']} |",
    ]
    if r["api_restarts"]:
        rows += [
            "",
            "| restarts | compactions | stale answers while down | stale answers after each return | "
            "stale seconds after each return | max catch-up (kdns_api_catchup_seconds) | relists that waited |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['api_restarts']} | {r['compactions']} + 1 per restart | {r['stale_while_down']} | "
            f"{', '.join(map(str, r['stale_after_return']))} | {', '.join(f'{s:.3f}' for s in r['stale_seconds'])} | "
            f"{r['catchup_max']:.3f} s | {r['relist_retries']} |",
        ]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--churn-interval", type=float, default=0.02)
    parser.add_argument("--lag", type=float, default=0.05)
    parser.add_argument("--api-restart-every", type=float, default=0.0, metavar="SECONDS",
                        help="restart the API double this often (connections refused, history compacted -> relist)")
    parser.add_argument("--api-down-seconds", type=float, default=2.0, metavar="SECONDS",
                        help="how long each restart keeps the API unreachable")
    parser.add_argument("--compact-every", type=float, default=0.0, metavar="SECONDS",
                        help="compact the API's history this often as well (etcd's compaction)")
    parser.add_argument("--catchup-allowance", type=float, default=2.0, metavar="SECONDS",
                        help="stale answers to queries sent this long after an API return are not counted wrong")
    args = parser.parse_args()
    r = run(args.seconds, args.rate, args.services, args.churn_interval, args.lag,
            api_restart_every=args.api_restart_every, api_down_seconds=args.api_down_seconds,
            compact_every=args.compact_every, catchup_allowance=args.catchup_allowance)
    for example in r["examples"]:
        print("wrong:", example)
    return 0 if r["wrong"] == 0 and r["servfail"] == 0 and r["alive"] and not r["internal_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
