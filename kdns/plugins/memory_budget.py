"""`memory_budget SIZE` (kdns only): the process's memory budget for what grows with traffic, as
`--memory-budget` (which wins when both are given). Every block that names it must name the same size."""

from __future__ import annotations

from ..corefile import Directive
from ..memory import parse_size
from . import SetupContext
from ._common import nargs, no_block, same_in_every_block


def setup(d: Directive, ctx: SetupContext) -> int:
    nargs(d, 1, 1, "memory_budget SIZE")
    no_block(d)
    try:
        size = parse_size(d.args[0].text)
    except ValueError as exc:
        raise d.error(f"memory_budget: {exc}", d.args[0]) from None
    return same_in_every_block(d, ctx, size, d.args[0].text, "the budget is the process's, give one size",
                               " bytes")
