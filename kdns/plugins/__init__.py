"""Plugin registry: CoreDNS's plugin order, and one module per directive (its parser, settings and handler).

A directive that is not built into config.py/pipeline.py lives in `kdns/plugins/<name>.py` and is
listed in ORDER. The module provides:

    setup(d: Directive, ctx: SetupContext) -> settings   # parse + validate; CorefileError with file:line:col
    Handler(settings, block)                              # optional: answers queries at run time
        .serve(req: Request, next) -> Result              # Result: (bytes, plugin) or an awaitable of it

Handlers ordered before `hosts` wrap the block's built-in chain (hosts, kubernetes, forward) as
CoreDNS middleware does: they see the request first and the response last. Handlers between
`hosts` and `kubernetes` are asked after hosts (`serve(req, None)` returns a result or None to pass
on). Handlers ordered after `forward` answer what nothing before them answered. A module may also
define `validate(settings, block_config)`, called once its whole server block is parsed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Awaitable, Callable, Union

# CoreDNS's plugin.cfg, restricted to what kdns knows. Names marked built-in are parsed in config.py
# and run in pipeline.py/server.py; every other name is a module of this package.
ORDER = (
    "root", "reload", "nsid", "bufsize", "bind", "debug", "explain", "memory_budget", "ready", "health", "prometheus", "errors", "log",
    "local", "acl", "any", "chaos", "loadbalance", "cache", "rewrite", "autopath", "minimal", "template",
    "hosts", "k8s_external", "kubernetes", "loop", "forward", "whoami",
)
BUILTIN = frozenset({"reload", "ready", "health", "prometheus", "errors", "log", "acl", "loadbalance", "cache",
                     "autopath", "hosts", "kubernetes", "loop", "forward"})
POSITION = {name: i for i, name in enumerate(ORDER)}

Result = Union[tuple, Awaitable[tuple]]
Next = Callable[["Request"], Result]


@dataclass
class SetupContext:
    """What a plugin's setup may read or add to: its server block, the whole settings, warnings."""

    block: Any  # config.BlockConfig
    settings: Any  # config.Settings
    resolv_conf: str

    def warn(self, d, message: str) -> None:
        self.settings.warnings.append(f"{d.where}: {message}")


@dataclass
class Request:
    """One query travelling through a server block's chain."""

    query: Any  # wire.Query
    name: str  # lower-case, no trailing dot
    zone: str
    tcp: bool
    client: tuple | None = None
    cacheable: bool = True  # a handler clears it when its response depends on more than the question
    pending: Any = None  # (zone, deps) of an authoritative answer the block may cache when the chain is done
    outer: "Request | None" = None  # the client's own request, when this one was rewritten

    @property
    def client_ip(self) -> str | None:
        return self.client[0] if self.client else None

    @property
    def top(self) -> "Request":
        """The client's request: where cacheability and the pending answer are recorded."""
        return self.outer.top if self.outer is not None else self

    def replace(self, query) -> "Request":
        """The same request with another question (rewrite)."""
        return Request(query, ".".join(query.labels), self.zone, self.tcp, self.client, outer=self.top)


def then(result: Result, fn: Callable[[tuple], tuple]) -> Result:
    """Apply fn to a handler's result, now or when its awaitable completes."""
    if isinstance(result, tuple):
        return fn(result)

    async def later():
        out = fn(await result)
        return out if isinstance(out, tuple) else await out  # fn may itself ask the chain again
    return later()


class Handler:
    """Base of plugin handlers: the plugin's settings and the server block (pipeline.Block) it runs in."""

    def __init__(self, config: Any, block: Any) -> None:
        self.config = config
        self.block = block


_MODULES: dict[str, ModuleType] = {}


def module(name: str) -> ModuleType | None:
    """The plugin module of a directive that is not built in, or None for an unknown name."""
    if name not in POSITION or name in BUILTIN:
        return None
    if name not in _MODULES:
        _MODULES[name] = importlib.import_module(f"{__name__}.{name}")
    return _MODULES[name]


def names() -> list[str]:
    """Every directive kdns accepts, in plugin order."""
    return list(ORDER)


@dataclass
class Chain:
    """A block's plugin handlers, split around the built-in chain."""

    wrappers: list = field(default_factory=list)  # before hosts: middleware, outermost first
    middle: list = field(default_factory=list)  # between hosts and kubernetes: answer or pass (None)
    last: list = field(default_factory=list)  # after forward: tried when nothing else answered


def build_chain(plugins: dict[str, Any], block) -> Chain:
    """Instantiate the handlers of a block's plugin settings, in plugin order."""
    chain = Chain()
    for name in sorted(plugins, key=POSITION.__getitem__):
        mod = module(name)
        handler_cls = getattr(mod, "Handler", None)
        if handler_cls is None:
            continue
        handler = handler_cls(plugins[name], block)
        if POSITION[name] < POSITION["hosts"]:
            chain.wrappers.append(handler)
        elif POSITION[name] > POSITION["forward"]:
            chain.last.append(handler)
        elif POSITION[name] < POSITION["kubernetes"]:
            chain.middle.append(handler)
        else:
            raise AssertionError(f"plugin {name}: no hook between kubernetes and forward yet")
    return chain
