"""Run the real webhook (aiohttp over TLS on a free port) in a thread or as a subprocess, and talk
to it with a real HTTPS client; decode and apply its JSONPatch with the `jsonpatch` library."""

from __future__ import annotations

import asyncio
import base64
import copy
import http.client
import io
import itertools
import json
import os
import re
import ssl
import subprocess
import sys
import threading

import jsonpatch

from harness import LoggedProcess, prometheus_sample, wait_until  # noqa: F401 - re-exported for the webhook tests
from k8s_objects import namespace as ns  # noqa: F401 - re-exported for the webhook tests
from k8s_objects import service

from kdns.index import ClusterIndex
from kdns.log import Logger
from kdns.objects import namespace_from_dict, service_from_dict
from webhook.app import WebhookServer
from webhook.certs import ReloadingTLS
from webhook.cluster import ServiceCatalog
from webhook.selection import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_uids = itertools.count(1)


# ------------------------------------------------------------------------------ objects


def svc(ns: str, name: str, ip: str | None, *ports, **options) -> dict:
    """A v1 Service (k8s_objects.service), ports given inline: (port,), (port, proto) or (name, port, proto)."""
    return service(ns, name, ip, ports=ports, **options)


def container(name: str = "app", env: list | None = None, **extra) -> dict:
    c = {"name": name, "image": "busybox"}
    if env is not None:
        c["env"] = env
    c.update(extra)
    return c


def pod(namespace: str | None = "shop", containers: list | None = None, init: list | None = None,
        annotations: dict | None = None, links: bool | None = None, name: str = "p") -> dict:
    meta: dict = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict = {"containers": containers if containers is not None else [container()]}
    if init is not None:
        spec["initContainers"] = init
    if links is not None:
        spec["enableServiceLinks"] = links
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def review(obj, namespace: str = "shop", operation: str = "CREATE", uid: str | None = None, **request) -> dict:
    req = {"uid": uid or f"uid-{next(_uids)}", "kind": {"group": "", "version": "v1", "kind": "Pod"},
           "resource": {"group": "", "version": "v1", "resource": "pods"}, "requestKind":
           {"group": "", "version": "v1", "kind": "Pod"}, "namespace": namespace, "operation": operation,
           "userInfo": {"username": "test"}, "object": obj, "oldObject": None, "dryRun": False}
    req.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


def decoded_patch(response: dict) -> list[dict]:
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


def env_of(obj: dict, field: str = "containers", i: int = 0) -> list[tuple[str, str]]:
    return [(e["name"], e.get("value")) for e in obj["spec"][field][i].get("env") or []]


# ------------------------------------------------------------------------------ HTTPS client


class Client:
    def __init__(self, port: int, ca_file: str, host: str = "127.0.0.1"):
        self.port, self.host = port, host
        self.context = ssl.create_default_context(cafile=ca_file)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                context: ssl.SSLContext | None = None, timeout: float = 10,
                encode_chunked: bool = False) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=context or self.context, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=encode_chunked)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post_review(self, doc) -> dict:
        status, body = self.request("POST", "/mutate", json.dumps(doc).encode(),
                                    {"Content-Type": "application/json"})
        assert status == 200, (status, body)
        answer = json.loads(body)
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        return answer["response"]

    def admit(self, obj: dict, namespace: str = "shop", **request) -> tuple[dict, dict]:
        """Send a Pod CREATE; returns (the pod with the returned patch applied, the response)."""
        doc = review(copy.deepcopy(obj), namespace, **request)
        response = self.post_review(doc)
        assert response["uid"] == doc["request"]["uid"]
        assert response["allowed"] is True
        patched = jsonpatch.JsonPatch(decoded_patch(response)).apply(obj)
        return patched, response

    def peer_certificate(self) -> bytes:
        import socket
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            with self.context.wrap_socket(sock, server_hostname=self.host) as tls:
                return tls.getpeercert(binary_form=True)

    def metric(self, name: str, /, **labels) -> float | None:
        status, body = self.request("GET", "/metrics")
        assert status == 200
        return prometheus_sample(body.decode(), name, **labels)


# ------------------------------------------------------------------------------ in-process server


class WebhookThread(Client):
    """The real WebhookServer on 127.0.0.1:0 with TLS, on its own event loop thread; services
    are set directly in its index."""

    def __init__(self, certs, settings: Settings | None = None, objects=(), synced: bool = True, **server_kwargs):
        self.certs = certs
        self.settings = settings or Settings()
        self.initial = list(objects)
        self.initial_synced = synced
        self.server_kwargs = server_kwargs
        self.log_stream = io.StringIO()
        super().__init__(0, certs.ca_cert)

    def __enter__(self) -> "WebhookThread":
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        log = Logger(stream=self.log_stream)
        self.index = ClusterIndex(implicit_namespaces=True)
        self.catalog = ServiceCatalog(self.index)
        self._apply(self.initial, self.initial_synced)
        self.tls = ReloadingTLS(self.certs.tls_cert, self.certs.tls_key, log)
        self.server = WebhookServer(self.catalog, self.settings, log, self.tls, **self.server_kwargs)
        bound = await self.server.start("127.0.0.1", 0)
        self.port = int(bound.rsplit(":", 1)[1])

    async def _shutdown(self) -> None:
        await self.server.stop()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def _apply(self, objects, synced: bool) -> None:
        index = self.index
        index.begin()
        for key in list(index.services):
            index.delete("Service", *key)
        for name in list(index.namespaces):
            index.delete("Namespace", "", name)
        for obj in objects:
            if obj["kind"] == "Service":
                index.upsert(service_from_dict(obj))
            else:
                index.upsert(namespace_from_dict(obj))
        index.commit()
        index.mark_synced(synced)

    def set_objects(self, *objects, synced: bool = True) -> None:
        """Replace the cluster's Services and Namespaces (on the server's loop)."""
        async def run():
            self._apply(objects, synced)
        asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def check_certs(self) -> bool:
        async def run():
            return self.tls.check()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    @property
    def log(self) -> str:
        return self.log_stream.getvalue()


# ------------------------------------------------------------------------------ subprocess


class WebhookProcess(Client, LoggedProcess):
    """`python -m webhook serve --listen 127.0.0.1:0 ...` as a subprocess; the port comes from its log."""

    def __init__(self, certs, *args: str, startup_timeout: float = 20.0):
        LoggedProcess.__init__(self)
        self.certs = certs
        self.args = list(args)
        self.startup_timeout = startup_timeout
        Client.__init__(self, 0, certs.ca_cert)

    def __enter__(self) -> "WebhookProcess":
        cmd = [sys.executable, "-m", "webhook", "serve", "--listen", "127.0.0.1:0", "--tls-cert", self.certs.tls_cert,
               "--tls-key", self.certs.tls_key, *self.args]
        self.spawn(cmd)
        line = self.wait_for_log(r"\blistening\b", self.startup_timeout)
        self.port = int(re.search(r"address=https://127\.0\.0\.1:(\d+)", line).group(1))
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
