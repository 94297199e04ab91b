"""Kubernetes YAML manifests on disk as a source: load, validate with file:line errors, poll for edits.

A file is applied atomically: if any document in it is broken, the whole file keeps its last
good state (its previous objects stay served) and every problem is logged with file, line and
field. Objects are merged across files; the same object in two files is reported, first path wins.
A file that has never loaded has no good state: until every file has loaded once the source is
not synced (the index answers SERVFAIL for would-be NXDOMAIN names and /ready fails naming it).
"""

from __future__ import annotations

import asyncio
import os
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import yaml

from ..index import ClusterIndex
from ..log import Logger
from . import fastyaml, gc_paused
from ..objects import (SERVICE_NAME_LABEL, ObjectError, endpoints_from_dict, endpointslice_from_dict, namespace_from_dict,
                       pod_from_dict, service_from_dict)

SUFFIXES = (".yaml", ".yml", ".json")

# (apiVersion, kind) -> converter
CONVERTERS: dict[tuple[str, str], Callable] = {
    ("v1", "Service"): service_from_dict,
    ("v1", "Pod"): pod_from_dict,
    ("v1", "Endpoints"): endpoints_from_dict,
    ("v1", "Namespace"): lambda obj, default_namespace="default": namespace_from_dict(obj),
    ("discovery.k8s.io/v1", "EndpointSlice"): endpointslice_from_dict,
}


_ENDPOINTS = (endpointslice_from_dict, endpoints_from_dict)  # converters that take pod_names


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


ObjKey = tuple  # (kind, namespace, name)


def object_key(obj) -> ObjKey:
    kind = type(obj).__name__
    if kind == "EndpointSlice" and obj.legacy:
        return ("Endpoints", obj.namespace, obj.service)
    if kind == "Namespace":
        return ("Namespace", "", obj.name)
    return (kind, obj.namespace, obj.name)


def _field_line(node: yaml.Node | None, path: str) -> int:
    """Best line for a field path like spec.ports[1].port inside a YAML node (1-based)."""
    if node is None:
        return 0
    best = node
    parts: list[Any] = []
    for part in path.replace("]", "").split("."):
        name, *indexes = part.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indexes if i.isdigit())
    cur = node
    for part in parts:
        nxt = None
        if isinstance(part, int) and isinstance(cur, yaml.SequenceNode) and part < len(cur.value):
            nxt = cur.value[part]
        elif isinstance(part, str) and isinstance(cur, yaml.MappingNode):
            for key_node, value_node in cur.value:
                if getattr(key_node, "value", None) == part:
                    nxt = value_node
                    best = key_node
                    break
        if nxt is None:
            break
        cur = best = nxt
    return best.start_mark.line + 1


# libyaml's parser when PyYAML has it (10x faster: a 10k-service cluster loads in seconds)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_LIST_DEPTH = 8


def parse_manifest_text(text: str, path: str, log: Logger | None = None,
                        pod_names: bool = True) -> tuple[list, list[ManifestProblem]]:
    """Parse one file. Returns (objects with their lines, problems); never raises for bad input.
    Unsupported kinds are logged, not errors. A file yaml-rs reads as PyYAML would (fastyaml) is read
    by it; one with a problem whose line lies inside a document, or with a List, is read again with
    PyYAML, whose nodes carry the lines. pod_names: as endpointslice_from_dict."""
    docs = fastyaml.documents(text)
    if docs is not None:
        objects: list[tuple[Any, int]] = []
        problems: list[ManifestProblem] = []
        held = _HeldLog()
        try:
            for data, line in docs:
                _collect(data, _Lines(line), path, objects, problems, held, 0, pod_names)
        except _NeedNodes:
            pass
        else:
            if log is not None:
                held.replay(log)
            return objects, _within(text, problems)
    return _parse_with_nodes(text, path, log, pod_names)


