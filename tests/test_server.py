"""Integration: the real `kdns serve` on a free loopback port, queried with dig and dnspython over UDP and TCP."""

from __future__ import annotations

import os
import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from harness import EXAMPLE, KdnsProcess, answers, wait_until
from dnstcp import read_frame



@pytest.fixture(scope="module")
def kdns():
    with KdnsProcess("--manifests", EXAMPLE, "--pods", "insecure", "--stats-interval", "0.5") as proc:
        yield proc


# ---------------------------------------------------------------- the README's dig examples, both transports

DIG_CASES = [
    ("kubernetes.default.svc.cluster.local", "A", ["10.96.0.1"]),
    ("api.shop.svc.cluster.local", "AAAA", ["fd00:10:96::c8"]),
    ("_http._tcp.gateway.shop.svc.cluster.local", "SRV", ["0 100 80 gateway.shop.svc.cluster.local."]),
    ("db.data.svc.cluster.local", "A", ["10.244.1.20", "10.244.2.21"]),
    ("db-0.db.data.svc.cluster.local", "A", ["10.244.1.20"]),
    ("_postgres._tcp.db.data.svc.cluster.local", "SRV", ["0 50 5432 db-0.db.data.svc.cluster.local.",
                                                         "0 50 5432 db-1.db.data.svc.cluster.local."]),
    ("payments.shop.svc.cluster.local", "A", ["payments.example.com."]),
    ("legacy-api.shop.svc.cluster.local", "A", ["10.96.200.20", "api.shop.svc.cluster.local."]),
    ("1.0.96.10.in-addr.arpa", "PTR", ["kubernetes.default.svc.cluster.local."]),
    ("10-244-1-7.shop.pod.cluster.local", "A", ["10.244.1.7"]),
    ("dns-version.cluster.local", "TXT", ['"1.1.0"']),
    ("cache.data.svc.cluster.local", "A", ["10.244.1.40", "10.244.2.41"]),
    ("db-2.db-peers.data.svc.cluster.local", "A", ["10.244.3.22"]),
]


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
@pytest.mark.parametrize("name,rdtype,expected", DIG_CASES)
def test_dig_answers(kdns, name, rdtype, expected, transport):
    out = kdns.dig(transport, "+short", name, rdtype)
    assert sorted(out.split("\n")[:-1]) == sorted(expected), out


@pytest.mark.parametrize("tcp", [False, True])
def test_nxdomain_and_nodata_carry_soa_and_aa(kdns, tcp):
    nx = kdns.query("nope.shop.svc.cluster.local", "A", tcp=tcp)
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA
    assert nx.authority[0].rdtype == dns.rdatatype.SOA and str(nx.authority[0].name) == "cluster.local."
    nodata = kdns.query("kubernetes.default.svc.cluster.local", "AAAA", tcp=tcp)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.flags & dns.flags.AA
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    headless_empty = kdns.query("search.shop.svc.cluster.local", "A", tcp=tcp)
    assert headless_empty.rcode() == dns.rcode.NXDOMAIN


def test_outside_names_are_refused_without_upstream(kdns):
    msg = kdns.query("example.com", "A")
    assert msg.rcode() == dns.rcode.REFUSED
    assert str(msg.question[0].name) == "example.com."


def test_0x20_mixed_case_is_echoed_and_answers_use_it(kdns):
    name = "KuBeRnEtEs.DeFaUlT.sVc.ClUsTeR.lOcAl."
    for tcp in (False, True):
        # ask twice: the second answer comes from the packed cache and must still echo the case
        for _ in range(2):
            msg = dns.message.make_query(name, "A")
            wire = msg.to_wire()
            if tcp:
                reply_wire = _tcp_raw(kdns.port, wire)
            else:
                reply_wire = _udp_raw(kdns.port, wire)
            assert b"\x0aKuBeRnEtEs\x07DeFaUlT\x03sVc\x07ClUsTeR\x05lOcAl\x00" in reply_wire
            reply = dns.message.from_wire(reply_wire)
            assert reply.id == msg.id
            assert str(reply.question[0].name) == name
            assert str(reply.answer[0].name) == name  # compressed pointer to the echoed question
            assert answers(reply) == ["10.96.0.1"]


