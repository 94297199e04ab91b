"""kdns explain: replay a pod's resolver through the real query handler and say where each answer came from.

Nothing here resolves a name. Every query goes through a QueryHandler over shadow copies of the
running server blocks (pipeline.Block) that share their index, forwarder, `cache` plugin and hosts;
the copies have their own packed-answer cache and counters, and a recorder that the resolver, block
and metrics subclasses below feed as the real code runs (which records each call produced, which
upstream answered, which rewrite applied, which plugin answered). The real handler's code is not
changed and its hot path never sees a recorder. What is added afterwards is attribution (which
EndpointSlice holds an address) and diagnosis of negative answers (near-miss names, filters).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, fields, replace

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from .cache import AnswerCache
from .config import AutopathConfig
from .index import ClusterIndex, ServiceView
from .metrics import DnsMetrics
from .pipeline import Block
from .plugins import then
from .resolver import Answer, Resolver, _is_ip, parse_dashed_ip, reverse_to_ip
from .server import QueryHandler
from .wire import parse_query

DEFAULT_NDOTS = 5  # what the kubelet writes into a pod's resolv.conf
MAX_LABEL, MAX_NAME = 63, 253
NEAR_MISS = 2  # edit distance of a name offered as "did you mean"
MAX_HINTS = 5
MAX_SCAN = 20000  # services compared for a near miss in other namespaces (edit distance is slow in Python)


class ExplainError(ValueError):
    """A question explain cannot ask (bad type, unknown pod): a usage error."""


# ------------------------------------------------------------------------------------------ recording


class Recorder:
    """What the shadow pipeline saw while answering one query."""

    def __init__(self) -> None:
        self.sources: dict[tuple, str] = {}  # (owner, type, rdata) -> where the record came from
        self.resolved: list[tuple[tuple, int, Answer]] = []  # every resolver call: labels, qtype, answer
        self.upstreams: list[str] = []  # forwarded to, in order
        self.rewrites: list[tuple[str, str]] = []  # (asked name, name the rest of the block answered)
        self.plugin = ""  # what answered the last query, as the block told the query handler

    def tag(self, rr, source: str) -> None:
        self.sources.setdefault(record_key(rr), source)

    def source_of(self, rr) -> str | None:
        key = record_key(rr)
        found = self.sources.get(key)
        if found is None:  # a rewrite's `answer auto` gave the record the client's own name back
            found = next((s for k, s in self.sources.items() if k[1:] == key[1:]), None)
        return found

    def deps(self) -> set:
        out: set = set()
        for _, _, ans in self.resolved:
            out |= ans.deps
        return out


def record_key(rr) -> tuple:
    return (str(rr.rname).lower().rstrip("."), rr.rtype, str(rr.rdata).lower())


class _TracingResolver(Resolver):
    """The resolver, unchanged, tagging the records each part of it adds."""

    def __init__(self, base: Resolver, rec: Recorder):
        super().__init__(base.index, base.config)
        self.rec = rec

    def resolve(self, labels: tuple[str, ...], qtype: int) -> Answer:
        ans = super().resolve(labels, qtype)
        self.rec.resolved.append((labels, qtype, ans))
        return ans

    def _svc(self, zone, owner, parts, qtype, ans: Answer, depth: int) -> None:
        n, m = len(ans.answer), len(ans.additional)
        super()._svc(zone, owner, parts, qtype, ans, depth)
        view = self.index.view(parts[-1], parts[-2]) if len(parts) >= 2 else None
        for rr in ans.answer[n:] + ans.additional[m:]:
            self.rec.tag(rr, service_source(self.index, view, rr) if view is not None else "kubernetes")

    def _pod(self, zone, owner, parts, qtype, ans: Answer) -> None:
        n = len(ans.answer)
        super()._pod(zone, owner, parts, qtype, ans)
        for rr in ans.answer[n:]:
            self.rec.tag(rr, f"pod record (pods {self.config.pods})")

    def _reverse(self, zone, labels, rel, qtype, ans: Answer) -> None:
        n = len(ans.answer)
        super()._reverse(zone, labels, rel, qtype, ans)
        ip = reverse_to_ip(labels)
        for rr, (ns, svc, ep) in zip(ans.answer[n:], self.index.reverse_names(ip) if ip else []):
            what = f"endpoint {ep} of Service {ns}/{svc}" if ep else f"Service {ns}/{svc} (ClusterIP)"
            self.rec.tag(rr, f"reverse of {what}")

    def _forward(self, zone, labels, rel, qtype, ans: Answer, depth: int) -> None:
        n, m = len(ans.answer), len(ans.additional)
        super()._forward(zone, labels, rel, qtype, ans, depth)
        ns, name = self.config.nameserver_service
        what = {(): f"zone apex {zone.name}", ("dns-version",): "schema version (spec §2.2)"}.get(
            tuple(rel), f"Service {ns}/{name} (the cluster DNS service)")
        for rr in ans.answer[n:] + ans.additional[m:]:
            self.rec.tag(rr, what)


class _TracingMetrics(DnsMetrics):
    """Fresh counters (explain's queries are not the server's) that note which upstream answered."""

    def __init__(self, rec: Recorder):
        super().__init__()
        self.rec = rec

    def observe_upstream(self, to: str, rcode: int, seconds: float) -> None:
        self.rec.upstreams.append(to)
        super().observe_upstream(to, rcode, seconds)


class _TracingBlock(Block):
    """A running Block's plugins and state, with a recording resolver and an answer cache of its own."""

    rec: Recorder

    def answer(self, query, name: str, zone: str, tcp: bool, client_ip: str | None, client=None):
        return then(super().answer(query, name, zone, tcp, client_ip, client), self._answered)

    def _answered(self, result: tuple) -> tuple:
        self.rec.plugin = result[1]
        return result

    def serve(self, req, position: int = 0):
        if position == len(self.chain.wrappers) and req.outer is not None and req.name != req.top.name:
            self.rec.rewrites.append((req.top.query.name_text.lower(), req.query.name_text.lower()))
        return super().serve(req, position)


