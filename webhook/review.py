"""AdmissionReview in, AdmissionReview out: the webhook's decision as a pure function.

`review(body, catalog, settings)` never raises for client input: bytes that are not JSON are a
BadRequest (HTTP 400); JSON that is not a v1 AdmissionReview for a Pod CREATE gets an
AdmissionReview that allows the object unchanged with a status message saying why. A pod
is mutated only when services have synced (fail open otherwise, with a warning).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from .patch import PodShapeError, PodView, annotation_op, encode, env_ops, merge, shape_key
from .selection import ANNOTATION_LINKS, ANNOTATION_ORIGINAL, ANNOTATION_SERVICES, Plan, Settings, plan, selected

API_VERSION = "admission.k8s.io/v1"
KNOWN_VERSIONS = (API_VERSION, "admission.k8s.io/v1beta1")
WARNING_PREFIX = "kdns-webhook: "
MAX_WARNING_CHARS = 256  # the API server may truncate longer ones


class BadRequest(ValueError):
    """Input that is not a JSON document at all: answered with HTTP 400 and this message."""


@dataclass
class Outcome:
    """The response body plus what the metrics and the log line need."""

    body: dict
    outcome: str  # mutated | unchanged | opted_out | not_selected | unsynced | skipped
    uid: str = ""
    pod: str = ""
    message: str = ""
    injected: int = 0
    containers: int = 0
    budget_exceeded: bool = False
    shadowed: int = 0
    warnings: list[str] = field(default_factory=list)


def decode(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("empty body: expected an AdmissionReview JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not UTF-8 (byte {exc.start}): expected an AdmissionReview JSON object") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise BadRequest("body is not usable JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise BadRequest(f"body is not JSON ({exc}): expected an AdmissionReview object") from None


class Base64(str):
    """Base64 text (no character JSON escapes); `data` is the same as bytes, which dump() writes
    between quotes as they are."""

    data: bytes

    def __new__(cls, data: bytes) -> "Base64":
        text = super().__new__(cls, data.decode("ascii"))
        text.data = data
        return text


def _allow(api_version: str, uid: str, message: str = "", warnings: list[str] | None = None,
           patch: Base64 | None = None) -> dict:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if message:
        response["status"] = {"message": message}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


def dump(value: Any) -> bytes:
    """json.dumps(value) (default separators) as UTF-8, without scanning or copying a Base64 string
    more than once: the patch of a budget-filled pod is ~140 KB of base64 text."""
    parts: list[bytes] = []
    _dump(value, parts)
    return b"".join(parts)


def _dump(value: Any, parts: list[bytes]) -> None:
    if isinstance(value, Base64):
        parts += (b'"', value.data, b'"')
    elif isinstance(value, dict):
        parts.append(b"{")
        for i, (key, item) in enumerate(value.items()):
            parts.append((", " if i else "").encode() + json.dumps(key).encode() + b": ")
            _dump(item, parts)
        parts.append(b"}")
    else:
        parts.append(json.dumps(value).encode())


def _describe_gvk(kind: Any) -> str:
    if not isinstance(kind, dict):
        return repr(kind)
    parts = [kind.get(k, "") for k in ("group", "version", "kind")]
    group, version, name = (p if isinstance(p, str) else repr(p)[:60] for p in parts)
    return f"{group + '/' if group else ''}{version} {name}".strip()


def _finish_warnings(warnings: list[str], limit: int) -> list[str]:
    out = []
    for text in warnings[:limit]:
        text = WARNING_PREFIX + text
        out.append(text if len(text) <= MAX_WARNING_CHARS else text[:MAX_WARNING_CHARS - 1] + "…")
    if len(warnings) > limit:
        out[-1] = WARNING_PREFIX + f"…and {len(warnings) - limit + 1} more warnings (see the webhook's log)"
    return out


def review(body: bytes, catalog, settings: Settings) -> Outcome:
    """Decide one AdmissionReview. Raises BadRequest only for bytes that are not JSON."""
    doc = decode(body)
    if not isinstance(doc, dict):
        return _skip(API_VERSION, "", f"expected an AdmissionReview object, got a JSON {type(doc).__name__}")
    api_version = doc.get("apiVersion")
    reply_version = api_version if api_version in KNOWN_VERSIONS else API_VERSION
    request = doc.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    uid = uid if isinstance(uid, str) else ""
    if doc.get("kind") != "AdmissionReview":
        return _skip(reply_version, uid, f"kind: expected AdmissionReview, got {doc.get('kind')!r}")
    if api_version != API_VERSION:
        return _skip(reply_version, uid, f"apiVersion: expected {API_VERSION}, got {api_version!r}")
    if not isinstance(request, dict):
        return _skip(reply_version, uid, "request: required field is missing" if request is None
                     else f"request: expected an object, got a JSON {type(request).__name__}")
    if not uid:
        return _skip(reply_version, uid, "request.uid: required field is missing")
    kind = request.get("kind")
    if not isinstance(kind, dict) or (kind.get("group") or "", kind.get("version"), kind.get("kind")) != ("", "v1", "Pod"):
        return _skip(reply_version, uid, f"request.kind: only v1 Pod is mutated, got {_describe_gvk(kind)}")
    sub = request.get("subResource") or ""
    if sub:
        return _skip(reply_version, uid, f"request.subResource: only pods are mutated, not pods/{sub}")
    operation = request.get("operation")
    if operation != "CREATE":
        return _skip(reply_version, uid, f"request.operation: only CREATE is mutated, got {operation!r}")
    request_namespace = request.get("namespace") or ""
    if not isinstance(request_namespace, str):
        return _skip(reply_version, uid, "request.namespace: expected a string")
    if "object" not in request or request["object"] is None:
        return _skip(reply_version, uid, "request.object: required field is missing")
    try:
        pod = PodView.parse(request["object"], request_namespace)
    except PodShapeError as exc:
        return _skip(reply_version, uid, str(exc))
    return _mutate(reply_version, uid, pod, catalog, settings)


def _skip(api_version: str, uid: str, message: str) -> Outcome:
    return Outcome(_allow(api_version, uid, message=message + "; allowed unchanged"), "skipped",
                   uid=uid, message=message)


def _mutate(api_version: str, uid: str, pod: PodView, catalog, settings: Settings) -> Outcome:
    who = f"{pod.namespace}/{pod.name}"
    annotations = pod.annotations or {}
    # a reinvocation carries the setting our first call recorded; a value that is not one we write
    # is replaced (else the next call would read enableServiceLinks: false, ours, as the pod's own)
    reinvocation = annotations.get(ANNOTATION_ORIGINAL) in ("true", "false")
    warnings: list[str] = []
    if annotations.get(ANNOTATION_LINKS) == "false":  # needs no cluster state: decided before the sync check
        why = f"opted out by pod annotation {ANNOTATION_LINKS}=false"
        return Outcome(_allow(api_version, uid, message=why + "; allowed unchanged"), "opted_out", uid=uid, pod=who,
                       message=why)
    if not catalog.synced:
        # fail open: the kubelet's own links still apply, as enableServiceLinks is left alone
        message = "services not synced yet: no service links injected; the kubelet's own links apply"
        return Outcome(_allow(api_version, uid, message=message,
                              warnings=_finish_warnings([message], settings.max_warnings)),
                       "unsynced", uid=uid, pod=who, message=message)
    chosen, why = selected(annotations, catalog.namespace_labels(pod.namespace), settings, warnings)
    if not chosen:
        outcome = "opted_out" if "opted out" in why else "not_selected"
        return Outcome(_allow(api_version, uid, message=why + "; allowed unchanged",
                              warnings=_finish_warnings(warnings, settings.max_warnings)),
                       outcome, uid=uid, pod=who, message=why, warnings=warnings)

    original = annotations.get(ANNOTATION_ORIGINAL)
    if original in ("true", "false"):
        links = original == "true"  # reinvocation: what the pod asked for before we turned it off
    else:
        if original is not None:
            warnings.append(f"annotation {ANNOTATION_ORIGINAL}: expected \"true\" or \"false\", got {original!r}; "
                            "replaced")
        links = pod.enable_service_links is not False
    the_plan = plan(pod.namespace, annotations, links, len(pod.containers), catalog, settings, warnings)
    shape = (settings, reinvocation, links, shape_key(pod))
    changes = catalog.answers.get(the_plan.serial, shape)
    if changes is None:
        changes = _changes(pod, the_plan, reinvocation, links, settings)
        catalog.answers.put(the_plan.serial, shape, changes, changes.size + len(shape[-1]))
    warnings += changes.warnings
    if reinvocation and not changes.injected:
        warnings = []  # the first invocation said all of it
    warnings = _finish_warnings(warnings, settings.max_warnings)
    return Outcome(_allow(api_version, uid, warnings=warnings, patch=changes.patch),
                   "mutated" if changes.patch else "unchanged", uid=uid, pod=who,
                   injected=changes.injected, containers=len(pod.containers),
                   budget_exceeded=the_plan.dropped_services > 0 and not (reinvocation and not changes.injected),
                   shadowed=changes.shadowed, warnings=warnings,
                   message=(f"{len(the_plan.services)} services" + (f" from {ANNOTATION_SERVICES}"
                                                                      if ANNOTATION_SERVICES in annotations else "")))


@dataclass(frozen=True)
class Changes:
    """What one plan does to one pod shape: the same for every pod of that shape (see AnswerMemo)."""

    patch: Base64 | None  # the JSONPatch, base64; None when nothing changes
    injected: int
    shadowed: int
    warnings: tuple[str, ...]  # about the pod's containers

    @property
    def size(self) -> int:
        return (2 * len(self.patch) if self.patch else 0) + sum(len(w) for w in self.warnings)  # text and data


def _changes(pod: PodView, the_plan: Plan, reinvocation: bool, links: bool, settings: Settings) -> Changes:
    """The patch for `pod` under `the_plan`; reads only what shape_key(pod) holds and the arguments."""
    ops: list[dict] = []
    warnings: list[str] = []
    injected = shadowed = 0
    for container in pod.containers:
        result = merge(container, the_plan.variables)
        ops += env_ops(result)
        injected += len(result.injected)
        if reinvocation and not result.injected:
            continue  # reported (and counted) by the first invocation
        shadowed += len(result.shadowed)
        if result.shadowed:
            names = ", ".join(result.shadowed[:3]) + (f" and {len(result.shadowed) - 3} more"
                                                       if len(result.shadowed) > 3 else "")
            warnings.append(f"container {container.name}: env sets {names}, shadowing service link "
                            "variables (the pod's values are kept)")
        if result.env_from_overrides:
            warnings.append(f"container {container.name}: envFrom keys are unknown at admission; one named like an "
                            f"injected variable (e.g. {result.env_from_overrides[0]}) is now overridden by it")
    changes_links = settings.disable_kubelet_links and pod.enable_service_links is not False
    if ops or changes_links:
        if changes_links:
            ops.append({"op": "add", "path": "/spec/enableServiceLinks", "value": False})
        if not reinvocation:
            ops.append(annotation_op(pod, ANNOTATION_ORIGINAL, "true" if links else "false"))
    patch = Base64(base64.b64encode(encode(ops).encode())) if ops else None
    return Changes(patch, injected, shadowed, tuple(warnings))
