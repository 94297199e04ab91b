"""Soak: queries at a fixed rate while services churn through the API double; every change is
confirmed and every answer judged against the states the API had; kdns's RSS is sampled.

    .venv/bin/python perf/soak.py [--seconds 60] [--rate 2000] [--services 200] [--churn-interval 0.02]
        [--confirm-timeout 10] [--api-restart-every S [--api-down-seconds 2]] [--compact-every S]
        [--catchup-allowance 2]

Every change is recorded at the moment the API makes it, then confirmed: the churner asks kdns until
it serves the new state (a change not served within --confirm-timeout counts as *unserved*). An
answer is right if it is a state the service had that kdns could serve during the query: applied to
the API before the answer came back, and not yet replaced by a state kdns had been seen serving
before the query was sent. No time window is assumed for the watch event. Loopback only; bounded.

API restarts: the double refuses connections and drops the open ones, as a restarting apiserver
does, until kdns has logged api_disconnected, at least --api-down-seconds passed and a few changes
were made (the churn goes on while it is down, unconfirmed: kdns cannot know); the history is
compacted before it listens again, so every re-watch gets 410 and relists; the churner waits for
api_relisted, then confirms the services changed while it was down. --compact-every compacts
throughout as well, as etcd does. An answer that shows a state the API had already replaced is
*stale*: while the API is unreachable (kdns serves the last state it had), and after each return
when the state was replaced before the return (only the relist can bring the new one): counted per
restart with its "stale seconds" (from the return to the last such answer received), and *wrong*
if the query went out more than --catchup-allowance after the return.
"""

from __future__ import annotations

import argparse
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
from harness import KdnsProcess, wait_until  # noqa: E402

NS = "soak"
DOWN_CHANGES = 5  # changes made while the API is down, at least, in each restart
OUTAGE_EVENT_TIMEOUT = 30.0  # seconds kdns has to log api_disconnected / api_relisted


@dataclass
class History:
    """Per service: its states in order (address, None once deleted), when each was applied to the
    API and when kdns was first seen serving it (monotonic seconds; None: not confirmed)."""

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

    def replaced_at(self, state: str | None, before: float) -> float:
        """When the API replaced the last period in which the service had `state`, begun before `before`."""
        for k in range(len(self.states) - 1, -1, -1):
            if self.applied[k] <= before and self.states[k] == state:
                return self.applied[k + 1] if k + 1 < len(self.states) else float("inf")
        return float("-inf")


@dataclass
class Restart:
    """One API outage: when the double stopped answering and listened again, and what kdns logged."""

    down_at: float
    up_at: float = float("inf")
    changes_while_down: int = 0
    disconnect_logged: bool = False  # kdns logged api_disconnected for Service during the outage
    relist_logged: bool = False  # and api_relisted for Service after the return
    stale_answers: int = 0  # answers to queries sent after up_at showing a state replaced before it
    stale_seconds: float = 0.0  # from up_at to the last of those answers


def judge(checked: list, histories: dict, restarts: list, allowance: float | None, result: dict) -> None:
    """Sort every answer into right, SERVFAIL, stale (while down / after a return) or wrong; fill
    result and each Restart's staleness figures. allowance None: no time limit on staleness after
    a return (the event-based oracle alone judges it)."""
    for t_sent, t_recv, name, rcode, ip in checked:
        result["answers"] += 1
        if rcode == 2:
            result["servfail"] += 1
            continue
        got = ip if rcode == 0 else None
        h = histories[name]
        allowed = h.allowed(t_sent, t_recv)
        if got not in allowed:
            result["wrong"] += 1
            replaced = h.replaced_at(got, t_recv)
            _example(result, "wrong: not a state kdns could serve", name, got, sorted(map(str, allowed)),
                     "not its state before the answer" if replaced == float("-inf")
                     else f"asked {t_sent - replaced:.3f}s after it was replaced")
            continue
        # the restart this answer may be stale from: the last one that went down before the query
        restart = next((r for r in reversed(restarts) if r.down_at <= t_sent), None)
        if restart is None:
            continue
        replaced = h.replaced_at(got, t_recv)
        if t_sent < restart.up_at:
            if replaced <= t_sent:
                result["stale_while_down"] += 1
            continue
        if replaced > restart.up_at:
            continue  # the API still had it at the return: any later change comes by watch event
        restart.stale_answers += 1
        restart.stale_seconds = max(restart.stale_seconds, t_recv - restart.up_at)
        if allowance is not None and t_sent > restart.up_at + allowance:
            result["wrong"] += 1
            _example(result, "wrong: stale past the allowance", name, got, f"replaced {restart.up_at - replaced:.3f}s "
                     f"before the return, asked {t_sent - restart.up_at:.3f}s after it")


def _example(result: dict, *example) -> None:
    if len(result["examples"]) < 5:
        result["examples"].append(example)


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


