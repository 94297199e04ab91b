"""`bind ADDRESS|INTERFACE... [{ except ADDRESS|INTERFACE... }]`: the addresses this server block listens on.

An interface name stands for all its IPv4 and IPv6 addresses (read with psutil.net_if_addrs, the
portable way to list them); `except` removes addresses again. Without `bind` a block listens on
every interface (or on kdns's --bind address)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from ..corefile import Directive, Token
from . import SetupContext


@dataclass
class BindConfig:
    addresses: list[str] = field(default_factory=list)  # IP text, IPv6 link-local with %interface


def _resolve(d: Directive, tok: Token) -> list[str]:
    text = tok.text
    try:
        return [ipaddress.ip_address(text).compressed]
    except ValueError:
        pass
    import psutil
    interfaces = psutil.net_if_addrs()
    if text not in interfaces:
        raise d.error(f"bind: {text!r} is neither an IP address nor a network interface "
                      f"(interfaces here: {', '.join(sorted(interfaces))})", tok)
    out = []
    for addr in interfaces[text]:
        if addr.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(addr.address.split("%")[0])
        out.append(f"{ip.compressed}%{text}" if ip.version == 6 and ip.is_link_local else ip.compressed)
    return out


def setup(d: Directive, ctx: SetupContext) -> BindConfig:
    if not d.args:
        raise d.error("bind: wrong number of arguments (0); usage: bind ADDRESS|INTERFACE... "
                      "[{ except ADDRESS|INTERFACE... }]")
    addresses: list[str] = []
    for tok in d.args:
        addresses += [a for a in _resolve(d, tok) if a not in addresses]
    for opt in d.block:
        if opt.name != "except":
            raise opt.error(f"bind: unknown option {opt.name!r} (kdns supports: except)")
        if not opt.args:
            raise opt.error("bind: except needs at least one address or interface")
        for tok in opt.args:
            removed = set(_resolve(opt, tok))
            addresses = [a for a in addresses if a not in removed]
    if not addresses:
        raise d.error("bind: no address is left to listen on")
    return BindConfig(addresses)
