"""The Kubernetes API as a source: list + watch with the official `kubernetes` client.

One Reflector thread per resource does the blocking HTTP (the event loop that answers DNS never
waits on the API); it converts each object to a slotted record at once and hands batches to the
loop with call_soon_threadsafe. ApiSource, on the loop, applies them to the index and keeps the
sync / staleness state that /ready, the metrics and the logs report.

Protocol (kubernetes api-concepts): list in pages (limit/continue) -> resourceVersion -> watch
from it with allowWatchBookmarks; every event and bookmark advances the resourceVersion; a
server-side timeout ends the stream normally and the watch resumes from the last version; 410
Gone (HTTP status or ERROR event) means the version is too old: relist, and replace that
resource's state so objects deleted meanwhile disappear; any other failure reconnects with
capped exponential backoff and jitter.
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

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from ..index import ClusterIndex
from ..log import Logger
from . import settle_heap
from ..objects import (ObjectError, endpointslice_from_dict, namespace_from_dict, pod_from_dict,
                       service_from_dict)

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class Gone(Exception):
    """410: the resourceVersion (or continue token) is too old; relist."""


class ConfigError(Exception):
    pass


# ------------------------------------------------------------------------------ client configuration


def build_api_client(kubeconfig: str | None = None, context: str | None = None,
                     serviceaccount_dir: str | None = None, endpoint: str | None = None,
                     tls: tuple[str, str, str] | None = None) -> tuple[k8s_client.ApiClient, str]:
    """An ApiClient from a kubeconfig (client certs or tokens, as kind writes it), an explicit
    endpoint (+ optional client TLS, CoreDNS's `endpoint` / `tls`), or the in-cluster service
    account. Returns (client, description for logs)."""
    serviceaccount_dir = serviceaccount_dir or SERVICEACCOUNT_DIR
    configuration = k8s_client.Configuration()
    try:
        if endpoint and not kubeconfig:
            configuration.host = endpoint
            if tls:
                configuration.cert_file, configuration.key_file, configuration.ssl_ca_cert = tls
            where = f"endpoint {endpoint}" + (" with client TLS" if tls else "")
        elif kubeconfig:
            k8s_config.load_kube_config(config_file=kubeconfig, context=context,
                                        client_configuration=configuration, persist_config=False)
            if endpoint:
                configuration.host = endpoint
            where = f"kubeconfig {kubeconfig}" + (f" context {context}" if context else "")
        else:
            token_file = os.path.join(serviceaccount_dir, "token")
            loader = k8s_config.incluster_config.InClusterConfigLoader(
                token_filename=token_file, cert_filename=os.path.join(serviceaccount_dir, "ca.crt"),
                try_refresh_token=False)
            loader.load_and_set(configuration)
            _follow_token_file(configuration, token_file)
            where = f"in-cluster {configuration.host} (service account {serviceaccount_dir})"
    except (k8s_config.ConfigException, OSError, ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    return k8s_client.ApiClient(configuration), where


def _follow_token_file(configuration: k8s_client.Configuration, token_file: str) -> None:
    """Re-read the projected service-account token whenever the file changes (kubelet rotates it),
    checked before every request with one stat()."""
    state = {"sig": None}

    def refresh(conf: k8s_client.Configuration) -> None:
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
    list_call: Callable[[k8s_client.ApiClient], Callable[..., Any]]
    convert: Callable[[dict], Any]


RESOURCES = {
    "Service": Resource("Service", lambda c: k8s_client.CoreV1Api(c).list_service_for_all_namespaces,
                        service_from_dict),
    "EndpointSlice": Resource("EndpointSlice",
                              lambda c: k8s_client.DiscoveryV1Api(c).list_endpoint_slice_for_all_namespaces,
                              endpointslice_from_dict),
    "Namespace": Resource("Namespace", lambda c: k8s_client.CoreV1Api(c).list_namespace,
                          lambda obj: namespace_from_dict(obj)),
    "Pod": Resource("Pod", lambda c: k8s_client.CoreV1Api(c).list_pod_for_all_namespaces, pod_from_dict),
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


class Reflector:
    """List + watch one resource in a thread; posts Batches to `post` (thread-safe)."""

    def __init__(self, resource: Resource, api_client: k8s_client.ApiClient, post: Callable[[str, Any], None],
                 page_size: int = 500, watch_timeout: int = 300, stall_timeout: float = 120.0,
                 connect_timeout: float = 10.0, backoff_max: float = 30.0):
        self.resource = resource
        self.list_fn = resource.list_call(api_client)
        self.post = post
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        # a watch that delivers nothing (no event, no bookmark) this long is presumed dead and reopened
        self.stall_timeout = stall_timeout
        self.connect_timeout = connect_timeout
        self.backoff = Backoff(base=min(0.5, backoff_max), cap=backoff_max)
        self.resource_version = ""
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"reflector-{resource.kind}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                    self.post("contact", None)
                self._watch()
                self.backoff.reset()
                self.post("contact", None)
            except Gone as exc:
                self.post("gone", str(exc))
                need_list = True
                if self.backoff.attempt:  # repeated 410s: do not hammer the server
                    self._stop.wait(self.backoff.next())
                else:
                    self.backoff.attempt = 1
            except Exception as exc:  # noqa: BLE001 - any failure: report, back off, resume
                self.post("error", _describe(exc))
                self._stop.wait(self.backoff.next())

    # -------------------------------------------------------------------- list

    def _list(self) -> None:
        token = None
        first = True
        while True:
            try:
                resp = self.list_fn(limit=self.page_size, _continue=token, _preload_content=False,
                                    _request_timeout=(self.connect_timeout, 60))
            except ApiException as exc:
                if exc.status == 410:
                    raise Gone(f"list continue token expired: {exc.reason}") from None
                raise
            try:
                data = json.loads(resp.data)
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
                return

    # -------------------------------------------------------------------- watch

    def _watch(self) -> None:
        # server-side timeout varied per watch (as client-go does) so watches do not restart in lockstep
        timeout = random.randint(self.watch_timeout, self.watch_timeout * 2)
        try:
            resp = self.list_fn(watch=True, resource_version=self.resource_version, allow_watch_bookmarks=True,
                                timeout_seconds=timeout, _preload_content=False,
                                _request_timeout=(self.connect_timeout, min(self.stall_timeout, timeout + 30)))
        except ApiException as exc:
            if exc.status == 410:
                raise Gone(f"watch from resourceVersion {self.resource_version}: {exc.reason}") from None
            raise
        try:
            self.post("contact", None)
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    return
                if not line:
                    continue
                self._event(line)
        finally:
            resp.release_conn()

    def _event(self, line: str) -> None:
        try:
            event = json.loads(line)
            etype = event["type"]
            obj = event["object"]
        except (ValueError, KeyError, TypeError):
            raise WatchError(f"undecodable watch event: {line[:200]!r}") from None
        if etype == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            message = obj.get("message", "") if isinstance(obj, dict) else str(obj)
            if code == 410:
                raise Gone(f"watch: {message or 'resourceVersion too old'}")
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
            converted = self.resource.convert(obj)
        except ObjectError as exc:
            batch.errors.append((f"{ns}/{name}" if ns else name, str(exc)))
            return
        if converted is None:  # e.g. an FQDN EndpointSlice: not served, and not an older version either
            batch.deletes.append((ns, name))
        else:
            batch.upserts.append(converted)


class WatchError(Exception):
    pass


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}".strip()
    text = str(exc)
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# ------------------------------------------------------------------------------ loop side


@dataclass
class ResourceState:
    synced: bool = False
    connected: bool = False
    last_contact: float = 0.0  # monotonic
    disconnected_since: float = 0.0
    last_error: str = ""
    resource_version: str = ""
    relist_seen: set | None = None
    events: int = 0
    relists: int = 0
    errors: int = 0
    partially_served: int = 0
    partial: dict = field(default_factory=dict)  # (ns, name) -> unserved parts last logged


class ApiSource:
    """Applies reflector batches to the index (on the event loop) and tracks sync and staleness."""

    def __init__(self, api_client: k8s_client.ApiClient, index: ClusterIndex, log: Logger,
                 kinds: list[str], wanted: Callable[[Any], bool] = lambda obj: True, **reflector_options):
        self.index = index
        self.log = log
        self.wanted = wanted
        self.states = {kind: ResourceState() for kind in kinds}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reflectors = [Reflector(RESOURCES[kind], api_client, self._poster(kind), **reflector_options)
                           for kind in kinds]
        self.synced_event = asyncio.Event()
        self.started_at = time.monotonic()

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
        elif what == "gone":
            state.relists += 1
            self.log.info("api_relist", resource=kind, reason=payload)
        elif what == "error":
            state.errors += 1
            state.last_error = payload
            if state.connected or not state.disconnected_since:
                state.connected = False
                state.disconnected_since = time.monotonic()
                self.log.warning("api_disconnected", resource=kind, error=payload,
                                 serving="last known state" if state.synced else "SERVFAIL for unknown names")
            else:
                self.log.debug("api_retry_failed", resource=kind, error=payload)

    def _contact(self, kind: str, state: ResourceState) -> None:
        now = time.monotonic()
        state.last_contact = now
        if not state.connected:
            if state.disconnected_since:
                self.log.info("api_reconnected", resource=kind,
                              outage_seconds=round(now - state.disconnected_since, 3))
            state.connected = True
            state.disconnected_since = 0.0

    def _apply(self, kind: str, state: ResourceState, batch: Batch) -> None:
        index = self.index
        if batch.relist_begin:
            state.relist_seen = set()
        for key, message in batch.errors:
            self.log.error("api_object_invalid", resource=kind, object=key, reason=message,
                           action="previous version kept" if self._stored(kind, key) else "not served")
        index.begin()
        try:
            for obj in batch.upserts:
                key = _key(obj)
                self._note_partial(kind, state, key, getattr(obj, "unserved", ()))
                if state.relist_seen is not None:
                    state.relist_seen.add(key)
                if self.wanted(obj):
                    index.upsert(obj)
                else:
                    index.delete(kind, *key)  # filtered out (or no longer matching): not served
            for ns, name in batch.deletes:
                state.partial.pop((ns, name), None)
                index.delete(kind, ns, name)
                if state.relist_seen is not None:
                    state.relist_seen.discard((ns, name))
            for bad_key, _ in batch.errors:
                if state.relist_seen is not None:
                    state.relist_seen.add(_split_key(bad_key))  # keep the previous version through a relist
            if batch.relist_end and state.relist_seen is not None:
                # replace: whatever the fresh list did not contain was deleted while we were away
                stale = [key for key in index.keys(kind) if key not in state.relist_seen]
                for ns, name in stale:
                    index.delete(kind, ns, name)
                if stale:
                    self.log.info("api_relist_removed", resource=kind, objects=len(stale))
                if state.synced:
                    self.log.info("api_relisted", resource=kind, objects=len(state.relist_seen),
                                  removed=len(stale), resource_version=batch.resource_version)
                state.relist_seen = None
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
        if not_synced:
            return False, "waiting for the first list of " + ", ".join(not_synced)
        return True, "; ".join(f"{k}: {self.age(k):.1f}s since last API contact, resourceVersion "
                               f"{s.resource_version}" + ("" if s.connected else f" (disconnected: {s.last_error})")
                               for k, s in self.states.items())

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
