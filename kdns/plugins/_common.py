"""Helpers shared by plugin modules: argument checks, packing a plugin's own answer, editing a response."""

from __future__ import annotations

from typing import Callable

from dnslib import DNSLabel, DNSRecord

from ..corefile import Directive
from ..resolver import Answer
from ..wire import pack_answer, patch


def nargs(d: Directive, lo: int, hi: int | None, usage: str) -> None:
    n = len(d.args)
    if n < lo or (hi is not None and n > hi):
        raise d.error(f"{d.name}: wrong number of arguments ({n}); usage: {usage}")


def no_block(d: Directive) -> None:
    if d.has_block and d.block:
        raise d.block[0].error(f"{d.name}: unknown option {d.block[0].name!r} (it takes no options block)")


def flag(d: Directive) -> bool:
    """Setup of a directive without arguments or options."""
    nargs(d, 0, 0, d.name)
    no_block(d)
    return True


def integer(d: Directive, tok, lo: int, hi: int, what: str) -> int:
    try:
        value = int(tok.text)
    except ValueError:
        raise d.error(f"{d.name}: {what} must be a number, got {tok.text!r}", tok) from None
    if not lo <= value <= hi:
        raise d.error(f"{d.name}: {what} must be between {lo} and {hi}, got {value}", tok)
    return value


def same_in_every_block(d: Directive, ctx, value, shown: str, why: str, unit: str = ""):
    """`value`, unless another server block gave this process-wide directive a different one (then a
    CorefileError at this directive saying `why` there can be only one)."""
    for block in ctx.settings.blocks:
        other = block.plugins.get(d.name)
        if other is not None and other != value:
            raise d.error(f"{d.name} {shown} differs from another server block's ({other}{unit}): {why}", *d.args[:1])
    return value


def asked_name(query, *prefix: bytes) -> DNSLabel | None:
    """The asked name (lower case) as a DNSLabel built from its wire labels, so odd bytes are never
    re-parsed as text, with `prefix` labels in front; None when that exceeds 255 bytes."""
    labels, name, pos = list(prefix), query.qname.lower(), 0
    while name[pos]:
        labels.append(name[pos + 1: pos + 1 + name[pos]])
        pos += 1 + name[pos]
    if sum(len(label) + 1 for label in labels) + 1 > 255:
        return None
    return DNSLabel(labels) if labels else DNSLabel(".")


def reply(req, plugin: str, answer=(), authority=(), additional=(), rcode: int = 0, aa: bool = True,
          ra: bool = False) -> tuple[bytes, str]:
    """A response to the request's question built from dnslib records."""
    ans = Answer(rcode=rcode, answer=list(answer), authority=list(authority), additional=list(additional),
                 authoritative=aa)
    return patch(pack_answer(req.query, ans, ra), req.query), plugin


def edit(response: bytes, fn: Callable[[DNSRecord], None]) -> bytes:
    """Parse a response, let fn change it in place, pack it again (name compression redone)."""
    record = DNSRecord.parse(response)
    fn(record)
    return bytes(record.pack())
