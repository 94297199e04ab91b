"""Upstream forwarding: the client's raw query on a persistent UDP socket per upstream (TCP when asked or truncated)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import random
import socket
import struct
import time
from functools import partial
from typing import Callable

# Times here are time.perf_counter() (CLOCK_MONOTONIC on Linux, as time.monotonic): the query handler's clock, so
# the time it read a query can stand for the time the query was sent upstream, read once.
DEFAULT_TIMEOUT = 2.0
DEFAULT_EXPIRE = 10.0  # CoreDNS's `expire`: a socket takes new queries this long, then a fresh one (new port) does
MAX_PENDING = 1024  # queries waiting on one socket; more open another (16-bit IDs stay hard to guess)
READS_PER_WAKEUP = 256  # replies read in one go before the loop serves the other sockets

# done(reply, error): the reply with the asker's ID restored, or None and why
Done = Callable[[bytes | None, str], None]


# The sockets kdns opens towards other servers (upstreams, its own listener for the loop check) are made and
# connected here, to numeric addresses, not by the event loop: uvloop resolves every address it is given, numeric
# or not, in libuv's thread pool (create_datagram_endpoint(remote_addr=...), sock_connect, open_connection(host,
# port)), which then keeps four threads for the life of the process -- and a process with threads pays for them
# on every system call (atomic file-table references, glibc's cancellation points) and every GIL hand-off:
# 2-4% of the CPU per cached answer at a fixed rate (perf/BENCH.md). (The API source's reflectors are threads
# of their own: kdns fed by the API pays that anyway.)


def connected_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket connected to the numeric address (host, port)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def connected_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket connected to the numeric address (host, port), the connect awaited on the
    running loop."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        error = sock.connect_ex((host, port))
        if error in (errno.EINPROGRESS, errno.EAGAIN):
            loop = asyncio.get_running_loop()
            writable = loop.create_future()
            loop.add_writer(sock.fileno(), lambda: writable.done() or writable.set_result(None))
            try:
                await writable
            finally:
                loop.remove_writer(sock.fileno())
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, f"connect to {host}:{port}: {os.strerror(error)}")
    except BaseException:
        sock.close()
        raise
    return sock


class UpstreamError(Exception):
    pass


class _IdPool:
    """Unpredictable 16-bit query IDs from os.urandom, drawn a few thousand at a time."""

    def __init__(self) -> None:
        self.ids: list[int] = []  # drawn and not yet taken

    def take(self) -> int:
        if not self.ids:
            raw = os.urandom(8192)
            self.ids.extend(struct.unpack(f"!{len(raw) // 2}H", raw))
        return self.ids.pop()


_IDS = _IdPool()
_U16 = struct.Struct("!H").pack


class _Waiting:
    """A query sent on a socket: what its reply must echo, where the reply goes (`answered`, which hands it to
    `done`), when it gives up. Upstream.send_waiting sets the rest each time it sends the query: `question`
    (the question section as sent: the reply must echo it), `orig_id` (the asker's ID), `packet` (as sent,
    with our ID: a TC reply is retried over TCP with it), `deadline`, and `ignored` (why a reply with this
    ID was not taken, named when it then times out)."""

    __slots__ = ("question", "orig_id", "packet", "done", "deadline", "ignored")

    def __init__(self, done: Done):
        self.done = done

    def answered(self, reply: bytes | None, error: str) -> None:
        """The upstream's reply (the asker's ID restored), or None and why none came."""
        self.done(reply, error)


class _Channel:
    """One connected UDP socket to an upstream and the queries waiting on it, oldest first."""

    __slots__ = ("sock", "fd", "pending", "outbox", "opened", "closed")

    def __init__(self, sock: socket.socket, opened: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.pending: dict[int, _Waiting] = {}  # our ID -> the query; insertion order = deadline order
        self.outbox: list[int] = []  # IDs of queries waiting to be sent (Upstream._flush)
        self.opened = opened
        self.closed = False


class Upstream:
    """One upstream address. `send` hands the reply (asker's ID restored) to a callback; `exchange` awaits it.

    UDP queries share a connected socket (the kernel drops datagrams from any other address) with
    random IDs; a reply must carry a waiting ID and echo its question, else it is ignored and counted
    (`ignored`) and the query keeps waiting. One timer per upstream sweeps timed-out queries, oldest
    first. After `expire` seconds a fresh socket (a new source port) takes the new queries.

    Datagrams queued in one turn of the event loop are sent together once the loop's callbacks of that
    turn have run (_flush): back to back, the upstream is woken once for them, not once each (waking a
    sleeping upstream process costs the sender more than the send itself).
    """

    def __init__(self, host: str, port: int = 53, timeout: float = DEFAULT_TIMEOUT, expire: float = DEFAULT_EXPIRE):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.expire = expire
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.ignored: dict[str, int] = {}  # reason -> replies not taken (wrong ID, question, garbage)
        self._channels: list[_Channel] = []  # the last one takes new queries
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._flushing: list[_Channel] = []  # channels with datagrams queued for _flush
        self._tcp_tasks: set[asyncio.Task] = set()
        self.closed = False  # takes no new queries; sockets close as their waiting queries finish

    def __str__(self) -> str:
        return self.name

    # ------------------------------------------------------------------ sending

    def send(self, packet: bytes, qend: int, done: Done, tcp: bool = False, now: float | None = None) -> None:
        """Send `packet` (question ends at qend) with a fresh ID, once this turn of the event loop ends
        (_flush); `done` is called exactly once, possibly before this returns (no socket could be opened).
        `now`: time.perf_counter() (this module's clock), when the caller just read it."""
        self.send_waiting(_Waiting(done), packet, qend, tcp, now)

    def send_waiting(self, waiting: _Waiting, packet: bytes, qend: int, tcp: bool = False,
                     now: float | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """send(), the reply handed to `waiting.answered` (a record the caller keeps: Forwarding). `loop`: the
        running event loop, when the caller knows it (the query handler's UDP reader)."""
        if self.closed:
            waiting.answered(None, f"upstream {self.name}: forwarder closed")
            return
        if tcp:
            self._start_tcp(packet, packet[:2], waiting.answered)
            return
        if now is None:
            now = time.perf_counter()
        if loop is None:
            loop = self._running_loop()
        channels = self._channels
        # the newest socket takes the query while it has room and has not expired (on this event loop)
        if loop is self._loop and channels and len((channel := channels[-1]).pending) < MAX_PENDING and \
                now - channel.opened < self.expire:
            pass
        else:
            try:
                channel = self._open(now, loop)
            except OSError as exc:
                waiting.answered(None, f"upstream {self.name}: {exc}")
                return
        pending = channel.pending
        ids = _IDS.ids
        qid = ids.pop() if ids else _IDS.take()
        while qid in pending:
            qid = _IDS.take()
        waiting.question = packet[12:qend]
        waiting.orig_id = packet[:2]
        waiting.packet = _U16(qid) + packet[2:]
        waiting.deadline = now + self.timeout
        waiting.ignored = ""
        pending[qid] = waiting
        if not channel.outbox:
            if not self._flushing:
                self._loop.call_soon(self._flush)
            self._flushing.append(channel)
        channel.outbox.append(qid)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._period(), self._sweep)

    def _flush(self) -> None:
        """Send the datagrams queued this turn; a query whose datagram the socket refuses fails now."""
        channels, self._flushing = self._flushing, []
        failed = []
        for channel in channels:
            ids, channel.outbox = channel.outbox, []
            if channel.closed:
                continue  # its queries were failed when it closed
            send = channel.sock.send
            pending = channel.pending
            for qid in ids:
                waiting = pending.get(qid)
                if waiting is None:
                    continue  # timed out (or failed) before it was sent
                try:
                    send(waiting.packet)
                except OSError as exc:
                    del pending[qid]
                    failed.append((waiting, exc.strerror or str(exc)))
        for waiting, error in failed:
            self._give_up(waiting, f"upstream {self.name}: {error}")

    async def exchange(self, packet: bytes, tcp: bool = False) -> bytes:
        """The upstream's answer to `packet`, the caller's ID restored; raises UpstreamError."""
        fut = asyncio.get_running_loop().create_future()
        self.send(packet, question_end(packet), partial(_settle, fut), tcp)
        return await fut

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # the loop of the sockets is the running one while it runs (asking asyncio for the running loop
        # costs a getpid() system call on Python 3.11: once per forwarded query)
        loop = self._loop
        if loop is None or not loop.is_running() or loop.is_closed():
            loop = asyncio.get_running_loop()
        return loop

    def _open(self, now: float, loop: asyncio.AbstractEventLoop) -> _Channel:
        """A new socket to take the queries, on `loop` (the running one)."""
        if loop is not self._loop:
            self._rebind(loop)
        channel = _Channel(connected_udp(self.host, self.port), now)
        self._loop.add_reader(channel.fd, self._readable, channel)
        self._channels.append(channel)
        self._retire(now)
        return channel

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        """A new event loop (`kdns explain` runs one per question): the sockets and the sweep timer of
        the old one are never served again, so their queries fail and the sockets close."""
        old, self._loop = self._loop, loop
        channels, self._channels = self._channels, []
        self._flushing = []  # the old loop's _flush never runs
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for channel in channels:
            channel.closed = True
            if old is not None and not old.is_closed():
                old.remove_reader(channel.fd)
            channel.sock.close()
            pending, channel.pending = channel.pending, {}
            for waiting in pending.values():
                _deliver(waiting.answered, None, f"upstream {self.name}: its event loop ended")

    def _retire(self, now: float) -> None:
        """Close sockets that no longer take queries and have none waiting."""
        channels = self._channels
        for channel in (channels if self.closed else channels[:-1]):
            if not channel.pending:
                self._close_channel(channel)
        self._channels = [c for c in channels if not c.closed]

    def _close_channel(self, channel: _Channel) -> None:
        channel.closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(channel.fd)
        channel.sock.close()

    # ------------------------------------------------------------------ receiving

    def _readable(self, channel: _Channel) -> None:
        """Read the replies waiting on the socket (a bounded number per wake-up), then hand each on."""
        sock = channel.sock
        pending = channel.pending
        replies = []
        for _ in range(READS_PER_WAKEUP):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # an ICMP error (port unreachable): the upstream refused the oldest datagram still waiting
                if pending:
                    replies.append((pending.pop(next(iter(pending))), exc.strerror or str(exc)))
                continue
            if len(data) < 12:
                self._ignore(f"{len(data)} bytes, shorter than a DNS header")
                continue
            qid = data[0] << 8 | data[1]
            waiting = pending.get(qid)
            if waiting is None:
                self._ignore("no query waits with this ID")
                continue
            question = waiting.question
            # the usual reply (QR, one question, echoed as sent) passes at once; _reply_problem has the rest
            if not (data[2] & 0x80 and data[4:6] == b"\x00\x01" and data.startswith(question, 12)):
                problem = _reply_problem(question, data)
                if problem:
                    waiting.ignored = problem
                    self._ignore(problem)
                    continue
            del pending[qid]
            replies.append((waiting, data))
        if not pending and (self.closed or self._channels[-1] is not channel):
            self._retire(0.0)  # drained, and it takes no new queries: close it now
        for waiting, data in replies:
            if type(data) is str:
                self._give_up(waiting, f"upstream {self.name}: {data}")
            elif data[2] & 0x02:  # TC: retry over TCP
                self._start_tcp(waiting.packet, waiting.orig_id, waiting.answered)
            else:
                try:  # as _deliver: a failing callback must not stop the other replies being handed on
                    waiting.answered(waiting.orig_id + data[2:], "")
                except Exception:  # noqa: BLE001 - the callback's owner reports its own errors
                    pass

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def _give_up(self, waiting: _Waiting, error: str) -> None:
        if waiting.ignored:
            error += f" (ignored a reply: {waiting.ignored})"
        _deliver(waiting.answered, None, error)

    # ------------------------------------------------------------------ timeouts

    def _period(self) -> float:
        return max(0.005, min(0.1, self.timeout / 4))

    def _sweep(self) -> None:
        """Time out, oldest first, every query whose deadline passed; re-arm while any wait."""
        self._sweeper = None
        now = time.perf_counter()
        waiting_any = False
        for channel in list(self._channels):
            pending = channel.pending
            while pending:
                qid = next(iter(pending))
                waiting = pending[qid]
                if waiting.deadline > now:
                    break
                del pending[qid]
                self._give_up(waiting, f"upstream {self.name} timed out after {self.timeout}s")
            waiting_any = waiting_any or bool(pending)
        self._retire(now)
        if waiting_any and self._sweeper is None and self._loop is not None:
            self._sweeper = self._loop.call_later(self._period(), self._sweep)

    # ------------------------------------------------------------------ TCP

    def _start_tcp(self, packet: bytes, orig_id: bytes, done: Done) -> None:
        task = asyncio.ensure_future(self._tcp_exchange(packet, orig_id, done))
        self._tcp_tasks.add(task)
        task.add_done_callback(self._tcp_tasks.discard)

    async def _tcp_exchange(self, packet: bytes, orig_id: bytes, done: Done) -> None:
        out = _U16(_IDS.take()) + packet[2:]
        try:
            reply = await asyncio.wait_for(self._tcp(out), self.timeout)
        except asyncio.TimeoutError:
            _deliver(done, None, f"upstream {self.name} timed out after {self.timeout}s")
            return
        except (OSError, UpstreamError) as exc:
            _deliver(done, None, f"upstream {self.name}: {exc}")
            return
        try:
            problem = _reply_problem(out[12:question_end(out)], reply, out[:2])
        except (IndexError, ValueError):
            problem = "unreadable question section"
        if problem:
            _deliver(done, None, f"upstream {self.name} sent a bad reply: {problem}")
        else:
            _deliver(done, orig_id + reply[2:], "")

    async def _tcp(self, packet: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(sock=await connected_tcp(self.host, self.port))
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            return await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise UpstreamError("closed the TCP connection early") from None
        finally:
            writer.close()

    def close(self) -> None:
        """Take no new queries (a reload replaced this forwarder); each socket closes once the queries
        waiting on it are answered or time out, so a reload costs no query its answer."""
        self.closed = True
        self._retire(0.0)

    @property
    def waiting(self) -> int:
        """Queries sent over UDP and not yet answered or timed out."""
        return sum(len(c.pending) for c in self._channels)


def _settle(fut: asyncio.Future, reply: bytes | None, error: str) -> None:
    """A Done callback that finishes a future: the reply, or UpstreamError(error)."""
    if not fut.done():
        fut.set_result(reply) if reply is not None else fut.set_exception(UpstreamError(error))


def _deliver(done: Done, reply: bytes | None, error: str) -> None:
    """Call a query's callback; a failing callback must not stop the other replies being read."""
    try:
        done(reply, error)
    except Exception:  # noqa: BLE001 - the callback's owner reports its own errors; keep reading
        pass


def question_end(packet: bytes) -> int:
    """Offset just past the (single, uncompressed) question of `packet`; ValueError/IndexError if none."""
    pos = 12
    while True:
        n = packet[pos]
        if n == 0:
            return pos + 1 + 4
        if n & 0xC0:
            raise ValueError("compressed question")
        pos += 1 + n


def _reply_problem(question: bytes, reply: bytes, want_id: bytes | None = None) -> str:
    """Why `reply` cannot be the answer to a query with this question section ("" if it can):
    garbage and spoofed or mismatched replies are never passed on to clients."""
    if len(reply) < 12:
        return f"{len(reply)} bytes, shorter than a DNS header"
    if want_id is not None and reply[:2] != want_id:
        return "wrong ID"
    if not reply[2] & 0x80:
        return "QR bit not set"
    if reply[4] == 0 and reply[5] == 1:
        end = 12 + len(question)
        got = reply[12:end]
        if got == question or got.lower() == question.lower():
            return ""
        return "question does not match the query"
    if reply[4] == 0 and reply[5] == 0:
        return "" if reply[3] & 0x0F in (1, 4, 5) else "no question section"  # FORMERR/NOTIMP/REFUSED may omit it
    return "question does not match the query"


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

# observe(upstream name, rcode, seconds): coredns_forward_* / coredns_proxy_* for each answered query
Observe = Callable[[str, int, float], None]


class Forwarding(_Waiting):
    """One client query on its way through the upstreams in policy order (failover on error); also the
    record it waits as on the current upstream's socket (Upstream.send_waiting): one object per query.
    Its end is `finish(reply, error)`, which calls `done`; a subclass may answer there itself (the query
    handler's direct forward path: no callback object per query). Forwarder.submit begins it."""

    __slots__ = ("owner", "query", "qend", "tcp", "observe", "order", "next", "state", "start", "errors")

    def __init__(self, packet: bytes, qend: int, tcp: bool, done: Done | None = None, observe: Observe | None = None):
        self.query = packet  # as the client sent it
        self.qend = qend
        self.tcp = tcp
        self.done = done
        self.observe = observe
        self.next = 0
        self.errors: list[str] | None = None

    def finish(self, reply: bytes | None, error: str) -> None:
        """The upstream's reply (the asker's ID), or None and why every upstream failed: once per query."""
        self.done(reply, error)

    def attempt(self, now: float | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Send the query to the next upstream in order (`now`, `loop`: as Forwarder.begin's), or finish."""
        order = self.order
        if self.next >= len(order):
            self.owner.inflight -= 1
            self.finish(None, "; ".join(self.errors or ()) or "no upstream")
            return
        self.state = state = order[self.next]
        self.next += 1
        self.start = now = time.perf_counter() if now is None else now
        state.upstream.send_waiting(self, self.query, self.qend, self.tcp, now, loop)

    def answered(self, reply: bytes | None, error: str) -> None:
        state = self.state
        if reply is None:
            if self.errors is None:
                self.errors = []
            self.errors.append(error)
            self.owner._failed(state)
            self.attempt()
            return
        state.fails = 0
        self.owner.inflight -= 1
        if self.observe is not None:
            self.observe(state.upstream.name, reply[3] & 0x0F, time.perf_counter() - self.start)
        self.finish(reply, "")


class Forwarder:
    """`forward FROM TO... { ... }`: policy, in-band health checks, max_concurrent, except zones."""

    def __init__(self, config, log, own_addresses: set[tuple[str, int]] = frozenset()):
        from .config import zone_matcher  # local: config imports nothing from here
        self._from = zone_matcher([config.from_zone])
        self._except = zone_matcher(config.except_zones) if config.except_zones else None
        self.config = config
        self.log = log
        self.upstreams: list[UpstreamState] = []
        expire = getattr(config, "expire", DEFAULT_EXPIRE)
        for host, port in config.to:
            if _is_self(host, port, own_addresses):
                log.warning("forward_upstream_skipped", upstream=f"{host}:{port}",
                            reason="it is kdns's own listening address: forwarding there would loop")
                continue
            self.upstreams.append(UpstreamState(Upstream(host, port, timeout=config.timeout, expire=expire)))
        self.inflight = 0
        self._max_inflight = config.max_concurrent if config.max_concurrent is not None else float("inf")
        self.closed = False
        self._rr = 0
        self.disabled_reason = "" if self.upstreams else "no usable upstream"
        # counters for metrics: (to, rcode) -> count/sum are kept by the caller's metrics
        self.rejects = 0
        self.healthcheck_broken = 0
        self.healthcheck_failures: dict[str, int] = {}

    def matches(self, name: str) -> bool:
        return self._from(name) and (self._except is None or not self._except(name))

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

    def submit(self, packet: bytes, qend: int, tcp: bool, done: Done, observe: Observe | None = None) -> None:
        """Forward `packet` (its question ends at qend); `done(reply, error)` is called once with the
        upstream's reply (the asker's ID) or why every upstream failed. Raises Overloaded, or
        UpstreamError when forwarding is disabled, before anything is sent."""
        self.begin(Forwarding(packet, qend, tcp, done, observe))

    def begin(self, forwarding: Forwarding, now: float | None = None,
              loop: asyncio.AbstractEventLoop | None = None) -> None:
        """submit() of a record made by the caller: its `finish` is called once. Raises as submit(). `now`:
        time.perf_counter() when the caller just read it; `loop`: the running event loop, when it knows it."""
        if self.disabled_reason:
            raise UpstreamError(f"forwarding disabled: {self.disabled_reason}")
        cfg = self.config
        if self.inflight >= self._max_inflight:
            self.rejects += 1
            raise Overloaded(f"{self.inflight} queries in flight (max_concurrent {cfg.max_concurrent})")
        self.inflight += 1
        forwarding.tcp = cfg.force_tcp or (forwarding.tcp and not cfg.prefer_udp)
        forwarding.owner = self
        ups = self.upstreams
        forwarding.order = ups if len(ups) == 1 else self._order()
        forwarding.attempt(now, loop)

    async def forward(self, packet: bytes, tcp: bool, observe: Observe | None = None) -> bytes:
        """The upstream's reply. Raises Overloaded, or UpstreamError when every upstream failed."""
        try:
            qend = question_end(packet)
        except (IndexError, ValueError):
            raise UpstreamError("the query has no readable question") from None
        fut = asyncio.get_running_loop().create_future()
        self.submit(packet, qend, tcp, partial(_settle, fut), observe)
        return await fut

    def _failed(self, state: UpstreamState) -> None:
        state.fails += 1
        if self.closed:
            return  # replaced by a reload: no health checks for it
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

    @property
    def ignored_replies(self) -> dict[tuple[str, str], int]:
        """(upstream, reason) -> replies not taken (no waiting ID, wrong question, garbage)."""
        return {(s.upstream.name, reason): n for s in self.upstreams for reason, n in s.upstream.ignored.items()}

    def close(self) -> None:
        """Stop taking queries; those in flight still get their answers (Upstream.close)."""
        self.closed = True
        for state in self.upstreams:
            if state.checker is not None:
                state.checker.cancel()
            state.upstream.close()


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
