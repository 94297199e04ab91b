"""`whoami`: answer with the client's address and port (additional section: A/AAAA, and SRV _udp|_tcp.NAME)."""

from __future__ import annotations

from dnslib import AAAA, QTYPE, RR, SRV, A, DNSLabel

from ..corefile import Directive
from . import Handler as Base, Request, SetupContext
from ._common import flag, reply


def setup(d: Directive, ctx: SetupContext) -> bool:
    return flag(d)


class Handler(Base):

    def serve(self, req: Request, next):
        req.top.cacheable = False
        if req.client is None:
            return None
        ip, port = req.client[0].split("%")[0], req.client[1]
        owner = DNSLabel(req.query.name_text)
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[len("::ffff:"):]
        addr = RR(owner, QTYPE.AAAA, ttl=0, rdata=AAAA(ip)) if ":" in ip else RR(owner, QTYPE.A, ttl=0, rdata=A(ip))
        srv_owner = DNSLabel(("_tcp." if req.tcp else "_udp.") + req.query.name_text)
        srv = RR(srv_owner, QTYPE.SRV, ttl=0, rdata=SRV(0, 0, port, owner))
        return reply(req, "whoami", additional=[addr, srv])