def shadow_handler(blocks: list[Block], rec: Recorder, with_autopath: bool = False) -> QueryHandler:
    """A QueryHandler over copies of `blocks` that share their index, forwarder, caches and hosts
    (with_autopath: as if each block also had `autopath @kubernetes`)."""
    copies = []
    answers = AnswerCache()  # the listener's one packed-answer cache, as the real blocks share theirs
    for block in blocks:
        kw = {f.name: getattr(block, f.name) for f in fields(Block) if f.init and f.name != "chain"}
        if with_autopath and block.config.autopath is None:
            kw["config"] = replace(block.config, autopath=AutopathConfig(zones=list(block.config.zones)))
        kw.update(answers=answers, metrics=_TracingMetrics(rec),
                  resolver=_TracingResolver(block.resolver, rec) if block.resolver is not None else None)
        copy = _TracingBlock(**kw)
        copy.rec = rec
        copies.append(copy)
    return QueryHandler(copies, blocks[0].log, _TracingMetrics(rec), answers=answers)


# ------------------------------------------------------------------------------------------ attribution


def service_source(index: ClusterIndex, view: ServiceView, rr) -> str:
    """Where a record under a service name comes from: the Service itself or one EndpointSlice endpoint."""
    svc = view.service
    ref = f"{svc.namespace}/{svc.name}"
    rtype = QTYPE.get(rr.rtype)
    if rtype == "CNAME" and svc.kind == "ExternalName":
        return f"Service {ref} (ExternalName -> {svc.external_name})"
    if rtype == "SRV":
        return f"Service {ref} ({svc.kind}) port {rr.rdata.port}"
    if rtype in ("A", "AAAA"):
        ip = str(rr.rdata)
        if svc.kind == "ClusterIP" and ip in svc.cluster_ips:
            return f"Service {ref} (ClusterIP)"
        found = endpoint_of(index, svc.namespace, svc.name, ip)
        if found is not None:
            return found
    return f"Service {ref} ({svc.kind})"


def endpoint_of(index: ClusterIndex, ns: str, svc: str, ip: str) -> str | None:
    """'EndpointSlice ns/slice endpoint i (ready, hostname h)' for an address of a service's endpoints."""
    slices = dict(index.slices.get((ns, svc), {}))
    legacy = index.legacy.get((ns, svc))
    if not slices and legacy is not None:
        slices = {svc: legacy}
    for name in sorted(slices):
        sl = slices[name]
        for i, ep in enumerate(sl.endpoints):
            if ip in ep.addresses:
                state = "ready" if ep.ready else "not ready, published (publishNotReadyAddresses)"
                host = f", hostname {ep.hostname}" if ep.hostname else ""
                kind = "Endpoints" if sl.legacy else "EndpointSlice"
                return f"{kind} {ns}/{name} endpoint {i} ({state}{host})"
    return None


def hosts_source(hosts, name: str, ip: str) -> str:
    """The hosts file line (or inline Corefile entry) that holds `name` -> `ip`."""
    for entry_ip, names in hosts.config.entries:
        if entry_ip == ip and name in names:
            return "hosts plugin inline entry (Corefile)"
    path = hosts.config.path
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, start=1):
                parts = line.split("#", 1)[0].split()
                if len(parts) > 1 and name in (p.lower().rstrip(".") for p in parts[1:]) and \
                        parts[0].split("%")[0].lower() == ip.lower():
                    return f"hosts file {path} line {lineno}"
    except (OSError, TypeError):
        pass
    return f"hosts file {path}"


# ------------------------------------------------------------------------------------------ the search path


