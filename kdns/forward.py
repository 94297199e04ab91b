"""Upstream forwarding: send a query to an upstream server over UDP (TCP when asked or truncated)."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import secrets
import struct
import time

DEFAULT_TIMEOUT = 2.0


class UpstreamError(Exception):
    pass


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, want_id: int):
        self.want_id = want_id
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        # ignore anything that is not the answer to our ID (spoofing / stray packets)
        if len(data) >= 12 and struct.unpack_from("!H", data)[0] == self.want_id and not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(UpstreamError(str(exc)))

    def connection_lost(self, exc) -> None:
        if not self.future.done():
            self.future.set_exception(UpstreamError("socket closed"))


class Upstream:
    """One upstream address. `exchange` returns the upstream's answer with the caller's ID restored."""

    def __init__(self, host: str, port: int = 53, timeout: float = DEFAULT_TIMEOUT):
        self.host = host
        self.port = port
        self.timeout = timeout

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def exchange(self, packet: bytes, tcp: bool = False) -> bytes:
        orig_id = packet[:2]
        qid = secrets.randbelow(65536)
        out = struct.pack("!H", qid) + packet[2:]
        try:
            if tcp:
                reply = await asyncio.wait_for(self._tcp(out), self.timeout)
            else:
                reply = await asyncio.wait_for(self._udp(out, qid), self.timeout)
                if len(reply) >= 4 and reply[2] & 0x02:  # TC: retry over TCP
                    reply = await asyncio.wait_for(self._tcp(out), self.timeout)
        except asyncio.TimeoutError:
            raise UpstreamError(f"upstream {self} timed out after {self.timeout}s") from None
        except OSError as exc:
            raise UpstreamError(f"upstream {self}: {exc}") from None
        problem = _reply_problem(out, reply)
        if problem:
            raise UpstreamError(f"upstream {self} sent a bad reply: {problem}")
        return orig_id + reply[2:]

    async def _udp(self, packet: bytes, qid: int) -> bytes:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _OneShot(qid), remote_addr=(self.host, self.port))
        try:
            transport.sendto(packet)
            return await proto.future
        finally:
            transport.close()

    async def _tcp(self, packet: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            return await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise UpstreamError(f"upstream {self} closed the TCP connection early") from None
        finally:
            writer.close()


def _question_end(packet: bytes) -> int:
    pos = 12
    while True:
        n = packet[pos]
        if n == 0:
            return pos + 1 + 4
        if n & 0xC0:
            raise ValueError("compressed question")
        pos += 1 + n


def _reply_problem(query: bytes, reply: bytes) -> str:
    """Why `reply` cannot be the answer to `query` ("" if it can): garbage and spoofed or
    mismatched replies are never passed on to clients."""
    if len(reply) < 12:
        return f"{len(reply)} bytes, shorter than a DNS header"
    if reply[:2] != query[:2]:
        return "wrong ID"
    if not reply[2] & 0x80:
        return "QR bit not set"
    qd = struct.unpack_from("!H", reply, 4)[0]
    if qd == 0:
        rcode = reply[3] & 0x0F
        return "" if rcode in (1, 4, 5) else "no question section"  # FORMERR/NOTIMP/REFUSED may omit it
    try:
        q_end = _question_end(query)
        r_end = _question_end(reply)
    except (IndexError, ValueError):
        return "unreadable question section"
    if r_end > len(reply) or query[12:q_end].lower() != reply[12:r_end].lower():
        return "question does not match the query"
    return ""


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """`1.2.3.4`, `1.2.3.4:53`, `[::1]:53`, `::1` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host, port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


# ------------------------------------------------------------------------------ the forward plugin


class Overloaded(Exception):
    """More than max_concurrent queries in flight: answer REFUSED (CoreDNS does the same)."""


class UpstreamState:
    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.fails = 0
        self.healthy = True
        self.checker: asyncio.Task | None = None


HEALTH_PROBE = bytes.fromhex("0000010000010000000000000000020001")  # ". IN NS", RD set


