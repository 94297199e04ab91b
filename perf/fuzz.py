"""Long fuzzing run: the test suite's generators (tests/fuzz_dns.py, tests/fuzz_data.py) for a bounded
time against the live kdns server (raw UDP datagrams, raw TCP streams with lying length prefixes)
and the in-process targets (QueryHandler, every qtype x class, Corefile parser, manifest loader,
the webhook's AdmissionReview handling, and the real webhook over HTTPS).

    .venv/bin/python perf/fuzz.py [--minutes 5] [--seed 1] [--targets wire,sweep,udp,tcp,...]

Prints one markdown table (inputs tried, crashes, hangs, control-query failures, wrong outputs,
the slowest input) and, when anything failed, up to 5 reproducers per target; writes no files
(temporary ones live in a temporary directory that is removed). Loopback only; every loop is
bounded in time. In-process targets run in a worker process with a 1.5 GiB address-space limit
and a per-input watchdog, so a hang or a memory blow-up is counted and the run goes on.

Definitions: crash = an exception escaped where none may (or the server process died); hang = no
answer within the watchdog (10 s in-process) or the control timeout (2 s live), or a TCP
connection the server did not close within idle timeout + 3 s; control-query failure = the
control query (kubernetes.default.svc.cluster.local A -> 10.96.0.1) went unanswered or wrong;
wrong output = an answer that breaks a property (unparseable, wrong ID/question/size, internal
error counted, a problem without a line, a 500, ...).
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import os
import platform
import random
import re
import resource
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import fuzz_data  # noqa: E402
import fuzz_dns  # noqa: E402

WATCHDOG = 10.0  # seconds one in-process input may take before it counts as a hang
MEMORY_LIMIT = 1536 << 20  # address space of an in-process worker
IDLE = 0.5  # --tcp-idle-timeout of the live server


@dataclass
class Result:
    target: str
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    control_failures: int = 0
    wrong: int = 0
    max_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    note: str = ""
    _seen: set = field(default_factory=set)

    def fail(self, kind: str, text: str) -> None:
        """Count it; keep the first reproducer of each distinct failure (at most 6)."""
        setattr(self, kind, getattr(self, kind) + 1)
        head = re.split(r" b['\"]|; |\n| input ", text)[0]
        errors = re.findall(r"\b(\w+(?:Error|Exception))\b", text)
        signature = re.sub(r"\d+", "#", head)[:90] + (f" {errors[-1]}" if errors else "")
        if len(self.failures) < 6 and signature not in self._seen:
            self._seen.add(signature)
            self.failures.append(f"[{kind}] {text}")


# ------------------------------------------------------------------------------ in-process targets (worker side)


def _worker_state(target: str, tmp: str):
    if target in ("wire", "sweep"):
        return fuzz_dns.example_handler()
    if target == "corefile":
        path = os.path.join(tmp, "resolv.conf")
        with open(path, "w") as fh:
            fh.write("nameserver 192.0.2.53\nsearch corp.example\n")
        return path
    if target == "webhook-review":
        from kdns.log import Logger
        from webhook.cluster import manifest_catalog
        catalog, _ = manifest_catalog([fuzz_data.EXAMPLE], Logger(stream=io.StringIO()))
        return catalog
    return None


def _worker_check(target: str, state, item):
    """-> (kind, message) per failure found for this item ([] if none), and how many inputs it was."""
    if target == "wire":
        msg, tcp, seed = item
        _, problem = fuzz_dns.handle_and_check(state, msg, tcp)
        out = [("wrong", problem)] if problem else []
        control = fuzz_dns.control_in_process(state, random.Random(seed))
        if control:
            out.append(("control_failures", f"{control} after {fuzz_dns.describe(msg)}"))
        return out, 1
    if target == "sweep":  # every qtype with class IN, every class with type A, over UDP and TCP
        start, end = item
        out = []
        for value in range(start, end):
            for msg in (fuzz_dns.query(fuzz_dns.CONTROL_NAME, value, 1, qid=value),
                        fuzz_dns.query("api.shop.svc.cluster.local", 1, value, qid=value)):
                _, problem = fuzz_dns.handle_and_check(state, msg, value % 2 == 1)
                if problem:
                    out.append(("wrong", problem))
        control = fuzz_dns.control_in_process(state, random.Random(start))
        if control:
            out.append(("control_failures", control))
        return out, 2 * (end - start)
    if target == "corefile":
        problem = fuzz_data.check_corefile(item, state)
        return ([("crashes" if "escaped" in problem else "wrong", f"{problem}; input {item[:400]!r}")]
                if problem else []), 1
    if target == "manifests":
        problem = fuzz_data.check_manifest(item)
        return ([("crashes" if "escaped" in problem else "wrong", f"{problem}; input {item[:400]!r}")]
                if problem else []), 1
    if target == "webhook-review":
        from webhook.selection import Settings
        problem = fuzz_data.check_review(item, state, Settings())
        return ([("crashes" if "escaped" in problem else "wrong", f"{problem}; input {item[:400]!r}")]
                if problem else []), 1
    raise ValueError(target)


def _worker_main(target: str, tmp: str, conn) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    state = _worker_state(target, tmp)
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        started = time.perf_counter()
        try:
            found, count = _worker_check(target, state, item)
        except MemoryError:
            found, count = [("crashes", "MemoryError (1.5 GiB limit)")], 1
        except BaseException as exc:  # noqa: BLE001 - report, keep going
            found, count = [("crashes", f"{exc!r} in the checker: {traceback.format_exc(limit=-3)}")], 1
        conn.send((found, count, time.perf_counter() - started))


class Worker:
    """One in-process target in a child process, restarted after a hang or a death."""

    def __init__(self, target: str, tmp: str):
        self.target = target
        self.tmp = tmp
        self.ctx = multiprocessing.get_context("fork")
        self.proc = None
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(self.target, self.tmp, child), daemon=True)
        self.proc.start()
        child.close()

    def _restart(self) -> None:
        self.stop()
        self._start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(5)
        self.conn.close()

    def run(self, item, result: Result, describe: str, timeout: float = WATCHDOG) -> None:
        started = time.perf_counter()
        self.conn.send(item)
        if not self.conn.poll(timeout):
            result.inputs += 1
            result.fail("hangs", f"no result within {timeout:.0f}s: {describe}")
            result.max_seconds = max(result.max_seconds, time.perf_counter() - started)
            self._restart()
            return
        try:
            found, count, seconds = self.conn.recv()
        except EOFError:
            result.inputs += 1
            result.fail("crashes", f"worker died (exit {self.proc.exitcode}): {describe}")
            self._restart()
            return
        result.inputs += count
        result.max_seconds = max(result.max_seconds, seconds / max(1, count) if self.target == "sweep" else seconds)
        for kind, text in found:
            result.fail(kind, text)


def run_in_process(target: str, seconds: float, seed: int) -> Result:
    result = Result(target)
    rng = random.Random(f"{seed}:{target}")
    tmp = tempfile.TemporaryDirectory(prefix="kdns-fuzz-")
    worker = Worker(target, tmp.name)
    deadline = time.monotonic() + seconds
    try:
        if target == "sweep":
            values = list(range(0, 65536, 256))
            for start in values:
                if time.monotonic() >= deadline:
                    result.note = f"qtype/class {start} of 65536 reached"
                    break
                worker.run((start, start + 256), result, f"qtypes/classes {start}..{start + 255}", timeout=60)
            else:
                result.note = "all 65536 qtypes and classes"
            return result
        while time.monotonic() < deadline:
            if target == "wire":
                kind = fuzz_dns.GENERATOR_NAMES[result.inputs % len(fuzz_dns.GENERATOR_NAMES)]
                msg = fuzz_dns.GENERATORS[kind](rng)
                item = (msg, rng.random() < 0.3, rng.randrange(1 << 30))
                worker.run(item, result, f"{kind} {fuzz_dns.describe(msg)}")
            else:
                generators = {"corefile": fuzz_data.COREFILE_GENERATORS, "manifests": fuzz_data.MANIFEST_GENERATORS,
                              "webhook-review": fuzz_data.WEBHOOK_GENERATORS}[target]
                names = sorted(generators)
                kind = names[result.inputs % len(names)]
                item = generators[kind](rng)
                worker.run(item, result, f"{kind} {item[:300]!r}")
    finally:
        worker.stop()
        tmp.cleanup()
    return result


# ------------------------------------------------------------------------------ live targets


def _log_problems(proc, result: Result) -> None:
    """Every internal_error line and every Python traceback in the server's log is a crash."""
    lines = proc.lines
    for i, line in enumerate(lines):
        if "internal_error" in line:
            result.fail("crashes", f"server log: {line[:400]}")
        elif line.startswith("Traceback"):
            end = next((j for j in range(i + 1, min(len(lines), i + 40)) if not lines[j].startswith(" ")), i)
            where = [ln.strip() for ln in lines[i + 1:end] if ln.strip().startswith("File ")][-1:]
            result.fail("crashes", f"server log: {' '.join(lines[max(0, i - 2):i])} ... {' '.join(where)} "
                                   f"{lines[end] if end < len(lines) else ''}"[:600])