def _parse_with_nodes(text: str, path: str, log: Logger | None, pod_names: bool) -> tuple[list, list[ManifestProblem]]:
    objects: list[tuple[Any, int]] = []
    problems: list[ManifestProblem] = []
    loader = None
    node = None
    try:
        loader = _LOADER(text)
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            _collect(data, _Nodes(node), path, objects, problems, log, 0, pod_names)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else _node_line(node)
        reason = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
        problems.append(ManifestProblem(path, line, f"invalid YAML: {_shorten(str(reason))}"))
    except RecursionError:
        problems.append(ManifestProblem(path, _node_line(node), "invalid YAML: nested too deeply"))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        # PyYAML's constructors on malformed tagged scalars (!!int abc, !!timestamp x, !!float '', bad escapes)
        reason = "an empty value under a type tag (such as !!float '')" if isinstance(exc, IndexError) else str(exc)
        problems.append(ManifestProblem(path, _node_line(node), f"invalid YAML value: {_shorten(reason)}"))
    finally:
        if loader is not None:
            loader.dispose()
    return objects, _within(text, problems)


def _within(text: str, problems: list[ManifestProblem]) -> list[ManifestProblem]:
    """YAML counts a lone \\r as a line break, editors do not: never point past the last line."""
    if problems:
        last = text.count("\n") + 1
        problems = [p if p.line <= last else ManifestProblem(p.path, last, p.message) for p in problems]
    return problems


class _NeedNodes(Exception):
    """The line of something inside a document is needed: only PyYAML's nodes have it."""


class _Nodes:
    """Lines from a PyYAML node: the document's, a field's, a List item's."""

    def __init__(self, node: yaml.Node):
        self.node = node
        self.line = node.start_mark.line + 1

    def field_line(self, path: str) -> int:
        return _field_line(self.node, path)

    def item(self, i: int) -> "_Nodes":
        items_node = _child(self.node, "items")
        return _Nodes(items_node.value[i] if isinstance(items_node, yaml.SequenceNode) else self.node)


class _Lines:
    """Only the document's line (fastyaml): anything finer sends the file to PyYAML."""

    def __init__(self, line: int):
        self.line = line

    def field_line(self, path: str) -> int:
        raise _NeedNodes(path)

    def item(self, i: int) -> "_Lines":
        raise _NeedNodes(f"items[{i}]")