def search_list(ns: str, zone: str, extra: list[str]) -> list[str]:
    """The search list the kubelet gives a pod with dnsPolicy ClusterFirst: its namespace's, the cluster's, the node's."""
    return [f"{ns}.svc.{zone}", f"svc.{zone}", zone] + [d for d in extra if d]


def candidates(name: str, ndots: int, search: list[str]) -> list[str]:
    """The names a glibc/musl resolver tries, in order: a trailing dot means only the name; fewer dots than
    ndots puts the search list first, otherwise the name as given goes first."""
    if name.endswith("."):
        return [name]
    expanded = [f"{name}.{d.strip('.')}." for d in search]
    if name.count(".") >= ndots:
        return [name + "."] + expanded
    return expanded + [name + "."]


def name_problem(fqdn: str) -> str:
    """Why a name cannot be sent at all ('' when it can): an empty label, a label over 63 or a name over 253 bytes."""
    text = fqdn.rstrip(".")
    if len(text.encode()) > MAX_NAME:
        return f"name is {len(text.encode())} bytes: over the {MAX_NAME}-byte limit (RFC 1035), never sent"
    for label in text.split(".") if text else []:
        if not label:
            return "empty label (two dots in a row): not a valid name, never sent"
        if len(label.encode()) > MAX_LABEL:
            return f"label {label[:20]!r}... is {len(label.encode())} bytes: over the {MAX_LABEL}-byte limit, never sent"
    return ""


# ------------------------------------------------------------------------------------------ explain


@dataclass
class Question:
    """What the user asked: a name as a pod would write it, and the pod it asks from."""

    name: str
    qtype: str = "A"
    namespace: str = "default"
    pod: str = ""
    ndots: int | None = None  # None: the pod's own (dnsConfig), else the kubelet's 5
    search: list[str] | None = None  # None: the pod's own list (dnsPolicy, dnsConfig), else the kubelet's


