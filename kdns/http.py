"""HTTP side doors (aiohttp): /health, /ready and /metrics, each on its own address as CoreDNS binds them,
and /explain (kdns explain against the running server) on one that is off unless configured.

Readiness is a set of named checks (e.g. `kubernetes`); /ready is 200 `OK` when all pass, else 503
listing the failing ones. `/ready?verbose=1` adds one line of detail per check.
"""

from __future__ import annotations

from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .transport import tcp_listener
from .startup import listen_failed

# name -> () -> (ready, detail)
ReadyCheck = Callable[[], tuple[bool, str]]


class HttpEndpoints:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.checks: dict[str, ReadyCheck] = {}
        self.advisories: dict[str, Callable[[], str]] = {}
        self.lameduck = False
        self._runners: list[web.AppRunner] = []

    def add_ready_check(self, name: str, check: ReadyCheck) -> None:
        self.checks[name] = check

    def add_advisory(self, name: str, report: Callable[[], str]) -> None:
        """A problem shown by /ready?verbose=1 that does not fail readiness (e.g. a forwarding loop:
        failing readiness on every replica would take all cluster DNS down)."""
        self.advisories[name] = report

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _ready(self, request: web.Request) -> web.Response:
        results = {name: check() for name, check in self.checks.items()}
        failing = sorted(name for name, (ok, _) in results.items() if not ok)
        if self.lameduck:
            failing.insert(0, "lameduck")
        verbose = request.query.get("verbose") not in (None, "", "0", "false")
        if failing:
            text = ", ".join(failing)
        else:
            text = "OK"
        if verbose:
            text += "\n" + "".join(f"{name}: {'ready' if ok else 'not ready'}; {detail}\n"
                                   for name, (ok, detail) in sorted(results.items()))
            text += "".join(f"{name}: warning; {note}\n" for name, report in sorted(self.advisories.items())
                            if (note := report()))
        return web.Response(status=503 if failing else 200, text=text)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self, health: str | None, ready: str | None, metrics: str | None) -> dict[str, str]:
        """Start the requested listeners ("HOST:PORT"; port 0 picks one). Returns name -> bound address."""
        bound = {}
        for name, address, path, handler in (("health", health, "/health", self._health),
                                             ("ready", ready, "/ready", self._ready),
                                             ("metrics", metrics, "/metrics", self._metrics)):
            if not address:
                continue
            app = web.Application()
            app.router.add_get(path, handler)
            runner, bound[name] = await serve_app(app, address, path)
            self._runners.append(runner)
        return bound

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()


async def serve_app(app: web.Application, address: str, what: str) -> tuple[web.AppRunner, str]:
    """Serve `app` on HOST:PORT (port 0 picks one); the runner (to clean up) and the address bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = split_address(address)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        sock = tcp_listener(host, port)
    except OSError as exc:
        await runner.cleanup()
        raise listen_failed(exc, address, what, port) from None
    site = web.SockSite(runner, sock)
    await site.start()
    shown_host = host or "0.0.0.0"
    actual = sock.getsockname()[1]  # the port actually bound (port 0)
    return runner, f"[{shown_host}]:{actual}" if ":" in shown_host else f"{shown_host}:{actual}"


class ExplainEndpoint:
    """GET /explain?name=&type=&from=&ndots=&search= -> the `kdns explain --json` document, computed by the
    running server's own blocks (`blocks()` gives the current ones, so a reload is followed)."""

    def __init__(self, blocks: Callable[[], list]):
        self.blocks = blocks
        self.runner: web.AppRunner | None = None
        self.address = ""
        self.bound = ""

    async def start(self, address: str) -> str:
        app = web.Application()
        app.router.add_get("/explain", self._explain)
        self.runner, self.bound = await serve_app(app, address, "explain")
        self.address = address
        return self.bound

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _explain(self, request: web.Request) -> web.Response:
        from .explain import ExplainError, Explainer, Question
        q = request.query
        try:
            ns, _, pod = q.get("from", "default").partition("/")
            ndots = int(q["ndots"]) if "ndots" in q else None
            if not q.get("name") or not ns or ndots is not None and not 0 <= ndots <= 15:
                raise ExplainError("give name=NAME, and from=NAMESPACE[/POD] and ndots=0-15 if any")
            question = Question(q["name"], q.get("type", "A"), ns, pod, ndots, q.getall("search", None))
            blocks = self.blocks()
            if not blocks:
                raise ExplainError("no server block to explain with")
            report = await Explainer(blocks).explain(question)
        except (ExplainError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(report)


def split_address(address: str) -> tuple[str, int]:
    """":8080" -> ("", 8080); "127.0.0.1:0" -> ("127.0.0.1", 0); "[::1]:9153" -> ("::1", 9153)."""
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
        return host, int(port)
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)
