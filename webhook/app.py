"""The webhook's HTTPS server (aiohttp): POST /mutate, GET /healthz, /readyz, /metrics.

A thin layer around review.review(): it bounds the request (body size, time to receive it),
turns bytes that are not JSON into 400, never answers 500 for anything a client sends (a bug in
the decision is logged and the pod is allowed unchanged: fail open), counts outcomes, and logs
one line per admission.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

from aiohttp import web

from kdns.log import route_library_logs
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kdns import __version__
from kdns.log import Logger

from .certs import ReloadingTLS
from .review import API_VERSION, BadRequest, Outcome, dump, review
from .selection import Settings

OUTCOMES = ("mutated", "unchanged", "opted_out", "not_selected", "unsynced", "skipped", "bad_request",
            "timeout", "internal_error")


class BodyTooLarge(Exception):
    pass


class WebhookServer:
    def __init__(self, catalog, settings: Settings, log: Logger, tls: ReloadingTLS,
                 max_body: int = 3 * 1024 * 1024, request_timeout: float = 5.0,
                 ready_check: Callable[[], tuple[bool, str]] | None = None):
        self.catalog = catalog
        self.settings = settings
        self.log = log
        self.tls = tls
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.ready_check = ready_check
        self.stats = {name: 0 for name in OUTCOMES}
        self.injected = 0
        self.budget_exceeded = 0
        self.shadowed = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram("kdns_webhook_admission_duration_seconds",
                                 "Time from the request's arrival to its answer.", registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.registry.register(_Collector(self))
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------------ app

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post("/mutate", self._mutate)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str, port: int) -> str:
        """Listen with TLS on host:port (port 0 picks one); returns the bound HOST:PORT."""
        route_library_logs(self.log)
        # lingering_time=0: after an error answer, do not keep reading (and logging) a broken body
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=2.0, lingering_time=0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or None, port, ssl_context=self.tls.server_context)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # the port actually bound (port 0)
        shown = host or "0.0.0.0"
        return f"[{shown}]:{bound}" if ":" in shown else f"{shown}:{bound}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------------ handlers

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body:
            raise BodyTooLarge()
        chunks, size = [], 0
        while True:
            chunk = await request.content.read(64 * 1024)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge()
            chunks.append(chunk)

    async def _mutate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await self._answer(request, started)
        finally:
            self.latency.observe(time.perf_counter() - started)

    async def _answer(self, request: web.Request, started: float) -> web.Response:
        try:
            body = await asyncio.wait_for(self._read_body(request), self.request_timeout)
        except BodyTooLarge:
            return self._bad_request(f"request body larger than {self.max_body} bytes (--max-body)", request)
        except asyncio.TimeoutError:
            self.stats["timeout"] += 1
            self.log.warning("admission_rejected", peer=request.remote, status=408,
                             reason=f"body not received within {self.request_timeout}s")
            resp = web.Response(status=408, text=f"request body not received within {self.request_timeout}s\n")
            resp.force_close()
            return resp
        except Exception as exc:  # noqa: BLE001 - a broken upload (bad chunking, reset) is the client's
            return self._bad_request(f"could not read the request body: {exc}", request)
        try:
            outcome = review(body, self.catalog, self.settings)
        except BadRequest as exc:
            return self._bad_request(str(exc), request)
        except Exception as exc:  # noqa: BLE001 - a bug here must not reject pods or crash the server
            outcome = self._internal_error(body, exc)
        self._record(outcome, started)
        return web.Response(body=dump(outcome.body), content_type="application/json", charset="utf-8")

    def _bad_request(self, message: str, request: web.Request) -> web.Response:
        self.stats["bad_request"] += 1
        self.log.warning("admission_rejected", peer=request.remote, status=400, reason=message)
        resp = web.Response(status=400, text=message + "\n")
        resp.force_close()
        return resp

    def _internal_error(self, body: bytes, exc: Exception) -> Outcome:
        uid = ""
        try:
            doc = json.loads(body)
            uid = doc["request"]["uid"] if isinstance(doc["request"]["uid"], str) else ""
        except Exception:  # noqa: BLE001
            pass
        self.log.error("admission_internal_error", uid=uid, error=repr(exc))
        message = f"kdns-webhook internal error ({type(exc).__name__}, logged); pod allowed unchanged"
        body = {"apiVersion": API_VERSION, "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": True, "status": {"message": message}, "warnings": [message]}}
        return Outcome(body, "internal_error", uid=uid, message=message)

    def _record(self, outcome: Outcome, started: float) -> None:
        self.stats[outcome.outcome] += 1
        self.injected += outcome.injected
        self.shadowed += outcome.shadowed
        self.budget_exceeded += 1 if outcome.budget_exceeded else 0
        fields = {"uid": outcome.uid, "pod": outcome.pod, "outcome": outcome.outcome}
        if outcome.outcome in ("mutated", "unchanged"):
            fields.update(injected=outcome.injected, containers=outcome.containers)
        if outcome.message:
            fields["detail"] = outcome.message
        if outcome.warnings:
            fields["warnings"] = len(outcome.warnings)
        fields["ms"] = round((time.perf_counter() - started) * 1000, 2)
        self.log.info("admission", **fields)
        for text in outcome.warnings:
            self.log.info("admission_warning", uid=outcome.uid, pod=outcome.pod, warning=text)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    def ready(self) -> tuple[bool, str]:
        if self.ready_check is not None:
            ok, detail = self.ready_check()
            if not ok:
                return False, detail
        if not self.catalog.synced:
            return False, "services not synced yet"
        return True, "ok"

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, detail = self.ready()
        return web.Response(status=200 if ok else 503, text=("ok" if ok else f"not ready: {detail}") + "\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Collector:
    """kdns_webhook_* metrics read from the live server at scrape time."""

    def __init__(self, server: WebhookServer):
        self.server = server

    def collect(self):
        s = self.server
        admissions = CounterMetricFamily("kdns_webhook_admissions", "AdmissionReviews answered, by outcome.",
                                         labels=["outcome"])
        for name in OUTCOMES:
            admissions.add_metric([name], s.stats[name])
        yield admissions
        yield CounterMetricFamily("kdns_webhook_injected_variables", "Environment variables injected (all containers).",
                                  value=s.injected)
        yield CounterMetricFamily("kdns_webhook_budget_exceeded", "Pods whose service links were cut by the budget.",
                                  value=s.budget_exceeded)
        yield CounterMetricFamily("kdns_webhook_shadowed_variables",
                                  "Service variables whose name the pod sets itself (its value is kept).", value=s.shadowed)
        yield CounterMetricFamily("kdns_webhook_unsynced_admissions",
                                  "Pods allowed unchanged because services had not synced.", value=s.stats["unsynced"])
        yield GaugeMetricFamily("kdns_webhook_services_synced", "1 once the services have synced.",
                                value=1 if s.catalog.synced else 0)
        yield GaugeMetricFamily("kdns_webhook_services", "Services known.", value=len(s.catalog))
        answers = s.catalog.answers
        yield CounterMetricFamily("kdns_webhook_answer_memo_hits", "Admissions answered from a remembered patch "
                                  "(same plan, same pod shape).", value=answers.hits)
        yield CounterMetricFamily("kdns_webhook_answer_memo_misses", "Admissions whose patch was computed.",
                                  value=answers.misses)
        yield GaugeMetricFamily("kdns_webhook_answer_memo_bytes", "Bytes held by remembered patches.",
                                value=answers.bytes)
        yield CounterMetricFamily("kdns_webhook_cert_reloads", "Certificate/key pairs reloaded after a change.",
                                  value=s.tls.reloads)
        yield CounterMetricFamily("kdns_webhook_cert_reload_failures", "Changed certificate/key pairs that failed to load.",
                                  value=s.tls.failures)
        yield GaugeMetricFamily("kdns_webhook_cert_not_after_seconds", "Expiry (unix time) of the serving certificate.",
                                value=s.tls.info.not_after)
        info = GaugeMetricFamily("kdns_webhook_build_info", "kdns version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
