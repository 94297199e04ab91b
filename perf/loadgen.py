"""A small open-loop DNS load generator over UDP, for when dnsperf is absent (and to cross-check it).

    .venv/bin/python perf/loadgen.py --port PORT --queries FILE [--rate 5000] [--duration 5]
        [--server 127.0.0.1] [--sockets 4] [--timeout 1.0] [--json]

Open loop: query k is due at start + k/rate whatever the server does, so a slow server cannot slow
the generator down and hide its own latency (no coordinated omission). Latency is measured from the
*scheduled* send time; if this process falls behind its schedule (it is Python: a few tens of
thousands of queries per second on one core), the report says so (`send_lag_ms`, `behind`), and
its latency figures then include that lag and are not the server's alone.

The query file is dnsperf's format: "name TYPE" per line, read round-robin. Queries go only to a
loopback address; the run is bounded by --duration plus --timeout, and by --max-queries.
Prints a summary (or one JSON object with --json): sent, received, lost, QPS achieved,
p50/p99/p99.9/max latency in ms, rcode counts.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import select
import socket
import struct
import sys
import time
from collections import Counter, OrderedDict

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33,
          "ANY": 255}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def encode_question(name: str, qtype: str) -> bytes:
    labels = [p for p in name.rstrip(".").split(".") if p]
    wire = b"".join(bytes([len(p)]) + p.encode("ascii") for p in labels) + b"\x00"
    code = QTYPES.get(qtype.upper())
    if code is None:
        code = int(qtype[4:]) if qtype.upper().startswith("TYPE") else 1
    return wire + struct.pack("!HH", code, 1)


def load_queries(path: str) -> list[bytes]:
    out = []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if not parts or parts[0].startswith(";"):
                continue
            out.append(encode_question(parts[0], parts[1] if len(parts) > 1 else "A"))
    if not out:
        raise SystemExit(f"{path}: no queries")
    return out


def percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[k]


def _check_loopback(host: str) -> None:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise SystemExit(f"--server must be a loopback IP address, got {host!r}") from None
    if not addr.is_loopback:
        raise SystemExit(f"refusing to send load to {host}: only loopback (127.0.0.0/8, ::1) is allowed")


def run(server: str, port: int, questions: list[bytes], rate: float, duration: float, sockets: int = 4,
        timeout: float = 1.0, max_queries: int = 5_000_000) -> dict:
    _check_loopback(server)
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    total = min(int(rate * duration), max_queries)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    socks = []
    for _ in range(max(1, sockets)):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.connect((server, port))
        s.setblocking(False)
        socks.append(s)
    fds = {s.fileno(): i for i, s in enumerate(socks)}
    pending: OrderedDict = OrderedDict()  # (sock index, id) -> scheduled time, in send order
    latencies: list[float] = []
    rcodes: Counter = Counter()
    lost = late_replies = 0
    sent = 0
    max_lag = lag_sum = 0.0
    nq = len(questions)
    ns = len(socks)
    pack_head = struct.Struct("!HHHHHH").pack
    clock = time.perf_counter
    start = clock()
    interval = 1.0 / rate
    end_send = start + total * interval
    hard_end = end_send + timeout + 0.5
    try:
        while True:
            now = clock()
            # 1. send everything that is due (open loop: the schedule never waits for replies)
            due = min(total, int((now - start) * rate) + 1)
            while sent < due:
                si = sent % ns
                qid = (sent // ns) & 0xFFFF
                key = (si, qid)
                if key in pending:  # the ID is reused while the old query is still out: it is lost
                    del pending[key]
                    lost += 1
                sched = start + sent * interval
                try:
                    socks[si].send(pack_head(qid, 0x0100, 1, 0, 0, 0) + questions[sent % nq])
                except (BlockingIOError, InterruptedError):
                    lost += 1  # our own send buffer is full: counted as lost, the schedule goes on
                else:
                    pending[key] = sched
                lag = now - sched
                lag_sum += lag
                if lag > max_lag:
                    max_lag = lag
                sent += 1
            # 2. expire what has waited longer than the timeout
            limit = now - timeout
            while pending:
                key, sched = next(iter(pending.items()))
                if sched >= limit:
                    break
                del pending[key]
                lost += 1
            if sent >= total and (not pending or now >= hard_end):
                lost += len(pending)
                pending.clear()
                break
            if now >= hard_end:
                break
            # 3. wait for replies until the next query is due
            wait = max(0.0, min(start + sent * interval, hard_end) - clock()) if sent < total else 0.05
            ready, _, _ = select.select(socks, [], [], wait)
            for s in ready:
                si = fds[s.fileno()]
                while True:
                    try:
                        data = s.recv(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionRefusedError:
                        break  # ICMP port unreachable: the queries will time out
                    if len(data) < 4:
                        continue
                    sched = pending.pop((si, (data[0] << 8) | data[1]), None)
                    if sched is None:
                        late_replies += 1
                        continue
                    latencies.append(clock() - sched)
                    rcodes[RCODES.get(data[3] & 0xF, str(data[3] & 0xF))] += 1
    finally:
        for s in socks:
            s.close()
    elapsed = clock() - start
    send_time = max(end_send - start, 1e-9)
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    received = len(latencies)
    return {
        "rate_target": rate, "duration_target": duration, "sent": sent, "received": received, "lost": lost,
        "lost_pct": 100.0 * lost / sent if sent else 0.0, "late_replies": late_replies,
        "qps_sent": sent / send_time, "qps": received / send_time, "elapsed": elapsed,
        "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "p999_ms": percentile(ms, 99.9),
        "max_ms": ms[-1] if ms else float("nan"), "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "send_lag_ms_max": max_lag * 1000, "send_lag_ms_mean": (lag_sum / sent * 1000) if sent else 0.0,
        # behind: on average more than a millisecond late, so latencies include our own lag
        "behind": sent > 0 and lag_sum / sent > 0.001,
        "rcodes": dict(rcodes),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="127.0.0.1", help="loopback address only")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--queries", required=True, help="dnsperf-format query file")
    p.add_argument("--rate", type=float, default=5000.0, help="queries per second (fixed)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of sending (max 600)")
    p.add_argument("--sockets", type=int, default=4, help="UDP source sockets (each its own ID space)")
    p.add_argument("--timeout", type=float, default=1.0, help="a reply later than this is lost")
    p.add_argument("--max-queries", type=int, default=5_000_000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if not 0 < a.duration <= 600:
        p.error("--duration must be in (0, 600]")
    result = run(a.server, a.port, load_queries(a.queries), a.rate, a.duration, a.sockets, a.timeout,
                 a.max_queries)
    if a.json:
        print(json.dumps(result))
    else:
        print(f"sent {result['sent']} received {result['received']} lost {result['lost']} "
              f"({result['lost_pct']:.2f}%) qps {result['qps']:.0f} (target {a.rate:.0f})")
        print(f"latency ms: p50 {result['p50_ms']:.3f} p99 {result['p99_ms']:.3f} "
              f"p99.9 {result['p999_ms']:.3f} max {result['max_ms']:.3f}")
        print(f"send lag ms: mean {result['send_lag_ms_mean']:.3f} max {result['send_lag_ms_max']:.3f}"
              + ("  (BEHIND SCHEDULE: latencies include the generator's own lag)" if result["behind"] else ""))
        print("rcodes: " + ", ".join(f"{k} {v}" for k, v in sorted(result["rcodes"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
