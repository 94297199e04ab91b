"""The Kubernetes API as a source: list + watch with the official `kubernetes` client.

The client's configuration and REST layer, without its generated API classes and models (kube.py).
One Reflector thread per resource does the blocking HTTP (the event loop that answers DNS never
waits on the API); it converts each object to a slotted record at once and hands batches to the
loop with call_soon_threadsafe. ApiSource, on the loop, applies them to the index and keeps the
sync / staleness state that /ready, the metrics and the logs report.

Protocol (kubernetes api-concepts): list in pages (limit/continue) -> resourceVersion -> watch
from it with allowWatchBookmarks; every event and bookmark advances the resourceVersion; a
server-side timeout ends the stream normally and the watch resumes from the last version; 410
Gone (HTTP status or ERROR event) means the version is too old: relist at once, and replace that
resource's state in one step so objects deleted meanwhile disappear. Other failures: an API that
does not answer is probed about every second (so its return is noticed at once, whatever the
outage's length); an API that answers with errors gets capped exponential backoff with jitter, or
its Retry-After (Reflector says which is which).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import yaml
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from ..index import ClusterIndex
from ..log import Logger
from ..metrics import Histogram
from . import settle_heap
from .kube import (ApiException, ConfigException, Configuration, InClusterConfigLoader, KubeClient,
                   iter_resp_lines, list_request, load_kube_config)
from ..objects import (ObjectError, endpointslice_from_dict, namespace_from_dict, pod_from_dict,
                       service_from_dict)

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


RELIST_REASONS = ("watch_expired", "list_expired")


class Gone(Exception):
    """410: the resourceVersion (or continue token) is too old; relist."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # "watch_expired" (resourceVersion compacted) | "list_expired" (continue token)


class ConfigError(Exception):
    """The client cannot be configured from what was given; `fix` says what to change."""

    def __init__(self, reason: str, fix: str = ""):
        super().__init__(reason)
        self.fix = fix


# ------------------------------------------------------------------------------ client configuration


def build_api_client(kubeconfig: str | None = None, context: str | None = None,
                     serviceaccount_dir: str | None = None, endpoint: str | None = None,
                     tls: tuple[str, str, str] | None = None) -> tuple[KubeClient, str]:
    """A client from a kubeconfig (client certs or tokens, as kind writes it), an explicit
    endpoint (+ optional client TLS, CoreDNS's `endpoint` / `tls`), or the in-cluster service
    account. Returns (client, description for logs). Every file it names is read and checked here,
    so a bad one is a ConfigError at start-up, not a connection that fails forever."""
    serviceaccount_dir = serviceaccount_dir or SERVICEACCOUNT_DIR
    configuration = Configuration()
    try:
        if endpoint and not kubeconfig:
            configuration.host = endpoint
            if tls:
                configuration.cert_file, configuration.key_file, configuration.ssl_ca_cert = tls
            where = f"endpoint {endpoint}" + (" with client TLS" if tls else "")
        elif kubeconfig:
            _check_kubeconfig(kubeconfig)
            load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration,
                             persist_config=False)
            if endpoint:
                configuration.host = endpoint
            where = f"kubeconfig {kubeconfig}" + (f" context {context}" if context else "")
        else:
            token_file = os.path.join(serviceaccount_dir, "token")
            _check_in_cluster(serviceaccount_dir, token_file)
            loader = InClusterConfigLoader(
                token_filename=token_file, cert_filename=os.path.join(serviceaccount_dir, "ca.crt"),
                try_refresh_token=False)
            loader.load_and_set(configuration)
            _follow_token_file(configuration, token_file)
            where = f"in-cluster {configuration.host} (service account {serviceaccount_dir})"
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        fix = (f"fix the kubeconfig (kubectl config view --kubeconfig {kubeconfig}; kubectl config get-contexts)"
               if kubeconfig else "fix the files named in the reason")
        raise ConfigError(str(exc), fix) from None
    _check_tls_material(configuration, where)
    # urllib3 would sleep out a 429/503's Retry-After inside the request, unseen and uninterruptible;
    # the reflector honours it itself. Connection failures are still retried at once, 3 times.
    configuration.retries = Retry(total=3, respect_retry_after_header=False)
    return KubeClient(configuration), where


