"""`bufsize [SIZE]`: cap the EDNS UDP payload size clients may ask for (default 1232, 512-4096); a larger
answer is truncated so the client retries over TCP. Answers over the cap are packed per query (the
packed-answer cache serves by the client's own size); those within it are cached as usual."""

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
        return then(next(req), lambda result: self._cap(req, result))

    def _cap(self, req: Request, result: tuple) -> tuple:
        response, plugin = result
        if len(response) <= self.config:
            return result  # the same for every client: the packed-answer cache may serve it
        req.top.cacheable = False  # over the cap: what a client gets depends on its transport and size
        query = req.query
        if not req.tcp and query.edns and query.udp_size > self.config:
            return truncate(response, query), plugin
        return result
