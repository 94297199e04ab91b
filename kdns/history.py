"""A bounded log of the changes the index applied (created, updated, endpoints changed, deleted), newest last."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

CAPACITY = 2048  # events kept; older ones fall off (about 250 KiB at most)


@dataclass(frozen=True, slots=True)
class Change:
    """One applied change: what happened to which object, and when (monotonic for ages, wall for display)."""

    kind: str  # Service | EndpointSlice | Endpoints | Pod | Namespace
    namespace: str
    name: str
    action: str  # created | updated | deleted
    detail: str  # e.g. "3 endpoints, 1 ready" or "ClusterIP 10.96.0.10"
    service: str  # the service an EndpointSlice belongs to ("" otherwise)
    monotonic: float
    wall: float

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.monotonic


class History:
    """The last CAPACITY changes; `about` finds those touching one namespace/name.

    Recording is on the index's event path, so an entry is a plain tuple holding the object itself
    (a few are kept alive after their deletion, at most CAPACITY); it is described when read."""

    def __init__(self, capacity: int = CAPACITY):
        self.events: deque[tuple] = deque(maxlen=capacity)

    def add(self, kind: str, namespace: str, name: str, action: str, obj=None, service: str = "") -> None:
        self.events.append((kind, namespace, name, action, obj, service, time.monotonic()))

    def about(self, namespace: str, name: str | None = None, limit: int = 10) -> list[Change]:
        """The newest `limit` changes to namespace `namespace` (as a Namespace) or to service `name` in it
        (the Service, its EndpointSlices or Endpoints), oldest first."""
        out = []
        for kind, ns, obj_name, action, obj, service, when in reversed(self.events):
            if name is None:
                hit = kind == "Namespace" and obj_name == namespace
            else:
                hit = ns == namespace and (obj_name == name or service == name) and \
                    kind in ("Service", "EndpointSlice", "Endpoints")
            if hit:
                detail = describe(obj) if obj is not None else ""
                out.append(Change(kind, ns, obj_name, action, detail, service, when,
                                  time.time() - (time.monotonic() - when)))
                if len(out) >= limit:
                    break
        return out[::-1]

    def __len__(self) -> int:
        return len(self.events)


def describe(obj) -> str:
    """A short summary of an indexed object for the log: type and addresses, endpoint counts."""
    kind = type(obj).__name__
    if kind == "Service":
        if obj.kind == "ExternalName":
            return f"ExternalName {obj.external_name}"
        if obj.kind == "Headless":
            return "headless"
        return f"ClusterIP {' '.join(obj.cluster_ips) or '-'}"
    if kind == "EndpointSlice":
        total = sum(len(ep.addresses) for ep in obj.endpoints)
        ready = sum(len(ep.addresses) for ep in obj.endpoints if ep.ready)
        terminating = sum(len(ep.addresses) for ep in obj.endpoints if ep.terminating)
        return f"{total} endpoint{'s' if total != 1 else ''}, {ready} ready" + \
            (f", {terminating} terminating" if terminating else "")
    if kind == "Pod":
        return " ".join(obj.ips)
    return ""