class _HeldLog:
    """Log calls kept until the file is known not to need a second reading (which would log them again)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.calls.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.calls.append(("warning", event, fields))

    def replay(self, log: Logger) -> None:
        for level, event, fields in self.calls:
            getattr(log, level)(event, **fields)


def _node_line(node) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _collect(data: Any, where: "_Nodes | _Lines", path: str, objects: list, problems: list,
             log: "Logger | _HeldLog | None", depth: int, pod_names: bool = True) -> None:
    line = where.line
    if depth > MAX_LIST_DEPTH:
        problems.append(ManifestProblem(path, line, f"kind List nested more than {MAX_LIST_DEPTH} levels deep"))
        return
    if data is None:
        return
    if not isinstance(data, dict):
        problems.append(ManifestProblem(path, line, f"expected a Kubernetes object (a mapping), got {type(data).__name__}"))
        return
    kind = data.get("kind")
    api_version = data.get("apiVersion")
    if not isinstance(kind, str) or not kind:
        problems.append(ManifestProblem(path, line, "kind: required field is missing"))
        return
    if kind == "List" or (kind.endswith("List") and isinstance(data.get("items"), list)):
        items = data.get("items")
        if not isinstance(items, list):
            problems.append(ManifestProblem(path, where.field_line("items"), "items: expected a list"))
            return
        for i, item in enumerate(items):
            _collect(item, where.item(i), path, objects, problems, log, depth + 1, pod_names)
        return
    if not isinstance(api_version, str) or not api_version:
        problems.append(ManifestProblem(path, line, "apiVersion: required field is missing"))
        return
    convert = CONVERTERS.get((api_version, kind))
    if convert is None:
        if log is not None:
            log.info("manifest_object_ignored", file=path, line=line, apiVersion=_shorten(api_version), kind=_shorten(kind),
                     reason="kdns serves only v1 Service/Endpoints/Pod/Namespace and discovery.k8s.io/v1 EndpointSlice")
        return
    try:
        obj = (convert(data, default_namespace="default") if pod_names or convert not in _ENDPOINTS
               else convert(data, default_namespace="default", pod_names=False))
    except ObjectError as exc:
        name = (data.get("metadata") or {}).get("name") if isinstance(data.get("metadata"), dict) else None
        what = f"{kind} {name}" if isinstance(name, str) and name else kind
        problems.append(ManifestProblem(path, where.field_line(exc.path), f"{what}: {exc}"))
        return
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a shape no check foresaw
        problems.append(ManifestProblem(path, line, f"{kind}: cannot use this object ({type(exc).__name__}: "
                                                   f"{_shorten(str(exc))})"))
        return
    if obj is None:  # an EndpointSlice of addressType FQDN or without a service-name label
        if log is not None:
            if data.get("addressType") == "FQDN":
                log.info("manifest_object_ignored", file=path, line=line, kind=kind, name=data["metadata"]["name"],
                         reason="addressType FQDN is not served by cluster DNS")
            else:  # valid for the API, but here most likely a forgotten label
                log.warning("manifest_object_ignored", file=path, line=line, kind=kind, name=data["metadata"]["name"],
                            reason=f"no {SERVICE_NAME_LABEL} label: the slice belongs to no Service")
        return
    for field_path, reason in getattr(obj, "unserved", ()):
        problems_line = where.field_line(field_path)
        if log is not None:
            log.warning("manifest_object_partially_served", file=path, line=problems_line, kind=kind,
                        name=data["metadata"]["name"], field=field_path, reason=reason)
    objects.append((obj, line))


def _child(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if getattr(key_node, "value", None) == key:
                return value_node
    return None


class ManifestSource:
    """Feeds a ClusterIndex from files and directories; `poll()` picks up edits, new and deleted files."""

    def __init__(self, paths: Iterable[str], index: ClusterIndex, log: Logger,
                 wanted: Callable[[Any], bool] = lambda obj: True):
        self.roots = [os.path.abspath(p) for p in paths]
        self.index = index
        self.log = log
        self.wanted = wanted
        self._signatures: dict[str, tuple] = {}
        # path -> (key -> object, the objects' lines in the same order): no (object, line) tuple per object
        self._file_objects: dict[str, tuple[dict[ObjKey, Any], array]] = {}
        self._applied: dict[ObjKey, Any] = {}
        self.problems: dict[str, list[ManifestProblem]] = {}  # current problems per file
        self.loads = 0
        self.partially_served = 0  # objects loaded with a part DNS cannot serve
        self._loaded_once: set[str] = set()  # files that have loaded without problems at least once

    # -------------------------------------------------------------------- discovery

    def _files(self) -> list[str]:
        files: list[str] = []
        for root in self.roots:
            if os.path.isdir(root):
                for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                    # hidden entries (and ConfigMap volumes' ..data internals) are skipped
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                                 if f.endswith(SUFFIXES) and not f.startswith("."))
            else:
                files.append(root)
        return list(dict.fromkeys(files))

    @staticmethod
    def _signature(path: str) -> tuple | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    # -------------------------------------------------------------------- loading

    def load(self) -> int:
        """Load every file once (or reload what changed). Returns the number of files (re)read."""
        with gc_paused():  # a 10k-service load allocates ~1M objects: no cycle collections meanwhile
            return self._load()

    def _load(self) -> int:
        changed = 0
        current = self._files()
        for root in self.roots:
            if not os.path.exists(root):
                if root not in self.problems:
                    self.problems[root] = [ManifestProblem(root, 0, "no such file or directory")]
                    self.log.error("manifest_error", file=root, line=0, reason="no such file or directory")
            elif root in self.problems and os.path.isdir(root):
                del self.problems[root]  # a directory that appeared: its files now count
        seen = set()
        for path in current:
            seen.add(path)
            sig = self._signature(path)
            if sig == self._signatures.get(path) and path in self._signatures:
                continue
            self._signatures[path] = sig
            changed += 1
            self._load_file(path, sig)
        for path in list(self._signatures):
            if path not in seen:
                del self._signatures[path]
                changed += 1
                self.log.info("manifest_removed", file=path)
                self._file_objects.pop(path, None)
                self.problems.pop(path, None)
                self._loaded_once.discard(path)
        if changed:
            self._apply()
        self.loads += 1
        self.index.mark_synced(not self.never_loaded())
        return changed

    def never_loaded(self) -> list[str]:
        """Named paths that do not exist and files that have not loaded once (broken since the start)."""
        return [path for path in self.problems if path not in self._loaded_once]

    def ready(self) -> tuple[bool, str]:
        pending = self.never_loaded()
        if pending:
            first = [str(self.problems[path][0]) for path in pending[:3]]
            more = f" (and {len(pending) - 3} more files)" if len(pending) > 3 else ""
            return False, "manifests never loaded: " + "; ".join(first) + more
        kept = sorted(self.problems)
        return True, ("manifests loaded" + (f"; last good state kept for {', '.join(kept)}" if kept else ""))

    def _load_file(self, path: str, sig: tuple | None) -> None:
        if sig is None:
            self._file_objects.pop(path, None)
            return
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            self._report(path, [ManifestProblem(path, 0, f"cannot read: {exc}")])
            return
        objects, problems = parse_manifest_text(text, path, self.log, self.index.endpoint_pod_names)
        if problems:
            self._report(path, problems)
            return
        by_key: dict[ObjKey, Any] = {}
        first_line: dict[ObjKey, int] = {}
        dup_problems = []
        for obj, line in objects:
            key = object_key(obj)
            if key in by_key:
                dup_problems.append(ManifestProblem(
                    path, line, f"{key[0]} {key[1] + '/' if key[1] else ''}{key[2]} is defined twice "
                    f"(first at line {first_line[key]})"))
            else:
                first_line[key] = line
            by_key[key] = obj
        if dup_problems:
            self._report(path, dup_problems)
            return
        self.partially_served += sum(1 for obj in by_key.values() if getattr(obj, "unserved", ()))
        if self.problems.pop(path, None):
            self.log.info("manifest_fixed", file=path, objects=len(by_key))
        self._file_objects[path] = (by_key, array("I", first_line.values()))
        self._loaded_once.add(path)
        self.log.info("manifest_loaded", file=path, objects=len(by_key))

    def _report(self, path: str, problems: list[ManifestProblem]) -> None:
        self.problems[path] = problems
        kept = len(self._file_objects.get(path, ({},))[0])
        for p in problems:
            self.log.error("manifest_error", file=p.path, line=p.line, reason=p.message,
                           kept_objects=kept)

    def _apply(self) -> None:
        merged: dict[ObjKey, Any] = {}
        owner: dict[ObjKey, tuple[str, int, Any]] = {}
        for path in sorted(self._file_objects):
            by_key, lines = self._file_objects[path]
            for (key, obj), line in zip(by_key.items(), lines):
                if key in owner:
                    first_path, first_line, first = owner[key]
                    if first != obj:
                        self.log.warning("manifest_conflict", object="/".join(k for k in key if k),
                                         file=path, line=line, kept=f"{first_path}:{first_line}")
                    continue
                owner[key] = (path, line, obj)
                if self.wanted(obj):
                    merged[key] = obj
        index = self.index
        index.begin()
        try:
            for key, obj in self._applied.items():
                if key not in merged:
                    index.remove(obj)
            for key, obj in merged.items():
                if self._applied.get(key) != obj:
                    index.upsert(obj)
        finally:
            index.commit()
        self._applied = merged

    async def run(self, interval: float = 0.25) -> None:
        """Poll for edits forever (cancel to stop). Edits are served within `interval` plus a parse."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.load()
            except Exception as exc:  # noqa: BLE001 - a source bug must not stop serving
                self.log.error("manifest_poll_failed", error=repr(exc))


def check_manifests(paths: Iterable[str]) -> tuple[list[ManifestProblem], list[ManifestProblem], int]:
    """Validate manifests offline (kdns check-config --manifests): (problems, warnings, objects)."""
    import io

    source = ManifestSource(paths, ClusterIndex(implicit_namespaces=True), Logger(stream=io.StringIO()))
    source.load()
    problems = [p for path in sorted(source.problems) for p in source.problems[path]]
    warnings = []
    objects = 0
    for path in sorted(source._file_objects):
        by_key, lines = source._file_objects[path]
        for obj, line in zip(by_key.values(), lines):
            objects += 1
            what = f"{type(obj).__name__} {obj.name}"
            warnings.extend(ManifestProblem(path, line, f"{what}: {field}: {reason} (the rest is served)")
                            for field, reason in getattr(obj, "unserved", ()))
    return problems, warnings, objects
