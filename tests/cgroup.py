"""A child memory cgroup (v1, or v2 where its memory controller is on) to run a process under a limit."""

from __future__ import annotations

import os
import secrets
import signal
import time

V1_ROOT = "/sys/fs/cgroup/memory"
V2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def _own_path(controller: str | None) -> str | None:
    with open("/proc/self/cgroup") as fh:
        for line in fh.read().splitlines():
            hid, controllers, path = line.split(":", 2)
            if controller is None and hid == "0" and controllers == "":
                return path
            if controller is not None and controller in controllers.split(","):
                return path
    return None


class MemoryCgroup:
    """`with MemoryCgroup(170 << 20) as cg:` then run `cg.wrap(cmd)`: the command joins the cgroup
    before it execs, so every byte it allocates is charged under `limit`. Removed on exit."""

    def __init__(self, limit: int):
        self.limit = limit
        name = f"kdns-test-{os.getpid()}-{secrets.token_hex(3)}"
        v1 = _own_path("memory")
        if v1 is not None and os.path.isdir(V1_ROOT):
            self.v2 = False
            self.path = os.path.join(V1_ROOT, v1.lstrip("/"), name)
        else:
            self.v2 = True
            base = next(r for r in V2_ROOTS if os.path.exists(os.path.join(r, "cgroup.controllers"))
                        and "memory" in open(os.path.join(r, "cgroup.controllers")).read().split())
            self.path = os.path.join(base, (_own_path(None) or "/").lstrip("/"), name)

    def __enter__(self) -> "MemoryCgroup":
        os.mkdir(self.path)
        try:
            self._write("memory.max" if self.v2 else "memory.limit_in_bytes", str(self.limit))
        except OSError:
            os.rmdir(self.path)
            raise
        return self

    def __exit__(self, *exc) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = [int(p) for p in self._read("cgroup.procs").split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        os.rmdir(self.path)

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *cmd]

    def _read(self, leaf: str) -> str:
        with open(os.path.join(self.path, leaf)) as fh:
            return fh.read()

    def _write(self, leaf: str, value: str) -> None:
        with open(os.path.join(self.path, leaf), "w") as fh:
            fh.write(value)

    def oom_kills(self) -> int:
        text = self._read("memory.events" if self.v2 else "memory.oom_control")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def usage(self) -> int:
        return int(self._read("memory.current" if self.v2 else "memory.usage_in_bytes"))

    def peak(self) -> int | None:
        try:
            return int(self._read("memory.peak" if self.v2 else "memory.max_usage_in_bytes"))
        except OSError:
            return None
