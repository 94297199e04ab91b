"""`minimal`: positive answers carry only the answer section (authority and additional records dropped)."""

from __future__ import annotations

from dnslib import QTYPE

from ..corefile import Directive
from . import Handler as Base, Next, Request, Result, SetupContext, then
from ._common import edit, flag


def setup(d: Directive, ctx: SetupContext) -> bool:
    return flag(d)


def _strip(record) -> None:
    record.auth = []
    record.ar = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]


class Handler(Base):

    def serve(self, req: Request, next: Next) -> Result:
        return then(next(req), self._minimal)

    @staticmethod
    def _minimal(result: tuple) -> tuple:
        response, plugin = result
        rcode = response[3] & 0x0F
        ancount = response[6] << 8 | response[7]
        extra = (response[8] << 8 | response[9]) + (response[10] << 8 | response[11])
        if rcode != 0 or not ancount or not extra:  # negative answers and NODATA keep their SOA
            return result
        return edit(response, _strip), plugin
