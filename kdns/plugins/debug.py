"""`debug`: accepted as CoreDNS's (which disables panic recovery); kdns keeps recovering, so it has no effect."""

from __future__ import annotations

from ..corefile import Directive
from . import SetupContext
from ._common import nargs, no_block


def setup(d: Directive, ctx: SetupContext) -> bool:
    nargs(d, 0, 0, "debug")
    no_block(d)
    ctx.warn(d, "debug has no effect in kdns: a handler error still costs one SERVFAIL, never the process")
    return True
