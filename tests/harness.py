"""Run the real `kdns serve` as a subprocess on a free loopback port and talk to it."""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request

import dns.message
import dns.query
import dns.rdatatype

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "cluster.yaml")


def traced_bytes(action) -> int:
    """The bytes `action()` leaves allocated, by tracemalloc (garbage collected before and after)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        action()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


class LoggedProcess:
    """A subprocess whose combined output is collected line by line, with deadline-bound waits."""

    def __init__(self):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc: subprocess.Popen | None = None

    def spawn(self, cmd: list[str], env: dict | None = None, cwd: str = ROOT) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env if env is not None else dict(os.environ, PYTHONUNBUFFERED="1"),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 15.0, start: int = 0) -> str:
        """Wait (with a deadline) for a log line matching `pattern`; returns it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; log:\n"
                                         + "\n".join(self.lines[-30:]))
                self._cond.wait(min(left, 0.2))


class KdnsProcess(LoggedProcess):
    def __init__(self, *args: str, startup_timeout: float = 15.0, listen: bool = True, wrap=None):
        super().__init__()
        self.args = list(args)
        self.wrap = wrap or (lambda cmd: cmd)  # e.g. MemoryCgroup.wrap: run inside a memory cgroup
        self.listen = listen
        self.startup_timeout = startup_timeout
        self.port = 0

    def __enter__(self) -> "KdnsProcess":
        self.spawn(self.wrap([sys.executable, "-m", "kdns", "serve",
                              *(["--listen", "127.0.0.1:0"] if self.listen else []), *self.args]))
        try:
            line = self.wait_for_log(r'(INFO listening |"event": "listening")', self.startup_timeout)
            self.port = int(re.search(r"udp[=\": ]+127\.0\.0\.\d+:(\d+)", line).group(1))  # bind: 127.0.0.2 etc.
        except BaseException:
            self.stop()  # never leave a server behind when start-up fails
            raise
        self.http = {name: int(port) for name, port in re.findall(r"(health|ready|metrics)=[\d.]+:(\d+)", line)}
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Stop the server (SIGKILL by default: no lameduck wait in tests) and return its exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5) if self.proc else 0

    # ---------------------------------------------------------------- querying

    def query(self, name: str, rdtype: str = "A", tcp: bool = False, **make_kwargs) -> dns.message.Message:
        msg = dns.message.make_query(name, rdtype, **make_kwargs)
        if tcp:
            return dns.query.tcp(msg, "127.0.0.1", port=self.port, timeout=10)
        return dns.query.udp(msg, "127.0.0.1", port=self.port, timeout=10, ignore_trailing=True)

    def get(self, endpoint: str, path: str) -> tuple[int, str]:
        """GET http://127.0.0.1:<port of health|ready|metrics><path> -> (status, body)."""
        return http_get(f"http://127.0.0.1:{self.http[endpoint]}{path}")

    def metric(self, name: str, /, **labels) -> float | None:
        """One sample from /metrics (prometheus_sample)."""
        return prometheus_sample(self.get("metrics", "/metrics")[1], name, **labels)

    def dig(self, *args: str) -> str:
        out = subprocess.run(["dig", "@127.0.0.1", "-p", str(self.port), "+tries=1", "+time=3", *args],
                             capture_output=True, text=True, timeout=20)
        return out.stdout


def http_get(url: str, context=None, timeout: float = 5) -> tuple[int, str]:
    """GET url -> (status, body); an HTTP error status is a result, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def prometheus_samples(body: str, name: str, /, **labels) -> list[tuple[dict, float]]:
    """(labels, value) of every sample `name` whose labels include `labels` in a Prometheus text
    exposition, in exposition order, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families
    return [(sample.labels, sample.value) for family in text_string_to_metric_families(body)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]


def prometheus_sample(body: str, name: str, /, **labels) -> float | None:
    """The value of the first such sample (prometheus_samples), None if there is none."""
    found = prometheus_samples(body, name, **labels)
    return found[0][1] if found else None


def answers(msg: dns.message.Message) -> list[str]:
    """Answer-section rdata as text, sorted, e.g. ['10.96.0.1']."""
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something true (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s (last value {last!r})")
