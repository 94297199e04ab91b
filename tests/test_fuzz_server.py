"""Fuzzing the live server: the real `kdns serve` on a loopback port gets malformed and mutated UDP
datagrams and TCP streams whose length prefixes lie (longer, shorter, partial, zero, 65535, one
byte at a time, reset mid-stream, pipelined by the dozen). After every input a control query must
still be answered correctly; every answer is checked (fuzz_dns.check_response); the server must
close every TCP connection by itself; at the end the process is alive, its counters account for
every datagram, and its log has no internal_error and no traceback.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_dns import (CONTROL_NAME, EXAMPLE, GENERATOR_NAMES, GENERATORS, Stream, example_handler, frame, fuzz_settings,
                      query, tcp_stream)
from fuzz_live import CLOSE_GRACE, LiveDns, Tally
from harness import KdnsProcess

IDLE = 1.5  # --tcp-idle-timeout: lying prefixes cost this long, not 10 s; dribbled bytes (1 ms apart) fit easily



@pytest.fixture(scope="module")
def server():
    with KdnsProcess("--manifests", EXAMPLE, "--tcp-idle-timeout", str(IDLE), "--metrics-listen", "127.0.0.1:0",
                     "--stats-interval", "1") as proc:
        client = LiveDns(proc.port, IDLE)
        yield proc, client
        client.close()


def _assert_ok(tally: Tally) -> None:
    assert tally.ok, "\n".join(tally.failures)


@pytest.mark.parametrize("kind", GENERATOR_NAMES)
@fuzz_settings(50)
@given(rng=st.randoms(use_true_random=False))
def test_udp_datagrams(server, kind, rng):
    _, client = server
    tally = Tally()
    client.udp_input(GENERATORS[kind](rng), tally)
    _assert_ok(tally)


def test_tcp_streams(server):
    """300 generated streams (20 at a time), each on its own connection, then control queries."""
    proc, client = server
    rng = random.Random(20261126)
    streams = [tcp_stream(rng) for _ in range(300)]
    tally = Tally()
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(lambda s: client.tcp_stream(s, tally), streams))
    client.control(tally, tcp=True)
    client.control(tally, tcp=False)
    _assert_ok(tally)
    assert tally.inputs == 300


@pytest.mark.parametrize("prefix, payload, half_close", [
    (b"\xff\xff", b"\x00" * 10, False),  # promises 65535, sends 10, waits
    (b"\xff\xff", b"\x00" * 10, True),  # ... then half-closes
    (b"\x00", b"", False),  # half a length prefix
    (b"\x00\x00", b"", False),  # an empty message, then silence
    (b"\x00\x05", b"\x00" * 5, True),  # shorter than a header: dropped, no answer
    (b"\x00\x0c", query(CONTROL_NAME)[:12], True),  # header only: FORMERR
], ids=["long-idle", "long-halfclose", "partial-prefix", "zero", "short-message", "header-only"])
def test_lying_prefixes_are_closed_in_time(server, prefix, payload, half_close):
    proc, client = server
    tally = Tally()
    frames = [payload] if len(prefix) == 2 and struct.unpack("!H", prefix)[0] == len(payload) else []
    client.tcp_stream(Stream("lie", [prefix + payload], frames, half_close=half_close), tally)
    client.control(tally, tcp=True)
    _assert_ok(tally)  # the server closed it by itself (fuzz_live.CLOSE_GRACE) and answered what was whole


def test_many_stalled_connections_do_not_block_others(server):
    """100 connections each holding half a message; the control query answers meanwhile, and every
    one of them is closed by the server after the idle timeout."""
    proc, client = server
    socks = []
    try:
        for i in range(100):
            s = socket.create_connection(("127.0.0.1", proc.port), timeout=3)
            s.sendall(b"\x00\x40" + query(CONTROL_NAME)[:20] if i % 2 else b"\x01")
            socks.append(s)
        tally = Tally()
        client.control(tally, tcp=True)
        client.control(tally, tcp=False)
        _assert_ok(tally)
        deadline = time.monotonic() + IDLE + CLOSE_GRACE
        for s in socks:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            assert s.recv(1) == b"", "the server kept a stalled connection open past its idle timeout"
    finally:
        for s in socks:
            s.close()


def test_pipelined_burst_is_answered_in_order(server):
    """500 valid queries in one write, read back as they come: 500 answers, IDs in order."""
    proc, client = server
    msgs = [query(CONTROL_NAME if i % 2 else "api.shop.svc.cluster.local", qid=i) for i in range(500)]
    tally = Tally()
    client.tcp_stream(Stream("pipelined", [b"".join(frame(m) for m in msgs)], msgs), tally)
    _assert_ok(tally)


def test_bug_client_that_never_reads_is_disconnected(server):
    """BUG (fuzz): a client that pipelines queries and never reads its answers holds the connection
    forever: TCPServer.serve_client blocks in `await writer.drain()`, which has no timeout, so
    --tcp-idle-timeout never applies (1000 such clients take every TCP slot). Expected: the server
    gives up on a peer that does not read for the idle timeout and aborts the connection."""
    proc, client = server
    q = frame(query(CONTROL_NAME))
    s = socket.create_connection(("127.0.0.1", proc.port), timeout=3)
    try:
        s.settimeout(0.2)
        blob, sent, started = q * 1000, 0, time.monotonic()
        try:
            while time.monotonic() - started < 5 and sent < 20_000_000:
                sent += s.send(blob)
        except (socket.timeout, BlockingIOError):
            pass  # both sides' buffers are full: the server is now stuck writing to us
        # The server first answers what the kernel buffers still absorb, then its writes block: the idle
        # timeout must then end the connection (bounded wait; the backlog takes longer on asyncio's loop)
        deadline = time.monotonic() + 30
        state = 1
        while time.monotonic() < deadline:
            state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
            if state != 1:
                break
            time.sleep(0.2)
        assert state != 1, (f"after {sent // len(q)} pipelined queries and 30 s without reading, the "
                            "connection is still ESTABLISHED (tcp-idle-timeout does not cover a blocked write)")
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def test_reset_mid_pipeline_is_not_an_error_with_uvloop():
    """Found by fuzzing (uvloop only): a client that pipelines queries and resets the connection can
    close the transport while answers to queries already read are still to be written; uvloop then
    rejects writer.write() with RuntimeError ('the handler is closed'), which escaped serve_client as
    'Unhandled exception in client_connected_cb'. Made deterministic here, in-process on uvloop: the
    transport of a real connection is reset and closed first, then serve_client is handed the three
    queries that had been read before the reset."""
    import uvloop

    from kdns.transport import TCPServer
    handler = example_handler()
    tcp = TCPServer(handler, handler.log, idle_timeout=5)
    outcome: dict = {}

    async def main() -> list:
        errors: list = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        finished = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.transport.abort()  # the reset
            try:
                await asyncio.wait_for(reader.read(), 10)  # returns once the transport is closed
            except ConnectionError:
                pass
            pipelined = asyncio.StreamReader()  # what had been read before the reset
            pipelined.feed_data(b"".join(frame(query(CONTROL_NAME, qid=i)) for i in range(3)))
            pipelined.feed_eof()
            try:
                await tcp.serve_client(pipelined, writer)
                outcome["returned"] = True
            except BaseException as exc:  # noqa: BLE001 - what the loop would report as unhandled
                outcome["raised"] = exc
            finally:
                finished.set()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        _, client = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            await asyncio.wait_for(finished.wait(), 20)
        finally:
            client.close()
            server.close()
            await server.wait_closed()
        return errors

    errors = uvloop.run(main())
    assert outcome == {"returned": True}, outcome
    assert not errors and tcp.connections == 0
    assert handler.stats["internal_errors"] == 0


def test_zz_server_survived_and_accounted(server):
    """Last in the module: the process is alive, every datagram was counted, nothing was an internal
    error, and the log holds no traceback."""
    proc, client = server
    tally = Tally()
    client.control(tally, tcp=False)
    client.control(tally, tcp=True)
    _assert_ok(tally)
    assert proc.proc.poll() is None, "kdns exited"
    assert proc.metric("kdns_queries_total", proto="udp") == client.udp_sent
    assert proc.metric("kdns_queries_total", proto="tcp") >= client.tcp_frames
    assert proc.metric("kdns_internal_errors_total") == 0
    log = "\n".join(proc.lines)
    assert "internal_error" not in log and "Traceback" not in log, log[-3000:]
    proc.wait_for_log(r"bad_packets ", timeout=15)  # summarised, not one line per packet
    assert sum("packet_dropped" in line or "packet_rejected" in line for line in proc.lines) == 0
