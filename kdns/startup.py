"""Start-up failures of kdns and kdns-webhook: one structured log line naming the input and the fix, one exit status."""

from __future__ import annotations

import argparse
import errno
import os
import re
import socket
import sys
import threading
import traceback
from typing import Any, Callable, NoReturn

from .log import Logger

EXIT_OK = 0  # stopped by SIGTERM/SIGINT (after any lameduck)
EXIT_LISTEN = 1  # the host refused a listener: port in use, not permitted, address not on this host
EXIT_CONFIG = 2  # the configuration can never work as given: flags, files, two listeners on one port
EXIT_REFUSED = 3  # the API refused the credentials (401) or the permissions (403) to a first list or watch
EXIT_INTERNAL = 70  # a bug in kdns (EX_SOFTWARE)

# what each API kind is in RBAC terms: (resource, apiGroup)
RBAC_RESOURCES = {"Service": ("services", ""), "EndpointSlice": ("endpointslices", "discovery.k8s.io"),
                  "Namespace": ("namespaces", ""), "Pod": ("pods", "")}


class StartupFailure(Exception):
    """Why start-up cannot go on: the event and fields of its one log line, and the exit status."""

    def __init__(self, event: str, exit_status: int, **fields: Any):
        super().__init__(f"{event}: {fields}")
        self.event, self.exit_status, self.fields = event, exit_status, fields

    def report(self, log: Logger, worker: int = 0) -> int:
        if worker:  # the first worker meets the same failure and reports it: one ERROR line in all
            log.warning("worker_not_started", worker=worker, failure=self.event, **self.fields)
        else:
            log.error(self.event, **self.fields)
        return self.exit_status


def bad_config(field: str, reason: str, fix: str) -> StartupFailure:
    return StartupFailure("bad_config", EXIT_CONFIG, field=field, reason=reason, fix=fix)