@dataclass
class Explainer:
    """Explains questions against running (or offline-built) server blocks of one listener."""

    blocks: list[Block]
    unfiltered: ClusterIndex | None = None  # offline: every object, before the namespaces/labels filters

    @property
    def index(self) -> ClusterIndex:
        return next((b.index for b in self.blocks), None)

    def _zone(self) -> str:
        for block in self.blocks:
            if block.resolver is not None:
                return block.resolver.config.zones.primary.name
        return "cluster.local"

    def _node_search(self) -> list[str]:
        return next((b.search_domains for b in self.blocks if b.search_domains), [])

    async def explain(self, q: Question) -> dict:
        """The report (a JSON-able dict; field names documented in README) for one question."""
        qtype = _qtype(q.qtype)
        client, notes, pod_dns = self._client(q)
        search, ndots, more = self._resolver_settings(q, pod_dns)
        notes += more
        q = replace(q, ndots=ndots)
        names = candidates(q.name, ndots, search)
        queries, deps = [], set()
        for fqdn in names:
            entry, rec = await self._one(fqdn, qtype, client)
            queries.append(entry)
            if rec is not None:
                deps |= rec.deps()
            if entry["answer"] and entry["rcode"] == "NOERROR":
                break
        final = queries[-1]
        ok = final["rcode"] == "NOERROR" and bool(final["answer"])
        cost = self._cost(queries, ok)
        if ok and cost["names"] > 1 and not cost["autopath"]:
            cost["autopath_would"] = await self._autopath_would(queries[0]["name"], qtype, client)
        report = {
            "question": {"name": q.name, "type": QTYPE.get(qtype), "from": q.namespace + (f"/{q.pod}" if q.pod else ""),
                         "ndots": q.ndots, "search": list(search) if not q.name.endswith(".") else []},
            "notes": notes + self._order_note(q),
            "queries": queries,
            "final": {"name": final["name"], "rcode": final["rcode"], "records": len(final["answer"]), "ok": ok},
            "cost": cost,
            "history": self._history(deps),
        }
        return report

    async def _autopath_would(self, first: str, qtype: int, client) -> str:
        """The name autopath would answer the pod's first query with (a CNAME target), when the blocks lack
        it, by asking that query of the same pipeline with `autopath @kubernetes` added ('' when it would not)."""
        if any(b.config.autopath is not None for b in self.blocks):
            return ""
        handler = shadow_handler(self.blocks, Recorder(), with_autopath=True)
        response, plugin = await ask(handler, first, qtype, client)
        if response is None or plugin != "autopath":
            return ""
        return next((str(rr.rdata) for rr in response.rr if QTYPE.get(rr.rtype) == "CNAME"), "")

    def _client(self, q: Question) -> tuple[tuple | None, list[str], tuple | None]:
        """The client address to ask as, notes, and the pod's resolver settings (Pod.dns) when it has its own."""
        if not q.pod:
            return None, [], None
        pod = self.index.pods.get((q.namespace, q.pod)) if self.index is not None else None
        if pod is None:
            raise ExplainError(f"--from {q.namespace}/{q.pod}: kdns knows no such pod (pods are watched only "
                               "with `pods verified`, or read from manifests); give --from NAMESPACE instead")
        if not pod.ips:
            return None, [f"pod {q.namespace}/{q.pod} has no IP yet"], pod.dns
        return (pod.ips[0], 0), [f"asking as pod {q.namespace}/{q.pod} ({pod.ips[0]})"], pod.dns

    def _resolver_settings(self, q: Question, pod_dns: tuple | None) -> tuple[list[str], int, list[str]]:
        """The search list and ndots to replay: the flags', else the pod's (dnsPolicy, dnsConfig), else the
        kubelet's defaults; and notes on where they came from."""
        kubelet = search_list(q.namespace, self._zone(), self._node_search())
        if pod_dns is None:
            return (q.search if q.search is not None else kubelet), (q.ndots if q.ndots is not None else
                                                                   DEFAULT_NDOTS), []
        policy, searches, ndots, host_network = pod_dns
        notes = []
        if policy == "Default" or (host_network and policy == "ClusterFirst"):
            notes.append(f"dnsPolicy {policy}{' with hostNetwork' if host_network else ''}: this pod uses the "
                         "node's resolver, not cluster DNS; shown as if it asked kdns")
        base = kubelet if policy in ("ClusterFirst", "ClusterFirstWithHostNet") else []
        if searches or policy == "None":
            notes.append(f"the pod's dnsPolicy {policy} and dnsConfig searches {' '.join(searches) or '(none)'} "
                         "make its search list")
        search = q.search if q.search is not None else base + [d for d in searches if d not in base]
        if q.ndots is None and ndots is not None:
            notes.append(f"the pod's dnsConfig sets ndots {ndots}")
        return search, (q.ndots if q.ndots is not None else ndots if ndots is not None else DEFAULT_NDOTS), notes

    @staticmethod
    def _order_note(q: Question) -> list[str]:
        if q.name.endswith("."):
            return [f"{q.name!r} ends with a dot: only that name is asked (no search list)"]
        dots = q.name.count(".")
        if dots >= q.ndots:
            return [f"{q.name!r} has {dots} dots (>= ndots {q.ndots}): asked as given first, then with the search list"]
        return [f"{q.name!r} has {dots} dot{'s' if dots != 1 else ''} (< ndots {q.ndots}): "
                "the search list is tried first, the name as given last"]

    async def _one(self, fqdn: str, qtype: int, client) -> tuple[dict, Recorder | None]:
        entry = {"name": fqdn, "type": QTYPE.get(qtype), "rcode": "", "plugin": "", "answer": [], "steps": [],
                 "reason": "", "hints": []}
        problem = name_problem(fqdn)
        if problem:
            entry.update(rcode="NOT SENT", reason=problem)
            return entry, None
        rec = Recorder()
        handler = shadow_handler(self.blocks, rec)
        response, plugin = await ask(handler, fqdn, qtype, client)
        if response is None:
            entry.update(rcode="NO ANSWER", reason="the query was dropped (acl drop)")
            return entry, rec
        entry["rcode"] = RCODE.get(response.header.rcode)
        entry["plugin"] = plugin
        block, _ = handler.select(tuple(fqdn.rstrip(".").lower().split(".")) if fqdn != "." else ())
        entry["steps"] = self._steps(block, rec, plugin, response)
        upstream = rec.upstreams[-1] if rec.upstreams else ""
        asked = rec.rewrites[-1][1] if rec.rewrites else fqdn
        for rr in response.rr:
            source = rec.source_of(rr)
            if source is None:
                source = self._pipeline_source(block, rr, plugin, upstream, asked, qtype)
            entry["answer"].append({"name": str(rr.rname), "type": QTYPE.get(rr.rtype), "ttl": rr.ttl,
                                    "data": str(rr.rdata), "source": source})
        if not entry["answer"] or entry["rcode"] != "NOERROR":
            reason, hints = await self._diagnose(block, handler, fqdn, qtype, client, response, plugin, rec)
            entry["reason"], entry["hints"] = reason, hints
        return entry, rec

    def _steps(self, block, rec: Recorder, plugin: str, response) -> list[str]:
        steps = []
        for asked, used in rec.rewrites:
            rules = [r for r in (block.config.plugins.get("rewrite") or []) if r.field == "name" and r.matcher
                     and r.matcher.rewrite(asked) is not None] if block is not None else []
            where = f" by rewrite rule at {rules[0].where}" if rules else ""
            steps.append(f"rewritten to {used}{where}")
        if plugin == "autopath":
            target = next((str(rr.rdata) for rr in response.rr if QTYPE.get(rr.rtype) == "CNAME"), "?")
            steps.append(f"autopath answered server-side: CNAME to {target} (the pod's further search queries are saved)")
        return steps

    @staticmethod
    def _pipeline_source(block, rr, plugin: str, upstream: str, asked: str, qtype: int) -> str:
        if plugin == "hosts" and block is not None and block.hosts is not None:
            return hosts_source(block.hosts, str(rr.rname).rstrip(".").lower(), str(rr.rdata))
        if plugin == "autopath" and QTYPE.get(rr.rtype) == "CNAME":
            return "autopath (server-side search path)"
        if upstream:
            return f"upstream {upstream} (forward)"
        if plugin == "cache":
            return "the cache plugin: a forwarded answer" + _cache_left(block, asked, qtype)
        return f"{plugin} plugin" if plugin else "kdns"

    # -------------------------------------------------------------------------------- negative answers

    async def _diagnose(self, block, handler, fqdn: str, qtype: int, client, response, plugin: str,
                        rec: Recorder) -> tuple[str, list[str]]:
        rcode = response.header.rcode
        labels = tuple(fqdn.rstrip(".").lower().split("."))
        if block is None:
            return "no server block serves this name: REFUSED", []
        if plugin in ("forward", "cache") or (rec.upstreams and plugin != "kubernetes"):
            where = rec.upstreams[-1] if rec.upstreams else "the upstream"
            if rcode == RCODE.SERVFAIL and not rec.upstreams:
                return "forwarding failed (every upstream failed or timed out)", []
            return f"answered by {where}: {RCODE.get(rcode)}" + ("" if rcode else " with no records"), []
        if plugin == "hosts":
            return "the hosts plugin has this name without the asked address family" if rcode == 0 \
                else "not in the hosts plugin's entries (no fallthrough)", []
        resolver = block.resolver
        zone = resolver.config.zones.match(labels) if resolver is not None else None
        if zone is None:
            if rcode == RCODE.REFUSED:
                return "outside the zones kdns serves here and no forward plugin covers it: REFUSED", []
            return f"answered by the {plugin or 'kdns'} plugin: {RCODE.get(rcode)}", []
        if rcode == RCODE.SERVFAIL:
            if not self.index.synced:
                return "kdns has not synced with the cluster yet: SERVFAIL, never a false NXDOMAIN", []
            return "SERVFAIL: a CNAME chain longer than 8 (ExternalName to ExternalName...)", []
        rel = labels[: len(labels) - len(zone.labels)]
        k = block.config.kubernetes
        diag = _Diagnosis(self.index, resolver, zone, rel, qtype, k.labels if k is not None else None, self.unfiltered)
        reason, hints = diag.run()
        if rec.upstreams and "ExternalName" in reason:
            reason += f" (asked upstream {rec.upstreams[-1]}: {RCODE.get(rcode)})"
        if rcode == RCODE.NOERROR:
            other = await self._other_types(handler, fqdn, qtype, client)
            if other:
                hints.insert(0, f"the name has {' and '.join(other)} records: it exists, just not as "
                                f"{QTYPE.get(qtype)}" + (" (a single-stack service)" if set(other) & {"A", "AAAA"}
                                                         and qtype in (QTYPE.A, QTYPE.AAAA) else ""))
        return reason, hints[:MAX_HINTS]

    async def _other_types(self, handler, fqdn: str, qtype: int, client) -> list[str]:
        """The types (of A, AAAA, SRV, CNAME, TXT) the real handler has records for at this name."""
        found = []
        for other in (QTYPE.A, QTYPE.AAAA, QTYPE.SRV, QTYPE.CNAME, QTYPE.TXT):
            if other == qtype:
                continue
            response, _ = await ask(handler, fqdn, other, client)
            if response is not None and response.header.rcode == 0 and \
                    any(rr.rtype == other for rr in response.rr):
                found.append(QTYPE.get(other))
        return found

    # -------------------------------------------------------------------------------- cost and history

    @staticmethod
    def _cost(queries: list[dict], ok: bool) -> dict:
        sent = [q for q in queries if q["rcode"] not in ("NOT SENT",)]
        autopath = any(q["plugin"] == "autopath" for q in queries)
        out = {"names": len(sent), "queries": 2 * len(sent), "fqdn": "", "fqdn_queries": 2, "autopath": autopath,
               "autopath_would": ""}
        if ok:
            final = queries[-1]
            target = next((a["data"] for a in final["answer"] if a["type"] == "CNAME" and final["plugin"] == "autopath"),
                          final["name"])
            out["fqdn"] = target
        return out

    def _history(self, deps: set) -> list[dict]:
        history = getattr(self.index, "history", None)
        if history is None:
            return []
        now = time.monotonic()
        changes = []
        for key in sorted(deps, key=str):
            if key[0] == "svc":
                changes += history.about(key[1], key[2])
            elif key[0] == "ns":
                changes += history.about(key[1])
        changes = sorted(set(changes), key=lambda c: c.monotonic)[-10:]
        return [{"kind": c.kind, "namespace": c.namespace, "name": c.name, "action": c.action, "detail": c.detail,
                 "age_seconds": round(c.age(now), 1), "time": c.wall} for c in changes]


