"""kdns explain: replay a pod's resolver through the real query handler and say where each answer came from.

Nothing here resolves a name. Every query goes through a QueryHandler over shadow copies of the
running server blocks (pipeline.Block) that share their index, forwarder, `cache` plugin and hosts;
the copies have their own packed-answer cache and counters, and a recorder that the resolver, block
and metrics subclasses below feed as the real code runs (which records each call produced, which
upstream answered, which rewrite applied, which plugin answered). The real handler's code is not
changed and its hot path never sees a recorder. What is added afterwards is attribution (which
EndpointSlice holds an address) and, in diagnose.py, why a negative answer is negative.
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
from .diagnose import Diagnosis
from .resolver import Answer, Resolver, reverse_to_ip
from .server import QueryHandler
from .wire import parse_query

DEFAULT_NDOTS = 5  # what the kubelet writes into a pod's resolv.conf
MAX_LABEL, MAX_NAME = 63, 253
MAX_HINTS = 5


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
    slices = {sl.name: sl for sl in index.slices.get((ns, svc), ())}
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
    """The search list the kubelet gives a ClusterFirst pod: its namespace's, the cluster's, the node's."""
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
            return (f"label {label[:20]!r}... is {len(label.encode())} bytes: over the {MAX_LABEL}-byte limit, "
                    "never sent")
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
            steps.append(f"autopath answered server-side: CNAME to {target} "
                         "(the pod's further search queries are saved)")
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
        diag = Diagnosis(self.index, resolver, zone, rel, qtype, k.labels if k is not None else None, self.unfiltered)
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
            cname = [a["data"] for a in final["answer"] if a["type"] == "CNAME" and final["plugin"] == "autopath"]
            target = cname[0] if cname else final["name"]
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


def _qtype(text: str) -> int:
    try:
        value = getattr(QTYPE, text.upper())
    except (AttributeError, DNSError):
        value = None
    if not isinstance(value, int):
        raise ExplainError(f"--type: unknown record type {text!r} (A, AAAA, SRV, PTR, TXT, CNAME, ...)")
    return value
