"""`root PATH`: the directory that relative file paths of this server block (hosts FILE) are read from."""

from __future__ import annotations

import os

from ..corefile import Directive
from . import SetupContext
from ._common import nargs, no_block


def setup(d: Directive, ctx: SetupContext) -> str:
    nargs(d, 1, 1, "root PATH")
    no_block(d)
    path = d.args[0].text
    if not os.path.isdir(path):
        raise d.error(f"root: {path!r} is not a directory", d.args[0])
    return path
