"""What the webhook knows of the cluster: kdns's sources and index, read by namespace.

The webhook reuses kdns's ClusterIndex and its sources (API list+watch of Services and
Namespaces, or manifests on disk). ServiceCatalog keeps a by-namespace view of the index in step
through its change notifications, so an admission costs O(services in the pod's namespace), not
O(services in the cluster).

The first ClusterIP is taken from Service.cluster_ip, spec.clusterIP exactly as the API holds it
(the kubelet writes it verbatim; kdns's cluster_ips are canonical).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Mapping

from kdns.index import ClusterIndex
from kdns.log import Logger
from kdns.objects import Namespace, Service
from kdns.sources.manifests import ManifestSource

from .memo import AnswerMemo

MEMO_SIZE = 256  # plans remembered: (namespace, kdns.io/services, links, budget) combinations in use


class ServiceCatalog:
    """Services by namespace, and namespace labels, read from a ClusterIndex; the plans computed from
    them (memo) and the answers computed from those plans (`answers`, keyed by the plan's serial)."""

    def __init__(self, index: ClusterIndex, answers: AnswerMemo | None = None):
        self.index = index
        self._by_namespace: dict[str, dict[str, Service]] = {}
        self._memo: OrderedDict[Hashable, Any] = OrderedDict()
        self.answers = answers if answers is not None else AnswerMemo()
        for (ns, name), svc in index.services.items():
            self._by_namespace.setdefault(ns, {})[name] = svc
        index.subscribe(self._changed)

    def memo(self, key: Hashable, namespaces: frozenset[str] | None, compute: Callable[[], Any]) -> Any:
        """compute(), remembered under `key` (the last MEMO_SIZE keys) until a service changes in one
        of `namespaces` (None: in any namespace). A value with a `serial` (a Plan) takes the answers
        remembered under that serial with it when it is forgotten."""
        try:
            self._memo.move_to_end(key)
            return self._memo[key][0]
        except KeyError:
            value = compute()
            self._memo[key] = (value, namespaces)
            if len(self._memo) > MEMO_SIZE:
                self._forget(next(iter(self._memo)))
            return value

    def _forget(self, key: Hashable) -> None:
        value, _ = self._memo.pop(key)
        serial = getattr(value, "serial", None)
        if serial is not None:
            self.answers.drop(serial)

    def _changed(self, keys: set) -> None:
        changed = {key[1] for key in keys if len(key) == 3 and key[0] == "svc"}
        if changed and self._memo:
            for key, (_, namespaces) in list(self._memo.items()):
                if namespaces is None or not namespaces.isdisjoint(changed):
                    self._forget(key)
        for key in keys:
            if len(key) == 3 and key[0] == "svc":
                _, ns, name = key
                svc = self.index.services.get((ns, name))
                if svc is None:
                    group = self._by_namespace.get(ns)
                    if group is not None:
                        group.pop(name, None)
                        if not group:
                            del self._by_namespace[ns]
                else:
                    self._by_namespace.setdefault(ns, {})[name] = svc

    @property
    def synced(self) -> bool:
        return self.index.synced

    def in_namespace(self, namespace: str) -> Mapping[str, Service]:
        return self._by_namespace.get(namespace, {})

    def get(self, namespace: str, name: str) -> Service | None:
        return self.index.services.get((namespace, name))

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        ns: Namespace | None = self.index.namespaces.get(namespace)
        return dict(ns.labels) if ns is not None else {}

    def __len__(self) -> int:
        return len(self.index.services)


def manifest_catalog(paths: list[str], log: Logger) -> tuple[ServiceCatalog, ManifestSource]:
    """A synced catalog from manifests on disk (call `source.run()` to follow edits)."""
    index = ClusterIndex(implicit_namespaces=True)
    source = ManifestSource(paths, index, log)
    source.load()
    index.mark_synced()
    return ServiceCatalog(index), source
