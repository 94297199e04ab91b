"""Ceiling responder: the least a Python DNS server on kdns's event loop can do per query.

    .venv/bin/python perf/ceiling.py --answers FILE [--listen 127.0.0.1:0] [--loop auto|asyncio|uvloop]
                                     [--forward 127.0.0.1:PORT]
    .venv/bin/python perf/ceiling.py --record FILE --from-port PORT QUERYFILE...   (ask a server once)

Serving: on the loop kdns uses (uvloop when installed, as kdns's `--loop auto`), reading the UDP
socket as kdns does (`--io reader`: recvfrom on readiness, the answers sent together, the faster of the two; `--io
transport`: an asyncio DatagramProtocol), replaying precomputed wire answers from a dict keyed by
the question bytes (QNAME + QTYPE + QCLASS), the query's ID patched in. No metrics, no parsing beyond the question;
a question it has no answer for is dropped (and counted, printed on exit) -- or, with --forward, sent
raw to that upstream with a new ID and its reply handed back (no cache, no metrics): the least a
forwarder on this loop does, measured on `forward-miss`. perf/run.py compares kdns at saturation with
it: what kdns's design costs over the event loop itself.

Recording: every distinct line of dnsperf-format query files is asked once of a server on
127.0.0.1 (kdns, so the answers are kdns's own, byte for byte); FILE then holds
(question, answer) pairs, each a 2-byte length and the bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loadgen import encode_question  # noqa: E402

HOST = "127.0.0.1"


def question_of(packet: bytes) -> bytes | None:
    """The question section's bytes (QNAME + QTYPE + QCLASS) of a one-question packet, else None."""
    if len(packet) < 17:
        return None
    i = 12
    while i < len(packet):
        n = packet[i]
        if n == 0:
            return packet[12:i + 5] if i + 5 <= len(packet) else None
        if n & 0xC0:
            return None
        i += n + 1
    return None


# ------------------------------------------------------------------------------------ recording


def distinct_questions(paths: list[str]) -> list[bytes]:
    seen: dict[bytes, None] = {}
    for path in paths:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if parts and not parts[0].startswith(";"):
                    seen[encode_question(parts[0], parts[1] if len(parts) > 1 else "A")] = None
    return list(seen)


def record(port: int, questions: list[bytes], window: int = 100, timeout: float = 2.0,
           rounds: int = 3) -> dict[bytes, bytes]:
    """Ask the server on 127.0.0.1:port each question (pipelined, `window` outstanding); questions
    without an answer are asked again, up to `rounds` times. Returns question -> answer."""
    answers: dict[bytes, bytes] = {}
    todo = list(questions)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.connect((HOST, port))
        for _ in range(rounds):
            if not todo:
                break
            pending: dict[int, bytes] = {}
            i = 0
            qid = 0
            while i < len(todo) or pending:
                while i < len(todo) and len(pending) < window:
                    qid = (qid + 1) & 0xFFFF
                    if qid in pending:
                        break
                    pending[qid] = todo[i]
                    s.send(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + todo[i])
                    i += 1
                ready, _, _ = select.select([s], [], [], timeout)
                if not ready:
                    break  # the rest of this round is lost; asked again next round
                data = s.recv(65535)
                q = pending.pop(struct.unpack_from("!H", data)[0], None) if len(data) >= 12 else None
                if q is not None and question_of(data) == q:
                    answers[q] = data
            todo = [q for q in todo if q not in answers]
    return answers


def save(path: str, answers: dict[bytes, bytes]) -> None:
    with open(path, "wb") as fh:
        for q, a in answers.items():
            fh.write(struct.pack("!H", len(q)) + q + struct.pack("!H", len(a)) + a)


def load(path: str) -> dict[bytes, bytes]:
    with open(path, "rb") as fh:
        blob = fh.read()
    out, i = {}, 0
    while i < len(blob):
        n = struct.unpack_from("!H", blob, i)[0]
        q = blob[i + 2:i + 2 + n]
        i += 2 + n
        m = struct.unpack_from("!H", blob, i)[0]
        out[q] = blob[i + 2:i + 2 + m]
        i += 2 + m
    return out


# ------------------------------------------------------------------------------------ serving


class Replay(asyncio.DatagramProtocol):
    def __init__(self, answers: dict[bytes, bytes]):
        self.answers = answers
        self.transport = None
        self.unknown = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        # a query without additional records (no EDNS) is header + question: the rest is the key
        answer = self.answers.get(data[12:] if data[10:12] == b"\0\0" else question_of(data))
        if answer is None:
            self.unknown += 1
            return
        self.transport.sendto(data[:2] + answer[2:], addr)


class ReplayReader:
    """The same replay, reading the socket itself: on readiness, recvfrom until it would block (64 at most),
    then the answers sent together, as kdns's UDPReader does."""

    def __init__(self, answers: dict[bytes, bytes], sock: socket.socket):
        self.answers = answers
        self.sock = sock
        self.unknown = 0

    def readable(self) -> None:
        recvfrom, answers = self.sock.recvfrom, self.answers
        out = []
        for _ in range(64):
            try:
                data, addr = recvfrom(65535)
            except BlockingIOError:
                break
            answer = answers.get(data[12:] if data[10:12] == b"\0\0" else question_of(data))
            if answer is None:
                self.unanswered(data, addr)
                continue
            out.append((data[:2] + answer[2:], addr))
        self.flush()
        self.send_all(out)

    def unanswered(self, data: bytes, addr) -> None:
        self.unknown += 1

    def flush(self) -> None:
        """After a wake-up's reads (ForwardReader: its queries go upstream)."""

    def send_all(self, out: list) -> None:
        sendto = self.sock.sendto
        for response, addr in out:
            try:
                sendto(response, addr)
            except OSError:
                pass


