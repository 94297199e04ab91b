"""`k8s_external [ZONE...] { apex APEX; ttl TTL; headless; fallthrough [ZONE...] }`: services' external
addresses (spec.externalIPs, LoadBalancer ingress IPs; ingress hostnames as CNAME) under an external
zone as `<svc>.<ns>.<zone>`, SRV for their named ports, SOA/NS at the zone apex (`ns1.<apex>.<zone>`
has the external addresses of kube-system/kube-dns), and with `headless` the endpoints of headless
services. Answers come from the same index the kubernetes directive fills."""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import AAAA, CNAME, NS, QTYPE, RCODE, RR, SOA, SRV, A, DNSLabel

from ..corefile import Directive
from . import Handler as Base, Next, Request, Result, SetupContext
from ._common import asked_name, integer, nargs, reply


@dataclass
class ExternalConfig:
    zones: list[str]
    apex: str = "dns"
    ttl: int = 5
    headless: bool = False
    fallthrough: list[str] | None = None
    where: str = ""


def setup(d: Directive, ctx: SetupContext) -> ExternalConfig:
    from ..config import in_zone, normalize_zone
    zones = [normalize_zone(t.text) for t in d.args] or list(ctx.block.zones)
    for tok, zone in zip(d.args, zones):
        if not any(in_zone(zone, bz) for bz in ctx.block.zones):
            raise d.error(f"k8s_external: zone {tok.text!r} is not inside the server block's zones", tok)
    cfg = ExternalConfig(zones, where=d.where)
    for opt in d.block:
        if opt.name == "apex":
            nargs(opt, 1, 1, "apex APEX")
            cfg.apex = normalize_zone(opt.args[0].text)
        elif opt.name == "ttl":
            nargs(opt, 1, 1, "ttl TTL")
            cfg.ttl = integer(opt, opt.args[0], 0, 3600, "ttl")
        elif opt.name == "headless":
            nargs(opt, 0, 0, "headless")
            cfg.headless = True
        elif opt.name == "fallthrough":
            cfg.fallthrough = [normalize_zone(t.text) for t in opt.args]
        else:
            raise opt.error(f"k8s_external: unknown option {opt.name!r} (kdns supports: apex, ttl, headless, "
                            "fallthrough)")
    return cfg


def validate(cfg: ExternalConfig, block) -> None:
    """k8s_external reads the kubernetes directive's data: it needs one in its server block."""
    if block.kubernetes is None:
        path, line, col = cfg.where.rsplit(":", 2)
        from ..corefile import CorefileError
        raise CorefileError(path, int(line), int(col), "k8s_external needs a kubernetes directive in the same "
                                                       "server block")


def _in(name: str, zone: str) -> bool:
    return zone == "" or name == zone or name.endswith("." + zone)


class Handler(Base):
    """config: ExternalConfig."""

    def serve(self, req: Request, next: Next | None) -> Result | None:
        cfg: ExternalConfig = self.config
        zone = max((z for z in cfg.zones if _in(req.name, z)), key=len, default=None)
        if zone is None:
            return None
        req.top.cacheable = False  # read from the index on every query: no dependency keys to invalidate by
        labels = req.name[: len(req.name) - len(zone)].rstrip(".").split(".") if req.name != zone else []
        qtype = req.query.qtype
        owner = asked_name(req.query)
        fzone = zone + "." if zone else ""
        soa = RR(DNSLabel(fzone or "."), QTYPE.SOA, ttl=cfg.ttl, rdata=SOA(
            DNSLabel(f"ns1.{cfg.apex}.{fzone}"), DNSLabel(f"hostmaster.{cfg.apex}.{fzone}"),
            (12345, 7200, 1800, 86400, cfg.ttl)))
        if not labels:
            if qtype == QTYPE.SOA:
                return reply(req, "k8s_external", [soa])
            if qtype == QTYPE.NS:
                return reply(req, "k8s_external", [RR(owner, QTYPE.NS, ttl=cfg.ttl,
                                                       rdata=NS(DNSLabel(f"ns1.{cfg.apex}.{fzone}")))])
            return reply(req, "k8s_external", authority=[soa])
        if labels[-1] == cfg.apex:
            if labels == ["ns1", cfg.apex]:
                view = self.block.index.view("kube-system", "kube-dns")
                addrs = self._addresses(owner, view.service.external if view else (), qtype)
                return reply(req, "k8s_external", addrs, authority=[] if addrs else [soa])
            return self._miss(req, soa, labels == [cfg.apex])
        return self._service(req, labels, owner, soa)

    def _miss(self, req: Request, soa: RR, exists: bool = False):
        fall = self.config.fallthrough
        if not exists and fall is not None and (not fall or any(_in(req.name, z) for z in fall)):
            return None
        return reply(req, "k8s_external", authority=[soa], rcode=RCODE.NOERROR if exists else RCODE.NXDOMAIN)

    def _addresses(self, owner, values, qtype: int) -> list:
        ttl = self.config.ttl
        out = []
        for value in values:
            if value.endswith("."):
                out.append(RR(owner, QTYPE.CNAME, ttl=ttl, rdata=CNAME(DNSLabel(value))))
            elif ":" in value and qtype in (QTYPE.AAAA, QTYPE.ANY):
                out.append(RR(owner, QTYPE.AAAA, ttl=ttl, rdata=AAAA(value)))
            elif ":" not in value and qtype in (QTYPE.A, QTYPE.ANY):
                out.append(RR(owner, QTYPE.A, ttl=ttl, rdata=A(value)))
        return out[:1] if out and out[0].rtype == QTYPE.CNAME else out

    def _service(self, req: Request, labels: list[str], owner, soa: RR):
        qtype, ttl, index = req.query.qtype, self.config.ttl, self.block.index
        port_name = proto = None
        if len(labels) == 4 and labels[0].startswith("_") and labels[1].startswith("_"):
            port_name, proto, labels = labels[0][1:], labels[1][1:], labels[2:]
        endpoint = None
        if len(labels) == 3 and self.config.headless:
            endpoint, labels = labels[0], labels[1:]
        if len(labels) != 2:
            return self._miss(req, soa)
        svc_name, ns = labels
        view = index.view(ns, svc_name)
        if view is None:
            return self._miss(req, soa)
        service = view.service
        target = DNSLabel(f"{svc_name}.{ns}.{self.config_zone(req)}")
        if service.headless and self.config.headless:
            eps = [e for e in view.served_endpoints() if endpoint is None or e.name == endpoint]
            values = [e.ip for e in eps]
        elif endpoint is None and not service.headless:
            values = list(service.external)
        else:
            values = []
        if not values:
            return self._miss(req, soa)
        if qtype == QTYPE.SRV:
            ports = [p for p in service.ports if p.name and (port_name is None or
                     (p.name == port_name and p.protocol.lower() == proto))]
            if not ports:
                return self._miss(req, soa, exists=port_name is None)
            srv = [RR(owner, QTYPE.SRV, ttl=ttl, rdata=SRV(0, 100, p.port, target)) for p in ports]
            return reply(req, "k8s_external", srv, additional=self._addresses(target, values, QTYPE.ANY))
        if port_name is not None:
            return self._miss(req, soa, exists=True)
        addrs = self._addresses(owner, values, qtype)
        return reply(req, "k8s_external", addrs, authority=[] if addrs else [soa])

    def config_zone(self, req: Request) -> str:
        zone = max((z for z in self.config.zones if _in(req.name, z)), key=len)
        return zone + "." if zone else ""
