"""The direct forward path: a UDP query for a name outside our zones that the `cache` plugin does not hold goes
upstream as the client sent it (QueryHandler.fast), and its reply is cached, counted and answered from the
forwarder's record of it (Direct), without the full path's Query, pipeline and future."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .forward import Forwarding
from .wire import query_from_fast

if TYPE_CHECKING:
    from .server import QueryHandler


class Direct(Forwarding):
    """A UDP query of the direct forward path (QueryHandler.fast): the forwarder's record of it and
    what answering it needs, so its reply is answered from `answered` (no callback object per query)."""

    __slots__ = ("handler", "fast", "client", "send", "block", "cache", "began")

    def __init__(self, handler: "QueryHandler", data: bytes, fast: tuple, client, send, block, cache, began: float):
        # Forwarding's fields set here (`done` and `observe` are not used: answered() and finish() answer the query)
        self.query = data
        self.qend = fast[1]
        self.tcp = False
        self.next = 0
        self.errors = None
        self.handler = handler
        self.fast = fast  # fast_key's reading of the query: (cache key, question end, UDP size)
        self.client = client
        self.send = send  # send(response, client)
        self.block = block
        self.cache = cache  # the block's `cache` plugin
        self.began = began  # time.perf_counter() when the query was read (and sent to the first upstream)

    def answered(self, reply: bytes | None, error: str) -> None:
        """The upstream's reply (Forwarding.answered's success path): cached, counted, measured and sent -- what the
        full path does, without a Query -- when it fits and nothing is logged or rate-limited (else _forward_done)."""
        if reply is None:
            Forwarding.answered(self, reply, error)  # the next upstream; finish() once none is left
            return
        state = self.state
        state.fails = 0
        self.owner.inflight -= 1
        handler = self.handler
        key, qend, udp_size = self.fast
        if self.next == 1:  # the first upstream: sent when the query was read, its time is the query's (one tally)
            to = state.upstream.name
        else:  # a later one (failover): timed from its own send, as the full path counts it (Block._forward)
            to = None
            self.block.metrics.observe_upstream(state.upstream.name, reply[3] & 0x0F, time.perf_counter() - self.start)
        try:
            # its name is outside our zones (fast()): the `cache` plugin needs no text of it for that; an answer a
            # full cache does not admit is sent as it came (the usual one in a flood of new names)
            cache = self.cache
            response = reply if cache.admission(key, reply) is False else \
                self.block.forwarded(key, qend, None, cache, reply, outside=True)
            rcode = handler._count_forwarded(response)
        except Exception as exc:  # noqa: BLE001 - a bug must cost one SERVFAIL, never the server
            self.send(handler._internal_error(query_from_fast(self.query, self.fast), exc), self.client)
            return
        if len(response) > udp_size or not handler.plain:  # to fit, log or rate-limit (plain: nothing logged...)
            handler._forward_done(self, response, "", to)
            return
        if handler._observe:  # counted as _done counts it, folded into the metrics when read (flush)
            client = self.client
            handler.metrics.tally.add(self.block.name, ":" in client[0], key[1], key[4], udp_size, rcode, len(response),
                                      time.perf_counter() - self.began, to)
        elif to is not None:
            self.block.metrics.observe_upstream(to, rcode, time.perf_counter() - self.began)
        self.send(response, self.client)

    def finish(self, reply: bytes | None, error: str) -> None:
        """Every upstream failed (reply None): SERVFAIL, as the full path answers."""
        self.handler._forward_done(self, reply, error)


def direct_suffixes(block) -> tuple | None:
    """For QueryHandler.fast's direct forward path: the wire-format endings of the kubernetes zones (a name ending so
    takes the full path), or None when the direct path cannot stand for the chain: `forward` or `cache`
    not covering every name, or a kubernetes zone at the root."""
    if block.forwarder.config.from_zone or block.forwarder.config.except_zones or "" not in block.cache.config.zones:
        return None
    zones = block.resolver.config.zones.zones if block.resolver is not None else ()
    if any(not zone.labels for zone in zones):
        return None
    return tuple(b"".join(bytes((len(label),)) + label.encode("latin-1") for label in zone.labels) + b"\0"
                 for zone in zones)
