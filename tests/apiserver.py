"""A Kubernetes API server double (aiohttp, own thread) that speaks the real list/watch protocol.

Resources: services, endpointslices (discovery.k8s.io/v1), namespaces, pods — cluster-wide lists.
- list: items + metadata.resourceVersion, paging with limit/continue
- watch: ?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=N, one JSON event per line
  (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR with a 410 Status when RV is older than the compaction point)
- auth: bearer token (rotatable) or TLS client certificates; 401 for a wrong token; 403 as RBAC words it
  for the verbs `forbid()` withholds
- faults: answer N requests with an HTTP status (optionally with Retry-After), 410 on the next watch
  (status or ERROR event), close watch streams mid-event, stall watches, answer everything 503
  (set_down), or be unreachable as during a real restart (set_unreachable: connections refused and
  every open one dropped; objects may still change and history be compacted meanwhile)
- paging: the pages of one list come from one snapshot taken at its resourceVersion (as etcd's)
- compaction: compact() makes every watch from an older resourceVersion, and every list continue
  token taken before it, answer 410 Gone
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import ssl
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from k8s_objects import namespace, service  # noqa: F401 - re-exported: the API tests build with these

PATHS = {
    "/api/v1/services": ("Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
    "/api/v1/namespaces": ("Namespace", "v1"),
    "/api/v1/pods": ("Pod", "v1"),
}
KIND_PATH = {kind: path for path, (kind, _) in PATHS.items()}


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass
class Faults:
    fail_statuses: list = field(default_factory=list)  # next requests answer these HTTP statuses
    fail_kinds: set | None = None  # only for these kinds (None: all)
    retry_after: str | None = None  # Retry-After header sent with the fail_statuses answers
    gone_next_watch: dict = field(default_factory=dict)  # kind -> "status" | "event"
    gone_every_watch: set = field(default_factory=set)  # kinds whose every watch gets a 410 event
    list_delay: float = 0.0  # seconds each list page takes (a big list, a slow API)
    stall: bool = False  # watches send nothing (no events, no bookmarks)
    down: bool = False  # every request gets 503 and open watches are cut
    forbidden: dict = field(default_factory=dict)  # kind -> verbs ("list", "watch") answered 403


class FakeApiServer:
    def __init__(self, token: str | None = "test-token", ssl_context: ssl.SSLContext | None = None,
                 bookmark_interval: float | None = None):
        self.token = token
        self.ssl_context = ssl_context
        self.bookmark_interval = bookmark_interval
        self.faults = Faults()
        self.requests: list[tuple[str, dict]] = []
        self.request_times: list[float] = []  # monotonic, one per entry of `requests`
        self._lock = threading.Lock()
        self._rv = 1
        self._compacted = 0  # watches from an RV below this get 410
        self._objects: dict[str, dict[tuple[str, str], dict]] = {kind: {} for kind in KIND_PATH}
        self._history: list[tuple[int, str, str, dict]] = []  # (rv, type, kind, object)
        self._snapshots: dict[tuple[str, int], list] = {}  # (kind, rv) -> the list continue tokens page through
        self._watchers: dict[str, set[asyncio.Queue]] = {kind: set() for kind in KIND_PATH}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        self.unreachable = False
        self.watch_count = {kind: 0 for kind in KIND_PATH}
        self.list_count = {kind: 0 for kind in KIND_PATH}

    # -------------------------------------------------------------------- lifecycle

    def __enter__(self) -> "FakeApiServer":
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("API double did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _run(self, started: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        for path in PATHS:
            app.router.add_get(path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(self._listen())
        started.set()
        self._loop.run_forever()

    async def _listen(self) -> None:
        # the same port again after set_unreachable(False): asyncio sets SO_REUSEADDR
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]

    async def _go_away(self) -> None:
        await self._site.stop()  # new connections are refused
        self._cut_watches()
        for handler in list(self._runner.server.connections):  # keep-alive connections die with the process
            if handler.transport is not None:
                handler.transport.close()

    async def _shutdown(self) -> None:
        self._cut_watches()
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    # -------------------------------------------------------------------- state changes (any thread)

    def apply(self, obj: dict, event_type: str | None = None) -> int:
        """Create or update an object; returns the new resourceVersion."""
        kind = obj["kind"]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        with self._lock:
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            etype = event_type or ("MODIFIED" if key in self._objects[kind] else "ADDED")
            self._objects[kind][key] = obj
            self._record(etype, kind, obj)
            return self._rv

    def delete(self, kind: str, namespace: str, name: str) -> int:
        with self._lock:
            obj = self._objects[kind].pop((namespace, name))
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._record("DELETED", kind, obj)
            return self._rv

    def delete_quietly(self, kind: str, namespace: str, name: str) -> None:
        """Delete without any watch event, as if it happened while we were disconnected."""
        with self._lock:
            self._objects[kind].pop((namespace, name))
            self._rv += 1

    def forbid(self, kind: str, *verbs: str, user: str = "system:serviceaccount:kube-system:kdns") -> None:
        """Answer these verbs on this kind 403, as the API does when RBAC does not grant them."""
        self.faults.forbidden[kind] = (set(verbs or ("list", "watch")), user)

    def compact(self) -> None:
        """Forget history: any watch from an older resourceVersion now gets 410 Gone."""
        with self._lock:
            self._compacted = self._rv  # a watch from the current version (a fresh list) is fine
            self._history.clear()
            self._snapshots.clear()

    def bookmark(self, kind: str) -> None:
        with self._lock:
            event = {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": PATHS[KIND_PATH[kind]][1],
                                                    "metadata": {"resourceVersion": str(self._rv)}}}
            self._broadcast(kind, event)

    def cut_watches(self) -> None:
        """Close every open watch stream in the middle of an event."""
        self._loop.call_soon_threadsafe(self._cut_watches, "mid-event")

    def set_unreachable(self, unreachable: bool) -> None:
        """Be unreachable as an API server process that is restarting: refuse new connections and
        drop open ones (True), or listen again on the same port (False). Returns when done."""
        if unreachable == self.unreachable:
            return
        self.unreachable = unreachable
        coro = self._go_away() if unreachable else self._listen()
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _cut_watches(self, how: str = "close") -> None:
        for queues in self._watchers.values():
            for q in list(queues):
                q.put_nowait(("cut", how))

    def set_down(self, down: bool) -> None:
        self.faults.down = down
        if down:
            self._loop.call_soon_threadsafe(self._cut_watches, "close")

    def _record(self, etype: str, kind: str, obj: dict) -> None:
        self._history.append((self._rv, etype, kind, obj))
        self._broadcast(kind, {"type": etype, "object": obj})

    def _broadcast(self, kind: str, event: dict) -> None:
        line = json.dumps(event)
        for q in list(self._watchers[kind]):
            self._loop.call_soon_threadsafe(q.put_nowait, ("line", line))

    # -------------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, api_version = PATHS[request.path]
        query = dict(request.query)
        self.requests.append((request.path, query))
        self.request_times.append(time.monotonic())
        cert_auth = self.ssl_context is not None and self.ssl_context.verify_mode == ssl.CERT_REQUIRED
        if self.token is not None and not cert_auth:  # with client certificates, TLS already authenticated
            auth = request.headers.get("Authorization", "")
            if auth.lower() != f"bearer {self.token}".lower():
                return web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
        if self.faults.down:
            return web.json_response(status(503, "ServiceUnavailable", "apiserver is down"), status=503)
        verb = "watch" if query.get("watch") in ("1", "true", "True") else "list"
        verbs, user = self.faults.forbidden.get(kind, ((), ""))
        if verb in verbs:
            resource, group = request.path.rsplit("/", 1)[1], PATHS[request.path][1].rpartition("/")[0]
            return web.json_response(status(403, "Forbidden", f'{resource} is forbidden: User "{user}" cannot '
                                            f'{verb} resource "{resource}" in API group "{group}" at the cluster '
                                            "scope"), status=403)
        if self.faults.fail_statuses and (self.faults.fail_kinds is None or kind in self.faults.fail_kinds):
            code = self.faults.fail_statuses.pop(0)
            headers = {"Retry-After": self.faults.retry_after} if self.faults.retry_after else None
            return web.json_response(status(code, "InternalError", f"injected failure {code}"), status=code,
                                     headers=headers)
        if query.get("watch") in ("1", "true", "True"):
            return await self._watch(request, kind, query)
        return await self._list(kind, api_version, query)

    async def _list(self, kind: str, api_version: str, query: dict) -> web.Response:
        self.list_count[kind] += 1
        if self.faults.list_delay:
            await asyncio.sleep(self.faults.list_delay)
        start = 0
        with self._lock:
            if query.get("continue"):
                # the next page of the same snapshot, as etcd serves it at the list's revision
                token = json.loads(base64.b64decode(query["continue"]))
                start, rv = token["start"], token["rv"]
                items = self._snapshots.get((kind, rv))
                if items is None or rv < self._compacted:
                    return web.json_response(status(410, "Expired", "The provided continue parameter is too old "
                                                    "to display a consistent list result."), status=410)
            else:
                # no copies: apply() stores a deep copy and stored objects are replaced, never changed
                items = [o for _, o in sorted(self._objects[kind].items())]
                rv = self._rv
                if len(self._snapshots) >= 16:
                    self._snapshots.pop(next(iter(self._snapshots)))
                self._snapshots[(kind, rv)] = items
        limit = int(query.get("limit") or 0)
        meta = {"resourceVersion": str(rv)}
        if limit and start + limit < len(items):
            meta["continue"] = base64.b64encode(json.dumps({"start": start + limit, "rv": rv}).encode()).decode()
            items = items[start:start + limit]
        else:
            items = items[start:]
        return web.json_response({"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta, "items": items})

    async def _watch(self, request: web.Request, kind: str, query: dict) -> web.StreamResponse:
        self.watch_count[kind] += 1
        rv = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 1800)
        gone = self.faults.gone_next_watch.pop(kind, None)
        if gone == "status":
            return web.json_response(status(410, "Expired", f"too old resource version: {rv}"), status=410)
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            too_old = rv < self._compacted or gone == "event" or kind in self.faults.gone_every_watch
            backlog = [] if too_old else [json.dumps({"type": t, "object": o})
                                          for r, t, k, o in self._history if k == kind and r > rv]
            self._watchers[kind].add(queue)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            if too_old:
                await resp.write((json.dumps({"type": "ERROR", "object": status(
                    410, "Expired", f"too old resource version: {rv} ({self._compacted})")}) + "\n").encode())
                return resp
            for line in backlog:
                await resp.write((line + "\n").encode())
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break  # server-side timeout: the stream ends normally
                wait = left if self.bookmark_interval is None else min(left, self.bookmark_interval)
                try:
                    what, payload = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    if self.bookmark_interval is not None and not self.faults.stall:
                        with self._lock:
                            bm = {"type": "BOOKMARK", "object": {"kind": kind, "metadata": {
                                "resourceVersion": str(self._rv)}}}
                        await resp.write((json.dumps(bm) + "\n").encode())
                    continue
                if what == "cut":
                    if payload == "mid-event":
                        await resp.write(b'{"type":"ADDED","object":{"kind":')
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                if self.faults.stall:
                    continue
                await resp.write((payload + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            return resp
        finally:
            self._watchers[kind].discard(queue)
        await resp.write_eof()
        return resp


# ------------------------------------------------------------------------------ objects and kubeconfigs


def endpointslice(ns: str, svc: str, name: str, *ips: str, ready: bool = True, hostnames=()) -> dict:
    endpoints = []
    for i, ip in enumerate(ips):
        ep = {"addresses": [ip], "conditions": {"ready": ready}}
        if i < len(hostnames):
            ep["hostname"] = hostnames[i]
        endpoints.append(ep)
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv6" if ips and ":" in ips[0] else "IPv4",
            "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def pod(ns: str, name: str, ip: str) -> dict:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}


def add_services(api: FakeApiServer, count: int, ns: str = "bulk") -> None:
    """Namespace `ns` with services s0..s{count-1} at 10.97.0.1, 10.97.0.2, ..."""
    for i in range(count):
        api.apply(service(ns, f"s{i}", f"10.97.0.{i + 1}"))
    api.apply(namespace(ns))


def kubeconfig_args(api: FakeApiServer, directory) -> list[str]:
    """`--kubeconfig PATH` for kdns to reach this double with its token (the file goes in `directory`)."""
    return ["--kubeconfig", write_kubeconfig(os.path.join(directory, "kubeconfig"), api.url, token=api.token)]


def write_kubeconfig(path, server: str, token: str | None = None, ca_pem: bytes | None = None,
                     client_cert_pem: bytes | None = None, client_key_pem: bytes | None = None) -> str:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    cluster: dict = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = b64(ca_pem)
    user: dict = {}
    if token:
        user["token"] = token
    if client_cert_pem:
        user["client-certificate-data"] = b64(client_cert_pem)
        user["client-key-data"] = b64(client_key_pem)
    config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": "fake", "cluster": cluster}],
              "users": [{"name": "fake-user", "user": user}],
              "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake-user"}}],
              "current-context": "fake"}
    with open(path, "w") as fh:
        json.dump(config, fh)  # JSON is YAML
    return str(path)