def _check_kubeconfig(path: str) -> None:
    """Unreadable, not YAML, or not a mapping: say where, before the client library trips on it."""
    from ..startup import file_problem, yaml_problem
    fix = "give --kubeconfig a kubeconfig file (kind get kubeconfig > FILE; kubectl config view --raw)"
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(file_problem(path, exc), fix) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})", fix) from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(path, exc), fix) from None
    if not isinstance(data, dict):
        what = {list: "a list", str: "a string", type(None): "empty"}.get(type(data), type(data).__name__)
        raise ConfigError(f"{path}: not a kubeconfig: the document is {what}, expected a mapping with clusters, "
                          "users and contexts", fix)


def _check_in_cluster(serviceaccount_dir: str, token_file: str) -> None:
    from ..startup import file_problem
    if not os.environ.get("KUBERNETES_SERVICE_HOST") or not os.environ.get("KUBERNETES_SERVICE_PORT"):
        raise ConfigError("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: this is not a pod",
                          "outside a cluster give --kubeconfig PATH (or --manifests PATH)")
    fix = ("mount the service account token (automountServiceAccountToken: true) or point --serviceaccount-dir "
           "at the directory holding token and ca.crt")
    for path in (token_file, os.path.join(serviceaccount_dir, "ca.crt")):
        try:
            with open(path, "rb") as fh:
                empty = not fh.read().strip()
        except OSError as exc:
            raise ConfigError(file_problem(path, exc), fix) from None
        if empty:
            raise ConfigError(f"{path}: empty", fix)


def _check_tls_material(configuration: Configuration, where: str) -> None:
    """The CA bundle and client certificate/key load into an SSL context, and the server is an URL."""
    import ssl
    host = configuration.host or ""
    if not host.startswith(("http://", "https://")) or host.rstrip("/").endswith("//"):
        raise ConfigError(f"{where}: no usable API server URL (got {host or 'none'!r})",
                          "set the cluster's server: https://HOST:PORT")
    context = ssl.create_default_context()
    ca = configuration.ssl_ca_cert
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"{where}: certificate authority {_shown(ca, where)}: {_tls_problem(exc)}",
                              "give the cluster's CA certificate (certificate-authority[-data] / ca.crt)") from None
    if configuration.cert_file or configuration.key_file:
        try:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        except (ssl.SSLError, OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: client certificate {_shown(configuration.cert_file, where)} and key "
                              f"{_shown(configuration.key_file, where)}: {_tls_problem(exc)}",
                              "give a PEM certificate and its matching private key") from None


def _tls_problem(exc: Exception) -> str:
    import ssl
    if isinstance(exc, ssl.SSLError):
        return f"not usable PEM ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    return str(exc)


def _shown(path: str | None, where: str) -> str:
    """A file the client library wrote from kubeconfig *-data is a temp file: name the source instead."""
    if path and where.startswith("kubeconfig") and os.path.basename(path).startswith("tmp"):
        return "(inline -data in the kubeconfig)"
    return path or "(none)"


def _follow_token_file(configuration: Configuration, token_file: str) -> None:
    """Re-read the projected service-account token whenever the file changes (kubelet rotates it),
    checked before every request with one stat()."""
    state = {"sig": None}

    def refresh(conf: Configuration) -> None:
        try:
            st = os.stat(token_file)
        except OSError:
            return  # keep the last token; the request will report 401 if it is no longer valid
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig != state["sig"]:
            with open(token_file) as fh:
                token = fh.read().strip()
            if token:
                conf.api_key["BearerToken"] = "bearer " + token
                state["sig"] = sig

    refresh(configuration)
    configuration.refresh_api_key_hook = refresh


# ------------------------------------------------------------------------------ resources


@dataclass(frozen=True)
class Resource:
    kind: str
    list_call: Callable[[KubeClient], Callable[..., Any]]
    convert: Callable[[dict], Any]


RESOURCES = {
    "Service": Resource("Service", lambda c: list_request(c, "/api/v1/services"), service_from_dict),
    "EndpointSlice": Resource("EndpointSlice",
                              lambda c: list_request(c, "/apis/discovery.k8s.io/v1/endpointslices"),
                              endpointslice_from_dict),
    "Namespace": Resource("Namespace", lambda c: list_request(c, "/api/v1/namespaces"),
                          lambda obj: namespace_from_dict(obj)),
    "Pod": Resource("Pod", lambda c: list_request(c, "/api/v1/pods"), pod_from_dict),
}