class ForwardReader(ReplayReader):
    """The replay, and a question it has no answer for forwarded raw to `upstream` (the least a forwarder on
    this loop does: a new ID, one connected socket, a dict of waiting queries; no cache, no metrics, no
    checks beyond the reply's ID): each wake-up's queries go upstream together after its reads, each
    wake-up's replies back to their clients likewise -- as kdns's reader and forwarder batch theirs."""

    def __init__(self, answers: dict[bytes, bytes], sock: socket.socket, upstream: tuple[str, int]):
        super().__init__(answers, sock)
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.connect(upstream)
        self.up.setblocking(False)
        self.waiting: dict[int, tuple[bytes, tuple]] = {}  # upstream ID -> (client ID, client address)
        self.queued: list[bytes] = []
        self.next_id = 0
        self.forwarded = 0

    def unanswered(self, data: bytes, addr) -> None:
        waiting = self.waiting
        if len(waiting) >= 60000:
            self.unknown += 1
            return
        qid = self.next_id = (self.next_id + 1) & 0xFFFF
        while qid in waiting:
            qid = self.next_id = (self.next_id + 1) & 0xFFFF
        waiting[qid] = (data[:2], addr)
        self.queued.append(struct.pack("!H", qid) + data[2:])

    def flush(self) -> None:
        send, queued, self.queued = self.up.send, self.queued, []
        for query in queued:
            try:
                send(query)
            except OSError:
                pass

    def upstream_readable(self) -> None:
        recv, waiting = self.up.recv, self.waiting
        out = []
        for _ in range(64):
            try:
                reply = recv(65535)
            except BlockingIOError:
                break
            except OSError:
                continue
            client = waiting.pop(reply[0] << 8 | reply[1], None) if len(reply) >= 12 else None
            if client is not None:
                out.append((client[0] + reply[2:], client[1]))
        self.forwarded += len(out)
        self.send_all(out)


async def serve(answers: dict[bytes, bytes], host: str, port: int, loop_name: str, io: str = "transport",
                forward: tuple[str, int] | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if io == "reader":
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        sock.setblocking(False)
        proto = ReplayReader(answers, sock) if forward is None else ForwardReader(answers, sock, forward)
        loop.add_reader(sock.fileno(), proto.readable)
        if forward is not None:
            loop.add_reader(proto.up.fileno(), proto.upstream_readable)
        bound = sock.getsockname()
        print(f"listening udp={bound[0]}:{bound[1]} answers={len(answers)} loop={loop_name}"
              + (f" forward={forward[0]}:{forward[1]}" if forward else ""), flush=True)
        await stop.wait()
        loop.remove_reader(sock.fileno())
        sock.close()
        if forward is not None:
            loop.remove_reader(proto.up.fileno())
            proto.up.close()
        print(f"stopped unknown_questions={proto.unknown}"
              + (f" forwarded={proto.forwarded}" if forward else ""), flush=True)
        return 0
    transport, proto = await loop.create_datagram_endpoint(lambda: Replay(answers), local_addr=(host, port))
    bound = transport.get_extra_info("sockname")
    print(f"listening udp={bound[0]}:{bound[1]} answers={len(answers)} loop={loop_name}", flush=True)
    await stop.wait()
    transport.close()
    print(f"stopped unknown_questions={proto.unknown}", flush=True)
    return 0


def runner(choice: str):
    """The event loop runner, chosen as kdns's --loop does (auto: uvloop when installed)."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
            return uvloop.run, "uvloop"
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed") from None
    return asyncio.run, "asyncio"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--answers", help="serve the (question, answer) pairs of this file")
    p.add_argument("--listen", default=f"{HOST}:0", help="loopback HOST:PORT (port 0: a free one)")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    p.add_argument("--io", choices=["transport", "reader"], default="reader",
                   help="transport: an asyncio DatagramProtocol; reader: recvfrom/sendto on readiness")
    p.add_argument("--forward", metavar="HOST:PORT", help="forward questions without an answer to this loopback "
                   "upstream (--io reader): the least a forwarder on this loop does, for `forward-miss`")
    p.add_argument("--record", metavar="FILE", help="ask --from-port once per distinct query, write FILE")
    p.add_argument("--from-port", type=int, help="port on 127.0.0.1 of the server to record from")
    p.add_argument("queries", nargs="*", help="dnsperf-format query files (with --record)")
    a = p.parse_args()
    if a.record:
        if not a.from_port or not a.queries:
            p.error("--record needs --from-port and query files")
        questions = distinct_questions(a.queries)
        answers = record(a.from_port, questions)
        save(a.record, answers)
        print(f"recorded {len(answers)} of {len(questions)} questions into {a.record}")
        return 0 if len(answers) == len(questions) else 1
    if not a.answers:
        p.error("--answers FILE (or --record) is required")
    host, _, port = a.listen.rpartition(":")
    if host not in ("127.0.0.1", "::1", "[::1]"):
        p.error("--listen: loopback only")
    forward = None
    if a.forward:
        fhost, _, fport = a.forward.rpartition(":")
        if not fhost.startswith("127.") or a.io != "reader":
            p.error("--forward: a 127.0.0.0/8 HOST:PORT, with --io reader")
        forward = (fhost, int(fport))
    run, name = runner(a.loop)
    return run(serve(load(a.answers), host.strip("[]"), int(port), name, a.io, forward))


if __name__ == "__main__":
    sys.exit(main())
