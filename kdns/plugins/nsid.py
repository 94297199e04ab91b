"""`nsid [DATA]`: an NSID option (RFC 5001) in the response when the query asks for one; DATA defaults to the host name.

The answer then depends on an EDNS option the packed-answer cache does not key on, so a block with
nsid packs its answers per query."""

from __future__ import annotations

import socket
import struct

from dnslib import EDNSOption, QTYPE

from ..corefile import Directive
from ..wire import T_OPT, WireError, walk_records
from . import Handler as Base, Next, Request, Result, SetupContext, then
from ._common import edit, no_block

NSID = 3


def setup(d: Directive, ctx: SetupContext) -> bytes:
    no_block(d)
    text = " ".join(d.values) if d.args else socket.gethostname()
    return text.encode()


def asks_nsid(data: bytes) -> bool:
    """Whether the query's OPT record carries an NSID option (dnslib drops empty options, so walk it here)."""
    try:
        records = walk_records(data)
    except WireError:
        return False
    for rec in records:
        if rec.rtype != T_OPT:
            continue
        pos, end = rec.rdata, rec.rdata + rec.rdlen
        while pos + 4 <= end:
            code, length = struct.unpack_from("!HH", data, pos)
            if code == NSID:
                return True
            pos += 4 + length
    return False


class Handler(Base):
    """config: the NSID bytes."""

    def serve(self, req: Request, next: Next) -> Result:
        req.top.cacheable = False
        if not req.query.edns or not asks_nsid(req.query.data):
            return next(req)
        return then(next(req), self._add)

    def _add(self, result: tuple) -> tuple:
        response, plugin = result

        def add(record) -> None:
            for rr in record.ar:
                if rr.rtype == QTYPE.OPT:
                    rr.rdata = [o for o in rr.rdata if o.code != NSID] + [EDNSOption(NSID, self.config)]
        return edit(response, add), plugin
