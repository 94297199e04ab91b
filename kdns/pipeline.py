"""One server block at run time: its plugins in CoreDNS's fixed order (plugin.cfg), not the file's.

    log, loadbalance -> autopath -> cache -> hosts -> kubernetes -> loop -> forward

`Block.answer` returns (response bytes, plugin name) or an awaitable of that; the query handler
(server.py) owns the authoritative answer cache, metrics and the query log; transport.py the sockets.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from dataclasses import dataclass, field
from functools import partial

from dnslib import CNAME, QTYPE, RR, DNSError, DNSLabel, DNSRecord

from .cache import AnswerCache, cover_key
from .config import BlockConfig, in_zone
from .forward import Forwarder, Overloaded, UpstreamError, connected_udp
from .hosts import Hosts
from .index import ClusterIndex
from .log import Logger
from .metrics import DnsMetrics
from .plugins import Chain, Request, build_chain, then
from .resolver import Answer, Resolver
from .respcache import ResponseCache
from .wire import (NXDOMAIN, REFUSED, SERVFAIL, Query, error_response, pack_answer, parse_query, patch, qtype_name,
                   rotate, rotation_groups)


@dataclass(slots=True)
class CachedAnswer:
    """A packed authoritative answer, reusable for every query with the same Query.key."""

    packed: bytes
    block: "Block"
    zone: str
    plugin: str
    groups: tuple = ()  # loadbalance: A/AAAA rdata positions to rotate
    served: int = 0
    mark: int = 0  # the answer cache's: served (and its fronts' answers) when last marked, and when
    marked: float = 0.0


@dataclass(slots=True)
class NegativeCover:
    """The resolver's claim that <label>.<ns>.svc.<zone> is NXDOMAIN for every label without a service
    (Resolver.covered_nxdomain), kept in the answer cache under (the name after its first label, class,
    EDNS, DO): a never-seen name there is answered from it without the chain (Block._cover)."""

    block: "Block"
    zone: str
    ns: str
    zone_of: object  # the resolver's Zone
    served: int = 0
    mark: int = 0  # as CachedAnswer's
    marked: float = 0.0
    # the packed NXDOMAIN per question end (qend): names under one cover with the same first-label length
    # differ only in the question, which the fast path writes in; valid while the index serial is its own
    shapes: dict = field(default_factory=dict)


@dataclass
class Block:
    config: BlockConfig
    index: ClusterIndex
    answers: AnswerCache  # shared by the blocks of one port
    log: Logger
    metrics: DnsMetrics
    resolver: Resolver | None = None
    forwarder: Forwarder | None = None
    cache: ResponseCache | None = None
    hosts: Hosts | None = None
    search_domains: list[str] = field(default_factory=list)  # autopath: the host's search list
    loop_probe: str = ""  # the random name the loop check sends through us
    loop_seen: int = 0
    loop_detected: bool = False
    name: str = ""  # the `server` metric label, dns://:PORT (computed once, read per query)
    listener: tuple = ()  # (Corefile port, address) of the listener this block instance serves
    chain: Chain = field(default_factory=Chain)  # kdns/plugins/ handlers around the built-in chain
    port_zones: tuple = ()  # every zone served on this block's port (set by its QueryHandler)

    def __post_init__(self) -> None:
        self.name = self.config.name
        self.chain = build_chain(self.config.plugins, self)

    def accepts_class(self, qclass: int) -> bool:
        """A class other than IN/ANY is served only by a plugin that asks for it (chaos)."""
        return any(qclass in getattr(h, "classes", ()) for h in self.chain.wrappers)

    @property
    def ra(self) -> bool:
        return self.forwarder is not None

    # -------------------------------------------------------------------- the chain

    def answer(self, query: Query, name: str, zone: str, tcp: bool, client_ip: str | None, client=None):
        if not self.chain.wrappers and not self.chain.middle and not self.chain.last:
            return self._builtin(query, name, zone, tcp, client_ip)
        req = Request(query, name, zone, tcp, client or ((client_ip, 0) if client_ip else None))
        return then(self.serve(req, 0), lambda result: self._store(req, result))

    def serve(self, req: Request, position: int = 0):
        """The chain from wrapper `position` on: plugins may call it again with a rewritten request."""
        if position < len(self.chain.wrappers):
            return self.chain.wrappers[position].serve(req, lambda r: self.serve(r, position + 1))
        if req.query.qclass not in (1, 255):  # CH/HS let in for a plugin that did not answer it
            return error_response(req.query.data, REFUSED, req.query), ""
        result = self._builtin(req.query, req.name, req.zone, req.tcp, req.client_ip, req)
        if self.chain.last:
            return then(result, lambda res: self._last(req, res))
        return result

    def _last(self, req: Request, result: tuple):
        """Plugins after forward (whoami) answer what the built-in chain refused."""
        response, plugin = result
        if plugin == "" and response[3] & 0x0F == REFUSED:
            for handler in self.chain.last:
                out = handler.serve(req, None)
                if out is not None:
                    return out
        return result

    def _store(self, req: Request, result: tuple) -> tuple:
        """Cache what the whole chain produced for the client's own question, when every step allows it."""
        response, plugin = result
        if req.pending is not None and req.cacheable and response[3] & 0x0F != SERVFAIL:
            zone, deps = req.pending
            groups = rotation_groups(response) if self.config.loadbalance else ()
            self.answers.put(req.query.key, CachedAnswer(response, self, zone, plugin, groups), deps)
            return result
        if plugin not in ("forward", "cache"):  # not cached: rotate now (cache hits rotate as they are served)
            return self.balance(response), plugin
        return result

    def _builtin(self, query: Query, name: str, zone: str, tcp: bool, client_ip: str | None,
                 req: Request | None = None):
        """hosts -> kubernetes (autopath on a miss) -> forward (cache), as before kdns/plugins/."""
        qtype = query.qtype
        if self.loop_probe and name == self.loop_probe:
            self._loop_probe_seen()
        fallthrough_nx: Answer | None = None
        if self.hosts is not None and self.hosts.covers(name):
            ans = self.hosts.lookup(name, qtype)
            if ans is not None:
                return patch(pack_answer(query, ans, self.ra), query), "hosts"
        for handler in self.chain.middle:  # k8s_external
            result = handler.serve(req, None)
            if result is not None:
                return result
        if self.resolver is not None:
            labels = query.labels
            ans = self.resolver.resolve(labels, qtype)
            if not ans.outside:
                if ans.rcode == NXDOMAIN:
                    if self._autopath_applies(labels, client_ip):
                        return self._autopath(query, labels, ans, tcp)
                    if self._falls_through(name):
                        fallthrough_nx = ans
                    else:
                        return self._authoritative(query, ans, zone, req)
                elif ans.chase is not None and self.forwarder is not None:
                    return self._chase(query, ans, tcp)
                else:
                    return self._authoritative(query, ans, zone, req)
        if self.forwarder is not None and self.forwarder.matches(name) and not self.loop_detected:
            cache = self.cache if self.cache is not None and self.cache.covers(name) else None
            if cache is not None:
                hit = cache.get(query)
                if hit is not None:
                    return self.balance(hit), "cache"
            return self._forward(query, name, tcp, cache)
        if fallthrough_nx is not None:
            return self._authoritative(query, fallthrough_nx, zone, req)
        return error_response(query.data, REFUSED, query), ""

    def _authoritative(self, query: Query, ans: Answer, zone: str, req: Request | None = None):
        if ans.covers is not None and req is None and ans.cacheable:
            self._cover(query, ans, zone)
        packed = pack_answer(query, ans, self.ra)
        # negative answers are cached from their second asking (the doorkeeper), as the client asked them
        if ans.cacheable and (ans.answer or self.answers.seen_before(req.top.query.key if req else query.key)):
            if req is not None:  # plugins wrap the chain: cache their final response (Block._store)
                req.top.pending = (zone, ans.deps)
            elif not self.chain.wrappers:
                groups = rotation_groups(packed) if self.config.loadbalance else ()
                self.answers.put(query.key, CachedAnswer(packed, self, zone, "kubernetes", groups), ans.deps)
        return patch(packed, query), "kubernetes"

    def _cover(self, query: Query, ans: Answer, zone: str) -> None:
        """Keep the resolver's NXDOMAIN claim for the namespace (Answer.covers) when nothing else in this
        chain could answer another name of that shape differently: no plugin around or beside the
        kubernetes one, no hosts, no autopath (its answer depends on the client), and no zone served
        on this port or fallen through to inside the name's parent (it would take some of those names)."""
        if self.chain.wrappers or self.chain.middle or self.hosts is not None or self.config.autopath is not None:
            return
        key = cover_key(query.key)
        if self.answers.peek(key) is not None or self._falls_through(".".join(query.labels)):
            return
        parent = ".".join(query.labels[1:])
        fall = self.config.kubernetes.fallthrough if self.config.kubernetes is not None else None
        if any(z != parent and in_zone(z, parent) for z in (*self.port_zones, *(fall or ()))):
            return
        ns, zone_of = ans.covers
        self.answers.put(key, NegativeCover(self, zone, ns, zone_of), (("ns", ns),))

    def _falls_through(self, name: str) -> bool:
        fall = self.config.kubernetes.fallthrough if self.config.kubernetes is not None else None
        return fall is not None and (not fall or any(in_zone(name, z) for z in fall))

    def forward_cache_is_final(self) -> bool:
        """Whether a name outside the kubernetes zones that the `cache` plugin holds would be answered
        from it whatever else the chain has (no hosts, no acl before it): then the query handler serves
        such names from the query key alone, on its fast path, as it serves cached cluster answers."""
        return (self.cache is not None and self.forwarder is not None and self.hosts is None
                and self.config.acl is None and "" in self.config.zones
                and not (self.chain.wrappers or self.chain.middle or self.chain.last))  # plugins see every query

    def balance(self, response: bytes) -> bytes:
        if not self.config.loadbalance:
            return response
        try:
            groups = rotation_groups(response)
        except ValueError:
            return response
        return rotate(response, groups, random.randrange(1 << 16)) if groups else response

    # -------------------------------------------------------------------- forward

    def _forward(self, query: Query, name: str, tcp: bool, cache: ResponseCache | None):
        """The client's raw query goes upstream as it is (a fresh ID); a future of (response, "forward").
        `cache`: the `cache` plugin when it covers the name (the answer is stored there)."""
        try:
            fut = asyncio.get_running_loop().create_future()
            self.forwarder.submit(query.data, query.qend, tcp, partial(self._forwarded, query, name, cache, fut),
                                  self.metrics.observe_upstream)
        except (Overloaded, UpstreamError) as exc:
            return self.not_forwarded(query, exc), "forward"
        return fut

    def not_forwarded(self, query: Query, exc: Exception) -> bytes:
        """The answer when the forwarder would not take a query: REFUSED over max_concurrent (Overloaded),
        SERVFAIL when forwarding is disabled (UpstreamError), each reported as CoreDNS does."""
        if isinstance(exc, Overloaded):
            self.log.warning("forward_refused", name=query.name_text, reason=str(exc))
            return error_response(query.data, REFUSED, query)
        self._error(query, str(exc))
        return error_response(query.data, SERVFAIL, query)

    def _forwarded(self, query: Query, name: str, cache: ResponseCache | None, fut: asyncio.Future,
                   reply: bytes | None, error: str) -> None:
        """The upstream's reply (or why none came), made the response and handed to the query handler."""
        if fut.done():
            return
        try:
            fut.set_result((self.forward_response(query, name, cache, reply, error), "forward"))
        except Exception as exc:  # noqa: BLE001 - the query handler answers SERVFAIL and reports it
            fut.set_exception(exc)

    def forward_response(self, query: Query, name: str, cache: ResponseCache | None, reply: bytes | None,
                         error: str) -> bytes:
        """The response to a forwarded query from the upstream's reply, cached and rotated; SERVFAIL
        (reported) when none came."""
        if reply is None:
            self._error(query, error)
            return error_response(query.data, SERVFAIL, query)
        return self.forwarded(query.key, query.qend, name, cache, reply)

    def forwarded(self, key: tuple, qend: int, name: str | None, cache: ResponseCache | None, reply: bytes,
                  outside: bool | None = None) -> bytes:
        """The response to a query (cache key `key`, question ending at `qend`, `name` as text or None) from
        the upstream's reply: cached (ResponseCache.store_key: `name`, `outside`) and rotated."""
        groups = None
        if cache is not None:
            reply, groups = cache.store_key(key, qend, reply, name, outside)
        if self.config.loadbalance:
            reply = self.balance(reply) if groups is None else \
                rotate(reply, groups, random.randrange(1 << 16)) if groups else reply
        return reply

    def _error(self, query: Query, message: str) -> None:
        if self.config.errors:  # CoreDNS's errors plugin line: [ERROR] plugin/errors: 2 name. TYPE: error
            self.log.error("plugin/errors", message=f"2 {query.name_text} {qtype_name(query.qtype)}: {message}")
        else:
            self.log.warning("forward_failed", name=query.name_text, type=qtype_name(query.qtype), error=message)

    async def _chase(self, query: Query, ans: Answer, tcp: bool):
        """ExternalName pointing outside our zones: add the target's records from upstream."""
        target, qtype = ans.chase
        try:
            reply = await self._ask_upstream(target, qtype, tcp)
            ans.answer.extend(reply.rr)
            ans.rcode = reply.header.rcode
            if not reply.rr:
                ans.authority = list(reply.auth)
        except (UpstreamError, Overloaded, DNSError) as exc:  # the CNAME alone still answers
            self._error(query, f"chasing {target}: {exc}")
        return patch(pack_answer(query, ans, True), query), "kubernetes"

    async def _ask_upstream(self, name: str, qtype: int, tcp: bool) -> DNSRecord:
        request = DNSRecord.question(name, QTYPE.get(qtype, "A"))
        request.header.rd = 1
        request.header.id = secrets.randbelow(65536)
        packet = bytes(request.pack())  # dnslib packs into a bytearray: cache keys must be hashable
        query_name = name.rstrip(".").lower()
        if self.cache is not None and self.cache.covers(query_name):
            q = parse_query(packet)
            hit = self.cache.get(q)
            if hit is not None:
                return DNSRecord.parse(hit)
            reply = await self.forwarder.forward(packet, tcp, observe=self.metrics.observe_upstream)
            self.cache.put(q, reply, query_name)
            return DNSRecord.parse(reply)
        return DNSRecord.parse(await self.forwarder.forward(packet, tcp, observe=self.metrics.observe_upstream))

    # -------------------------------------------------------------------- autopath

    def _autopath_applies(self, labels: tuple[str, ...], client_ip: str | None) -> bool:
        ap = self.config.autopath
        if ap is None or self.resolver is None:
            return False
        zone = self.resolver.config.zones.match(labels)
        if zone is None or zone.reverse:
            return False
        z = len(zone.labels)
        # <base...>.<ns>.svc.<zone>, base at least one label
        if len(labels) < z + 3 or labels[-(z + 1)] != "svc":
            return False
        ns = labels[-(z + 2)]
        if not self.index.namespace_exists(ns):
            return False
        if self.resolver.config.pods == "verified" and client_ip is not None:
            # CoreDNS's way: only when the first search element is the asking pod's own namespace
            return self.index.pod_namespace(client_ip) == ns
        return True

    async def _autopath(self, query: Query, labels: tuple[str, ...], nx: Answer, tcp: bool):
        zone = self.resolver.config.zones.match(labels)
        z = len(zone.labels)
        base = labels[: -(z + 2)]
        candidates = [base + ("svc",) + zone.labels, base + zone.labels]
        candidates += [base + tuple(d.split(".")) for d in self.search_domains if d]
        candidates.append(base)
        owner = DNSLabel(list(l.encode("latin-1") for l in labels))
        for cand in candidates:
            result = self.resolver.resolve(cand, query.qtype)
            if not result.outside:
                if result.rcode in (NXDOMAIN, SERVFAIL):
                    continue
                records, rcode, authority = result.answer, result.rcode, result.authority
            else:
                if self.forwarder is None or not self.forwarder.matches(".".join(cand)) or self.loop_detected:
                    continue
                try:
                    reply = await self._ask_upstream(".".join(cand) + ".", query.qtype, tcp)
                except (UpstreamError, Overloaded, DNSError):
                    continue
                if reply.header.rcode in (NXDOMAIN, SERVFAIL, REFUSED):
                    continue
                records, rcode, authority = list(reply.rr), reply.header.rcode, list(reply.auth)
            target = DNSLabel(list(l.encode("latin-1") for l in cand) or ".")
            ttl = self.resolver.config.ttl
            out = Answer(rcode=rcode, authoritative=True)
            out.answer = [RR(owner, QTYPE.CNAME, ttl=ttl, rdata=CNAME(target))] + list(records)
            out.authority = [] if records else list(authority)
            self.metrics.autopath_success[self.name] += 1
            return self.balance(patch(pack_answer(query, out, self.ra), query)), "autopath"
        return self._authoritative(query, nx, zone.name)

    # -------------------------------------------------------------------- loop detection

    def _loop_probe_seen(self) -> None:
        self.loop_seen += 1
        if self.loop_seen > 2 and not self.loop_detected:
            self.loop_detected = True
            self.metrics.loop_detected[self.name] = 1
            if self.cache is not None:
                self.cache.clear_fronts()  # forwarding stops: its cached answers are no longer served on the fast path
            if self.forwarder is not None:
                self.forwarder.disabled_reason = "forwarding loop detected"
            self.log.error("forward_loop_detected", server=self.name, probe=self.loop_probe,
                           action="forwarding stopped for this server block; cluster names still served",
                           hint="an upstream sends our queries back to us (often 127.0.0.53 from the node's "
                                "resolv.conf): fix the upstream list")

    async def check_loop(self, address: tuple[str, int], attempts: int = 15, timeout: float = 2.0) -> bool:
        """Send HINFO <random>.<random>.<zone> through ourselves until it is answered (no loop) or
        seen more than twice (loop). Returns True if a loop was detected."""
        zone = self.config.zones[0]
        self.loop_probe = f"{secrets.randbelow(1 << 62)}.{secrets.randbelow(1 << 62)}" + (f".{zone}" if zone else "")
        request = DNSRecord.question(self.loop_probe, "HINFO")
        request.header.rd = 1
        packet = request.pack()
        loop = asyncio.get_running_loop()
        for _ in range(attempts):
            if self.loop_detected:
                return True
            fut = loop.create_future()

            class _Probe(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    if not fut.done():
                        fut.set_result(data)

                def error_received(self, exc):
                    if not fut.done():
                        fut.set_exception(exc)

            transport, _ = await loop.create_datagram_endpoint(_Probe, sock=connected_udp(*address))
            try:
                transport.sendto(packet)
                await asyncio.wait_for(fut, timeout)
                if not self.loop_detected:
                    self.loop_probe = ""  # answered: no loop; the check is done (as CoreDNS's loop plugin)
                    return False
            except (asyncio.TimeoutError, OSError):
                pass
            finally:
                transport.close()
        return self.loop_detected
