"""`whoami`: answer with the client's address and port (additional section: A/AAAA, and SRV _udp|_tcp.NAME)."""

from __future__ import annotations

from dnslib import AAAA, QTYPE, RR, SRV, A, DNSLabel

from ..corefile import Directive
from . import Handler as Base, Next, Request, Result, SetupContext
from ._common import asked_name, flag, reply


def setup(d: Directive, ctx: SetupContext) -> bool:
    return flag(d)


class Handler(Base):

    def serve(self, req: Request, next: Next | None) -> Result | None:
        req.top.cacheable = False
        if req.client is None:
            return None
        ip, port = req.client[0].split("%")[0], req.client[1]
        name = asked_name(req.query)
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[len("::ffff:"):]
        addr = RR(name, QTYPE.AAAA, ttl=0, rdata=AAAA(ip)) if ":" in ip else RR(name, QTYPE.A, ttl=0, rdata=A(ip))
        srv_owner = asked_name(req.query, b"_tcp" if req.tcp else b"_udp")
        if srv_owner is None:  # a name of 250+ bytes has no room for the _udp label
            return reply(req, "whoami", additional=[addr])
        srv = RR(srv_owner, QTYPE.SRV, ttl=0, rdata=SRV(0, 0, port, DNSLabel(".")))  # target "." as CoreDNS
        return reply(req, "whoami", additional=[addr, srv])
