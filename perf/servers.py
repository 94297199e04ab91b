"""Start the servers perf/run.py compares, pinned with taskset, on free loopback ports, and stop them.

Every server is a subprocess we start ourselves and end by its own PID (terminate, then kill after a
deadline). Readiness is a log line where the server prints one (kdns, the dnslib baseline) and, for
all of them, a successful DNS answer to a known name, both with deadlines.

  KdnsServer    .venv/bin/kdns serve --manifests DIR --listen 127.0.0.1:0 [--metrics-listen ...]
                or, with a Corefile (the kubeadm one, kubeadm_corefile()), kdns serve --corefile F
                --bind 127.0.0.1 --port-map 53=0 --port-map 8080=0 ... --manifests DIR
  CeilingServer perf/ceiling.py --answers FILE (replays recorded answers; the loop's own cost)
  KnotServer    knotd -c knot.conf   (temp dir: config, zone files, journal; no systemd, no root port)
  NsdServer     nsd -d -c nsd.conf   (temp dir as well)
  DnslibServer  perf/dnslib_baseline.py --zones DIR --mode threaded|asyncio
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF = os.path.join(ROOT, "perf")
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NICE = 0  # run.py --nice: scheduling priority of the servers (and of the load generators)


def niced(cmd: list[str]) -> list[str]:
    return ["nice", "-n", str(NICE), *cmd] if NICE else cmd


def python() -> str:
    return VENV_PY if os.path.exists(VENV_PY) else sys.executable


def which(*names: str) -> str | None:
    for name in names:
        for cand in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if cand and os.access(cand, os.X_OK):
                return cand
    return None


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now (the server binds it next)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise OSError("no free port")


# ------------------------------------------------------------------------------------ DNS probing


def build_query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".") if p)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def exchange(port: int, packet: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(packet, (HOST, port))
            return s.recv(65535)
        except (socket.timeout, ConnectionRefusedError, OSError):
            return None


def answers_ok(port: int, name: str, qtype: int = 1) -> bool:
    reply = exchange(port, build_query(name, qtype))
    return bool(reply) and len(reply) >= 12 and (reply[3] & 0xF) == 0 and struct.unpack_from("!H", reply, 6)[0] > 0


# ------------------------------------------------------------------------------------ processes


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (NSD forks a server child and xfrd)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def foreign_cpu_snapshot(exclude: set[int]) -> dict[int, int]:
    """CPU ticks (own + reaped children's) of every user process but `exclude`: who else is busy."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        if f[1] == "2" or entry == "2":
            continue  # kernel threads: ksoftirqd carries part of the benchmark's own loopback traffic
        out[int(entry)] = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # utime stime cutime cstime
    return out


def foreign_cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU used between two snapshots. Summed over all processes (not per PID): the time of a
    process that ended moves into its parent's cutime, so only the totals are comparable."""
    return max(0, sum(after.values()) - sum(before.values())) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, KiB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


class ServerProcess:
    """A subprocess pinned to `cpu`, with its output collected, readiness, CPU and memory probes."""

    name = "server"
    ready_pattern: str | None = None  # a log line that carries the port, as `udp=127.0.0.1:PORT`

    def __init__(self, cpu: str = "0", startup_timeout: float = 120.0, probe_name: str = "kubernetes.default.svc.cluster.local"):
        self.cpu = cpu
        self.startup_timeout = startup_timeout
        self.probe_name = probe_name
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.tmp: str | None = None
        self.started_at = 0.0
        self.listening_s: float | None = None  # start -> ready log line
        self.ready_s: float | None = None  # start -> first good answer

    # subclasses: command() and, if no ready_pattern, choose self.port before start
    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return dict(os.environ, PYTHONUNBUFFERED="1")

    def cwd(self) -> str:
        return ROOT

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> "ServerProcess":
        cmd = niced(["taskset", "-c", self.cpu, *self.command()] if self.cpu else self.command())
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.cwd(), env=self.env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = self.started_at + self.startup_timeout
        try:
            if self.ready_pattern:
                line = self.wait_for_log(self.ready_pattern, deadline)
                self.listening_s = time.monotonic() - self.started_at
                self.port = int(re.search(r"udp=[\[\]\w.:]*:(\d+)", line).group(1))
            while not answers_ok(self.port, self.probe_name):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n" + self.log_tail())
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name}: no answer for {self.probe_name} within "
                                       f"{self.startup_timeout:.0f}s:\n" + self.log_tail())
                time.sleep(0.05)
            self.ready_s = time.monotonic() - self.started_at
            self.pin_threads()
        except BaseException:
            self.stop()
            raise
        return self

    def pin_threads(self) -> None:
        """Pin every thread of the server to its core again, once it answers: a server may set its own
        threads' affinity at start (Knot pins UDP worker i to CPU i % online CPUs, so its worker 0 left the
        load core for kdns's core when it was the forward plugin's upstream)."""
        if self.cpu:
            subprocess.run(["taskset", "-a", "-p", "-c", self.cpu, str(self.pid)], check=True,
                           stdout=subprocess.DEVNULL)

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            with self._cond:
                if len(self.lines) < 20000:
                    self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_log(self, pattern: str, deadline: float) -> str:
        rx = re.compile(pattern)
        with self._cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise RuntimeError(f"{self.name}: no log line matching {pattern!r} "
                                       f"({'exited' if self._eof else 'timed out'}):\n" + self.log_tail())
                self._cond.wait(min(left, 0.2))

    def log_tail(self, n: int = 20) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def pids(self) -> list[int]:
        return proc_tree(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def memory(self) -> dict[str, int]:
        return memory_kib(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def kubeadm_corefile(upstream: str) -> str:
    """kubeadm's CoreDNS Corefile (tests/test_corefile.py KUBEADM_PLAIN_CACHE; /work/shared/REFERENCE.md),
    verbatim but for `forward . UPSTREAM`: the local upstream instead of /etc/resolv.conf."""
    return f""".:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . {upstream} {{
       max_concurrent 1000
    }}
    cache 30
    loop
    reload
    loadbalance
}}
"""


class KdnsServer(ServerProcess):
    name = "kdns"
    ready_pattern = r"\blistening\b.*udp="

    def __init__(self, manifests: str | None, extra: list[str] | None = None, metrics: bool = True,
                 src: str | None = None, corefile: str | None = None, dns_port: int = 0, **kw):
        """src: a directory holding a `kdns/` package to run instead of the work tree's (a snapshot
        of a git revision, see run.py --kdns-rev); None runs the work tree's .venv/bin/kdns.
        corefile: a Corefile's text to serve (its ports mapped to free ones on 127.0.0.1; metrics
        come from its `prometheus`), instead of the bare `--listen` flags. dns_port: the Corefile's
        DNS port on this port (0: kdns picks a free one)."""
        super().__init__(**kw)
        self.manifests = manifests
        self.extra = list(extra or [])
        self.metrics = metrics
        self.metrics_port = 0
        self.src = src
        self.corefile = corefile
        self.dns_port = dns_port

    def env(self) -> dict:
        env = super().env()
        if self.src:
            # PYTHONPATH is searched before the editable install's finder (appended to meta_path)
            env["PYTHONPATH"] = self.src
        return env

    def cwd(self) -> str:
        return self.src or ROOT

    def command(self) -> list[str]:
        kdns = os.path.join(ROOT, ".venv", "bin", "kdns")
        if self.src:
            base = [python(), "-m", "kdns"]
        else:
            base = [kdns] if os.path.exists(kdns) else [python(), "-m", "kdns"]
        if self.corefile is not None:
            self.tmp = tempfile.mkdtemp(prefix="kdns-perf-corefile-")
            path = os.path.join(self.tmp, "Corefile")
            with open(path, "w") as fh:
                fh.write(self.corefile)
            with open(os.path.join(self.tmp, "resolv.conf"), "w") as fh:
                fh.write(f"nameserver {HOST}\n")  # not used: the Corefile names its upstream
            ports = [a for p in ("53", "8080", "8181", "9153")
                     for a in ("--port-map", f"{p}={self.dns_port if p == '53' else 0}")]
            return [*base, "serve", "--corefile", path, "--bind", HOST, *ports, "--resolv-conf",
                    os.path.join(self.tmp, "resolv.conf"), *self._source(), *self.extra]
        cmd = [*base, "serve", *self._source(), "--listen", f"{HOST}:0"]
        if self.metrics:
            cmd += ["--metrics-listen", f"{HOST}:0"]
        return cmd + self.extra

    def _source(self) -> list[str]:
        return ["--manifests", self.manifests] if self.manifests else []  # else: in `extra` (--kubeconfig)

    def start(self):
        super().start()
        if self.metrics or self.corefile is not None:
            # with --workers every worker logs `listening`; only worker 0 serves /metrics and says where
            line = self.wait_for_log(r"\blistening\b.*\bmetrics=", time.monotonic() + 10)
            m = re.search(r"(?:metrics|prometheus)=[\[\]\w.:]*:(\d+)", line)
            self.metrics_port = int(m.group(1)) if m else 0
        return self

    def scrape(self) -> dict[str, float]:
        """kdns_* and coredns_* samples from /metrics (empty if unavailable)."""
        if not self.metrics_port:
            return {}
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as resp:
                body = resp.read().decode()
        except OSError:
            return {}
        out = {}
        for line in body.splitlines():
            if line.startswith(("kdns_", "coredns_")) and " " in line:
                key, _, value = line.rpartition(" ")
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out


class KnotServer(ServerProcess):
    """Knot DNS from Debian, one UDP and one TCP worker (it is pinned to one core)."""

    name = "knot"

    def __init__(self, zone_dir: str, workers: int = 1, **kw):
        super().__init__(**kw)
        self.zone_dir = zone_dir
        self.workers = workers
        self.binary = which("knotd")

    def command(self) -> list[str]:
        assert self.binary, "knotd not installed (perf/setup.sh)"
        self.tmp = tempfile.mkdtemp(prefix="kdns-perf-knot-")
        self.port = free_port()
        zones = []
        for f in sorted(os.listdir(self.zone_dir)):
            if f.endswith(".zone"):
                shutil.copy(os.path.join(self.zone_dir, f), self.tmp)
                zones.append(f"  - domain: {f[:-5]}\n    file: {f}\n")
        t = self.tmp
        with open(os.path.join(t, "knot.conf"), "w") as fh:
            fh.write(f"""server:
    rundir: "{t}"
    listen: {HOST}@{self.port}
    udp-workers: {self.workers}
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{t}"
log:
  - target: stderr
    any: notice
template:
  - id: default
    storage: "{t}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
{''.join(zones)}""")
        return [self.binary, "-c", os.path.join(t, "knot.conf")]


class NsdServer(ServerProcess):
    """NSD from Debian: one server process; response rate limiting off (it throttles one source address
    to 200 answers/s); minimal responses, else NSD adds NS + glue to every answer, which kdns and Knot
    do not (NSD then also leaves out the SRV targets' addresses, which the answer check reports)."""

    name = "nsd"

    def __init__(self, zone_dir: str, **kw):
        super().__init__(**kw)
        self.zone_dir = zone_dir
        self.binary = which("nsd")

    def command(self) -> list[str]:
        assert self.binary, "nsd not installed (perf/setup.sh)"
        self.tmp = tempfile.mkdtemp(prefix="kdns-perf-nsd-")
        self.port = free_port()
        t = self.tmp
        zones = []
        for f in sorted(os.listdir(self.zone_dir)):
            if f.endswith(".zone"):
                shutil.copy(os.path.join(self.zone_dir, f), t)
                zones.append(f"zone:\n    name: {f[:-5]}\n    zonefile: {f}\n")
        with open(os.path.join(t, "nsd.conf"), "w") as fh:
            fh.write(f"""server:
    ip-address: {HOST}@{self.port}
    port: {self.port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{t}"
    database: ""
    zonelistfile: "{t}/zone.list"
    xfrdfile: "{t}/xfrd.state"
    xfrdir: "{t}"
    pidfile: "{t}/nsd.pid"
    logfile: "{t}/nsd.log"
    verbosity: 1
    minimal-responses: yes
    refuse-any: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    tcp-count: 10
remote-control:
    control-enable: no
{''.join(zones)}""")
        return [self.binary, "-d", "-c", os.path.join(t, "nsd.conf")]

    def log_tail(self, n: int = 20) -> str:
        text = super().log_tail(n)
        if self.tmp and os.path.exists(os.path.join(self.tmp, "nsd.log")):
            with open(os.path.join(self.tmp, "nsd.log")) as fh:
                text += "\n" + "".join(fh.readlines()[-n:])
        return text


class DnslibServer(ServerProcess):
    ready_pattern = r"\blistening\b.*udp="

    def __init__(self, zone_dir: str, mode: str = "threaded", **kw):
        super().__init__(**kw)
        self.zone_dir = zone_dir
        self.mode = mode
        self.name = "dnslib" if mode == "threaded" else f"dnslib-{mode}"

    def command(self) -> list[str]:
        return [python(), os.path.join(PERF, "dnslib_baseline.py"), "--zones", self.zone_dir,
                "--listen", f"{HOST}:0", "--mode", self.mode]


class CeilingServer(ServerProcess):
    """perf/ceiling.py replaying recorded answers on kdns's event loop."""

    name = "ceiling"
    ready_pattern = r"\blistening\b.*udp="

    def __init__(self, answers: str, forward: str | None = None, **kw):
        """forward: HOST:PORT of an upstream to forward the questions it has no answer for to (`forward-miss`)."""
        super().__init__(**kw)
        self.answers = answers
        self.forward = forward

    def command(self) -> list[str]:
        return [python(), os.path.join(PERF, "ceiling.py"), "--answers", self.answers, "--listen", f"{HOST}:0",
                *(["--forward", self.forward] if self.forward else [])]
