"""`bufsize [SIZE]`: cap the EDNS UDP payload size clients may ask for (default 1232, 512-4096); a larger
answer is truncated so the client retries over TCP. Answers are then packed per query (the
packed-answer cache serves by the client's own size)."""

from __future__ import annotations

from ..corefile import Directive
from ..wire import truncate
from . import Handler as Base, Next, Request, Result, SetupContext, then
from ._common import integer, nargs, no_block


def setup(d: Directive, ctx: SetupContext) -> int:
    nargs(d, 0, 1, "bufsize [SIZE]")
    no_block(d)
    return integer(d, d.args[0], 512, 4096, "SIZE") if d.args else 1232


class Handler(Base):
    """config: the size cap."""

    def serve(self, req: Request, next: Next) -> Result:
        req.top.cacheable = False
        query = req.query
        if req.tcp or not query.edns or query.udp_size <= self.config:
            return next(req)
        return then(next(req), lambda r: (truncate(r[0], query), r[1]) if len(r[0]) > self.config else r)