def run_live_dns(target: str, seconds: float, seed: int) -> Result:
    from fuzz_live import LiveDns, Tally
    from harness import EXAMPLE, KdnsProcess

    result = Result(target)
    rng = random.Random(f"{seed}:{target}")
    deadline = time.monotonic() + seconds
    with KdnsProcess("--manifests", EXAMPLE, "--tcp-idle-timeout", str(IDLE), "--metrics-listen", "127.0.0.1:0",
                     "--stats-interval", "5") as proc:
        client = LiveDns(proc.port, IDLE)
        tally = Tally()
        try:
            if target == "udp":
                while time.monotonic() < deadline:
                    kind = fuzz_dns.GENERATOR_NAMES[tally.inputs % len(fuzz_dns.GENERATOR_NAMES)]
                    client.udp_input(fuzz_dns.GENERATORS[kind](rng), tally)
                    if proc.proc.poll() is not None:
                        break
            else:
                lock = threading.Lock()

                def one(stream_seed: int) -> None:
                    local = Tally()
                    client.tcp_stream(fuzz_dns.tcp_stream(random.Random(stream_seed)), local)
                    with lock:
                        _merge(tally, local)

                with ThreadPoolExecutor(16) as pool:
                    while time.monotonic() < deadline and proc.proc.poll() is None:
                        list(pool.map(one, [rng.randrange(1 << 30) for _ in range(32)]))
                        client.control(tally, tcp=True)
                        client.control(tally, tcp=False)
            client.control(tally, tcp=False)
            client.control(tally, tcp=True)
            if proc.proc.poll() is not None:
                result.fail("crashes", f"kdns exited with {proc.proc.returncode}: {proc.lines[-5:]}")
            elif target == "udp":
                counted = proc.metric("kdns_queries_total", proto="udp")
                if counted != client.udp_sent:
                    result.fail("wrong", f"kdns counted {counted} UDP queries, {client.udp_sent} were sent")
            _log_problems(proc, result)
        finally:
            client.close()
    result.inputs = tally.inputs
    result.crashes += tally.crashes
    result.hangs += tally.hangs
    result.control_failures += tally.control_failures
    result.max_seconds = tally.max_seconds
    for text in tally.failures:
        kind = text[1:text.index("]")]
        result.fail(kind, text[text.index("]") + 2:])
        setattr(result, kind, getattr(result, kind) - 1)  # already counted from the tally
    return result