def _cache_left(block, name: str, qtype: int) -> str:
    """', N s left' for the cache plugin's entry of this question (the name the block asked, after rewrites)."""
    if block is None or block.cache is None:
        return ""
    try:
        request = DNSRecord.question(name, QTYPE.get(qtype))
        request.header.rd = 1
        entry = block.cache.find(parse_query(bytes(request.pack())).key)
    except (DNSError, ValueError):
        return ""
    if entry is None:
        return ""
    return f", {max(0, int(entry.expires - block.cache.clock()))} s left"


async def ask(handler: QueryHandler, fqdn: str, qtype: int, client) -> tuple[DNSRecord | None, str]:
    """Send one query through a shadow handler as a pod would (UDP, then TCP when truncated); the parsed
    response and the plugin that answered it (as the block reported it to the handler)."""
    request = DNSRecord.question(fqdn, QTYPE.get(qtype))
    request.header.rd = 1
    data = bytes(request.pack())
    rec = handler.blocks[0].rec
    rec.plugin = ""
    for tcp in (False, True):
        result = handler.handle(data, tcp, client)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            return None, rec.plugin
        if not result[2] & 0x02:  # TC clear
            break
    return DNSRecord.parse(result), rec.plugin


class _Diagnosis:
    """Why a name under a kubernetes zone has no records, and the nearest name that has."""

    def __init__(self, index: ClusterIndex, resolver: Resolver, zone, rel: tuple, qtype: int, labels=None,
                 unfiltered: ClusterIndex | None = None):
        self.index, self.resolver, self.zone, self.rel, self.qtype = index, resolver, zone, rel, qtype
        self.cfg = resolver.config
        self.labels = labels  # the kubernetes `labels` selector, if any
        self.unfiltered = unfiltered

    def run(self) -> tuple[str, list[str]]:
        rel = self.rel
        if not rel:
            return f"the zone apex {self.zone.name} has no {QTYPE.get(self.qtype)} records (SOA and NS only)", []
        if self.zone.reverse:
            return "no Service or endpoint has this address (reverse lookup)", []
        kind = rel[-1]
        if kind == "svc":
            return self._svc(rel[:-1])
        if kind == "pod":
            return self._pod(rel[:-1])
        if rel in (("dns-version",), ("ns", "dns"), ("dns",)):
            return "this special name has no records of the asked type", []
        return (f"not a cluster name: names under {self.zone.name} are <service>.<namespace>.svc.{self.zone.name} "
                f"or <ip>.<namespace>.pod.{self.zone.name}"), self._whole_name_hints(rel)

    def _whole_name_hints(self, rel: tuple) -> list[str]:
        # `web.shop` asked as `web.shop.cluster.local`: a service name missing its `svc`
        if len(rel) == 2 and self.index.view(rel[1], rel[0]) is not None:
            return [f"did you mean {rel[0]}.{rel[1]}.svc.{self.zone.name}? (Service {rel[1]}/{rel[0]} exists)"]
        return []

    def _namespace_gone(self, ns: str) -> tuple[str, list[str]]:
        index = self.index
        if index.allowed_namespaces is not None and ns not in index.allowed_namespaces:
            held = sorted(n for o, n in self.unfiltered.services if o == ns) if self.unfiltered is not None else []
            return (f"namespace {ns!r} is excluded by the kubernetes `namespaces` filter "
                    f"(served: {', '.join(sorted(index.allowed_namespaces))})"), \
                ([f"namespace {ns} has {len(held)} Service(s) in the source ({', '.join(held[:3])})"] if held else []) + \
                [f"add {ns} to the kubernetes plugin's `namespaces` list to serve it"]
        if index.namespace_selector is not None:
            if ns in index.namespaces:
                return f"namespace {ns!r} exists but does not match the `namespace_labels` filter", []
        hints = [f"did you mean namespace {n}? ({_edits(ns, n)} edit{'s' if _edits(ns, n) > 1 else ''})"
                 for n in _near(ns, self._namespaces())]
        return f"no namespace {ns!r} (no Namespace object, nothing in it)", hints

    def _namespaces(self) -> set[str]:
        index = self.index
        names = set(index.namespaces) | set(index._ns_refs)
        return {n for n in names if index.namespace_exists(n)}

    def _svc(self, parts: tuple) -> tuple[str, list[str]]:
        n = len(parts)
        zone = self.zone.name
        if n == 0:
            return f"svc.{zone} is an empty non-terminal: it holds no records", []
        ns = parts[-1]
        if not self.index.namespace_exists(ns):
            return self._namespace_gone(ns)
        if n == 1:
            return f"a namespace name ({ns}.svc.{zone}) holds no records (NODATA)", []
        name = parts[-2]
        view = self.index.view(ns, name)
        if view is None:
            return f"no Service {name!r} in namespace {ns!r}", self._service_hints(ns, name)
        svc = view.service
        if n > 4:
            return f"too many labels below Service {ns}/{name}: no such name", []
        if n == 2:
            return self._service_negative(view)
        if n == 3:
            label = parts[0]
            if label.startswith("_"):
                return (f"Service {ns}/{name} has no named port with protocol {label[1:].upper()} "
                        "(SRV names need named ports)"), []
            served = view.served_endpoints()
            names = sorted({e.name for e in served})
            if svc.kind == "ExternalName":
                return f"Service {ns}/{name} is an ExternalName: it has no endpoint names", []
            if label not in names:
                hints = [f"did you mean {m}.{name}.{ns}.svc.{zone}?" for m in _near(label, names)]
                shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else "none"
                return f"no endpoint named {label!r} among the served endpoints of {ns}/{name} ({shown})", hints
            return f"endpoint {label} of {ns}/{name} has no {QTYPE.get(self.qtype)} address", []
        ports = ", ".join(f"_{p.name}._{p.protocol.lower()}" for p in svc.ports if p.name) or "no named ports"
        return f"Service {ns}/{name} has no SRV name {parts[0]}.{parts[1]} (ports: {ports})", []

    def _service_negative(self, view: ServiceView) -> tuple[str, list[str]]:
        svc = view.service
        ref = f"{svc.namespace}/{svc.name}"
        if svc.kind == "ExternalName":
            if _is_ip(svc.external_name):
                return (f"ExternalName Service {ref} points at an IP address ({svc.external_name}): a CNAME "
                        "cannot, so the name does not exist"), ["use a Service without selector and an "
                                                                  "EndpointSlice for a fixed IP"]
            return f"ExternalName Service {ref} -> {svc.external_name}: the target does not resolve", []
        served = view.served_endpoints()
        total = len(view.endpoints)
        ready = sum(1 for e in view.endpoints if e.ready)
        terminating = self._terminating(svc.namespace, svc.name)
        counts = f"{total} endpoint{'s' if total != 1 else ''}, {ready} ready" + \
            (f", {terminating} terminating" if terminating else "")
        if svc.kind == "Headless" and not served:
            fix = "no pod matches the selector" if total == 0 else \
                "wait for the pods to pass their readiness probes, or set publishNotReadyAddresses: true"
            return f"headless Service {ref} has no ready endpoints ({counts}): a headless name has nothing " \
                   "to answer", [fix]
        if svc.kind == "ClusterIP" and self.cfg.ignore_empty_service and not served:
            return f"Service {ref} has no ready endpoints ({counts}) and `ignore empty_service` is set", []
        families = sorted({"AAAA" if ":" in ip else "A" for ip in (svc.cluster_ips if svc.kind == "ClusterIP"
                                                                    else [e.ip for e in served])})
        return (f"Service {ref} ({svc.kind}, {counts}) has no {QTYPE.get(self.qtype)} records"
                + (f"; it has {'/'.join(families)} only" if families else "")), []

    def _terminating(self, ns: str, name: str) -> int:
        """Addresses of the service's slices whose endpoint is terminating (the index's views drop the flag)."""
        slices = list(self.index.slices.get((ns, name), {}).values())
        return sum(len(ep.addresses) for sl in slices for ep in sl.endpoints if ep.terminating)

    def _service_hints(self, ns: str, name: str) -> list[str]:
        index = self.index
        hints = [f"did you mean {name}.{other}? (Service {other}/{name} exists)"
                 for other, n in sorted(index.services) if n == name and other != ns and index.namespace_exists(other)]
        in_ns = sorted(n for o, n in index.services if o == ns)
        hints += [f"did you mean {m}.{ns}? (a typo: {_edits(name, m)} edit{'s' if _edits(name, m) > 1 else ''})"
                  for m in _near(name, in_ns)]
        if not hints and len(index.services) <= MAX_SCAN:  # the live endpoint runs on the server's loop
            elsewhere = sorted({(n, o) for o, n in index.services if o != ns and index.namespace_exists(o)})
            hints += [f"did you mean {m}.{o}? (Service {o}/{m})" for m, o in elsewhere
                      if m in _near(name, [m])][:3]
        if index.services.get((ns, name)) is None and name in {n for _, n in index.services} and not hints:
            hints.append(f"a Service {name} exists only in namespaces kdns does not serve")
        raw = self.unfiltered.services.get((ns, name)) if self.unfiltered is not None else None
        if raw is not None and self.labels is not None:
            hints.insert(0, f"Service {ns}/{name} exists in the source but the kubernetes `labels` filter "
                            f"({self.labels.text}) leaves it out: its labels do not match")
        elif self.labels is not None and self.unfiltered is None:
            hints.append(f"the kubernetes `labels` filter ({self.labels.text}) hides Services whose labels do not match")
        return hints

    def _pod(self, parts: tuple) -> tuple[str, list[str]]:
        if self.cfg.pods == "disabled":
            return "pod records are disabled (kubernetes `pods disabled`, the default)", \
                ["set `pods insecure` (or verified) in the kubernetes plugin to serve <ip>.<ns>.pod names"]
        if not parts:
            return "pod.<zone> is an empty non-terminal", []
        ns = parts[-1]
        if not self.index.namespace_exists(ns):
            return self._namespace_gone(ns)
        if len(parts) != 2:
            return f"pod names are <a-b-c-d>.{ns}.pod.{self.zone.name}", []
        ip = parse_dashed_ip(parts[0])
        if ip is None:
            return f"{parts[0]!r} is not a dashed IP address (10-244-1-7, fd00--7)", []
        if self.cfg.pods == "verified" and not self.index.pod_with_ip(ns, ip):
            return f"no pod with IP {ip} in namespace {ns} (`pods verified`)", []
        return f"{ip} has no {QTYPE.get(self.qtype)} form", []


