"""`explain [[HOST]:PORT]`: serve GET /explain (kdns explain against this server) on HOST:PORT; off unless
given, on 127.0.0.1 unless a host is named (its near-miss hints reveal names across namespaces). One
listener per process: every block naming it gives the same address, and it explains with the server
blocks of the first such block's port."""

from __future__ import annotations

from ..corefile import Directive
from . import SetupContext
from ._common import nargs, no_block, same_in_every_block

DEFAULT = "127.0.0.1:9155"


def listen_address(text: str) -> str:
    """HOST:PORT from `HOST:PORT`, `:PORT` or `PORT` (host 127.0.0.1); ValueError when it is none of those."""
    host, sep, port = text.rpartition(":") if not text.isdigit() else ("", ":", text)
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected [HOST]:PORT (port 0-65535), got {text!r}")
    host = host or "127.0.0.1"
    return f"{host}:{int(port)}"


def setup(d: Directive, ctx: SetupContext) -> str:
    nargs(d, 0, 1, "explain [[HOST]:PORT]")
    no_block(d)
    address = DEFAULT
    if d.args:
        try:
            address = listen_address(d.args[0].text)
        except ValueError as exc:
            raise d.error(f"explain: {exc}", d.args[0]) from None
    return same_in_every_block(d, ctx, address, address, "kdns serves one explain listener, give one address")
