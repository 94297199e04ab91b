"""`any`: answer every ANY query with the RFC 8482 HINFO record instead of the name's records."""

from __future__ import annotations

from dnslib import QTYPE, RD, RR

from ..corefile import Directive
from . import Handler as Base, Next, Request, Result, SetupContext
from ._common import asked_name, flag, reply


CPU, OS = b"ANY obsoleted", b"See RFC 8482"
HINFO_RDATA = bytes([len(CPU)]) + CPU + bytes([len(OS)]) + OS  # two character-strings (dnslib has no HINFO)


def setup(d: Directive, ctx: SetupContext) -> bool:
    return flag(d)


class Handler(Base):

    def serve(self, req: Request, next: Next) -> Result:
        if req.query.qtype != QTYPE.ANY:
            return next(req)
        owner = asked_name(req.query)
        rr = RR(owner, QTYPE.HINFO, ttl=8482, rdata=RD(HINFO_RDATA))
        return reply(req, "any", [rr], aa=False)
