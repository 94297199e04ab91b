"""The Kubernetes DNS-Based Service Discovery spec (1.1.0) as a pure function: index + question -> answer.

No I/O, no sockets. Section numbers in comments refer to kubernetes/dns docs/specification.md.
Where kdns extends the spec the way CoreDNS does, the comment says so.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RR, SOA, SRV, TXT, A, DNSLabel


from .index import ANY, ClusterIndex, EndpointRecord, ServiceView
from .wire import NOERROR, NXDOMAIN, SERVFAIL

SCHEMA_VERSION = "1.1.0"
DNS_VERSION_TTL = 28800  # spec §2.2 example; CoreDNS uses the same
MAX_CNAME_CHAIN = 8

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_TXT, T_AAAA, T_SRV, T_ANY = (
    QTYPE.A, QTYPE.NS, QTYPE.CNAME, QTYPE.SOA, QTYPE.PTR, QTYPE.TXT, QTYPE.AAAA, QTYPE.SRV, QTYPE.ANY)

PROTOCOLS = {"_tcp": "TCP", "_udp": "UDP", "_sctp": "SCTP"}


@dataclass(frozen=True, slots=True)
class Zone:
    name: str  # lower case, no trailing dot; "" is the root
    labels: tuple[str, ...]
    reverse: bool  # under in-addr.arpa or ip6.arpa


class ZoneSet:
    """The zones we are authoritative for; the first forward zone names PTR targets."""

    def __init__(self, names: list[str]):
        zones = []
        for raw in names:
            name = raw.strip().rstrip(".").lower()
            labels = tuple(name.split(".")) if name else ()
            reverse = labels[-2:] in (("in-addr", "arpa"), ("ip6", "arpa"))
            zones.append(Zone(name, labels, reverse))
        if not zones:
            raise ValueError("at least one zone is required")
        forward = [z for z in zones if not z.reverse]
        if not forward:
            raise ValueError("at least one forward zone (such as cluster.local) is required")
        self.zones = zones
        self.primary = forward[0]
        # longest match first
        self._by_length = sorted(zones, key=lambda z: -len(z.labels))

    def match(self, labels: tuple[str, ...]) -> Zone | None:
        n = len(labels)
        for zone in self._by_length:
            k = len(zone.labels)
            if k <= n and (k == 0 or labels[n - k:] == zone.labels):
                return zone
        return None


@dataclass(slots=True)
class ResolverConfig:
    zones: ZoneSet
    ttl: int = 5
    pods: str = "disabled"  # disabled | insecure | verified
    nameserver_service: tuple[str, str] = ("kube-system", "kube-dns")
    # set when the resolver may ask for an outside CNAME target to be chased upstream
    can_chase: bool = False
    # CoreDNS `ignore empty_service`: a ClusterIP service without ready endpoints is NXDOMAIN
    ignore_empty_service: bool = False
    # CoreDNS `zonal`: <topology-zone>.pin|prefer._zone.<svc>.<ns>.svc.<zone> for headless services
    zonal: bool = False


@dataclass(slots=True)
class Answer:
    rcode: int = NOERROR
    answer: list = field(default_factory=list)
    authority: list = field(default_factory=list)
    additional: list = field(default_factory=list)
    authoritative: bool = True
    outside: bool = False  # not in our zones: forward or refuse
    deps: set = field(default_factory=set)  # index dependency keys (see index.py)
    chase: tuple[str, int] | None = None  # outside CNAME target to resolve upstream
    cacheable: bool = True
    # NXDOMAIN for <label>.<ns>.svc.<zone>: (ns, zone), where every other such name without a service
    # is NXDOMAIN too (Resolver.covered_nxdomain) -- what the answer cache may keep as one negative
    # entry for the namespace, as RFC 8198 keeps an NSEC range
    covers: tuple | None = None


def _name(text: str) -> DNSLabel:
    return DNSLabel(text + "." if text else ".")


def _owner(labels: tuple[str, ...]) -> DNSLabel:
    """The asked name as a DNSLabel built from its labels (bytes kept as they are: a non-ASCII byte
    or a dot inside a label must not be re-parsed as text)."""
    return DNSLabel([label.encode("latin-1") for label in labels]) if labels else DNSLabel(".")


def _fqdn(*parts: str) -> str:
    return ".".join(p for p in parts if p)


class Resolver:
    """Answers one question against a ClusterIndex. Names are lower-case label tuples."""

    def __init__(self, index: ClusterIndex, config: ResolverConfig):
        self.index = index
        self.config = config
        self._soa_memo: dict[tuple[str, int], RR] = {}
        self._nxdomain: dict[str, Answer] = {}  # zone -> NXDOMAIN with its current SOA (covered_nxdomain)

    # ---------------------------------------------------------------- entry point

    def resolve(self, labels: tuple[str, ...], qtype: int) -> Answer:
        zone = self.config.zones.match(labels)
        if zone is None:
            return Answer(outside=True, authoritative=False, cacheable=False)
        ans = Answer()
        self._resolve_in(zone, labels, qtype, ans, depth=0)
        if ans.rcode == NXDOMAIN and not self.index.synced or ans.rcode == SERVFAIL:
            # Before the first sync a missing name may just not be known yet: never a cacheable
            # false NXDOMAIN (CoreDNS handler.go; kubernetes/dns#186). A failure (a CNAME chain
            # too long) carries no records and no AA: clients ignore or, worse, cache them.
            return Answer(rcode=SERVFAIL, authoritative=False, cacheable=False)
        return ans

    def _resolve_in(self, zone: Zone, labels: tuple[str, ...], qtype: int, ans: Answer, depth: int) -> None:
        rel = labels[: len(labels) - len(zone.labels)]
        if zone.reverse:
            self._reverse(zone, labels, rel, qtype, ans)
        else:
            self._forward(zone, labels, rel, qtype, ans, depth)

    # ---------------------------------------------------------------- negative answers

    def _soa(self, zone: Zone) -> RR:
        # one record per zone and serial: negative answers all carry it (RRs are never mutated)
        key = (zone.name, self.index.serial)
        rr = self._soa_memo.get(key)
        if rr is None:
            if len(self._soa_memo) > 64:
                self._soa_memo.clear()
            rr = self._soa_memo[key] = self._build_soa(zone)
        return rr

    def _build_soa(self, zone: Zone) -> RR:
        ttl = min(self.config.ttl, 300)
        return RR(_name(zone.name), T_SOA, ttl=ttl, rdata=SOA(
            _name(_fqdn("ns.dns", zone.name)), _name(_fqdn("hostmaster", zone.name)),
            (self.index.serial, 7200, 1800, 86400, self.config.ttl)))

    def _negative(self, zone: Zone, ans: Answer, nxdomain: bool) -> None:
        # NXDOMAIN: the name does not exist. NODATA: it exists without the asked type (RFC 2308).
        # Both authoritative with the zone SOA. A negative answer depends only on what the lookup
        # consulted on its way (the namespace, the service, the IP: callers record those in
        # ans.deps), so one event does not flush every cached NXDOMAIN of a busy cluster; the SOA
        # serial inside it may then lag behind the index, which no resolver relies on.
        ans.rcode = NXDOMAIN if nxdomain else NOERROR
        ans.authority.append(self._soa(zone))

    def _nx(self, zone: Zone, ans: Answer) -> None:
        self._negative(zone, ans, True)

    def _nodata(self, zone: Zone, ans: Answer) -> None:
        self._negative(zone, ans, False)

    # ---------------------------------------------------------------- forward zone

    def _forward(self, zone: Zone, labels, rel, qtype, ans: Answer, depth: int) -> None:
        n = len(rel)
        kind = rel[-1] if n else ""
        if kind == "svc":  # the asked name is built for records only: most misses need none
            return self._svc(zone, labels, rel[:-1], qtype, ans, depth)
        owner = _owner(labels)
        if n == 0:
            return self._apex(zone, owner, qtype, ans)
        if rel == ("dns-version",):  # §2.2
            if qtype in (T_TXT, T_ANY):
                ans.answer.append(RR(owner, T_TXT, ttl=DNS_VERSION_TTL, rdata=TXT(SCHEMA_VERSION)))
                return
            return self._nodata(zone, ans)
        if rel == ("ns", "dns"):
            ips = self._nameserver_ips(ans)
            if not self._address_records(owner, ips, qtype, ans):
                return self._nodata(zone, ans)
            return
        if rel == ("dns",):  # empty non-terminal above ns.dns.<zone>
            return self._nodata(zone, ans)
        if kind == "pod":
            return self._pod(zone, owner, rel[:-1], qtype, ans)
        return self._nx(zone, ans)

    def _apex(self, zone: Zone, owner: DNSLabel, qtype: int, ans: Answer) -> None:
        if qtype in (T_SOA, T_ANY):
            ans.answer.append(self._soa(zone))
            ans.deps.add(ANY)  # the serial moves with every change
        if qtype in (T_NS, T_ANY):
            ns_name = _name(_fqdn("ns.dns", zone.name))
            ans.answer.append(RR(owner, T_NS, ttl=self.config.ttl, rdata=NS(ns_name)))
            self._address_records(ns_name, self._nameserver_ips(ans), T_ANY, ans, section=ans.additional)
        if not ans.answer:
            self._nodata(zone, ans)

    def _nameserver_ips(self, ans: Answer) -> list[str]:
        ns, name = self.config.nameserver_service
        ans.deps.add(("svc", ns, name))
        view = self.index.view(ns, name)
        if view is None or view.service.kind == "ExternalName":
            return []
        if view.service.kind == "Headless":
            return list(dict.fromkeys(rec.ip for rec in view.served_endpoints()))
        return list(view.service.cluster_ips)

    def _address_records(self, owner: DNSLabel, ips, qtype: int, ans: Answer, section: list | None = None) -> bool:
        """Append A/AAAA records for `ips` matching qtype (ANY takes both); True if any was added."""
        out = ans.answer if section is None else section
        added = False
        ttl = self.config.ttl
        for ip in ips:
            if ":" in ip:
                if qtype in (T_AAAA, T_ANY):
                    out.append(RR(owner, T_AAAA, ttl=ttl, rdata=AAAA(ip)))
                    added = True
            elif qtype in (T_A, T_ANY):
                out.append(RR(owner, T_A, ttl=ttl, rdata=A(ip)))
                added = True
        return added

    # ---------------------------------------------------------------- <...>.<ns>.svc.<zone>

    def _svc(self, zone: Zone, labels, parts, qtype, ans: Answer, depth: int) -> None:
        n = len(parts)
        if n == 0:  # svc.<zone>: an empty non-terminal
            return self._nodata(zone, ans)
        ns = parts[-1]
        ans.deps.add(("ns", ns))
        if not self.index.namespace_exists(ns):
            if n == 2:
                ans.covers = (ns, zone)
            return self._nx(zone, ans)
        if n == 1:  # <ns>.svc.<zone>
            return self._nodata(zone, ans)
        svc = parts[-2]
        ans.deps.add(("svc", ns, svc))
        view = self.index.view(ns, svc)
        if view is None:
            if n == 2:
                ans.covers = (ns, zone)
            return self._nx(zone, ans)
        owner = _owner(labels)
        if view is not None and n == 5 and self.config.zonal and parts[2] == "_zone" and \
                parts[1] in ("pin", "prefer") and view.service.kind == "Headless":
            return self._zonal(zone, owner, view, parts[0], parts[1] == "prefer", qtype, ans)
        if n > 4:
            return self._nx(zone, ans)
        if n == 2:
            return self._service(zone, owner, view, qtype, ans, depth)
        if n == 3:
            return self._endpoint_or_proto(zone, owner, view, parts[0], qtype, ans)
        return self._port_srv(zone, owner, view, parts[0], parts[1], qtype, ans)

    def covers(self, ns: str, name: str) -> bool:
        """Whether <name>.<ns>.svc.<zone> is NXDOMAIN for every type: the index synced, no such service."""
        return self.index.synced and (ns, name) not in self.index.views

    def covered_nxdomain(self, ns: str, name: str, zone: Zone) -> Answer | None:
        """The answer to <name>.<ns>.svc.<zone> (any type) when it is NXDOMAIN -- no such service, the
        index synced -- else None. What the answer cache serves under an Answer.covers entry: the same
        answer _svc gives, with the zone's current SOA."""
        if not self.covers(ns, name):
            return None
        soa = self._soa(zone)
        ans = self._nxdomain.get(zone.name)
        if ans is None or ans.authority[0] is not soa:
            ans = self._nxdomain[zone.name] = Answer(rcode=NXDOMAIN, authority=[soa])
        return ans

    def _zonal(self, zone: Zone, owner, view: ServiceView, topology: str, prefer: bool, qtype: int,
               ans: Answer) -> None:
        """pin: only the endpoints in `topology` (none: NODATA); prefer: those, or every endpoint when
        that zone has none. A/AAAA and SRV as for the service name; other types NODATA."""
        narrowed = ServiceView(view.service, tuple(e for e in view.endpoints if e.zone == topology))
        if prefer and not narrowed.served_endpoints():
            narrowed = view
        served = narrowed.served_endpoints()
        if qtype == T_SRV and served:
            return self._srv(zone, owner, narrowed, ans)
        ips = list(dict.fromkeys(rec.ip for rec in served))
        if qtype == T_SRV or not self._address_records(owner, ips, qtype, ans):
            self._nodata(zone, ans)

    def _service_fqdn(self, view: ServiceView) -> str:
        s = view.service
        return _fqdn(s.name, s.namespace, "svc", self.config.zones.primary.name)

    def _endpoint_fqdn(self, view: ServiceView, rec: EndpointRecord) -> str:
        return _fqdn(rec.name, self._service_fqdn(view))

    def _service(self, zone: Zone, owner, view: ServiceView, qtype: int, ans: Answer, depth: int) -> None:
        svc = view.service
        if svc.kind == "ExternalName":  # §2.5
            if _is_ip(svc.external_name):
                # an IP is not a name a CNAME can point at (CoreDNS answers NXDOMAIN too)
                return self._nx(zone, ans)
            return self._external_name(zone, owner, svc.external_name, qtype, ans, depth)
        if svc.kind == "ClusterIP":  # §2.3.1 A, §2.3.2 AAAA
            if self.config.ignore_empty_service and not view.served_endpoints():
                return self._nx(zone, ans)
            ips = list(svc.cluster_ips)
            if qtype == T_SRV:  # CoreDNS extension: SRV on the bare name lists every named port
                return self._srv(zone, owner, view, ans)
            if not self._address_records(owner, ips, qtype, ans):
                self._nodata(zone, ans)
            return
        # headless §2.4.1 / §2.4.2: every ready endpoint; none ready -> NXDOMAIN
        served = view.served_endpoints()
        if not served:
            return self._nx(zone, ans)
        if qtype == T_SRV:
            return self._srv(zone, owner, view, ans)
        ips = list(dict.fromkeys(rec.ip for rec in served))
        if not self._address_records(owner, ips, qtype, ans):
            self._nodata(zone, ans)

    def _external_name(self, zone: Zone, owner, target: str, qtype: int, ans: Answer, depth: int) -> None:
        ans.answer.append(RR(owner, T_CNAME, ttl=self.config.ttl, rdata=CNAME(_name(target))))
        if qtype in (T_CNAME, T_ANY):
            return
        if depth >= MAX_CNAME_CHAIN:
            ans.rcode = SERVFAIL
            ans.cacheable = False
            return
        labels = tuple(target.split("."))
        target_zone = self.config.zones.match(labels)
        if target_zone is None:
            if self.config.can_chase:
                ans.chase = (target, qtype)
                ans.cacheable = False
            return
        # In our zones: chase it here; the final rcode is the target's (RFC 6604).
        sub = Answer()
        self._resolve_in(target_zone, labels, qtype, sub, depth + 1)
        ans.answer.extend(sub.answer)
        ans.authority.extend(sub.authority)
        ans.additional.extend(sub.additional)
        ans.deps |= sub.deps
        ans.rcode = sub.rcode
        ans.chase = sub.chase
        ans.cacheable = ans.cacheable and sub.cacheable

    def _endpoint_or_proto(self, zone: Zone, owner, view: ServiceView, label: str, qtype: int, ans: Answer) -> None:
        svc = view.service
        if svc.kind == "ExternalName":
            return self._nx(zone, ans)
        if label in PROTOCOLS:
            # _tcp.<svc>...: exists (empty non-terminal) if some SRV name below it exists
            if self._srv_entries(view, None, PROTOCOLS[label]):
                return self._nodata(zone, ans)
            return self._nx(zone, ans)
        # §2.4.1 <hostname>.<service>: endpoint names (CoreDNS also serves them for ClusterIP services)
        ips = list(dict.fromkeys(rec.ip for rec in view.served_endpoints() if rec.name == label))
        if not ips:
            return self._nx(zone, ans)
        if not self._address_records(owner, ips, qtype, ans):
            self._nodata(zone, ans)

    def _srv_entries(self, view: ServiceView, name: str | None, protocol: str | None) -> list[tuple[int, EndpointRecord | None]]:
        """The SRV records a name of this service holds, as (port number, endpoint or None for the
        service itself), matching a port name / protocol (None: any named port). Unnamed ports have
        no SRV (§2.3.3, §2.4.2)."""
        svc = view.service
        if svc.kind == "ClusterIP":  # §2.3.3: one per named port of the Service
            return [(p.port, None) for p in svc.ports if _port_matches(p, name, protocol)]
        if svc.kind != "Headless":
            return []
        # §2.4.2: one per ready endpoint × named port. The ports are those of the endpoint's own
        # EndpointSlice (an endpoint serves only those; CoreDNS does the same), with the endpoint's
        # (target) port number, which is what a client of a headless service must dial. A slice port
        # without a number ("all ports") takes the number of the Service's port of that name and
        # protocol (as CoreDNS); a slice that lists no ports at all gets the Service's ports
        # (hand-written slices; the spec words SRV in terms of the Service's ports).
        out: dict[tuple[str, str, int, str, str], tuple[int, EndpointRecord]] = {}
        for rec in view.served_endpoints():
            for p in (rec.ports if rec.ports is not None else svc.ports):
                if not _port_matches(p, name, protocol):
                    continue
                number = p.port if p.port is not None else next(
                    (q.port for q in svc.ports if q.name.lower() == p.name.lower() and q.protocol == p.protocol), None)
                if number is not None:
                    out.setdefault((p.name.lower(), p.protocol, number, rec.name, rec.ip), (number, rec))
        # grouped by port, in the order ports first appear (stable answers for caches and tests)
        order = {key[:2]: i for i, key in reversed(list(enumerate(out)))}
        return [out[key] for key in sorted(out, key=lambda k: order[k[:2]])]

    def _port_srv(self, zone: Zone, owner, view: ServiceView, port_label: str, proto_label: str,
                  qtype: int, ans: Answer) -> None:
        svc = view.service
        if svc.kind == "ExternalName" or not port_label.startswith("_") or proto_label not in PROTOCOLS:
            return self._nx(zone, ans)
        entries = self._srv_entries(view, port_label[1:], PROTOCOLS[proto_label])
        if not entries:
            return self._nx(zone, ans)
        if qtype not in (T_SRV, T_ANY):
            return self._nodata(zone, ans)
        self._srv_answer(owner, view, entries, ans)

    def _srv(self, zone: Zone, owner, view: ServiceView, ans: Answer) -> None:
        """SRV on the bare service name (CoreDNS extension): every named port."""
        entries = self._srv_entries(view, None, None)
        if not entries:
            return self._nodata(zone, ans)
        self._srv_answer(owner, view, entries, ans)

    def _srv_answer(self, owner, view: ServiceView, entries: list[tuple[int, EndpointRecord | None]],
                    ans: Answer) -> None:
        # targets: the service name (§2.3.3) or <hostname>.<service>... (§2.4.2); their addresses go
        # in the additional section. Two ports with one number (dns/UDP and dns-tcp/TCP on the bare
        # name) give the same record once: an RRset holds no duplicates (RFC 2181 §5).
        # The glue is each target's whole A/AAAA RRsets, whatever slice an address came from: a
        # partial RRset in the additional section would be cached as the name's records.
        records: dict[tuple[int, str], None] = {}
        glue: dict[str, list[str]] = {}
        names: dict[str, list[str]] = {}
        if any(rec is not None for _, rec in entries):
            for rec in view.served_endpoints():
                ips = names.setdefault(rec.name, [])
                if rec.ip not in ips:
                    ips.append(rec.ip)
        for number, rec in entries:
            if rec is None:
                target = self._service_fqdn(view)
                glue.setdefault(target, list(view.service.cluster_ips))
            else:
                target = self._endpoint_fqdn(view, rec)
                glue.setdefault(target, names[rec.name])
            records[(number, target)] = None
        weight = max(1, 100 // len(records))
        for number, target in records:
            ans.answer.append(RR(owner, T_SRV, ttl=self.config.ttl, rdata=SRV(0, weight, number, _name(target))))
        for target, ips in glue.items():
            self._address_records(_name(target), ips, T_ANY, ans, section=ans.additional)

    # ---------------------------------------------------------------- <ip>.<ns>.pod.<zone>  (§2.6)

    def _pod(self, zone: Zone, owner, parts, qtype: int, ans: Answer) -> None:
        n = len(parts)
        if n == 0:
            return self._nodata(zone, ans)
        if self.config.pods == "disabled":  # nothing exists below pod.<zone>
            return self._nx(zone, ans)
        ns = parts[-1]
        ans.deps.add(("ns", ns))
        if not self.index.namespace_exists(ns):
            return self._nx(zone, ans)
        if n == 1:
            return self._nodata(zone, ans)
        if n > 2:
            return self._nx(zone, ans)
        ip = parse_dashed_ip(parts[0])
        if ip is None:
            return self._nx(zone, ans)
        if self.config.pods == "verified":
            ans.deps.add(("pods", ns))
            if not self.index.pod_with_ip(ns, ip):
                return self._nx(zone, ans)
        if not self._address_records(owner, [ip], qtype, ans):
            self._nodata(zone, ans)

    # ---------------------------------------------------------------- reverse zones (§2.3.4, §2.4.4)

    def _reverse(self, zone: Zone, labels, rel, qtype: int, ans: Answer) -> None:
        owner = _owner(labels)
        if not rel:
            if qtype in (T_SOA, T_ANY):
                ans.answer.append(self._soa(zone))
                ans.deps.add(ANY)
            if qtype in (T_NS, T_ANY):
                ns_name = _name(_fqdn("ns.dns", self.config.zones.primary.name))
                ans.answer.append(RR(owner, T_NS, ttl=self.config.ttl, rdata=NS(ns_name)))
            if not ans.answer:
                self._nodata(zone, ans)
            return
        ip = reverse_to_ip(labels)
        if ip is None:
            # a partial name: an empty non-terminal if some served address lies below it, which
            # any address change may alter
            ans.deps.add(ANY)
            prefix = reverse_prefix(labels)
            if prefix is not None and any(_reverse_has_prefix(k, prefix) for k in self.index.reverse):
                return self._nodata(zone, ans)
            return self._nx(zone, ans)
        ans.deps.add(("ip", ip))
        entries = self.index.reverse_names(ip)
        if not entries:
            return self._nx(zone, ans)
        if qtype not in (T_PTR, T_ANY):
            return self._nodata(zone, ans)
        primary = self.config.zones.primary.name
        for ns, svc, ep in entries:
            target = _fqdn(ep, svc, ns, "svc", primary)
            ans.answer.append(RR(owner, T_PTR, ttl=self.config.ttl, rdata=PTR(_name(target))))


# -------------------------------------------------------------------- name helpers


def _port_matches(port, name: str | None, protocol: str | None) -> bool:
    """A named port matching an SRV query's _<port> and _<proto> labels (None matches any)."""
    return bool(port.name) and (name is None or port.name.lower() == name) and \
        (protocol is None or port.protocol == protocol)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def parse_dashed_ip(label: str) -> str | None:
    """`10-244-1-7` -> 10.244.1.7; `fd00-10-244--7` -> fd00:10:244::7 (spec §2.6, CoreDNS IPv6 form)."""
    parts = label.split("-")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
        try:
            return ipaddress.IPv4Address(".".join(parts)).compressed
        except ValueError:
            return None
    if len(parts) >= 3:
        try:
            return ipaddress.IPv6Address(label.replace("-", ":")).compressed
        except ValueError:
            return None
    return None


def reverse_to_ip(labels: tuple[str, ...]) -> str | None:
    if labels[-2:] == ("in-addr", "arpa") and len(labels) == 6:
        octets = labels[:4]
        if all(o.isdigit() and len(o) <= 3 and int(o) < 256 and (o == "0" or not o.startswith("0")) for o in octets):
            return ".".join(reversed(octets))
        return None
    if labels[-2:] == ("ip6", "arpa") and len(labels) == 34:
        nibbles = labels[:32]
        if all(len(x) == 1 and x in "0123456789abcdef" for x in nibbles):
            hexstr = "".join(reversed(nibbles))
            return ipaddress.IPv6Address(int(hexstr, 16)).compressed
    return None


def reverse_prefix(labels: tuple[str, ...]) -> tuple[str, str] | None:
    """A partial reverse name as ("v4", "10.244.") or ("v6", "fd00...") prefix of the address."""
    if labels[-2:] == ("in-addr", "arpa") and len(labels) < 6:
        octets = labels[:-2]
        if all(o.isdigit() for o in octets):
            return ("v4", "".join(o + "." for o in reversed(octets)))
    if labels[-2:] == ("ip6", "arpa") and len(labels) < 34:
        nibbles = labels[:-2]
        if all(len(x) == 1 and x in "0123456789abcdef" for x in nibbles):
            return ("v6", "".join(reversed(nibbles)))
    return None


def _reverse_has_prefix(ip: str, prefix: tuple[str, str]) -> bool:
    family, text = prefix
    if family == "v4":
        return ":" not in ip and (ip + ".").startswith(text)
    if ":" not in ip:
        return False
    return ipaddress.IPv6Address(ip).exploded.replace(":", "").startswith(text)
