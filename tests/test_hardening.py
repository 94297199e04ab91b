"""Security and abuse: garbage upstreams, acl (open-resolver protection), negative-answer rate
limiting, TCP connection bounds, slow and lying TCP clients, zone transfers, ANY."""

from __future__ import annotations

import socket
import struct

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from dnstcp import frame, read_frame
from harness import EXAMPLE, KdnsProcess, answers, wait_until
from test_dropin import start
from upstream import FakeUpstream


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream({("example.com", "A"): ["93.184.215.14"]}) as up:
        yield up


def test_garbage_and_mismatched_upstream_replies_are_never_passed_on(upstream):
    with KdnsProcess("--manifests", EXAMPLE, "--upstream", upstream.address) as kdns:
        for name in ("x.junk", "x.mismatch"):
            reply = kdns.query(name)
            assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer, name
        kdns.wait_for_log(r"forward_failed name=x\.mismatch\. .*question does not match")
        assert answers(kdns.query("example.com")) == ["93.184.215.14"]


ACL = """.:53 {
    acl {
        drop net 192.0.2.0/24
        block type AXFR ANY
        filter type HINFO net 127.0.0.0/8
        allow net 127.0.0.0/8 ::1
        block
    }
    kubernetes cluster.local
    forward . UPSTREAM
}"""


def test_acl_first_matching_rule_wins_also_on_cached_answers(tmp_path, upstream):
    with start(tmp_path, ACL, upstream, "--manifests", EXAMPLE) as kdns:
        for _ in range(2):  # the second answer comes from the packed cache: the acl still applies
            assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
        assert answers(kdns.query("example.com")) == ["93.184.215.14"]
        assert kdns.query("kubernetes.default.svc.cluster.local", "ANY").rcode() == dns.rcode.REFUSED
        filtered = kdns.query("kubernetes.default.svc.cluster.local", "HINFO")
        assert filtered.rcode() == dns.rcode.NOERROR and not filtered.answer


def test_acl_refuses_clients_outside_the_allowed_networks(tmp_path, upstream):
    text = ACL.replace("allow net 127.0.0.0/8 ::1", "allow net 10.0.0.0/8")  # loopback is now "outside"
    with start(tmp_path, text, upstream, "--manifests", EXAMPLE) as kdns:
        before = upstream.count("example.com")
        assert kdns.query("example.com").rcode() == dns.rcode.REFUSED
        assert kdns.query("kubernetes.default.svc.cluster.local").rcode() == dns.rcode.REFUSED
        assert upstream.count("example.com") == before  # never forwarded: not an open resolver


def test_negative_answer_flood_is_rate_limited_per_source(upstream):
    with KdnsProcess("--manifests", EXAMPLE, "--negative-rate-limit", "20") as kdns:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            wire = dns.message.make_query("nope.default.svc.cluster.local", "A", use_edns=False).to_wire()
            for i in range(200):
                s.sendto(wire, ("127.0.0.1", kdns.port))
            # then a positive query (never limited): its answer comes after every answer to the flood
            marker = dns.message.make_query("kubernetes.default.svc.cluster.local", "A", use_edns=False)
            marker.id = (struct.unpack("!H", wire[:2])[0] + 1) & 0xFFFF
            s.sendto(marker.to_wire(), ("127.0.0.1", kdns.port))
            got, truncated = 0, 0
            while (data := s.recv(600))[:2] != marker.to_wire()[:2]:
                got += 1
                truncated += bool(data[2] & 0x02)
        assert 20 <= got < 200 and truncated > 0  # ~20 full answers, then half of the rest TC-slipped
        # positive answers are never limited
        for _ in range(50):
            assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
        # TCP is never limited (that is where the slipped clients go)
        assert kdns.query("nope.default.svc.cluster.local", tcp=True).rcode() == dns.rcode.NXDOMAIN


def test_tcp_connections_beyond_the_limit_are_refused_and_the_rest_are_served():
    # a long idle timeout: whatever closes a connection here is the limit, not idleness
    with KdnsProcess("--manifests", EXAMPLE, "--tcp-max-connections", "20", "--tcp-idle-timeout", "60") as kdns:
        conns = [socket.create_connection(("127.0.0.1", kdns.port), timeout=10) for _ in range(30)]
        try:
            # every TCP slot is taken: UDP still answers
            assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
            wire = dns.message.make_query("kubernetes.default.svc.cluster.local", "A").to_wire()
            served, refused = [], []
            for i, conn in enumerate(conns):
                try:
                    conn.sendall(frame(wire))
                    reply = dns.message.from_wire(read_frame(conn))
                except (EOFError, ConnectionResetError, BrokenPipeError):
                    refused.append(i)
                    continue
                assert answers(reply) == ["10.96.0.1"]
                served.append(i)
            # connections are taken in the order they were accepted: the first 20 are served
            assert served == list(range(20)) and refused == list(range(20, 30))
        finally:
            for conn in conns:
                conn.close()

        # the slots come free as kdns sees the closes (asynchronously): a new TCP client is served again
        def tcp_answers() -> bool:
            try:
                return answers(kdns.query("kubernetes.default.svc.cluster.local", tcp=True)) == ["10.96.0.1"]
            except (EOFError, ConnectionError):
                return False
        wait_until(tcp_answers, timeout=15, what="a TCP client served once the others closed")


def test_idle_and_slowloris_tcp_clients_are_cut_off_by_the_idle_timeout():
    with KdnsProcess("--manifests", EXAMPLE, "--tcp-idle-timeout", "1") as kdns:
        with socket.create_connection(("127.0.0.1", kdns.port), timeout=10) as idle, \
                socket.create_connection(("127.0.0.1", kdns.port), timeout=10) as slow:
            slow.sendall(b"\x00")  # a slowloris sender: one byte of the length, then nothing
            # the server closes both itself (a socket.timeout here, after 10 s, fails the test)
            assert idle.recv(1) == b""
            assert slow.recv(1) == b""
        assert kdns.query("kubernetes.default.svc.cluster.local", tcp=True).rcode() == dns.rcode.NOERROR


def test_oversized_and_zero_length_tcp_messages(upstream):
    with KdnsProcess("--manifests", EXAMPLE, "--tcp-idle-timeout", "1") as kdns:
        with socket.create_connection(("127.0.0.1", kdns.port), timeout=5) as s:
            good = dns.message.make_query("kubernetes.default.svc.cluster.local", "A").to_wire()
            # a zero-length message, a 300-byte message of junk, then a good query on the same stream
            s.sendall(b"\x00\x00" + struct.pack("!H", 300) + b"\x00" * 300 + struct.pack("!H", len(good)) + good)
            s.settimeout(10)
            replies = [dns.message.from_wire(read_frame(s)) for _ in range(2)]
            rcodes = sorted(r.rcode() for r in replies)
            assert rcodes == [dns.rcode.NOERROR, dns.rcode.FORMERR]
        assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]


def test_zone_transfers_refused_and_any_is_minimal():
    with KdnsProcess("--manifests", EXAMPLE) as kdns:
        for qtype in ("AXFR", "IXFR"):
            msg = dns.message.make_query("cluster.local", qtype)
            assert dns.query.tcp(msg, "127.0.0.1", port=kdns.port, timeout=3).rcode() == dns.rcode.REFUSED
        reply = kdns.query("api.shop.svc.cluster.local", "ANY")
        assert answers(reply) == ["10.96.200.20", "fd00:10:96::c8"]  # the addresses only (RFC 8482)