def _edits(a: str, b: str, cap: int = NEAR_MISS + 1) -> int:
    """Levenshtein distance, stopping early once it exceeds `cap`."""
    if abs(len(a) - len(b)) >= cap:
        return cap
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) >= cap:
            return cap
        prev = cur
    return prev[-1]


def _near(word: str, pool) -> list[str]:
    """Names of `pool` within NEAR_MISS edits of `word` (not itself), nearest first."""
    scored = sorted((_edits(word, other), other) for other in pool if other != word)
    limit = 1 if len(word) <= 4 else NEAR_MISS  # two edits turn any short name into another
    return [other for d, other in scored if d <= limit][:3]


def _qtype(text: str) -> int:
    try:
        value = getattr(QTYPE, text.upper())
    except (AttributeError, DNSError):
        value = None
    if not isinstance(value, int):
        raise ExplainError(f"--type: unknown record type {text!r} (A, AAAA, SRV, PTR, TXT, CNAME, ...)")
    return value


# ------------------------------------------------------------------------------------------ text


def render(report: dict) -> str:
    """The report as the text `kdns explain` prints."""
    q = report["question"]
    out = [f"kdns explain {q['name']} {q['type']} from {q['from']} (ndots {q['ndots']})"]
    if q["search"]:
        out.append(f"search: {' '.join(q['search'])}")
    out += [f"note: {n}" for n in report["notes"]]
    for i, entry in enumerate(report["queries"], 1):
        head = f"{i}. {entry['name']} {entry['type']} -> {entry['rcode']}"
        if entry["plugin"]:
            head += f" ({entry['plugin']})"
        out.append(head)
        out += [f"   {s}" for s in entry["steps"]]
        for a in entry["answer"]:
            out.append(f"   {a['name']} {a['ttl']} {a['type']} {a['data']}")
            out.append(f"      from {a['source']}")
        if entry["reason"]:
            out.append(f"   why: {entry['reason']}")
        out += [f"   fix: {h}" for h in entry["hints"]]
    final, cost = report["final"], report["cost"]
    if final["ok"]:
        out.append(f"answer: {final['name']} ({final['records']} record{'s' if final['records'] != 1 else ''})")
    else:
        tried = len(report["queries"])
        out.append(f"answer: none{f' of the {tried} names' if tried > 1 else ''} resolved "
                   f"(last: {final['name']} {final['rcode']})")
    if cost["autopath"]:
        out.append("cost: autopath answered server-side; the pod sends 2 queries (A/AAAA)")
    elif cost["names"] > 1:
        line = f"cost: this lookup sends {cost['queries']} queries ({cost['names']} names x A/AAAA)"
        if cost["fqdn"]:
            line += f"; {cost['fqdn']} sends {cost['fqdn_queries']}"
        out.append(line)
        if cost["autopath_would"]:
            out.append(f"      with `autopath @kubernetes` the first query would be answered server-side "
                       f"(CNAME to {cost['autopath_would']}): 2 queries")
    if report["history"]:
        out.append("recent changes:")
        for c in report["history"]:
            ref = f"{c['namespace']}/{c['name']}" if c["namespace"] else c["name"]
            detail = f" ({c['detail']})" if c["detail"] else ""
            out.append(f"   {_age(c['age_seconds'])} ago  {c['kind']} {ref} {c['action']}{detail}")
    return "\n".join(out) + "\n"


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"
