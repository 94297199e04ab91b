"""Drive a running kdns (loopback only) with fuzz inputs: raw UDP datagrams and raw TCP streams, a
control query after each input, every answer checked (fuzz_dns.check_response). Used by
tests/test_fuzz_server.py and perf/fuzz.py.
"""

from __future__ import annotations

import itertools
import random
import socket
import struct
import time
from dataclasses import dataclass, field

import dns.exception
import dns.message

from dnstcp import read_frame, split_frames
from fuzz_dns import (CONTROL_NAME, Stream, check_response, control_ok, describe, expects_answer, query)

MAX_UDP = 65507
CLOSE_GRACE = 10.0  # seconds past the idle timeout before a connection the server left open is a hang


@dataclass
class Tally:
    """What one target saw; `failures` keeps reproducers (bounded)."""

    inputs: int = 0
    crashes: int = 0  # the process died, or answered something unparseable / wrong for the input
    hangs: int = 0  # no control answer in time, or a connection the server never closed
    control_failures: int = 0
    max_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def fail(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.failures) < 20:
            self.failures.append(f"[{kind}] {text}")

    @property
    def ok(self) -> bool:
        return not (self.crashes or self.hangs or self.control_failures)


class LiveDns:
    """A fuzzing client for one kdns listening on 127.0.0.1:port."""

    def __init__(self, port: int, idle_timeout: float, host: str = "127.0.0.1", control_timeout: float = 10.0):
        self.addr = (host, port)
        self.idle_timeout = idle_timeout
        self.control_timeout = control_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.udp.connect(self.addr)
        self.udp_sent = 0  # datagrams sent (fuzz + control): the server must count exactly these
        self.tcp_frames = 0  # complete, honestly framed TCP messages sent (a lower bound of what it counts)
        self._ids = itertools.count(random.Random(0).randrange(65536))

    def close(self) -> None:
        self.udp.close()

    # ------------------------------------------------------------------ UDP

    def udp_input(self, msg: bytes, tally: Tally) -> None:
        """Send one datagram, then a control query; check what comes back for both."""
        msg = msg[:MAX_UDP]
        tally.inputs += 1
        started = time.perf_counter()
        self.udp.send(msg)
        self.udp_sent += 1
        cid = next(self._ids) & 0xFFFF
        if len(msg) >= 2 and struct.unpack_from("!H", msg)[0] == cid:
            cid = (cid + 1) & 0xFFFF
        ctl = query(CONTROL_NAME, qid=cid)
        self.udp.send(ctl)
        self.udp_sent += 1
        replies: list[bytes] = []
        control_reply = None
        deadline = time.monotonic() + self.control_timeout
        while control_reply is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.udp.settimeout(left)
            try:
                data = self.udp.recv(65535)
            except socket.timeout:
                break
            except ConnectionRefusedError:  # ICMP port unreachable: nobody listens any more
                tally.fail("crashes", f"UDP port unreachable after {describe(msg)}")
                return
            if data[:2] == ctl[:2] and data[12:len(ctl)] == ctl[12:]:
                control_reply = data
            else:
                replies.append(data)
        elapsed = time.perf_counter() - started
        tally.max_seconds = max(tally.max_seconds, elapsed)
        if control_reply is None:
            tally.fail("hangs", f"no control answer within {self.control_timeout}s after {describe(msg)}")
            return
        # kdns answers cached names (the control) ahead of queries it must work out, so the input's
        # answer may come after the control's: a barrier -- a name never asked, so never cached -- is
        # answered after every query that was waiting when it came (kdns's backlog is first in, first out)
        bid = (cid + 1) & 0xFFFF
        if len(msg) >= 2 and struct.unpack_from("!H", msg)[0] == bid:
            bid = (bid + 1) & 0xFFFF
        barrier = query(f"barrier-{next(self._ids)}.default.svc.cluster.local", qid=bid)
        self.udp.send(barrier)
        self.udp_sent += 1
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                tally.fail("hangs", f"no answer to the barrier query within {self.control_timeout}s after "
                           f"{describe(msg)}")
                return
            self.udp.settimeout(left)
            try:
                data = self.udp.recv(65535)
            except socket.timeout:
                continue
            if data[:2] == barrier[:2] and data[12:len(barrier)] == barrier[12:]:
                break
            replies.append(data)
        problem = control_ok(control_reply, ctl[:2])
        if problem:
            tally.fail("control_failures", f"{problem} after {describe(msg)}")
        stale = [r for r in replies if r[:2] != msg[:2] or len(msg) < 2]
        mine = [r for r in replies if r not in stale]
        expected = 1 if expects_answer(msg) else 0
        if len(mine) != expected:
            tally.fail("crashes", f"{len(mine)} answers (expected {expected}) to {describe(msg)}")
        for reply in mine[:1]:
            problem = check_response(msg, reply, tcp=False)
            if problem:
                tally.fail("crashes", f"{problem}; query {describe(msg)} answer {describe(reply)}")

    def control(self, tally: Tally, tcp: bool) -> None:
        """One control query on its own (TCP: a fresh connection)."""
        cid = next(self._ids) & 0xFFFF
        ctl = query(CONTROL_NAME, qid=cid)
        started = time.perf_counter()
        try:
            if tcp:
                with socket.create_connection(self.addr, timeout=self.control_timeout) as s:
                    s.sendall(struct.pack("!H", len(ctl)) + ctl)
                    reply = read_frame(s)
            else:
                self.udp.settimeout(self.control_timeout)
                self.udp.send(ctl)
                self.udp_sent += 1
                while True:
                    reply = self.udp.recv(65535)
                    if reply[:2] == ctl[:2]:
                        break
        except (OSError, EOFError) as exc:
            tally.fail("control_failures", f"control query over {'TCP' if tcp else 'UDP'} failed: {exc!r}")
            return
        tally.max_seconds = max(tally.max_seconds, time.perf_counter() - started)
        problem = control_ok(reply, ctl[:2])
        if problem:
            tally.fail("control_failures", problem)

    # ------------------------------------------------------------------ TCP

    def _outlasted_idle(self, stream: Stream, started: float) -> bool:
        """Writing this dribbled stream took longer than the server's idle timeout, which then applies."""
        return stream.kind == "dribble" and time.perf_counter() - started >= self.idle_timeout

    def tcp_stream(self, stream: Stream, tally: Tally, dribble_delay: float = 0.001) -> None:
        """Write one stream to a fresh connection; read and check every answer; the server must
        close the connection by itself (EOF after our half-close, or its idle timeout)."""
        tally.inputs += 1
        started = time.perf_counter()
        what = f"{stream.kind} stream {describe(b''.join(stream.chunks), 200)}"
        try:
            sock = socket.create_connection(self.addr, timeout=self.control_timeout)
        except OSError as exc:
            tally.fail("crashes", f"cannot connect: {exc!r} ({what})")
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for chunk in stream.chunks:
                    sock.sendall(chunk)
                    if stream.kind == "dribble":
                        time.sleep(dribble_delay)
            except OSError as exc:
                if not stream.exact:  # the server may close on garbage while we still write
                    return
                if self._outlasted_idle(stream, started):
                    return  # the message took longer than the idle timeout to arrive: cut off, as documented
                tally.fail("crashes", f"write failed: {exc!r} ({what})")
                return
            # a dribble slower than the idle timeout (a loaded machine) may be cut off before it is whole
            cut = self._outlasted_idle(stream, started)
            self.tcp_frames += len(stream.frames) if stream.exact and not cut else 0
            if stream.reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if stream.half_close:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:  # the server already closed (garbage, a lie it saw through): nothing to half-close
                    pass
            deadline = time.monotonic() + self.idle_timeout + CLOSE_GRACE
            replies, closed, partial = _read_until_eof(sock, deadline)
        finally:
            sock.close()
        tally.max_seconds = max(tally.max_seconds, time.perf_counter() - started)
        if not closed:
            tally.fail("hangs", f"server kept the connection open {self.idle_timeout + CLOSE_GRACE:.1f}s after the last "
                                f"byte ({what})")
        if partial:
            tally.fail("crashes", f"connection closed in the middle of a response frame ({what})")
        if stream.exact and not cut:
            wanted = [m for m in stream.frames if expects_answer(m)]
            if len(replies) != len(wanted):
                tally.fail("crashes", f"{len(replies)} answers to {len(wanted)} answerable messages ({what})")
            for msg, reply in zip(wanted, replies):
                problem = check_response(msg, reply, tcp=True)
                if problem:
                    tally.fail("crashes", f"{problem}; query {describe(msg)} answer {describe(reply)}")
        else:
            for reply in replies:
                try:
                    parsed = dns.message.from_wire(reply)
                except dns.exception.DNSException as exc:
                    tally.fail("crashes", f"unparseable answer {describe(reply)}: {exc!r} ({what})")
                    continue
                if not parsed.flags & 0x8000:
                    tally.fail("crashes", f"answer without QR {describe(reply)} ({what})")


def _read_until_eof(sock: socket.socket, deadline: float) -> tuple[list[bytes], bool, bool]:
    """(response frames, whether the server closed, whether a frame was cut short)."""
    buf = b""
    closed = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
    frames, rest = split_frames(buf)
    return frames, closed, rest != b""