def _merge(into, local) -> None:
    into.inputs += local.inputs
    into.crashes += local.crashes
    into.hangs += local.hangs
    into.control_failures += local.control_failures
    into.max_seconds = max(into.max_seconds, local.max_seconds)
    into.failures.extend(local.failures[:max(0, 20 - len(into.failures))])


def run_webhook_https(seconds: float, seed: int) -> Result:
    result = Result("webhook-https")
    rng = random.Random(f"{seed}:webhook")
    deadline = time.monotonic() + seconds
    aiohttp_log = logging.getLogger("aiohttp")
    records: list[logging.LogRecord] = []
    capture = logging.Handler(logging.ERROR)
    capture.emit = records.append  # aiohttp's own error lines are counted, not printed
    aiohttp_log.addHandler(capture)
    aiohttp_log.propagate = False
    try:
        _webhook_https(result, rng, deadline)
    finally:
        aiohttp_log.removeHandler(capture)
        aiohttp_log.propagate = True
    unhandled = [r for r in records if not r.getMessage().startswith("Error handling request")]
    for record in unhandled[:2]:
        exc = record.exc_info[1] if record.exc_info else None
        result.fail("wrong", f"aiohttp logged {record.getMessage()!r} with a traceback: {exc!r}")
    result.wrong += max(0, len(unhandled) - 2)
    result.note = "time: bodies; raw HTTP cases wait for the server to close"
    return result