@dataclass(slots=True)
class Batch:
    """What a reflector hands to the loop: converted upserts and deletes, plus bookkeeping."""

    upserts: list = field(default_factory=list)  # slotted objects
    deletes: list = field(default_factory=list)  # (namespace, name)
    errors: list = field(default_factory=list)  # (namespace/name, message)
    relist_begin: bool = False
    relist_end: bool = False  # the list is complete: drop what it did not contain, mark synced
    resource_version: str = ""


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, base: float = 0.5, cap: float = 30.0):
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


RETRY_AFTER_MAX = 120.0  # a Retry-After beyond this is taken as this (a misbehaving proxy must not park us)


class Reachability:
    """Shared by one source's reflectors: when one of them gets an answer from the API, the others
    stop waiting out their probe interval and retry at once, so every resource notices the API's
    return within one probe of the first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.answers = 0

    def answered(self) -> None:
        with self._cond:
            self.answers += 1
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float, stop: threading.Event) -> None:
        """Sleep up to `timeout`, less if the API answered anyone since `seen` or `stop` is set."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.answers == seen and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)


class Reflector:
    """List + watch one resource in a thread; posts Batches to `post` (thread-safe).

    Waiting between attempts depends on what went wrong:
    - nothing answered (refused, reset, connect timeout): probe again every `probe_interval`
      (jittered, 50-100 %) by retrying the request itself, which costs an absent API nothing;
      these failures never raise the backoff, so the API's return is noticed within a probe;
    - the API answered with an error (5xx, 429, 401, ...) or broke a stream it had opened: capped
      exponential backoff, or the Retry-After the API asked for;
    - 410 Gone: relist at once, unless the previous attempt also ended in 410 with no working watch
      in between (back to back: a separate capped backoff).
    Any request that succeeds (a list page, an opened watch, or a 410) resets the error backoff.
    """

    def __init__(self, resource: Resource, api_client: KubeClient, post: Callable[[str, Any], None],
                 page_size: int = 500, watch_timeout: int = 300, stall_timeout: float = 120.0,
                 connect_timeout: float = 10.0, backoff_max: float = 30.0, probe_interval: float = 1.0,
                 reachability: Reachability | None = None, pod_names: bool = True):
        self.resource = resource
        self.pod_names = pod_names  # keep endpoints' pod names (the kubernetes endpoint_pod_names option)
        self.list_fn = resource.list_call(api_client)
        self.post = post
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        # a watch that delivers nothing (no event, no bookmark) this long is presumed dead and reopened
        self.stall_timeout = stall_timeout
        self.connect_timeout = connect_timeout
        self.probe_interval = probe_interval
        self.backoff = Backoff(base=min(0.5, backoff_max), cap=backoff_max)
        self.gone_backoff = Backoff(base=min(0.5, backoff_max), cap=backoff_max)
        self.reachability = reachability or Reachability()
        self.resource_version = ""
        self._listed = False  # a list has completed once: later lists are relists, applied atomically
        self._answered = False  # the API answered during the current attempt
        self._watch_opened = False  # the current attempt's watch request was accepted (HTTP 200)
        self._stop = threading.Event()
        self._watching = None  # the open watch response, which stop() shuts to wake the read it waits in
        self.thread = threading.Thread(target=self.run, name=f"reflector-{resource.kind}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.reachability.wake()
        watching = self._watching
        if watching is not None and hasattr(watching, "shutdown"):  # urllib3 >= 2.3
            watching.shutdown()

    def run(self) -> None:
        need_list = True
        gone_streak = 0  # 410s with no established watch in between
        while not self._stop.is_set():
            seen = self.reachability.answers
            self._answered = self._watch_opened = False
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch()
                gone_streak = 0
            except Gone as exc:
                need_list = True
                if gone_streak:  # the relist did not help: do not hammer the server
                    delay = self.gone_backoff.next()
                else:
                    delay = 0.0
                    self.gone_backoff.reset()
                gone_streak += 1
                self.post("gone", (exc.reason, str(exc), delay))
                if delay:
                    self._stop.wait(delay)
            except Exception as exc:  # noqa: BLE001 - any failure: report, wait, resume
                if self._watch_opened:  # the resourceVersion was accepted: a later 410 is a new one
                    gone_streak = 0
                cause, delay = self._retry_plan(exc)
                self.post("error", (cause, _describe(exc), delay))
                if cause == "unreachable":
                    self.reachability.wait(seen, delay, self._stop)
                else:
                    self._stop.wait(delay)

    def _retry_plan(self, exc: Exception) -> tuple[str, float]:
        """("unreachable" | "error", seconds to wait) for a failed attempt."""
        if isinstance(exc, ApiException) and exc.status:  # an HTTP answer with an error status
            delay = self.backoff.next()
            retry_after = _retry_after(exc)
            if retry_after is not None:
                delay = min(retry_after, RETRY_AFTER_MAX) * random.uniform(1.0, 1.1)
            return "error", delay
        if self._answered or isinstance(exc, (WatchError, ApiException)):
            return "error", self.backoff.next()  # it answered, then broke the stream (or a TLS error)
        return "unreachable", self.probe_interval * random.uniform(0.5, 1.0)

    def _answer_arrived(self) -> None:
        """A request succeeded (a list page, an open watch, or 410 Gone): reset the backoff, wake the
        reflectors probing an unreachable API, and count it as contact."""
        self._answered = True
        self.backoff.reset()
        self.reachability.answered()
        self.post("contact", None)

    def _call(self, reason: str, what: str, **kwargs) -> Any:
        try:
            resp = self.list_fn(**kwargs)
        except ApiException as exc:
            if exc.status == 410:  # a valid answer: relist
                self._answer_arrived()
                raise Gone(reason, f"{what}: {exc.reason}") from None
            self._answered = bool(exc.status)  # an error answer: the API is there, but not well
            raise
        self._answer_arrived()
        return resp

    # -------------------------------------------------------------------- list

    def _list(self) -> None:
        """List in pages, each posted as it is decoded (one page of raw dicts at a time). The loop
        applies the first list page by page (what is known is served at once) and stages a relist's
        changes until its last page, so the resource's state is swapped in one step."""
        token = None
        first = True
        while True:
            resp = self._call("list_expired", "list continue token expired", limit=self.page_size,
                              _continue=token, _request_timeout=(self.connect_timeout, 60))
            try:
                data = _decode(resp.data)
            finally:
                resp.release_conn()
            batch = Batch(relist_begin=first)
            first = False
            for item in data.get("items") or []:
                self._convert_into(batch, item, "ADDED")
            meta = data.get("metadata") or {}
            token = meta.get("continue") or None
            del data  # one page of raw dicts at a time
            if token is None:
                self.resource_version = str(meta.get("resourceVersion") or "")
                batch.relist_end = True
                batch.resource_version = self.resource_version
            self.post("batch", batch)
            if token is None:
                self._listed = True
                return

    # -------------------------------------------------------------------- watch

    def _watch(self) -> None:
        # server-side timeout varied per watch (as client-go does) so watches do not restart in lockstep
        timeout = random.randint(self.watch_timeout, self.watch_timeout * 2)
        resp = self._call("watch_expired", f"watch from resourceVersion {self.resource_version}", watch=True,
                          resource_version=self.resource_version, allow_watch_bookmarks=True,
                          timeout_seconds=timeout,
                          _request_timeout=(self.connect_timeout, min(self.stall_timeout, timeout + 30)))
        self._watch_opened = True
        self.post("watching", None)
        self._watching = resp
        try:
            if self._stop.is_set():  # stop() came before _watching was set: it could not wake us
                return
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    return
                if not line:
                    continue
                self._event(line)
        finally:
            self._watching = None
            resp.release_conn()

    def _event(self, line: str) -> None:
        try:
            event = _decode(line)
            etype = event["type"]
            obj = event["object"]
        except (ValueError, KeyError, TypeError):
            raise WatchError(f"undecodable watch event: {line[:200]!r}") from None
        if etype == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            message = obj.get("message", "") if isinstance(obj, dict) else str(obj)
            if code == 410:
                raise Gone("watch_expired", f"watch: {message or 'resourceVersion too old'}")
            raise WatchError(f"watch error event code={code}: {message}")
        rv = ((obj.get("metadata") or {}).get("resourceVersion")) if isinstance(obj, dict) else None
        batch = Batch()
        if etype == "BOOKMARK":
            pass
        elif etype in ("ADDED", "MODIFIED", "DELETED"):
            self._convert_into(batch, obj, etype)
        else:
            raise WatchError(f"unknown watch event type {etype!r}")
        if rv:
            self.resource_version = str(rv)
            batch.resource_version = self.resource_version
        self.post("batch", batch)

    def _convert_into(self, batch: Batch, obj: Any, etype: str) -> None:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        ns = (meta or {}).get("namespace") or ""
        name = (meta or {}).get("name") or ""
        if etype == "DELETED":
            batch.deletes.append((ns, name))
            return
        try:
            converted = (self.resource.convert(obj, pod_names=False) if self.resource.kind == "EndpointSlice"
                         and not self.pod_names else self.resource.convert(obj))
        except ObjectError as exc:
            batch.errors.append((f"{ns}/{name}" if ns else name, str(exc)))
            return
        if converted is None:  # e.g. an FQDN EndpointSlice: not served, and not an older version either
            batch.deletes.append((ns, name))
        else:
            batch.upserts.append(converted)


class WatchError(Exception):
    pass


def _decode(body: bytes | str) -> Any:
    """JSON from the API: orjson (~2x json's speed); what it refuses (NaN, integers beyond 64 bits)
    json reads, as before."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _retry_after(exc: ApiException) -> float | None:
    """Seconds from an answer's Retry-After header (delta-seconds form), if it has one."""
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class ApiFailure(str):
    """A failure's one-line text; for an HTTP answer also its status and the API's own message."""

    status: int = 0
    message: str = ""


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        failure = ApiFailure(f"HTTP {exc.status} {exc.reason}".strip())
        failure.status = exc.status or 0
        try:
            failure.message = str(json.loads(exc.body).get("message") or "")[:500]
        except (TypeError, ValueError, AttributeError):
            failure.message = ""
        return failure
    if isinstance(exc, MaxRetryError) and exc.reason is not None:  # urllib3's wrapper: say what failed
        # "NewConnectionError: Failed to establish a new connection: [Errno 111] Connection refused", without
        # the "HTTPConnection(host=…, port=…)" before it: the server is logged apart
        return f"{type(exc.reason).__name__}: {str(exc.reason).split('): ', 1)[-1][:300]}"
    text = str(exc)
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# ------------------------------------------------------------------------------ loop side


@dataclass
class ResourceState:
    synced: bool = False
    connected: bool = False
    last_contact: float = 0.0  # monotonic
    disconnected_since: float = 0.0
    unreachable: bool = False  # the last failure got no answer at all (vs an error answer)
    last_error: str = ""
    resource_version: str = ""
    relist_seen: set | None = None
    # a relist after the first sync: its changes, (key, object or None to delete), applied at its end;
    # objects equal to the indexed ones are dropped as their page arrives, so a relist after an outage
    # holds little beside the index it replaces
    staged: list | None = None
    events: int = 0
    # reason -> count; both reasons from the start, so rate() works before the first relist
    relists: dict = field(default_factory=lambda: dict.fromkeys(RELIST_REASONS, 0))
    errors: int = 0
    partially_served: int = 0
    partial: dict = field(default_factory=dict)  # (ns, name) -> unserved parts last logged
    reachable_again: float = 0.0  # when the API answered again after this resource's last outage
    relisting_since: float = 0.0  # a 410 asked for a relist that is not applied yet
    relist_reason: str = ""
    catchup_from: float = 0.0  # start of the catch-up the next applied relist ends
    watched: bool = False  # a watch has been opened once (until then a 401/403 ends start-up)


# seconds from "the API answers again" to "the resource's relist is applied"
CATCHUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class ApiSource:
    """Applies reflector batches to the index (on the event loop) and tracks sync and staleness."""

    def __init__(self, api_client: KubeClient, index: ClusterIndex, log: Logger,
                 kinds: list[str], wanted: Callable[[Any], bool] = lambda obj: True, **reflector_options):
        self.index = index
        self.log = log
        self.wanted = wanted
        self.states = {kind: ResourceState() for kind in kinds}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reachability = Reachability()
        self.reflectors = [Reflector(RESOURCES[kind], api_client, self._poster(kind),
                                     pod_names=index.endpoint_pod_names,
                                     reachability=self.reachability, **reflector_options)
                           for kind in kinds]
        self.synced_event = asyncio.Event()
        self.started_at = time.monotonic()
        self.api_back_at = 0.0  # the last time any resource found the API answering again
        self.catchup = Histogram(CATCHUP_BUCKETS)  # labels: (resource,)
        self.server = api_client.configuration.host
        # called (on the loop) with (kind, verb, failure) when the API answers 401/403 to a resource's
        # first list or first watch: credentials or RBAC that never worked, not an outage
        self.on_refused: Callable[[str, str, ApiFailure], None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for reflector in self.reflectors:
            reflector.start()

    def stop(self) -> None:
        for reflector in self.reflectors:
            reflector.stop()

    def _poster(self, kind: str) -> Callable[[str, Any], None]:
        def post(what: str, payload: Any) -> None:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._receive, kind, what, payload)
                except RuntimeError:  # loop closed during shutdown
                    pass
        return post

    # -------------------------------------------------------------------- receiving (on the loop)

    def _receive(self, kind: str, what: str, payload: Any) -> None:
        state = self.states[kind]
        if what == "batch":
            self._contact(kind, state)
            self._apply(kind, state, payload)
        elif what == "contact":
            self._contact(kind, state)
        elif what == "watching":  # a watch is open: from now on the API has accepted us for this resource
            state.watched = True
            self._contact(kind, state)
        elif what == "gone":
            reason, detail, delay = payload
            now = time.monotonic()
            state.relists[reason] = state.relists.get(reason, 0) + 1
            if not state.relisting_since:
                state.relisting_since = now
                state.catchup_from = state.reachable_again or now
            state.relist_reason = reason
            self.log.info("api_relist", resource=kind, reason=reason, detail=detail,
                          **({"retry_in": round(delay, 3)} if delay else {}),
                          serving="last known state until the relist completes" if state.synced else "partial state")
        elif what == "error":
            cause, detail, delay = payload
            state.errors += 1
            state.last_error = detail
            state.unreachable = cause == "unreachable"
            if getattr(detail, "status", 0) in (401, 403) and not state.watched and self.on_refused:
                self.on_refused(kind, "watch" if state.synced else "list", detail)  # start-up ends here
                return
            if state.connected or not state.disconnected_since:
                state.connected = False
                state.disconnected_since = time.monotonic()
                state.reachable_again = 0.0
                extra = {} if state.synced else {
                    "server": self.server, "fix": f"check that {self.server} is reachable from here; kdns retries "
                                                  "with backoff and /ready fails until every resource has synced"}
                self.log.warning("api_disconnected", resource=kind, cause=cause, error=detail,
                                 serving="last known state" if state.synced else "SERVFAIL for unknown names",
                                 retry_in=round(delay, 3), **extra)
            else:
                self.log.debug("api_retry_failed", resource=kind, cause=cause, error=detail,
                               retry_in=round(delay, 3))

    def _contact(self, kind: str, state: ResourceState) -> None:
        now = time.monotonic()
        state.last_contact = now
        if not state.connected:
            if state.disconnected_since:
                # the API is back: from the first resource to see it in this outage, if that was earlier
                if self.api_back_at < state.disconnected_since:
                    self.api_back_at = now
                state.reachable_again = self.api_back_at
                self.log.info("api_reconnected", resource=kind,
                              outage_seconds=round(now - state.disconnected_since, 3))
            state.connected = True
            state.disconnected_since = 0.0

    def _apply(self, kind: str, state: ResourceState, batch: Batch) -> None:
        index = self.index
        if batch.relist_begin:
            state.relist_seen = set()
            state.staged = [] if state.synced else None
        elif state.relist_seen is None:
            state.reachable_again = 0.0  # a watch delivered: whatever follows is not this outage's catch-up
        for key, message in batch.errors:
            self.log.error("api_object_invalid", resource=kind, object=key, reason=message,
                           action="previous version kept" if self._stored(kind, key) else "not served")
        staged = state.staged
        index.begin()
        try:
            for obj in batch.upserts:
                key = _key(obj)
                self._note_partial(kind, state, key, getattr(obj, "unserved", ()))
                if state.relist_seen is not None:
                    state.relist_seen.add(key)
                wanted = self.wanted(obj)
                if staged is not None:
                    if not wanted or index.get(kind, *key) != obj:
                        staged.append((key, obj if wanted else None))
                elif wanted:
                    index.upsert(obj)
                else:
                    index.delete(kind, *key)  # filtered out (or no longer matching): not served
            for ns, name in batch.deletes:
                state.partial.pop((ns, name), None)
                if staged is not None:
                    staged.append(((ns, name), None))
                else:
                    index.delete(kind, ns, name)
                if state.relist_seen is not None:
                    state.relist_seen.discard((ns, name))
            for bad_key, _ in batch.errors:
                if state.relist_seen is not None:
                    state.relist_seen.add(_split_key(bad_key))  # keep the previous version through a relist
            if batch.relist_end and state.relist_seen is not None:
                for key, obj in staged or ():
                    if obj is None:
                        index.delete(kind, *key)
                    else:
                        index.upsert(obj)
                state.staged = None
                # replace: whatever the fresh list did not contain was deleted while we were away
                stale = [key for key in index.keys(kind) if key not in state.relist_seen]
                for ns, name in stale:
                    state.partial.pop((ns, name), None)
                    index.delete(kind, ns, name)
                if stale:
                    self.log.info("api_relist_removed", resource=kind, objects=len(stale))
                if state.synced:
                    extra = {}
                    if state.relisting_since:
                        catchup = time.monotonic() - state.catchup_from
                        self.catchup.observe((kind,), catchup)
                        extra = {"reason": state.relist_reason, "catchup_seconds": round(catchup, 3)}
                    self.log.info("api_relisted", resource=kind, objects=len(state.relist_seen),
                                  removed=len(stale), resource_version=batch.resource_version, **extra)
                state.relist_seen = None
                state.relisting_since = state.catchup_from = state.reachable_again = 0.0
            state.events += len(batch.upserts) + len(batch.deletes)
            if batch.resource_version:
                state.resource_version = batch.resource_version
        finally:
            index.commit()
        if batch.relist_end:
            settle_heap()
        if batch.relist_end and not state.synced:
            state.synced = True
            self.log.info("api_synced", resource=kind, objects=len(index.keys(kind)),
                          resource_version=state.resource_version,
                          seconds=round(time.monotonic() - self.started_at, 3))
            if all(s.synced for s in self.states.values()):
                index.mark_synced()
                self.synced_event.set()

    def _note_partial(self, kind: str, state: ResourceState, key: tuple[str, str], unserved: tuple) -> None:
        """Log (once per change) and count the parts of an accepted object that DNS cannot serve."""
        if state.partial.get(key, ()) == unserved:
            return
        if not unserved:
            state.partial.pop(key, None)
            return
        state.partial[key] = unserved
        state.partially_served += 1
        for field_path, reason in unserved:
            self.log.warning("api_object_partially_served", resource=kind, object="/".join(k for k in key if k),
                             field=field_path, reason=reason, action="the rest is served")

    def _stored(self, kind: str, key: str) -> bool:
        return _split_key(key) in set(self.index.keys(kind))

    # -------------------------------------------------------------------- reporting

    def ready(self) -> tuple[bool, str]:
        not_synced = [k for k, s in self.states.items() if not s.synced]
        detail = "; ".join(self.describe(k) for k in self.states)
        if not_synced:
            return False, "waiting for the first list of " + ", ".join(not_synced) + "; " + detail
        return True, detail

    def phase(self, kind: str) -> str:
        """What the resource is doing: listing (first list), reconnecting, relisting or watching."""
        state = self.states[kind]
        if not state.synced:
            return "listing"
        if not state.connected and state.disconnected_since:
            return "reconnecting"
        if state.relisting_since:
            return "relisting"
        return "watching"

    def describe(self, kind: str) -> str:
        """One line of /ready?verbose=1 for a resource (no ';' inside: it separates resources)."""
        state = self.states[kind]
        now = time.monotonic()
        phase = self.phase(kind)
        text = f"{kind}: {phase}"
        if phase == "reconnecting":
            what = "API unreachable" if state.unreachable else "API answering with errors"
            text += (f" ({what}, disconnected {now - state.disconnected_since:.1f}s: {state.last_error};"
                     f" serving the last known state)").replace(";", ",")
        elif phase == "relisting":
            text += (f" (410 Gone: {state.relist_reason} {now - state.relisting_since:.1f}s ago,"
                     " serving the last known state until the new list is complete)")
        elif phase == "listing" and state.disconnected_since:
            text += f" (disconnected: {state.last_error})".replace(";", ",")
        return text + (f", {self.age(kind):.1f}s since last API contact, "
                       f"resourceVersion {state.resource_version}")

    def age(self, kind: str) -> float:
        """Seconds since the last successful contact with the API for `kind` (since start if never)."""
        state = self.states[kind]
        since = state.last_contact or self.started_at
        return time.monotonic() - since


def _key(obj: Any) -> tuple[str, str]:
    if type(obj).__name__ == "Namespace":
        return ("", obj.name)
    return (obj.namespace, obj.name)


def _split_key(text: str) -> tuple[str, str]:
    ns, _, name = text.rpartition("/")
    return (ns, name)
