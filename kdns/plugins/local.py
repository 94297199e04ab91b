"""`local`: answer localhost names locally (RFC 6761): localhost, localhost.<anything>, and the reverse zones of
127/8, 0/8, 255/8 and ::1; they never reach kubernetes or an upstream."""

from __future__ import annotations

from dnslib import AAAA, NS, PTR, QTYPE, RCODE, RR, SOA, A, DNSLabel

from ..corefile import Directive
from . import Handler as Base, Next, Request, Result, SetupContext
from ._common import asked_name, flag, reply

IP6_LOCALHOST = "1." + "0." * 31 + "ip6.arpa"  # ::1
ZONES = ("localhost", "0.in-addr.arpa", "127.in-addr.arpa", "255.in-addr.arpa", IP6_LOCALHOST)
TTL = 604800  # CoreDNS's local plugin: a week


def setup(d: Directive, ctx: SetupContext) -> bool:
    return flag(d)


def _soa(zone: str, host: str = "localhost") -> RR:
    """CoreDNS's: `<zone> SOA root.<host>. <host>. 1 0 0 0 0`."""
    return RR(DNSLabel(zone + "."), QTYPE.SOA, ttl=TTL,
              rdata=SOA(DNSLabel(f"root.{host}."), DNSLabel(host + "."), (1, 0, 0, 0, 0)))


class Handler(Base):

    def serve(self, req: Request, next: Next) -> Result:
        name, qtype = req.name, req.query.qtype
        owner = asked_name(req.query)
        zone = None
        for z in ZONES:
            if name == z or name.endswith("." + z):
                zone = z
                break
        if zone is None:
            if name.startswith("localhost."):  # localhost.example.net: still this host
                return self._localhost(req, owner, qtype, _soa(name, name))
            return next(req)
        if name in ("1.0.0.127.in-addr.arpa", IP6_LOCALHOST):
            if qtype == QTYPE.PTR:
                return reply(req, "local", [RR(owner, QTYPE.PTR, ttl=TTL, rdata=PTR(DNSLabel("localhost.")))])
            return reply(req, "local", authority=[_soa(zone)])
        if name != zone:
            return reply(req, "local", authority=[_soa(zone)], rcode=RCODE.NXDOMAIN)
        if qtype == QTYPE.SOA:
            return reply(req, "local", [_soa(zone)])
        if qtype == QTYPE.NS:
            return reply(req, "local", [RR(owner, QTYPE.NS, ttl=TTL, rdata=NS(DNSLabel("localhost.")))])
        if zone == "localhost":
            return self._localhost(req, owner, qtype, _soa(zone))
        return reply(req, "local", authority=[_soa(zone)])

    @staticmethod
    def _localhost(req: Request, owner, qtype: int, soa: RR) -> Result:
        if qtype == QTYPE.A:
            return reply(req, "local", [RR(owner, QTYPE.A, ttl=TTL, rdata=A("127.0.0.1"))])
        if qtype == QTYPE.AAAA:
            return reply(req, "local", [RR(owner, QTYPE.AAAA, ttl=TTL, rdata=AAAA("::1"))])
        return reply(req, "local", authority=[soa])