def _webhook_https(result: Result, rng: random.Random, deadline: float) -> None:
    from webhook.certs import generate
    from webhook_harness import WebhookThread, pod, svc
    from webhook_fixtures import BASE

    names = sorted(fuzz_data.WEBHOOK_GENERATORS)
    raw = list(fuzz_data.RAW_HTTP.items())
    with tempfile.TemporaryDirectory(prefix="kdns-fuzz-") as tmp:
        certs = generate("kdns-webhook", "kdns-system", tmp, hosts=("127.0.0.1", "localhost"))
        objects = BASE + [svc("shop", "api", "10.96.200.20", ("http", 80, "TCP"))]
        with WebhookThread(certs, objects=objects, request_timeout=0.5) as server:
            i = 0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                if i % 20 == 19:  # raw HTTP that lies about length, chunking, method...
                    name, data = raw[(i // 20) % len(raw)]
                    try:
                        reply = fuzz_data.raw_exchange(server, data, timeout=3, settle=0.3)
                    except (TimeoutError, OSError) as exc:
                        reply = f"no answer: {exc!r}".encode()
                    if fuzz_data.http_statuses(reply) != fuzz_data.RAW_HTTP_STATUSES[name] or b"Traceback" in reply:
                        result.fail("wrong", f"raw HTTP {name!r}: {reply[:300]!r}")
                    what = f"raw {name}"
                else:
                    kind = names[i % len(names)]
                    body = fuzz_data.WEBHOOK_GENERATORS[kind](rng)
                    try:
                        problem = fuzz_data.post_and_check(server, body)
                    except OSError as exc:
                        problem = f"request failed: {exc!r}"
                    if problem:
                        result.fail("wrong", f"{problem}; body {body[:300]!r}")
                    what = f"{kind} body"
                result.inputs += 1
                elapsed = time.perf_counter() - started
                result.max_seconds = max(result.max_seconds, elapsed if not what.startswith("raw") else 0)
                if i % 50 == 49:
                    try:
                        _, response = server.admit(pod(annotations={"kdns.io/services": "api"}))
                        if "patch" not in response:
                            result.fail("control_failures", f"control admission not mutated: {response}")
                    except Exception as exc:  # noqa: BLE001
                        result.fail("control_failures", f"control admission failed: {exc!r}")
                i += 1
            if server.server.stats["internal_error"]:
                result.fail("crashes", f"{server.server.stats['internal_error']} internal errors (fail-open answers)")
            log = server.log
            if "Traceback" in log or "admission_internal_error" in log:
                line = next(ln for ln in log.splitlines() if "Traceback" in ln or "admission_internal_error" in ln)
                result.fail("wrong", f"webhook log: {line[:300]}")


# ------------------------------------------------------------------------------ main

TARGETS = {  # name: (share of the time, runner)
    "wire": (0.18, lambda s, seed: run_in_process("wire", s, seed)),
    "sweep": (0.10, lambda s, seed: run_in_process("sweep", s, seed)),
    "udp": (0.17, lambda s, seed: run_live_dns("udp", s, seed)),
    "tcp": (0.15, lambda s, seed: run_live_dns("tcp", s, seed)),
    "corefile": (0.10, lambda s, seed: run_in_process("corefile", s, seed)),
    "manifests": (0.12, lambda s, seed: run_in_process("manifests", s, seed)),
    "webhook-review": (0.08, lambda s, seed: run_in_process("webhook-review", s, seed)),
    "webhook-https": (0.10, run_webhook_https),
}
LABELS = {
    "wire": "DNS packets, in-process (QueryHandler)", "sweep": "every qtype x class, in-process",
    "udp": "DNS over UDP, live kdns", "tcp": "DNS over TCP streams, live kdns (time includes the 0.5 s idle close)",
    "corefile": "Corefile parser",
    "manifests": "manifest loader", "webhook-review": "AdmissionReview, in-process",
    "webhook-https": "webhook over HTTPS",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="total time, split across targets (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1): a run is reproducible")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    args = parser.parse_args(argv)
    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    total_share = sum(TARGETS[t][0] for t in chosen)
    budget = args.minutes * 60
    started = time.monotonic()
    results = []
    for name in chosen:
        share, runner = TARGETS[name]
        seconds = budget * share / total_share
        try:
            res = runner(seconds, args.seed)
        except Exception as exc:  # noqa: BLE001 - a harness failure is reported as such
            res = Result(name)
            res.fail("crashes", f"the fuzz harness failed: {exc!r} {traceback.format_exc(limit=-2)}")
        res.target = name
        results.append(res)
    elapsed = time.monotonic() - started

    print(f"kdns fuzz: `perf/fuzz.py --minutes {args.minutes:g} --seed {args.seed}`, {elapsed / 60:.1f} min, "
          f"{time.strftime('%Y-%m-%d')}, {platform.machine()} x{os.cpu_count()}, Python {platform.python_version()}")
    print()
    print("| target | inputs tried | crashes | hangs | control-query failures | wrong outputs | max response time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        label = LABELS.get(r.target, r.target) + (f" ({r.note})" if r.note else "")
        print(f"| {label} | {r.inputs} | {r.crashes} | {r.hangs} | {r.control_failures} | {r.wrong} | "
              f"{r.max_seconds * 1000:.1f} ms |")
    failed = [r for r in results if r.failures]
    for r in failed:
        print(f"\n{r.target}: first failure of each kind (reproducers)")
        for text in r.failures:
            print(f"  - {text[:1200]}")
    return 1 if any(r.crashes or r.hangs or r.control_failures or r.wrong for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