def test_edns_is_echoed_and_absent_when_not_asked(kdns):
    with_edns = kdns.query("kubernetes.default.svc.cluster.local", "A", use_edns=0, payload=1232)
    assert with_edns.edns == 0 and with_edns.payload >= 512
    without = kdns.query("kubernetes.default.svc.cluster.local", "A", use_edns=False)
    assert without.edns == -1


def test_edns_do_bit_is_echoed(kdns):
    msg = kdns.query("kubernetes.default.svc.cluster.local", "A", use_edns=0, want_dnssec=True)
    assert msg.ednsflags & dns.flags.DO


def test_edns_version_1_gets_badvers(kdns):
    msg = dns.message.make_query("kubernetes.default.svc.cluster.local", "A", use_edns=1)
    reply = dns.message.from_wire(_udp_raw(kdns.port, msg.to_wire()))
    assert reply.rcode() == dns.rcode.BADVERS


def test_rd_bit_is_copied_from_the_query_even_on_cache_hits(kdns):
    for rd in (True, False, True):
        msg = dns.message.make_query("kubernetes.default.svc.cluster.local", "A")
        if not rd:
            msg.flags &= ~dns.flags.RD
        reply = dns.message.from_wire(_udp_raw(kdns.port, msg.to_wire()))
        assert bool(reply.flags & dns.flags.RD) == rd


def test_malformed_packets_get_formerr_or_are_dropped_and_server_keeps_serving(kdns):
    good = dns.message.make_query("kubernetes.default.svc.cluster.local", "A").to_wire()
    # readable header, broken question -> FORMERR with the same ID
    broken = good[:12] + b"\x3f" + b"a" * 5  # label length runs past the end
    reply = dns.message.from_wire(_udp_raw(kdns.port, broken))
    assert reply.rcode() == dns.rcode.FORMERR and reply.id == struct.unpack("!H", good[:2])[0]
    # two questions -> FORMERR
    two = good[:4] + b"\x00\x02" + good[6:] + good[12:]
    assert dns.message.from_wire(_udp_raw(kdns.port, two)).rcode() == dns.rcode.FORMERR
    # compression pointer loop in the question -> FORMERR
    loop = good[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    assert dns.message.from_wire(_udp_raw(kdns.port, loop)).rcode() == dns.rcode.FORMERR
    # shorter than a header, and a response packet: dropped (no reply). Each is followed on the same
    # socket by a good query with another ID: the first reply that arrives is the good query's
    for junk in (b"\x01\x02\x03", good[:2] + b"\x80" + good[3:]):
        marker = dns.message.make_query("kubernetes.default.svc.cluster.local", "A")
        marker.id = (struct.unpack("!H", good[:2])[0] + 1) & 0xFFFF
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(junk, ("127.0.0.1", kdns.port))
            s.sendto(marker.to_wire(), ("127.0.0.1", kdns.port))
            assert dns.message.from_wire(s.recv(65535)).id == marker.id, f"{junk!r} was answered"
    # opcode NOTIFY -> NOTIMP
    notify = good[:2] + bytes([good[2] | (4 << 3)]) + good[3:]
    assert dns.message.from_wire(_udp_raw(kdns.port, notify)).rcode() == dns.rcode.NOTIMP
    # and the server still answers
    assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]
    kdns.wait_for_log(r"bad_packets .*total_dropped=2", timeout=5)


def test_zone_transfer_and_chaos_class_refused(kdns):
    msg = dns.message.make_query("cluster.local", "AXFR")
    assert dns.message.from_wire(_tcp_raw(kdns.port, msg.to_wire())).rcode() == dns.rcode.REFUSED
    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert dns.message.from_wire(_udp_raw(kdns.port, chaos.to_wire())).rcode() == dns.rcode.REFUSED