# ------------------------------------------------------------------------------ flags


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are a bad_config line (exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        field = _flag_in(message) or self.prog
        raise bad_config(field, message, fix=f"see {self.prog} --help")


def bounded(kind: type, low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: a `kind` (int or float) in [low, high] ((low, high] with low_open), said plainly."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or (value <= low if low_open else value < low) \
                or (high is not None and value > high):
            above = f"above {low:g}" if low_open else f"{low:g} or more"
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'} {above}"
                                             + (f" and at most {high:g}" if high is not None else "")
                                             + f", got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


positive = bounded(float, 0, low_open=True)
non_negative = bounded(float, 0)
port_number = bounded(int, 0, 65535)


def _flag_in(message: str) -> str | None:
    for marker in ("argument ", "unrecognized arguments: ", "the following arguments are required: "):
        if marker in message:
            rest = message.split(marker, 1)[1]
            return rest.split(":")[0].split(",")[0].split(" ")[0].split("/")[0] or None
    return None


def early_log_format(argv: list[str]) -> str:
    """--log-format as given, before the flags are parsed (a flag error is logged in it too)."""
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            return "json" if argv[i + 1] == "json" else "text"
        if arg.startswith("--log-format="):
            return "json" if arg.endswith("=json") else "text"
    return "text"


# ------------------------------------------------------------------------------ files


def yaml_problem(path: str, exc: Exception) -> str:
    """`PATH: line L, column C: problem` for a YAML error (PyYAML's marks are 0-based)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{path}: {where}invalid YAML: {problem}"


def file_problem(path: str, exc: OSError) -> str:
    return f"{path}: cannot read: {exc.strerror or exc}"


def check_manifest_paths(paths: list[str], field: str = "--manifests") -> None:
    """A manifests path that is not there at start-up is a typo, not an empty cluster (broken files
    inside it are another matter: they are logged and the rest is served)."""
    for path in paths:
        try:
            os.stat(path)
        except OSError as exc:
            raise bad_config(field, file_problem(path, exc),
                             "give an existing YAML/JSON file or directory (a mounted ConfigMap's path)") from None


# ------------------------------------------------------------------------------ listeners


def has_net_bind_service() -> bool:
    """Whether this process may bind ports below net.ipv4.ip_unprivileged_port_start."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 10 & 1)  # CAP_NET_BIND_SERVICE is bit 10
    except OSError:
        pass
    return os.geteuid() == 0


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 1024


def listen_failed(exc: OSError, address: str, what: str, port: int) -> StartupFailure:
    """A listener the host refused, with the reason and what to do about it."""
    code = exc.errno
    if isinstance(exc, socket.gaierror):
        return StartupFailure("listen_failed", EXIT_CONFIG, address=address, listener=what,
                              reason=f"cannot resolve {address.rpartition(':')[0]!r}: {exc.strerror}",
                              fix="give an IP address of this host (127.0.0.1, 0.0.0.0, [::1])")
    if code == errno.EADDRINUSE:
        reason = f"port {port} is already in use"
        fix = f"stop what holds it (ss -lntup 'sport = :{port}') or give {what} another port"
    elif code == errno.EACCES and port < _unprivileged_port_start() and not has_net_bind_service():
        reason = (f"permission denied: port {port} is below {_unprivileged_port_start()} and this process lacks "
                  "CAP_NET_BIND_SERVICE")
        fix = ("grant NET_BIND_SERVICE (Kubernetes: securityContext.capabilities.add: [NET_BIND_SERVICE]; "
               "setcap cap_net_bind_service=+ep on the interpreter) or use a port >= 1024 (--port-map 53=5353)")
    elif code == errno.EACCES:
        reason = f"permission denied binding {address}"
        fix = "check the host's firewall / security policy for this address, or use another port"
    elif code == errno.EADDRNOTAVAIL:
        reason = f"{address.rpartition(':')[0] or address} is not an address of this host"
        fix = "bind an address this host has (ip -brief address), or 0.0.0.0 / :: for every interface"
    else:
        reason = exc.strerror or str(exc)
        fix = f"give {what} another address"
    return StartupFailure("listen_failed", EXIT_LISTEN, address=address, listener=what, reason=reason, fix=fix)


def listener_clash(listeners: list[tuple[str, str, int]]) -> tuple[str, str, int] | None:
    """Two of (name, host, port) on one TCP port of overlapping addresses: (name, other name, port).
    Port 0 (a free port each) never clashes; an empty or wildcard host overlaps every address."""
    seen: list[tuple[str, str, int]] = []
    wildcard = ("", "0.0.0.0", "::", "*")
    for name, host, port in listeners:
        host = "127.0.0.1" if host == "localhost" else host
        for other, other_host, other_port in seen:
            if port and port == other_port and (host == other_host or host in wildcard or other_host in wildcard):
                return name, other, port
        seen.append((name, host, port))
    return None


# ------------------------------------------------------------------------------ the API


def api_refused(kind: str, status: int, verb: str, server: str, credentials: str, message: str,
                rbac: str = "deploy/kdns/rbac.yaml") -> StartupFailure:
    """401/403 from the API during start-up: which credentials, and which RBAC rule is missing."""
    resource, group = RBAC_RESOURCES.get(kind, (kind.lower() + "s", ""))
    user = re.search(r'User "([^"]+)"', message or "")
    qualified = f"{resource}.{group}" if group else resource
    if status == 401:
        fix = (f"the API at {server} does not accept the credentials of {credentials}: renew the token or "
               "client certificate (kubectl config view --minify), or fix the service account")
        return StartupFailure("api_refused", EXIT_REFUSED, status=401, resource=qualified, verb=verb,
                              server=server, credentials=credentials, reason=message or "Unauthorized", fix=fix)
    who = user.group(1) if user else "the identity of " + credentials
    fix = (f"grant {who} list and watch on {qualified} (ClusterRole rule apiGroups: [\"{group}\"], "
           f"resources: [\"{resource}\"], verbs: [\"list\", \"watch\"]; see {rbac})")
    return StartupFailure("api_refused", EXIT_REFUSED, status=403, resource=qualified, verb=verb,
                          missing=f"{verb} {qualified}", server=server, credentials=credentials,
                          reason=message or "Forbidden", fix=fix)


# ------------------------------------------------------------------------------ bugs and exit


def internal_error(exc: BaseException, log_level: str = "info") -> StartupFailure:
    """An exception nobody expected: one line with where it was raised (the traceback with --log-level debug)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = lambda frame: f"{os.path.basename(frame.filename)}:{frame.lineno}"  # noqa: E731
    fields: dict[str, Any] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}",
                              "at": where(frames[-1]) if frames else "?"}
    ours = [f for f in frames if "/kdns/" in f.filename or "/webhook/" in f.filename]
    if ours and ours[-1] is not frames[-1]:  # raised inside a library: where kdns called it
        fields["called_from"] = where(ours[-1])
    fields["fix"] = "this is a bug in kdns: please report it with this line"
    if log_level == "debug":
        fields["traceback"] = "".join(traceback.format_exception(exc))
    return StartupFailure("internal_error", EXIT_INTERNAL, **fields)


def reported(run: Callable[[], int], log: Logger, debug: bool = False, worker: int = 0) -> int:
    """run()'s exit status; a StartupFailure or an unexpected exception becomes its one log line."""
    try:
        return run()
    except StartupFailure as failure:
        return failure.report(log, worker)
    except Exception as exc:  # noqa: BLE001 - a bug: one line saying where, not a traceback
        return internal_error(exc, "debug" if debug else "info").report(log)


def exit_now(status: int, threads_timeout: float = 2.0) -> int:
    """Return the exit status; if a worker thread (an API reflector blocked in a read or in
    getaddrinfo) is still alive after `threads_timeout`, leave without interpreter finalization,
    which would otherwise abort (SIGABRT) when that thread touches stdio during shutdown."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    for thread in others:
        thread.join(threads_timeout / max(1, len(others)))
    if any(t.is_alive() for t in others):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