def _logged(kdns: KdnsProcess, pattern: str, start: int) -> bool:
    rx = re.compile(pattern)
    return any(rx.search(line) for line in kdns.lines[start:])


def run(seconds: float = 60, rate: int = 2000, services: int = 200, churn_interval: float = 0.02,
        seed: int = 1, quiet: bool = False, api_restart_every: float = 0.0, api_down_seconds: float = 0.3,
        compact_every: float = 0.0, catchup_allowance: float | None = 2.0, min_restarts: int = 0,
        min_changes: int = 0, max_seconds: float | None = None, confirm_timeout: float = 10.0) -> dict:
    """Query for at least `seconds`, and until `min_restarts` API restarts and `min_changes` service
    changes are done (never longer than `max_seconds`, default seconds + 60)."""
    rng = random.Random(seed)
    histories = {f"svc-{i}": History() for i in range(services)}
    restarts: list[Restart] = []
    result = {"queries": 0, "answers": 0, "wrong": 0, "lost": 0, "servfail": 0, "changes": 0, "examples": [],
              "unserved": 0, "api_restarts": 0, "stale_while_down": 0, "compactions": 0}
    max_seconds = max_seconds if max_seconds is not None else seconds + 60
    with FakeApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        api.apply(namespace(NS))
        for i, name in enumerate(histories):
            ip = f"10.{100 + i // 250}.{i % 250}.1"
            histories[name].add(time.monotonic(), ip)
            api.apply(service(NS, name, ip))
        with KdnsProcess(*kubeconfig_args(api, tmp), "--ready-listen", "127.0.0.1:0",
                         "--metrics-listen", "127.0.0.1:0") as kdns:
            wait_until(lambda: kdns.get("ready", "/ready")[0] == 200, timeout=30, what="kdns ready")
            ready = time.monotonic()
            for h in histories.values():
                h.confirmed[0] = ready
            pid = kdns.proc.pid
            rss = [(0.0, rss_kib(pid))]
            stop = threading.Event()
            prober = Prober(kdns.port)
            version = 0

            def change() -> tuple[str, int]:
                # recorded just before the API makes it: kdns may serve it as soon as the API has it
                nonlocal version
                name = rng.choice(list(histories))
                h = histories[name]
                version += 1
                if h.states[-1] is None or rng.random() < 0.8:
                    ip = f"10.{200 + version // 60000 % 50}.{version // 250 % 240}.{version % 250 + 1}"
                    index = h.add(time.monotonic(), ip)
                    api.apply(service(NS, name, ip))
                else:
                    index = h.add(time.monotonic(), None)
                    api.delete("Service", NS, name)
                result["changes"] += 1
                return name, index

            def confirm(name: str, index: int) -> None:
                h = histories[name]
                h.confirmed[index] = prober.confirm(name, h.states[index], confirm_timeout)
                if h.confirmed[index] is None:
                    result["unserved"] += 1
                    _example(result, "unserved:", name, h.states[index])

            def restart_api() -> None:
                # the API process goes away (connections refused, open ones dropped) while the churn
                # goes on unconfirmed; history is compacted, so the re-watches get 410; it listens again
                restart = Restart(down_at=time.monotonic())
                restarts.append(restart)
                mark = len(kdns.lines)
                api.set_unreachable(True)
                changed: dict[str, int] = {}
                up_after, give_up = restart.down_at + api_down_seconds, restart.down_at + OUTAGE_EVENT_TIMEOUT
                while time.monotonic() < give_up:
                    restart.disconnect_logged = restart.disconnect_logged or _logged(
                        kdns, r"api_disconnected resource=Service", mark)
                    if (restart.disconnect_logged and restart.changes_while_down >= DOWN_CHANGES
                            and time.monotonic() >= up_after):
                        break
                    name, index = change()
                    changed[name] = index
                    restart.changes_while_down += 1
                    time.sleep(churn_interval)
                api.compact()
                mark = len(kdns.lines)
                api.set_unreachable(False)
                restart.up_at = time.monotonic()
                try:
                    kdns.wait_for_log(r"api_relisted resource=Service", timeout=OUTAGE_EVENT_TIMEOUT, start=mark)
                    restart.relist_logged = True
                except AssertionError:
                    pass  # reported (restarts_without_relist); the confirmations below show what is served
                for name, index in changed.items():
                    if index == len(histories[name].states) - 1:  # still its last change
                        confirm(name, index)
                result["api_restarts"] += 1

            def churn() -> None:
                next_restart = time.monotonic() + api_restart_every if api_restart_every else float("inf")
                while not stop.is_set():
                    if time.monotonic() >= next_restart:
                        restart_api()
                        next_restart = time.monotonic() + api_restart_every
                        continue
                    confirm(*change())
                    stop.wait(churn_interval)

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
            if compact_every:
                helpers.append(threading.Thread(target=compactor, daemon=True))
            for thread in helpers:
                thread.start()
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
            for thread in helpers:
                thread.join(2 * OUTAGE_EVENT_TIMEOUT + confirm_timeout * (DOWN_CHANGES + 1))
            drain = time.monotonic() + 5
            while sent and time.monotonic() < drain:
                receive()
                time.sleep(0.005)
            rss.append((time.monotonic() - start, rss_kib(pid)))
            sock.close()
            prober.close()
            alive = kdns.proc.poll() is None
            errors = [line for line in kdns.lines if "internal_error" in line or "Traceback" in line]
            relists = [line for line in kdns.lines if " api_relist " in line]
            catchups = [float(m.group(1)) for line in kdns.lines
                        if (m := re.search(r"api_relisted .*catchup_seconds=([\d.]+)", line))]
    result["lost"] = len(sent)
    judge(checked, histories, restarts, catchup_allowance, result)
    result.update(seconds=round(elapsed, 1), rate=rate, services=services,
                  achieved_qps=round(result["answers"] / elapsed),
                  rss_start_kib=rss[0][1], rss_end_kib=rss[-1][1], rss_max_kib=max(r for _, r in rss),
                  alive=alive, internal_errors=len(errors),
                  relists=sum(" resource=Service " in line for line in relists), relists_all=len(relists),
                  relist_retries=sum("retry_in=" in line for line in relists),
                  changes_while_down=[r.changes_while_down for r in restarts],
                  outages_unnoticed=sum(not r.disconnect_logged for r in restarts),
                  restarts_without_relist=sum(not r.relist_logged for r in restarts),
                  stale_after_return=[r.stale_answers for r in restarts],
                  stale_seconds=[round(r.stale_seconds, 3) for r in restarts],
                  catchup_max=max(catchups, default=0.0), catchup_allowance=catchup_allowance)
    if not quiet:
        print(format_table(result))
    return result