def test_tcp_pipelined_queries_on_one_connection(kdns):
    names = ["kubernetes.default.svc.cluster.local", "api.shop.svc.cluster.local", "nope.shop.svc.cluster.local"]
    msgs = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection(("127.0.0.1", kdns.port), timeout=3) as s:
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in msgs)))
        replies = [dns.message.from_wire(read_frame(s)) for _ in msgs]
    by_id = {r.id: r for r in replies}
    assert answers(by_id[msgs[0].id]) == ["10.96.0.1"]
    assert answers(by_id[msgs[1].id]) == ["10.96.200.20"]
    assert by_id[msgs[2].id].rcode() == dns.rcode.NXDOMAIN


def test_tcp_lying_length_prefix_does_not_stall_other_clients(kdns):
    with socket.create_connection(("127.0.0.1", kdns.port), timeout=3) as s:
        s.sendall(b"\xff\xff" + b"\x00" * 10)  # promises 65535 bytes, sends 10
        assert answers(kdns.query("kubernetes.default.svc.cluster.local", tcp=True)) == ["10.96.0.1"]
        assert answers(kdns.query("kubernetes.default.svc.cluster.local")) == ["10.96.0.1"]


def _udp_raw(port: int, wire: bytes, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", port))
        return s.recvfrom(65535)[0]


def _tcp_raw(port: int, wire: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        return read_frame(s)


def test_idle_tcp_connections_are_closed(tmp_path):
    with KdnsProcess("--manifests", EXAMPLE, "--tcp-idle-timeout", "0.3") as proc:
        with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as s:
            wire = dns.message.make_query("kubernetes.default.svc.cluster.local", "A").to_wire()
            s.sendall(struct.pack("!H", len(wire)) + wire)
            assert answers(dns.message.from_wire(read_frame(s))) == ["10.96.0.1"]
            # then idle: the server closes its side (recv returns b"") well before our 5 s timeout
            assert s.recv(1) == b""


def test_json_log_format(tmp_path):
    import json
    with KdnsProcess("--manifests", EXAMPLE, "--log-format", "json") as proc:
        line = proc.wait_for_log(r'"event": "listening"')
        record = json.loads(line)
        assert record["level"] == "info" and record["udp"] == f"127.0.0.1:{proc.port}"


def test_workers_share_the_port_and_follow_the_parent():
    import signal as sig
    import subprocess
    with KdnsProcess("--manifests", EXAMPLE, "--workers", "2") as kdns:
        for worker in (0, 1):  # either may be first to listen: wait for both
            line = kdns.wait_for_log(rf"INFO listening .*worker={worker}")
            assert f"udp=127.0.0.1:{kdns.port}" in line  # both workers on one port (SO_REUSEPORT)
        child = int(subprocess.run(["pgrep", "-P", str(kdns.proc.pid)], capture_output=True,
                                   text=True).stdout.split()[0])
        # each worker answers on its own: with the other one stopped, queries from 32 source ports (the
        # kernel hashes them over both sockets) still get answers, and only the running worker can give them
        for stopped in (kdns.proc.pid, child):
            os.kill(stopped, sig.SIGSTOP)
            try:
                assert _answered_from_many_ports(kdns.port, 32), f"no answer with pid {stopped} stopped (parent {kdns.proc.pid}, worker {child})"
            finally:
                os.kill(stopped, sig.SIGCONT)
        assert kdns.stop(sig.SIGTERM) == 0
    # the worker follows its parent out: waiting for its exit is waiting on a condition, not a time
    wait_until(lambda: not os.path.exists(f"/proc/{child}") or _zombie(child), timeout=20,
               what="worker exits after the parent")


def _answered_from_many_ports(port: int, count: int, timeout: float = 10.0) -> int:
    """Send one query from each of `count` sockets (distinct source ports); wait (up to `timeout`)
    for the first correct answer on any of them: 1 if one came, else 0."""
    import select
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        wire = dns.message.make_query("kubernetes.default.svc.cluster.local", "A").to_wire()
        for s in socks:
            s.sendto(wire, ("127.0.0.1", port))
        readable, _, _ = select.select(socks, [], [], timeout)
        return int(any(answers(dns.message.from_wire(s.recv(65535))) == ["10.96.0.1"] for s in readable))
    finally:
        for s in socks:
            s.close()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
