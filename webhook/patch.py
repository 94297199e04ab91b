"""Pod -> JSONPatch: merge the planned variables into every container, as the kubelet would.

The user wins: a name a container already sets in `env` is never overridden (as the kubelet
skips service variables already present). Injected variables are prepended, so the user's
`$(VAR)` references to them still expand (the kubelet expands a value with the variables
declared before it plus the service variables). A name already set to exactly the value we would
write is ours from an earlier invocation (reinvocationPolicy IfNeeded) or harmless: it is left
as it is, silently, so a second call adds nothing.

JSONPatch (RFC 6902): a container without `env` gets `add .../env` with the whole array; one with
`env` gets one `add .../env/<i>` per variable, inserted in front. Path tokens are escaped
(RFC 6901: `~` -> `~0`, `/` -> `~1`), which matters for annotation keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from .envvars import EnvVar

CONTAINER_FIELDS = ("initContainers", "containers")  # the kubelet builds env for both the same way


class PodShapeError(ValueError):
    """The pod cannot be read; `path` names the field (under request.object)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"request.object.{path}: {reason}")
        self.path = path


def escape(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def pointer(*tokens: Any) -> str:
    return "".join("/" + escape(t) for t in tokens)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


@dataclass
class ContainerView:
    field: str  # "containers" | "initContainers"
    index: int
    name: str
    env: list | None  # None when absent or null
    env_from: list[dict]

    @property
    def path(self) -> str:
        return f"spec.{self.field}[{self.index}]"


@dataclass
class PodView:
    """The parts of a pod the webhook reads, checked (errors name the field)."""

    namespace: str
    name: str
    annotations: dict[str, str] | None  # None when absent or null
    has_metadata: bool
    enable_service_links: bool | None
    containers: list[ContainerView] = field(default_factory=list)

    @classmethod
    def parse(cls, obj: Any, request_namespace: str) -> "PodView":
        if not isinstance(obj, dict):
            raise PodShapeError("", f"expected a Pod object, got {_type_name(obj)}")
        meta = obj.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise PodShapeError("metadata", f"expected an object, got {_type_name(meta)}")
        meta = meta or {}
        namespace = meta.get("namespace") or request_namespace
        if not isinstance(namespace, str) or not namespace:
            raise PodShapeError("metadata.namespace", "missing, and request.namespace is empty too")
        name = meta.get("name") or meta.get("generateName") or ""
        if not isinstance(name, str):
            raise PodShapeError("metadata.name", f"expected a string, got {_type_name(name)}")
        annotations = meta.get("annotations")
        if annotations is not None:
            if not isinstance(annotations, dict):
                raise PodShapeError("metadata.annotations", f"expected an object, got {_type_name(annotations)}")
            for key, value in annotations.items():
                if not isinstance(value, str):
                    raise PodShapeError(f"metadata.annotations[{key!r}]", f"expected a string, got {_type_name(value)}")
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            raise PodShapeError("spec", f"expected an object, got {_type_name(spec)}")
        links = spec.get("enableServiceLinks")
        if links is not None and not isinstance(links, bool):
            raise PodShapeError("spec.enableServiceLinks", f"expected true or false, got {_type_name(links)}")
        view = cls(namespace, name, annotations, "metadata" in obj and obj["metadata"] is not None, links)
        if "containers" not in spec or spec["containers"] is None:
            raise PodShapeError("spec.containers", "required field is missing")
        for field_name in CONTAINER_FIELDS:
            items = spec.get(field_name)
            if items is None:
                continue
            if not isinstance(items, list):
                raise PodShapeError(f"spec.{field_name}", f"expected an array, got {_type_name(items)}")
            for i, item in enumerate(items):
                view.containers.append(_container(field_name, i, item))
        return view


def _container(field_name: str, i: int, item: Any) -> ContainerView:
    path = f"spec.{field_name}[{i}]"
    if not isinstance(item, dict):
        raise PodShapeError(path, f"expected an object, got {_type_name(item)}")
    name = item.get("name") or f"#{i}"
    if not isinstance(name, str):
        raise PodShapeError(f"{path}.name", f"expected a string, got {_type_name(name)}")
    env = item.get("env")
    if env is not None:
        if not isinstance(env, list):
            raise PodShapeError(f"{path}.env", f"expected an array, got {_type_name(env)}")
        for j, entry in enumerate(env):
            if not isinstance(entry, dict):
                raise PodShapeError(f"{path}.env[{j}]", f"expected an object, got {_type_name(entry)}")
            if not isinstance(entry.get("name"), str):
                raise PodShapeError(f"{path}.env[{j}].name", f"expected a string, got {_type_name(entry.get('name'))}")
            value = entry.get("value")
            if value is not None and not isinstance(value, str):
                raise PodShapeError(f"{path}.env[{j}].value", f"expected a string, got {_type_name(value)}")
    env_from = item.get("envFrom")
    if env_from is None:
        env_from = []
    if not isinstance(env_from, list):
        raise PodShapeError(f"{path}.envFrom", f"expected an array, got {_type_name(env_from)}")
    for j, entry in enumerate(env_from):
        if not isinstance(entry, dict):
            raise PodShapeError(f"{path}.envFrom[{j}]", f"expected an object, got {_type_name(entry)}")
        prefix = entry.get("prefix")
        if prefix is not None and not isinstance(prefix, str):
            raise PodShapeError(f"{path}.envFrom[{j}].prefix", f"expected a string, got {_type_name(prefix)}")
    return ContainerView(field_name, i, name, env, env_from)


@dataclass
class ContainerResult:
    container: ContainerView
    injected: list[EnvVar]
    shadowed: list[str]  # names the user set to something else: kept
    env_from_overrides: list[str]  # injected names an envFrom source might also define


def _may_skip(entry: Mapping) -> bool:
    """An env entry the kubelet may leave unset: no value, and a valueFrom configMapKeyRef /
    secretKeyRef / fileKeyRef marked optional (a missing key is skipped, not an error)."""
    if entry.get("value"):
        return False
    source = entry.get("valueFrom")
    if not isinstance(source, Mapping):
        return False
    refs = [source.get(k) for k in ("configMapKeyRef", "secretKeyRef", "fileKeyRef")]
    return any(isinstance(r, Mapping) and r.get("optional") is True for r in refs)


def _needs_service_value(env: list, name: str) -> bool:
    """Whether the kubelet would read the service variable `name` of a container whose env sets
    `name` itself: it does when an entry up to the first one that surely sets it refers to
    `$(name)` (expansion falls back to the service variables), or when every entry setting it is an
    optional reference that may be skipped (then the service variable is what the container gets)."""
    reference = f"$({name})"
    for entry in env:
        if reference in (entry.get("value") or ""):
            return True
        if entry["name"] == name and not _may_skip(entry):
            return False
    return True


def merge(container: ContainerView, variables: list[EnvVar]) -> ContainerResult:
    """What to inject into one container: the planned variables it does not set already, and those
    it sets where the kubelet would still read the service's value (see _needs_service_value):
    injected in front, they give that read the same value and the container's own entry still wins."""
    env = container.env or []
    existing: dict[str, Mapping] = {}
    for entry in env:
        existing[entry["name"]] = entry  # the last one is what the kubelet uses
    injected, shadowed = ([], []) if env else (list(variables), [])  # no env: all of them, no loop
    for var in variables if env else ():
        entry = existing.get(var.name)
        if entry is None:
            injected.append(var)
        elif entry.get("valueFrom") is not None or (entry.get("value") or "") != var.value:
            shadowed.append(var.name)
            if _needs_service_value(env, var.name):
                injected.append(var)
    overrides: list[str] = []
    if injected and container.env_from:
        prefixes = [e.get("prefix") or "" for e in container.env_from]
        overrides = [v.name for v in injected if any(v.name.startswith(p) for p in prefixes)]
    return ContainerResult(container, injected, shadowed, overrides)


class Encoded(str):
    """A value already in JSON text, written into the patch as it is (see encode)."""


@lru_cache(maxsize=65536)
def _entry_json(var: EnvVar) -> str:
    """One env entry as JSON; the same variables go into every pod of a namespace, so remember them."""
    return json.dumps({"name": var.name, "value": var.value}, separators=(",", ":"))


def env_ops(result: ContainerResult) -> list[dict]:
    c = result.container
    if not result.injected:
        return []
    if c.env is None:
        values = Encoded("[" + ",".join(_entry_json(v) for v in result.injected) + "]")
        return [{"op": "add", "path": pointer("spec", c.field, c.index, "env"), "value": values}]
    return [{"op": "add", "path": pointer("spec", c.field, c.index, "env", i), "value": Encoded(_entry_json(v))}
            for i, v in enumerate(result.injected)]


def encode(ops: list[dict]) -> str:
    """The patch as JSON text: what json.dumps(ops, separators=(",", ":")) gives for the same values,
    without encoding thousands of env entries again for every pod."""
    parts = []
    for op in ops:
        value = op.get("value")
        if isinstance(value, Encoded) and list(op) == ["op", "path", "value"]:
            parts.append('{"op":' + json.dumps(op["op"]) + ',"path":' + json.dumps(op["path"]) + ',"value":'
                         + value + "}")
        else:
            parts.append(json.dumps(op, separators=(",", ":")))
    return "[" + ",".join(parts) + "]"


def shape_key(pod: PodView) -> str:
    """Everything of `pod` that merge(), env_ops() and annotation_op() read, and the container names
    the warnings name, as one string: two pods with the same key get the same patch from one plan.
    Whole env and envFrom entries go in (key order normalised), not only the fields read today; a
    container's index is its place in the list (initContainers first, as PodView.parse reads them)."""
    return json.dumps([pod.has_metadata, pod.annotations is None, pod.enable_service_links,
                       [[c.field, c.name, c.env, c.env_from] for c in pod.containers]],
                      sort_keys=True, separators=(",", ":"))


def annotation_op(pod: PodView, key: str, value: str) -> dict:
    if not pod.has_metadata:
        return {"op": "add", "path": "/metadata", "value": {"annotations": {key: value}}}
    if pod.annotations is None:
        return {"op": "add", "path": "/metadata/annotations", "value": {key: value}}
    return {"op": "add", "path": pointer("metadata", "annotations", key), "value": value}