def format_table(r: dict) -> str:
    rows = [
        "| soak seconds | target qps | answered qps | service changes | API restarts (relists: Service / all) | "
        "wrong answers | unserved changes | SERVFAIL | lost | RSS start → end (max) MiB | alive | internal errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {r['seconds']} | {r['rate']} | {r['achieved_qps']} | {r['changes']} | {r['api_restarts']} "
        f"({r['relists']} / {r['relists_all']}) | {r['wrong']} | {r['unserved']} | {r['servfail']} | "
        f"{r['lost']} | {r['rss_start_kib'] / 1024:.1f} → {r['rss_end_kib'] / 1024:.1f} "
        f"({r['rss_max_kib'] / 1024:.1f}) | {r['alive']} | {r['internal_errors']} |",
    ]
    if r["api_restarts"]:
        rows += [
            "",
            "| restarts (without api_disconnected / api_relisted logged) | changes while down | compactions | "
            "stale answers while down | stale answers after each return | stale seconds after each return | "
            "max catch-up (kdns_api_catchup_seconds) | relists that waited |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {r['api_restarts']} ({r['outages_unnoticed']} / {r['restarts_without_relist']}) | "
            f"{', '.join(map(str, r['changes_while_down']))} | {r['compactions']} + 1 per restart | "
            f"{r['stale_while_down']} | {', '.join(map(str, r['stale_after_return']))} | "
            f"{', '.join(f'{s:.3f}' for s in r['stale_seconds'])} | {r['catchup_max']:.3f} s | {r['relist_retries']} |",
        ]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--churn-interval", type=float, default=0.02)
    parser.add_argument("--confirm-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="seconds kdns has to serve a change before it counts as unserved")
    parser.add_argument("--api-restart-every", type=float, default=0.0, metavar="SECONDS",
                        help="restart the API double this often (connections refused, history compacted -> relist)")
    parser.add_argument("--api-down-seconds", type=float, default=2.0, metavar="SECONDS",
                        help="how long each restart keeps the API unreachable, at least")
    parser.add_argument("--compact-every", type=float, default=0.0, metavar="SECONDS",
                        help="compact the API's history this often as well (etcd's compaction)")
    parser.add_argument("--catchup-allowance", type=float, default=2.0, metavar="SECONDS",
                        help="stale answers to queries sent this long after an API return are not counted wrong")
    args = parser.parse_args()
    r = run(args.seconds, args.rate, args.services, args.churn_interval,
            api_restart_every=args.api_restart_every, api_down_seconds=args.api_down_seconds,
            compact_every=args.compact_every, catchup_allowance=args.catchup_allowance,
            confirm_timeout=args.confirm_timeout)
    for example in r["examples"]:
        print(*example)
    ok = not (r["wrong"] or r["unserved"] or r["servfail"] or r["outages_unnoticed"] or r["restarts_without_relist"])
    return 0 if ok and r["alive"] and not r["internal_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
