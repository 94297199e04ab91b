"""Running a console script (.venv/bin/kdns, kdns-webhook) into a start-up failure and reading its one line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

from harness import ROOT, LoggedProcess

BIN = os.path.dirname(sys.executable)
ENV = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}  # not "in a pod" unless asked
DROP_NET_BIND_SERVICE = ("setpriv", "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service")


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 60,
               prefix: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, os.path.join(BIN, script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def failure(proc: subprocess.CompletedProcess, status: int, event: str) -> str:
    """The one ERROR line of a process that exited with `status` (not a signal, no traceback); it has a fix."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == status, f"exit {proc.returncode}, wanted {status}:\n{out[-3000:]}"
    assert "Traceback" not in out and "Fatal Python error" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, f"wanted one ERROR line, got {len(errors)}:\n{out[-3000:]}"
    assert re.search(rf"Z ERROR {event} ", errors[0]), errors[0]
    assert " fix=" in errors[0], errors[0]
    return errors[0]


def held_port() -> socket.socket:
    """A TCP port on 127.0.0.1 that something else holds (the caller closes it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def dead_port() -> int:
    """A loopback port nobody listens on (an API server that is not there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(script: str, *args: str, errors: bool = False) -> Iterator[LoggedProcess]:
    """The console script, running; leaving the block, SIGTERM must end it with exit 0, no traceback,
    and no ERROR line unless `errors` (a failure inside the block kills it)."""
    proc = LoggedProcess()
    proc.spawn([os.path.join(BIN, script), *args], env=ENV)
    try:
        yield proc
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0, proc.lines[-20:]
        assert not any("Traceback" in ln or (" ERROR " in ln and not errors) for ln in proc.lines), proc.lines[-20:]
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(5)
