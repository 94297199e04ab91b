"""`chaos [VERSION] [AUTHORS...]`: CH-class TXT answers for version.bind, version.server, authors.bind,
hostname.bind and id.server; other questions go on down the block (a CH one nothing answers is REFUSED)."""

from __future__ import annotations

import socket

from dnslib import CLASS, QTYPE, RR, TXT

from ..corefile import Directive
from . import Next, Request, Result, SetupContext
from ._common import asked_name, no_block, reply

CH = 3


def setup(d: Directive, ctx: SetupContext) -> tuple[str, list[str]]:
    no_block(d)
    from .. import __version__
    version = d.args[0].text if d.args else f"kdns-{__version__}"
    authors = [t.text for t in d.args[1:]] or ["kdns"]
    return version, authors


class Handler:
    classes = (CH,)

    def __init__(self, config: tuple[str, list[str]], block) -> None:
        self.version, self.authors = config

    def serve(self, req: Request, next: Next) -> Result:
        query = req.query
        if query.qclass != CH or query.qtype != QTYPE.TXT:
            return next(req)
        texts = {"version.bind": [self.version], "version.server": [self.version], "authors.bind": self.authors,
                 "hostname.bind": [socket.gethostname()], "id.server": [socket.gethostname()]}.get(req.name)
        if texts is None:  # as CoreDNS: the rest of the block (a CH template, else REFUSED there)
            return next(req)
        owner = asked_name(query)
        return reply(req, "chaos", [RR(owner, QTYPE.TXT, CLASS.CH, 0, TXT(t)) for t in texts])