class Forwarder:
    """`forward FROM TO... { ... }`: policy, in-band health checks, max_concurrent, except zones."""

    def __init__(self, config, log, own_addresses: set[tuple[str, int]] = frozenset()):
        from .config import in_zone  # local: config imports nothing from here
        self._in_zone = in_zone
        self.config = config
        self.log = log
        self.upstreams: list[UpstreamState] = []
        for host, port in config.to:
            if _is_self(host, port, own_addresses):
                log.warning("forward_upstream_skipped", upstream=f"{host}:{port}",
                            reason="it is kdns's own listening address: forwarding there would loop")
                continue
            self.upstreams.append(UpstreamState(Upstream(host, port, timeout=config.timeout)))
        self.inflight = 0
        self._rr = 0
        self.disabled_reason = "" if self.upstreams else "no usable upstream"
        # counters for metrics: (to, rcode) -> count/sum are kept by the caller's metrics
        self.rejects = 0
        self.healthcheck_broken = 0
        self.healthcheck_failures: dict[str, int] = {}

    def matches(self, name: str) -> bool:
        cfg = self.config
        return self._in_zone(name, cfg.from_zone) and not any(self._in_zone(name, z) for z in cfg.except_zones)

    def _order(self) -> list[UpstreamState]:
        ups = self.upstreams
        policy = self.config.policy
        if policy == "sequential":
            ordered = list(ups)
        elif policy == "round_robin":
            self._rr = (self._rr + 1) % len(ups)
            ordered = ups[self._rr:] + ups[:self._rr]
        else:
            ordered = random.sample(ups, len(ups))
        healthy = [u for u in ordered if u.healthy]
        if not healthy:
            self.healthcheck_broken += 1  # all down: try them anyway (CoreDNS picks at random)
            return ordered
        return healthy

    async def forward(self, packet: bytes, tcp: bool, observe=None) -> bytes:
        """The upstream's reply. Raises Overloaded, or UpstreamError when every upstream failed."""
        if self.disabled_reason:
            raise UpstreamError(f"forwarding disabled: {self.disabled_reason}")
        cfg = self.config
        if cfg.max_concurrent is not None and self.inflight >= cfg.max_concurrent:
            self.rejects += 1
            raise Overloaded(f"{self.inflight} queries in flight (max_concurrent {cfg.max_concurrent})")
        use_tcp = cfg.force_tcp or (tcp and not cfg.prefer_udp)
        self.inflight += 1
        errors = []
        try:
            for state in self._order():
                start = time.monotonic()
                try:
                    reply = await state.upstream.exchange(packet, tcp=use_tcp)
                except UpstreamError as exc:
                    errors.append(str(exc))
                    self._failed(state)
                    continue
                state.fails = 0
                if observe is not None:
                    observe(str(state.upstream), reply[3] & 0x0F if len(reply) > 3 else 2, time.monotonic() - start)
                return reply
        finally:
            self.inflight -= 1
        raise UpstreamError("; ".join(errors) or "no upstream")

    def _failed(self, state: UpstreamState) -> None:
        state.fails += 1
        if self.config.max_fails and state.fails >= self.config.max_fails and state.healthy:
            state.healthy = False
            self.log.warning("forward_upstream_down", upstream=str(state.upstream), fails=state.fails)
            if state.checker is None or state.checker.done():
                state.checker = asyncio.ensure_future(self._health_check(state))

    async def _health_check(self, state: UpstreamState) -> None:
        """Probe `. IN NS` every health_check interval until any reply comes back."""
        name = str(state.upstream)
        while not state.healthy:
            await asyncio.sleep(self.config.health_check)
            try:
                await state.upstream.exchange(HEALTH_PROBE, tcp=self.config.force_tcp)
            except UpstreamError:
                self.healthcheck_failures[name] = self.healthcheck_failures.get(name, 0) + 1
                continue
            state.healthy = True
            state.fails = 0
            self.log.info("forward_upstream_up", upstream=name)

    def close(self) -> None:
        for state in self.upstreams:
            if state.checker is not None:
                state.checker.cancel()


def _is_self(host: str, port: int, own: set[tuple[str, int]]) -> bool:
    """True if host:port is one of our listeners (a wildcard listener covers loopback addresses)."""
    for own_host, own_port in own:
        if own_port != port:
            continue
        if host == own_host:
            return True
        if own_host in ("", "0.0.0.0", "::"):
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if ip.is_loopback or ip.is_unspecified:
                return True
    return False
