"""A reference model of cluster DNS: the Kubernetes DNS spec 1.1.0 read literally, slow and plain.

Written from kubernetes/dns docs/specification.md (section numbers as in 1.1.0: §2.3.1 A,
§2.3.2 AAAA, §2.3.3 SRV, §2.3.4 PTR, §2.4.1 A/AAAA, §2.4.2 SRV... numbered as kdns cites them),
and where the spec is silent from CoreDNS's documented kubernetes-plugin behaviour. It shares no
code with kdns/: a cluster is plain dicts, an answer is plain sets, every lookup walks every object.

cluster = {
  "zone": "cluster.local",
  "namespaces": {"a", ...},                      # Namespace objects
  "implicit_namespaces": False,                   # manifest mode: a namespace any object names exists
  "services": {(ns, name): {"type": "ClusterIP" | "Headless" | "ExternalName", "ips": [...],
               "ports": [(name, number, protocol)], "external": "target", "publish": bool}},
  "slices": {(ns, name): {"service": svc, "ports": [(name, number or None, protocol)],
             "endpoints": [{"addresses": [...], "ready": True | False | None, "hostname": str | None}]}},
  "pods": {(ns, name): {"ips": [...]}},
}
expected(cluster, qname, qtype) -> Expected(rcode, answer, additional, authority, aa, tc), where
answer/additional are frozensets of (owner, type, rdata text) with names lower-cased and fully
qualified, SRV rdata "port target" (priority and weight are not prescribed by the spec), SOA rdata
"mname rname".

Decisions taken where the spec and CoreDNS differ or say nothing (each also noted at its rule):
- Headless SRV ports come from the endpoint's own EndpointSlice (CoreDNS; spec words them as the
  Service's): a slice port without a number takes the Service's port of that name and protocol
  (CoreDNS), a slice listing no ports at all gets the Service's ports (the spec's wording).
- SRV on the bare service name lists every named port (CoreDNS extension, explicit SRV only).
- Identical records appear once (RFC 2181 §5: an RRset has no duplicates).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
TTL = 5
PROTOS = {"_tcp": "TCP", "_udp": "UDP", "_sctp": "SCTP"}
MAX_CHAIN = 8


@dataclass(frozen=True)
class Expected:
    rcode: int
    answer: frozenset
    additional: frozenset
    authority: tuple  # record types, e.g. ("SOA",)
    aa: bool
    tc: bool = False


def _fq(*labels: str) -> str:
    return ".".join(x for x in labels if x) + "."


def dashed(ip: str) -> str:
    """CoreDNS endpoint name without hostname: dots/colons to dashes, a leading or trailing dash
    padded with 0 (plugin/kubernetes README: "1-2-3-4", IPv6 ':'→'-', trailing '-'→'-0')."""
    name = ipaddress.ip_address(ip).compressed.replace(".", "-").replace(":", "-")
    if name.startswith("-"):
        name = "0" + name
    if name.endswith("-"):
        name += "0"
    return name


class Model:
    def __init__(self, cluster: dict):
        self.c = cluster
        self.zone = cluster.get("zone", "cluster.local")

    # ---------------------------------------------------------------- facts about the cluster

    def ns_exists(self, ns: str) -> bool:
        # CoreDNS: a name under a namespace exists only if the Namespace does (namespaceExposed)
        if ns in self.c["namespaces"]:
            return True
        if self.c.get("implicit_namespaces"):
            keys = list(self.c["services"]) + list(self.c["slices"]) + list(self.c["pods"])
            return any(k[0] == ns for k in keys)
        return False

    def endpoints(self, ns: str, svc: str) -> list[tuple[str, str, tuple]]:
        """(name, ip, slice ports) of every served endpoint address of a service. §2.1 _ready_:
        ready (an unset condition counts as ready, as the discovery API documents), or every
        endpoint when the Service publishes not-ready addresses."""
        service = self.c["services"][(ns, svc)]
        out = []
        for (sns, _), sl in sorted(self.c["slices"].items()):
            if sns != ns or sl["service"] != svc:
                continue
            for ep in sl["endpoints"]:
                if ep.get("ready") is False and not service.get("publish"):
                    continue
                for ip in ep["addresses"]:
                    ip = ipaddress.ip_address(ip).compressed
                    # §2.1 _hostname_: the hostname field, else a system-assigned id (CoreDNS: dashed IP)
                    out.append(((ep.get("hostname") or dashed(ip)).lower(), ip, tuple(sl["ports"])))
        return out

    def srv_entries(self, ns: str, svc: str, port: str | None, proto: str | None) -> set[tuple[int, str]]:
        """(port number, target) of the SRV records of a service for _port._proto (None: any)."""
        service = self.c["services"][(ns, svc)]
        target_svc = _fq(svc, ns, "svc", self.zone)
        named = lambda name, protocol: bool(name) and (port is None or name.lower() == port) and \
            (proto is None or protocol == proto)  # §2.3.3 / §2.4.2: unnamed ports have no SRV
        if service["type"] == "ClusterIP":  # §2.3.3: per named port, target the service
            return {(number, target_svc) for name, number, protocol in service["ports"] if named(name, protocol)}
        if service["type"] != "Headless":
            return set()
        out = set()
        for ep_name, _, slice_ports in self.endpoints(ns, svc):  # §2.4.2: ready endpoint × port
            for name, number, protocol in (slice_ports or service["ports"]):
                if not named(name, protocol):
                    continue
                if number is None:  # "all ports": the Service's port of that name (CoreDNS)
                    number = next((n for sn, n, sp in service["ports"] if sn.lower() == name.lower() and sp == protocol),
                                  None)
                if number is not None:
                    out.add((number, _fq(ep_name, svc, ns, "svc", self.zone)))
        return out

    def served_ips(self) -> dict[str, list[str]]:
        """ip -> PTR targets: ClusterIPs (§2.3.4) hide endpoint names of the same IP (CoreDNS
        reverse.go looks services up first), else every served endpoint name (§2.4.3)."""
        services, endpoints = {}, {}
        for (ns, name), s in self.c["services"].items():
            if s["type"] == "ClusterIP":
                for ip in s["ips"]:
                    services.setdefault(ipaddress.ip_address(ip).compressed, set()).add(_fq(name, ns, "svc", self.zone))
            if s["type"] != "ExternalName":
                for ep_name, ip, _ in self.endpoints(ns, name):
                    endpoints.setdefault(ip, set()).add(_fq(ep_name, name, ns, "svc", self.zone))
        out = {ip: sorted(t) for ip, t in endpoints.items()}
        out.update({ip: sorted(t) for ip, t in services.items()})
        return out

    # ---------------------------------------------------------------- answering

    def expected(self, qname: str, qtype: str) -> Expected:
        labels = tuple(qname.lower().rstrip(".").split("."))  # §2.1: comparisons are case-insensitive
        zone = tuple(self.zone.split("."))
        for rzone in (("in-addr", "arpa"), ("ip6", "arpa")):
            if labels[-2:] == rzone:
                return self._reverse(labels, qtype, rzone)
        if labels[-len(zone):] != zone:
            return Expected(REFUSED, frozenset(), frozenset(), (), False)  # not ours, no upstream
        ans, add, rcode = set(), set(), NOERROR
        rcode = self._forward(labels[:-len(zone)], qname.lower().rstrip(".") + ".", qtype, ans, add, 0)
        negative = rcode == NXDOMAIN or (rcode == NOERROR and not ans)
        if rcode == SERVFAIL:
            return Expected(SERVFAIL, frozenset(), frozenset(), (), False)
        # a CNAME to a name outside our zones ends the answer with no SOA (nothing negative here)
        if rcode == NOERROR and ans and not self._final_answered(ans, qtype):
            negative = self._cname_ends_inside(ans)
        return Expected(rcode, frozenset(ans), frozenset(add), ("SOA",) if negative else (), True)

    def _final_answered(self, ans: set, qtype: str) -> bool:
        return qtype in ("CNAME", "ANY") or any(t != "CNAME" for _, t, _ in ans)

    def _cname_ends_inside(self, ans: set) -> bool:
        """RFC 2308 §2.2: a CNAME chain ending in NODATA inside our zone carries the SOA."""
        targets = {r for _, t, r in ans if t == "CNAME"}
        owners = {o for o, t, _ in ans if t == "CNAME"}
        last = next(iter(targets - owners), "")
        return last.rstrip(".").endswith(self.zone)

    def _soa(self, zone_name: str) -> tuple:
        return (_fq(zone_name), "SOA", f"{_fq('ns.dns', zone_name)} {_fq('hostmaster', zone_name)}")

    def _addresses(self, owner: str, ips, qtype: str, out: set) -> None:
        for ip in ips:
            ip = ipaddress.ip_address(ip)
            rtype = "AAAA" if ip.version == 6 else "A"
            if qtype in (rtype, "ANY"):
                out.add((owner, rtype, ip.compressed))

    def _forward(self, rel: tuple, owner: str, qtype: str, ans: set, add: set, depth: int) -> int:
        zone = self.zone
        if not rel:  # the apex: SOA and NS (RFC 1035; CoreDNS ns.go: ns.dns.<zone>)
            if qtype in ("SOA", "ANY"):
                ans.add(self._soa(zone))
            if qtype in ("NS", "ANY"):
                ans.add((owner, "NS", _fq("ns.dns", zone)))
                self._addresses(_fq("ns.dns", zone), self._dns_ips(), "ANY", add)
            return NOERROR
        if rel == ("dns-version",):  # §2.2
            if qtype in ("TXT", "ANY"):
                ans.add((owner, "TXT", '"1.1.0"'))
            return NOERROR
        if rel == ("ns", "dns"):  # CoreDNS: the nameserver's own name, the kube-dns service's addresses
            self._addresses(owner, self._dns_ips(), qtype, ans)
            return NOERROR
        if rel == ("dns",):
            return NOERROR  # empty non-terminal above ns.dns (RFC 8020: NXDOMAIN would deny ns.dns)
        if rel[-1] == "svc":
            return self._svc(rel[:-1], owner, qtype, ans, add, depth)
        if rel[-1] == "pod":
            return self._pod(rel[:-1], owner, qtype, ans)
        return NXDOMAIN

    def _dns_ips(self) -> list[str]:
        s = self.c["services"].get(("kube-system", "kube-dns"))
        if s is None or s["type"] == "ExternalName":
            return []
        if s["type"] == "Headless":
            return list(dict.fromkeys(ip for _, ip, _ in self.endpoints("kube-system", "kube-dns")))
        return s["ips"]

    def _svc(self, parts: tuple, owner: str, qtype: str, ans: set, add: set, depth: int) -> int:
        n = len(parts)
        if n == 0:
            return NOERROR  # svc.<zone>: empty non-terminal (CoreDNS: NODATA)
        ns = parts[-1]
        if not self.ns_exists(ns):
            return NXDOMAIN
        if n == 1:
            return NOERROR  # <ns>.svc.<zone> of an existing namespace: NODATA (CoreDNS)
        key = (ns, parts[-2])
        service = self.c["services"].get(key)
        if service is None or n > 4:  # CoreDNS parse.go: longer names do not exist
            return NXDOMAIN
        kind = service["type"]
        if n == 2:
            if kind == "ExternalName":  # §2.5
                return self._cname(owner, service["external"], qtype, ans, add, depth)
            if kind == "ClusterIP":  # §2.3.1 / §2.3.2
                if qtype == "SRV":  # CoreDNS extension: SRV on the bare name, every named port
                    self._srv(owner, key, None, None, ans, add)
                else:
                    self._addresses(owner, service["ips"], qtype, ans)
                return NOERROR
            served = self.endpoints(*key)  # §2.4.1: every ready endpoint; none → NXDOMAIN
            if not served:
                return NXDOMAIN
            if qtype == "SRV":
                self._srv(owner, key, None, None, ans, add)
            else:
                self._addresses(owner, [ip for _, ip, _ in served], qtype, ans)
            return NOERROR
        if kind == "ExternalName":
            return NXDOMAIN  # an ExternalName has no endpoints and no SRV
        if n == 3:
            label = parts[0]
            if label in PROTOS:  # _tcp.<svc>: an empty non-terminal when an SRV name exists below
                return NOERROR if self.srv_entries(*key, None, PROTOS[label]) else NXDOMAIN
            ips = [ip for name, ip, _ in self.endpoints(*key) if name == label]  # §2.4.1 <hostname>.<svc>
            if not ips:
                return NXDOMAIN
            self._addresses(owner, ips, qtype, ans)
            return NOERROR
        port, proto = parts[0], parts[1]  # §2.3.3 / §2.4.2 _<port>._<proto>.<svc>
        if not port.startswith("_") or proto not in PROTOS or not self.srv_entries(*key, port[1:], PROTOS[proto]):
            return NXDOMAIN
        if qtype in ("SRV", "ANY"):
            self._srv(owner, key, port[1:], PROTOS[proto], ans, add)
        return NOERROR

    def _srv(self, owner: str, key, port, proto, ans: set, add: set) -> None:
        entries = self.srv_entries(*key, port, proto)
        service = self.c["services"][key]
        for number, target in entries:
            ans.add((owner, "SRV", f"{number} {target}"))
            # the additional section holds the targets' addresses (§2.3.3, §2.4.2 "may include")
            if service["type"] == "ClusterIP":
                self._addresses(target, service["ips"], "ANY", add)
            else:
                name = target.split(".")[0]
                self._addresses(target, [ip for n, ip, _ in self.endpoints(*key) if n == name], "ANY", add)

    def _cname(self, owner: str, target: str, qtype: str, ans: set, add: set, depth: int) -> int:
        target = target.lower().rstrip(".")
        try:
            ipaddress.ip_address(target)
            return NXDOMAIN  # CoreDNS: an IP-valued externalName yields no record
        except ValueError:
            pass
        ans.add((owner, "CNAME", target + "."))
        if qtype in ("CNAME", "ANY"):
            return NOERROR
        if depth + 1 >= MAX_CHAIN + 1:
            return SERVFAIL  # a chain longer than 8 hops (kdns/CoreDNS limit) is an error
        zone = tuple(self.zone.split("."))
        labels = tuple(target.split("."))
        if labels[-len(zone):] != zone:
            return NOERROR  # outside: the CNAME alone (no upstream configured)
        # inside our zone: the target's records follow, its rcode is the answer's (RFC 6604)
        return self._forward(labels[:-len(zone)], target + ".", qtype, ans, add, depth + 1)

    def _pod(self, parts: tuple, owner: str, qtype: str, ans: set) -> int:
        # §2.6 with `pods verified` (CoreDNS): a-b-c-d.<ns>.pod.<zone> only for a Pod with that IP
        if not parts:
            return NOERROR
        ns = parts[-1]
        if not self.ns_exists(ns):
            return NXDOMAIN
        if len(parts) == 1:
            return NOERROR
        if len(parts) > 2:
            return NXDOMAIN
        ip = _parse_dashed(parts[0])
        if ip is None:
            return NXDOMAIN
        if not any(k[0] == ns and ip in {ipaddress.ip_address(x).compressed for x in p["ips"]}
                   for k, p in self.c["pods"].items()):
            return NXDOMAIN
        self._addresses(owner, [ip], qtype, ans)
        return NOERROR

    def _reverse(self, labels: tuple, qtype: str, rzone: tuple) -> Expected:
        owner = ".".join(labels) + "."
        zone_name = ".".join(rzone)
        soa_zone = zone_name
        rel = labels[:-2]
        table = self.served_ips()
        neg = lambda rcode: Expected(rcode, frozenset(), frozenset(), ("SOA",), True)
        if not rel:
            ans = set()
            if qtype in ("SOA", "ANY"):  # CoreDNS: ns.dns.<zone> hostmaster.<zone> of the zone asked
                ans.add(self._soa(soa_zone))
            if qtype in ("NS", "ANY"):
                ans.add((owner, "NS", _fq("ns.dns", self.zone)))
            return Expected(NOERROR, frozenset(ans), frozenset(), () if ans else ("SOA",), True)
        ip = _reverse_ip(rel, rzone)
        if ip is None:
            # a partial name exists (empty non-terminal) when a served address lies below it
            below = [a for a in table if _under(a, rel, rzone)]
            return neg(NOERROR if below else NXDOMAIN)
        if ip not in table:
            return neg(NXDOMAIN)
        if qtype not in ("PTR", "ANY"):
            return neg(NOERROR)
        return Expected(NOERROR, frozenset((owner, "PTR", t) for t in table[ip]), frozenset(), (), True)


def _parse_dashed(label: str) -> str | None:
    parts = label.split("-")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        try:
            return ipaddress.IPv4Address(".".join(parts)).compressed
        except ValueError:
            return None
    try:
        return ipaddress.IPv6Address(label.replace("-", ":")).compressed
    except ValueError:
        return None


def _reverse_ip(rel: tuple, rzone: tuple) -> str | None:
    if rzone == ("in-addr", "arpa"):
        if len(rel) != 4 or not all(x.isdigit() and (x == "0" or not x.startswith("0")) for x in rel):
            return None
        try:
            return ipaddress.IPv4Address(".".join(reversed(rel))).compressed
        except ValueError:
            return None
    if len(rel) != 32 or not all(len(x) == 1 and x in "0123456789abcdef" for x in rel):
        return None
    return ipaddress.IPv6Address(int("".join(reversed(rel)), 16)).compressed


def _under(ip: str, rel: tuple, rzone: tuple) -> bool:
    address = ipaddress.ip_address(ip)
    if rzone == ("in-addr", "arpa"):
        return address.version == 4 and len(rel) < 4 and \
            address.compressed.split(".")[:len(rel)] == list(reversed(rel))
    return address.version == 6 and len(rel) < 32 and \
        address.exploded.replace(":", "")[:len(rel)] == "".join(reversed(rel))
