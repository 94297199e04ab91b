"""asyncio transports (UDP and TCP on one port) around the query handler (kdns/server.py)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from fcntl import ioctl
from functools import partial
from termios import FIONREAD
from typing import Awaitable

from .log import Logger
from .memory import TCP_READ_LIMIT
from .metrics import DURATION_BUCKETS
from .server import QueryHandler
from .wire import fast_key

COVERED = object()  # a backlog entry's mark: a name its negative cover's front answers (UDPReader._cover_answer)
EMPTY = bytes(4)  # FIONREAD's answer for a socket with nothing queued (the next datagram's size)


class UDPReader:
    """UDP on one socket, read by kdns itself when it is readable (a few dozen datagrams per wake-up).

    A query whose answer is cached goes out at once: a front answer (the exact query bytes seen
    before) with one dict lookup, any other cache hit through the handler's fast path. A never-seen
    name under a negative cover asked as one seen before but for its first label (CoverFront) is
    answered as cheaply, but from the backlog, as floods are made of such names. The rest --
    misses, forwarded names, anything logged or filtered -- wait in a bounded backlog answered
    DRAIN at a time between reads, so a cached answer never waits behind more than DRAIN misses
    however many unique names flood in. Over BACKLOG waiting, new misses are dropped and counted
    (as the kernel would drop them from a full socket buffer), never the cache hits."""

    READS = 64  # datagrams per wake-up at most, so the loop's other work keeps its turn
    DRAIN = 16
    BACKLOG = 1024

    def __init__(self, handler: QueryHandler, sock: socket.socket):
        self.handler = handler
        self.sock = sock
        family = 1 if sock.family == socket.AF_INET6 else 0
        self.front = handler.cache.fronts[family]
        self.timed = handler.timed_fronts[family]
        self.cover_front = handler.cache.cover_fronts[family]
        self.backlog: deque = deque()
        self._outbox: list = []  # forwarded answers to send this turn (_reply)
        self._reply_to = self._reply  # bound once, not once per forwarded query (nor per wake-up)
        self._scheduled = False
        self._closing = False
        self._loop = handler.reader_loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        handler = self.handler
        clock = time.perf_counter
        fronts, timed, covers = self.front, self.timed, self.cover_front
        reply = self._reply_to
        fast = handler.fast if handler.plain else None  # the handler's fast path, for what fronts do not answer
        asked = 0  # queries counted for the handler (count_udp), once after the reads
        out = []  # the answers of this wake-up, sent together after the reads (see below)
        # an answer's duration runs from the end of the wake-up's previous answer (or the wake-up) to its reply,
        # its read included; front answers one after another (a run) are timed together (_timed)
        run = []
        last = clock()
        for i in range(self.READS):
            # one datagram per wake-up is the rule below saturation: asking the queue's size costs a third
            # of the read that would fail (and raise) when it is empty
            if i == 1 and ioctl(self._fd, FIONREAD, EMPTY) == EMPTY:
                break
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error queued on the socket: the next read goes on
                handler._stats["udp_errors"] += 1
                continue
            raw = data[2:]
            front = fronts.get(raw)
            if front is None and timed:
                front = timed.get(raw)
                if front is not None and front.until <= handler.timed_clock():
                    front = None  # its second is over: the handler counts the TTLs down again
            if front is not None:
                out.append((data[:2] + front.tail, addr))
                front.n += 1
                run.append(front)
                continue
            if run:
                last = self._timed(run, last)
                run = []
            if covers and len(data) > 17 and 0 < data[12] < 64 and \
                    (front := covers.get(data[2:13] + data[13 + data[12]:])) is not None and \
                    (front.ns, data[13:13 + data[12]].lower().decode("latin-1")) not in front.index.views:
                # a never-seen name under a negative cover asked as one seen before (CoverFront): answered from
                # the backlog, after this wake-up's cached answers -- a flood of such names waits (or is
                # dropped) there, not in the socket's queue ahead of the hot names (a name with a service
                # goes on: its answer may be cached)
                if len(self.backlog) < self.BACKLOG:
                    self.backlog.append((data, addr, COVERED))
                else:
                    handler._stats["udp_backlog_dropped"] += 1
                last = clock()
                continue
            asked += 1
            response = fast(data, False, addr, reply, last) if fast is not None else None
            if type(response) is bytes:
                out.append((response, addr))
            elif response is True:
                pass  # gone upstream: answered from the forwarder's record (_reply)
            elif len(self.backlog) < self.BACKLOG:
                self.backlog.append((data, addr, response))
            else:
                handler._stats["udp_backlog_dropped"] += 1
            last = clock()
        if run:
            self._timed(run, last)
        if asked:
            handler.count_udp(asked)
        # sent as one burst: a client's first answer wakes it, the rest join its queue while it runs
        # (sent between reads, each answer could wake the client anew)
        self._send_all(out)
        if self.backlog and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _timed(self, run: list, start: float) -> float:
        """A run of front answers (counted in their fronts) ends: one clock reading for the run, not one per
        answer. Its time since `start` goes to the handler's front_seconds, shared out by count when the fronts
        are folded, while the run's mean is within the first duration bucket (where a front answer of a few
        microseconds belongs; exactly so when the whole run fits in it, as every answer then does). A slower
        run -- the process was paused in it -- counts each of its answers at once, at the run's mean. Returns
        the time read."""
        now = time.perf_counter()
        seconds = now - start
        n = len(run)
        handler = self.handler
        if seconds <= DURATION_BUCKETS[0] * n:
            handler.front_seconds += seconds
            handler.front_answers += n
        else:
            for front in run:
                front.n -= 1
                handler.front_hit(front, seconds / n)
        return now

    def _drain(self) -> None:
        self._scheduled = False
        backlog = self.backlog
        out = []
        for _ in range(min(self.DRAIN, len(backlog))):
            data, addr, fast = backlog.popleft()
            if fast is COVERED:
                response = self._cover_answer(data)
                if response is not None:
                    out.append((response, addr))
                    continue
                self.handler._stats["queries_udp"] += 1  # (counted with its front otherwise)
                fast = fast_key(data)
            try:
                result = self.handler.slow(data, False, addr, fast)
            except Exception as exc:  # noqa: BLE001 - slow() answers its own errors; this is a last resort
                self.handler._stats["internal_errors"] += 1
                self.handler.log.error("internal_error", error=repr(exc))
                continue
            if result is None:
                continue
            if isinstance(result, bytes):
                out.append((result, addr))
            elif isinstance(result, asyncio.Future):
                # a forwarded query, sent from a callback once its reply is in: callbacks run after the
                # loop's reads, so the answers of one turn go out together (sent one by one between reads,
                # each woke the client anew: 1.5x the CPU per forwarded query, measured with dnsperf)
                result.add_done_callback(partial(self._send_later, addr))
            else:
                asyncio.ensure_future(self._later(result, addr))
        self._send_all(out)  # together, as the reader sends its own
        if backlog and not self._scheduled and not self._closing:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _cover_answer(self, data: bytes) -> bytes | None:
        """The NXDOMAIN of a covered name from its CoverFront (counted there), if it still has one of the current
        index serial and the name still has no service; else None (the full path answers it)."""
        start = time.perf_counter()
        n = data[12]
        front = self.cover_front.get(data[2:13] + data[13 + n:])
        if front is None:
            return None
        index = front.index
        if front.serial != index.serial or not index.synced or \
                (front.ns, data[13:13 + n].lower().decode("latin-1")) in index.views:
            return None
        response = data[:2] + front.head + data[12:front.qend] + front.tail
        front.n += 1
        self._timed([front], start)
        return response

    def _send_all(self, out: list) -> None:
        """Send (response, address) pairs back to back."""
        sendto = self.sock.sendto
        for response, addr in out:
            try:
                sendto(response, addr)
            except OSError:  # a full send buffer, an unreachable client: that answer is lost, we go on
                self.handler._stats["udp_errors"] += 1

    def _reply(self, response: bytes, addr) -> None:
        """A forwarded answer from the forwarder's callback: sent with the others of this turn of the event
        loop once its callbacks have run (_flush), back to back (sent one by one between the work of
        making them, each woke the client anew: 1.5x the CPU per forwarded query, measured with dnsperf)."""
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append((response, addr))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if not self._closing:
            self._send_all(outbox)

    def _send_later(self, addr, result: asyncio.Future) -> None:
        if not result.cancelled() and not self._closing:
            response = result.result()
            if response is not None:
                self._send_all([(response, addr)])

    async def _later(self, pending: Awaitable, addr) -> None:
        response = await pending
        if response is not None and not self._closing:
            self._send_all([(response, addr)])

    # the parts of a DatagramTransport that kdns's listeners use
    def get_extra_info(self, name: str, default=None):
        if name == "sockname":
            return self.sock.getsockname()
        if name == "socket":
            return self.sock
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.backlog.clear()
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


class TCPServer:
    """DNS over TCP (RFC 7766): length-prefixed, pipelined, idle timeout, bounded connections."""

    def __init__(self, handler: QueryHandler, log: Logger, idle_timeout: float = 10.0, max_connections: int = 1000,
                 max_inflight: int = 64):
        self.handler = handler
        self.log = log
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_inflight = max_inflight  # forwarded queries pending per connection before we stop reading
        self.connections = 0
        self._tasks: set[asyncio.Task] = set()

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:
            self.handler._stats["tcp_rejected"] += 1
            writer.close()
            return
        self.connections += 1
        peer = writer.get_extra_info("peername")
        pending: set[asyncio.Task] = set()
        try:
            while True:
                if len(pending) >= self.max_inflight:  # back-pressure: stop reading until answers go out
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                try:
                    prefix = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                    size = struct.unpack("!H", prefix)[0]
                    data = await asyncio.wait_for(reader.readexactly(size), self.idle_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                result = self.handler.handle(data, True, peer)
                if result is None:
                    continue
                if isinstance(result, bytes):
                    if writer.is_closing():
                        return
                    writer.write(struct.pack("!H", len(result)) + result)
                else:
                    task = asyncio.ensure_future(self._later(result, writer))
                    self._tasks.add(task)
                    pending.add(task)
                    task.add_done_callback(self._tasks.discard)
                    task.add_done_callback(pending.discard)
                try:
                    # a client that never reads must not hold the connection: drain is bounded too
                    await asyncio.wait_for(writer.drain(), self.idle_timeout)
                except asyncio.TimeoutError:
                    _reset(writer.transport)
                    return
        except (ConnectionError, RuntimeError):  # uvloop raises RuntimeError on a closed transport
            return
        finally:
            self.connections -= 1
            transport = writer.transport
            if transport.get_write_buffer_size():
                # answers stuck in our buffer: close() would wait for a peer that does not read
                _reset(transport)
            else:
                writer.close()  # what the kernel still holds is flushed to the peer, then FIN

    async def _later(self, pending: Awaitable, writer: asyncio.StreamWriter) -> None:
        response = await pending
        if response is not None and not writer.is_closing():
            try:
                writer.write(struct.pack("!H", len(response)) + response)
            except (ConnectionError, RuntimeError):  # the client went away meanwhile
                pass


def _reset(transport) -> None:
    """Abort with an RST (SO_LINGER 0), dropping whatever is queued for the peer."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _sockets(host: str, port: int, reuse_port: bool = False) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on host:port. Host "" means every interface: one dual-stack IPv6
    socket when the system has IPv6, else 0.0.0.0."""
    if host in ("", "::"):
        try:
            return _bound(socket.AF_INET6, "::", port, dual=True, reuse_port=reuse_port)
        except OSError:
            if host == "::":
                raise
            return _bound(socket.AF_INET, "0.0.0.0", port, reuse_port=reuse_port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _bound(family, host, port, reuse_port=reuse_port)


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket; host "" is every interface (dual-stack when IPv6 exists)."""
    candidates = [(socket.AF_INET6, "::", True), (socket.AF_INET, "0.0.0.0", False)] if host in ("", "::") else \
        [(socket.AF_INET6 if ":" in host else socket.AF_INET, host, False)]
    last: OSError | None = None
    for family, addr, dual in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if host == "::":
                break
    raise last or OSError("could not bind")


def _bound(family: int, host: str, port: int, dual: bool = False,
           reuse_port: bool = False) -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        for sock in (udp, tcp):
            if dual:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if reuse_port:  # --workers: every worker binds the same port; the kernel spreads the load
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((host, port))
        tcp.bind((host, udp.getsockname()[1]))
        tcp.listen(1024)
        return udp, tcp
    except OSError:
        udp.close()
        tcp.close()
        raise


async def bind(handler: QueryHandler, log: Logger, host: str, port: int, attempts: int = 20,
               tcp_idle_timeout: float = 10.0, tcp_max_connections: int = 1000, reuse_port: bool = False):
    """Bind UDP and TCP on the same port (port 0: pick a free one both can use)."""
    last_error: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        try:
            udp_sock, tcp_sock = _sockets(host, port, reuse_port)
        except OSError as exc:
            last_error = exc
            continue
        bound_port = udp_sock.getsockname()[1]
        udp_transport = UDPReader(handler, udp_sock)
        tcp = TCPServer(handler, log, idle_timeout=tcp_idle_timeout, max_connections=tcp_max_connections)
        server = await asyncio.start_server(tcp.serve_client, sock=tcp_sock, limit=TCP_READ_LIMIT)
        return udp_transport, server, tcp, bound_port
    raise last_error or OSError("could not bind")
