"""Wire parsing and the packed-answer cache, through QueryHandler in-process (no sockets)."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from builders import clusterip, ep, eps, handler_for, headless, namespace, no_cover
from kdns.cache import AnswerCache
from kdns.wire import WireError, parse_query




def ask(handler, name, rdtype="A", **kwargs):
    msg = dns.message.make_query(name, rdtype, **kwargs)
    wire = handler.handle(msg.to_wire(), False)
    return dns.message.from_wire(wire)


def addresses(msg):
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


# ---------------------------------------------------------------- parse_query

def test_parse_plain_query():
    wire = dns.message.make_query("Kubernetes.default.svc.cluster.local", "AAAA", use_edns=0, payload=4096,
                                  want_dnssec=True).to_wire()
    q = parse_query(wire)
    assert q.labels == ("kubernetes", "default", "svc", "cluster", "local")
    assert q.qtype == 28 and q.qclass == 1 and q.edns and q.udp_size == 4096 and q.do
    assert q.qend == 12 + len(b"\x0aKubernetes\x07default\x03svc\x07cluster\x05local\x00") + 4


@pytest.mark.parametrize("packet,offset,reason", [
    (b"\x00\x01\x00", 3, "shorter than the 12-byte header"),
    (b"\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", 4, "question count is 0"),
    (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc", 12, "label of 5 bytes runs past the end"),
    (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", 12, "compression pointer"),
    (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x40abc\x00\x00\x01\x00\x01", 12, "unsupported label type"),
    (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01", 13, "question type/class missing"),
    (b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x00\x00\x01\x00\x01\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x09",
     26, "rdlength 9 runs past the end"),
])
def test_parse_errors_name_the_offset(packet, offset, reason):
    with pytest.raises(WireError) as err:
        parse_query(packet)
    assert err.value.offset == offset and reason in err.value.reason


def test_overlong_name_is_rejected():
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    with pytest.raises(WireError, match="longer than 255"):
        parse_query(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01")


def test_two_opt_records_are_formerr():
    opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"
    packet = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x01\x00\x01" + opt + opt
    with pytest.raises(WireError, match="more than one OPT"):
        parse_query(packet)


# ---------------------------------------------------------------- the cache and invalidation

def test_second_query_is_a_cache_hit_with_its_own_id():
    _, h = handler_for(namespace("ns"), clusterip("ns", "s", "10.0.0.1"))
    first = ask(h, "s.ns.svc.cluster.local")
    second = ask(h, "S.NS.svc.cluster.local")
    assert addresses(first) == addresses(second) == ["10.0.0.1"]
    assert h.cache.hits == 1 and h.cache.misses == 1
    assert str(second.question[0].name) == "S.NS.svc.cluster.local."


def test_every_index_change_is_seen_by_the_next_query():
    index, h = handler_for(namespace("ns"), clusterip("ns", "s", "10.0.0.1"), headless("ns", "h"),
                           eps("ns", "h", ep("10.1.0.1")))
    assert addresses(ask(h, "s.ns.svc.cluster.local")) == ["10.0.0.1"]
    assert addresses(ask(h, "h.ns.svc.cluster.local")) == ["10.1.0.1"]
    assert ask(h, "t.ns.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    index.upsert(clusterip("ns", "s", "10.0.0.2"))
    index.upsert(eps("ns", "h", ep("10.1.0.2")))
    index.upsert(clusterip("ns", "t", "10.0.0.3"))
    assert addresses(ask(h, "s.ns.svc.cluster.local")) == ["10.0.0.2"]
    assert addresses(ask(h, "h.ns.svc.cluster.local")) == ["10.1.0.2"]
    assert addresses(ask(h, "t.ns.svc.cluster.local")) == ["10.0.0.3"]
    index.delete("Service", "ns", "s")
    assert ask(h, "s.ns.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert addresses(ask(h, "3.0.0.10.in-addr.arpa", "PTR")) == ["t.ns.svc.cluster.local."]
    index.delete("Service", "ns", "t")
    assert ask(h, "3.0.0.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN


def test_unrelated_change_keeps_positive_entries_cached():
    index, h = handler_for(namespace("ns"), clusterip("ns", "s", "10.0.0.1"))
    ask(h, "s.ns.svc.cluster.local")
    index.upsert(clusterip("ns", "other", "10.0.0.9"))
    ask(h, "s.ns.svc.cluster.local")
    assert h.cache.hits == 1


def test_cache_eviction_is_bounded_and_drops_dependency_links():
    from kdns.cache import entry_cost
    cost = entry_cost("a", b"A", (("svc", "n", "a"),), {})
    cache = AnswerCache(max_bytes=4 * cost + cost // 2)  # room for four entries, not five
    for name in "abcde":
        cache.put(name, name.upper().encode(), [("svc", "n", name)])
    assert len(cache) == 4 and cache.peek("a") is None and cache.evictions == 1
    assert cache.links(("svc", "n", "a")) == frozenset()  # the evicted entry's link went with it
    assert cache.invalidate([("svc", "n", "b")]) == 1 and cache.get("b") is None and cache.get("c") == b"C"
    # "a" comes back depending on something else: the link from its evicted entry must be gone, or a
    # change to ("svc", "n", "a") would drop the new entry
    cache.put("a", b"A2", [("svc", "n", "x")])
    assert cache.invalidate([("svc", "n", "a")]) == 0 and cache.get("a") == b"A2"
    # and the links do not pile up: a long run of evictions leaves as many as the entries hold
    cache = AnswerCache(max_bytes=10 * entry_cost("k", b"K", (("svc", "n", "k"), ("ns", "n")), {}))
    for i in range(1000):
        cache.put(f"k{i}", b"K", [("svc", "n", f"k{i}"), ("ns", "n")])
        assert cache.bytes <= cache.max_bytes
    present = list(cache._entries)
    assert 5 <= len(present) <= 20 and "k999" in present and cache.evictions >= 980
    assert set(cache._by_dep) == {("svc", "n", k) for k in present} | {("ns", "n")}
    assert cache.links(("ns", "n")) == frozenset(present)


def test_cached_answer_for_external_name_chain_follows_the_target():
    from builders import external
    index, h = handler_for(namespace("ns"), clusterip("ns", "api", "10.0.0.1"),
                           external("ns", "alias", "api.ns.svc.cluster.local"))
    assert addresses(ask(h, "alias.ns.svc.cluster.local")) == ["10.0.0.1", "api.ns.svc.cluster.local."]
    index.upsert(clusterip("ns", "api", "10.0.0.2"))
    assert addresses(ask(h, "alias.ns.svc.cluster.local")) == ["10.0.0.2", "api.ns.svc.cluster.local."]


def test_formerr_reply_keeps_id_and_rd():
    _, h = handler_for(namespace("ns"))
    packet = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 2, 0, 0, 0)
    reply = dns.message.from_wire(h.handle(packet, False))
    assert reply.id == 0xBEEF and reply.rcode() == dns.rcode.FORMERR and reply.flags & dns.flags.RD
    assert h.stats["formerr"] == 1


def test_servfail_before_sync_is_not_cached():
    index, h = handler_for(namespace("ns"), synced=False)
    assert ask(h, "s.ns.svc.cluster.local").rcode() == dns.rcode.SERVFAIL
    index.mark_synced()
    assert ask(h, "s.ns.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_cache_hit_does_not_run_dnslib(monkeypatch):
    import kdns.pipeline
    _, h = handler_for(namespace("ns"), clusterip("ns", "s", "10.0.0.1"))
    assert addresses(ask(h, "s.ns.svc.cluster.local")) == ["10.0.0.1"]

    def boom(*a, **k):
        raise AssertionError("dnslib packing ran on a cache hit")
    monkeypatch.setattr(kdns.pipeline, "pack_answer", boom)
    monkeypatch.setattr(h.resolver, "resolve", boom)
    assert addresses(ask(h, "S.ns.svc.cluster.local")) == ["10.0.0.1"]


def test_a_resolver_bug_costs_one_servfail_and_is_logged(monkeypatch):
    _, h = handler_for(namespace("ns"), clusterip("ns", "s", "10.0.0.1"))

    def broken(*a, **k):
        raise KeyError("bug")
    monkeypatch.setattr(h.resolver, "resolve", broken)
    assert ask(h, "s.ns.svc.cluster.local").rcode() == dns.rcode.SERVFAIL
    assert h.stats["internal_errors"] == 1 and "internal_error" in h.log.stream.getvalue()
    monkeypatch.undo()
    assert addresses(ask(h, "s.ns.svc.cluster.local")) == ["10.0.0.1"]


@pytest.mark.parametrize("kwargs", [dict(use_edns=False), dict(use_edns=0), dict(use_edns=0, payload=4096),
                                    dict(use_edns=0, want_dnssec=True), dict(use_edns=0, payload=100)])
@pytest.mark.parametrize("name,rdtype", [("s.ns.svc.cluster.local", "A"), ("S.Ns.SVC.cluster.LOCAL", "SRV"),
                                         (".", "NS"), ("x" * 63 + ".test", "AAAA")])
def test_fast_key_and_the_full_parser_read_what_dnspython_wrote(name, rdtype, kwargs):
    """Both parsers against the query as dnspython built it: the cache key is (lower-cased wire
    name, qtype, qclass, EDNS present, DO); the question ends after the name and 4 bytes; the UDP
    limit is 512 without EDNS, else the payload size but never below 512 (RFC 6891 6.2.5)."""
    from kdns.wire import fast_key
    msg = dns.message.make_query(name, rdtype, **kwargs)
    wire = msg.to_wire()
    qname = msg.question[0].name.to_wire()
    edns = msg.edns >= 0
    expected_key = (qname.lower(), dns.rdatatype.from_text(rdtype), 1, edns, bool(msg.ednsflags & dns.flags.DO))
    expected_udp = max(512, msg.payload) if edns else 512
    key, qend, udp = fast_key(wire)
    q = parse_query(wire)
    assert (key, qend, udp) == (expected_key, 12 + len(qname) + 4, expected_udp)
    assert (q.key, q.qend, q.udp_size if q.edns else 512) == (expected_key, 12 + len(qname) + 4, expected_udp)


@pytest.mark.parametrize("mutate", [
    lambda w: w + b"\x00",  # trailing byte
    lambda w: w[:2] + bytes([w[2] | 0x80]) + w[3:],  # a response
    lambda w: w[:2] + bytes([w[2] | 0x28]) + w[3:],  # another opcode
    lambda w: w[:5] + b"\x02" + w[6:],  # two questions
    lambda w: w[:12] + b"\xc0\x0c" + w[-4:],  # a pointer in the question
])
def test_fast_key_leaves_unusual_packets_to_the_full_parser(mutate):
    from kdns.wire import fast_key
    assert fast_key(mutate(dns.message.make_query("s.ns.svc.cluster.local", "A", use_edns=False).to_wire())) is None


def test_fast_key_accepts_only_what_the_full_parser_reads_alike():
    """Damaged copies of ordinary queries (bytes changed, cut, added): whatever fast_key accepts, the full parser
    reads to the same key, question end and UDP size."""
    import random
    from kdns.wire import WireError, fast_key
    bases = [dns.message.make_query(name, rdtype, **kw).to_wire() for name, rdtype, kw in [
        ("n1x123456.outside.example", "A", dict(use_edns=False)), ("a.b", "AAAA", dict(use_edns=0, payload=4096)),
        ("kubernetes.default.svc.cluster.local", "SRV", dict(use_edns=0, want_dnssec=True)), (".", "NS", {})]]
    values = (0, 1, 2, 0x29, 63, 64, 0x80, 0xC0, 0xFF)
    damaged = [b[:i] for b in bases for i in range(len(b))] + \
        [b[:i] + bytes((v,)) + b[i + 1:] for b in bases for i in range(len(b)) for v in values]
    rnd = random.Random(7)
    for _ in range(20000):
        d = bytearray(rnd.choice(bases))
        for _ in range(rnd.randrange(1, 4)):
            op = rnd.random()
            if op < 0.6 and d:
                d[rnd.randrange(len(d))] = rnd.choice(values + (rnd.randrange(256),))
            elif op < 0.8 and d:
                del d[rnd.randrange(len(d)):]
            else:
                d += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 5)))
        damaged.append(bytes(d))
    accepted = 0
    for d in damaged:
        fast = fast_key(d)
        if fast is None:
            continue
        accepted += 1
        try:
            q = parse_query(d)
        except WireError as exc:
            raise AssertionError(f"fast_key accepted {d!r}, the full parser did not: {exc}") from None
        assert fast == (q.key, q.qend, q.udp_size if q.edns else 512), d
    assert accepted > 1000  # damage that leaves a query readable (an ID, a name's letter) keeps it on the fast path


def test_an_unrelated_change_keeps_cached_negative_answers():
    index, h = handler_for(namespace("ns"), clusterip("ns", "s", "10.0.0.1"))
    no_cover(h)  # the exact-key negative cache (tests/test_negative_cover.py: the cover)
    for _ in range(2):  # a negative answer is cached from its second asking (cache.seen_before)
        assert ask(h, "t.ns.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert len(h.cache) == 1
    index.upsert(clusterip("ns", "other", "10.0.0.9"))  # unrelated: the NXDOMAIN stays cached
    assert ask(h, "t.ns.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert h.cache.hits == 1
    index.upsert(clusterip("ns", "t", "10.0.0.3"))  # the name itself appears: never a stale NXDOMAIN
    assert addresses(ask(h, "t.ns.svc.cluster.local")) == ["10.0.0.3"]


def test_a_negative_answer_is_cached_from_its_second_asking():
    index, h = handler_for(namespace("ns"))
    no_cover(h)  # the exact-key negative cache (tests/test_negative_cover.py: the cover)
    for i in range(50):  # a flood of names asked once leaves nothing behind
        assert ask(h, f"r{i}.ns.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert len(h.cache) <= 1 and h.cache.not_admitted >= 49  # (one hash collision allowed)
    ask(h, "r7.ns.svc.cluster.local")
    assert h.cache.peek(parse_query(dns.message.make_query("r7.ns.svc.cluster.local", "A").to_wire()).key)
    assert ask(h, "r7.ns.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN and h.cache.hits == 1


def test_partial_reverse_names_follow_any_address_change():
    index, h = handler_for(namespace("ns"), clusterip("ns", "s", "10.0.0.1"))
    assert ask(h, "9.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN
    index.upsert(clusterip("ns", "t", "10.9.0.1"))
    reply = ask(h, "9.10.in-addr.arpa", "PTR")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer  # now an empty non-terminal


# ---------------------------------------------------------------- what a cached answer may not carry over

def _query(name="s.ns.svc.cluster.local", rdtype="A", rd=True, **kwargs) -> dns.message.Message:
    msg = dns.message.make_query(name, rdtype, **kwargs)
    if not rd:
        msg.flags &= ~dns.flags.RD
    return msg


@pytest.mark.parametrize("first,second", [
    (_query(use_edns=False), _query(use_edns=0)),
    (_query(use_edns=0), _query(use_edns=False)),
    (_query(use_edns=0), _query(use_edns=0, want_dnssec=True)),
    (_query(use_edns=0, want_dnssec=True), _query(use_edns=0)),
    (_query(rd=False), _query(rd=True)),
    (_query(rd=True), _query(rd=False)),
    (_query("S.NS.SVC.CLUSTER.LOCAL"), _query("s.Ns.sVc.cluster.local")),
    (_query(rdtype="AAAA"), _query(rdtype="A")),
    (_query(rdclass="ANY"), _query()),
], ids=["edns-after-plain", "plain-after-edns", "do-after-no-do", "no-do-after-do", "rd-after-no-rd",
        "no-rd-after-rd", "0x20-case", "a-after-aaaa", "in-after-any"])
def test_a_cached_answer_is_shaped_by_the_query_that_asks_for_it(first, second):
    """Literal expectations for a query asked after a similar one filled the cache: its own ID,
    its own question bytes (0x20 case), RD copied from it (RFC 1035 4.1.1), OPT only if it sent one
    (RFC 6891 7), DO copied from it (RFC 3225 3), and the address records of its own qtype."""
    _, h = handler_for(namespace("ns"), clusterip("ns", "s", "10.0.0.1", "fd00::1"))
    h.handle(first.to_wire(), False)
    wire = second.to_wire()
    raw = h.handle(wire, False)
    reply = dns.message.from_wire(raw)
    qend = 12 + len(second.question[0].name.to_wire()) + 4
    assert reply.id == second.id and raw[12:qend] == wire[12:qend]
    assert bool(reply.flags & dns.flags.RD) == bool(second.flags & dns.flags.RD)
    assert reply.edns == second.edns
    assert bool(reply.ednsflags & dns.flags.DO) == bool(second.ednsflags & dns.flags.DO)
    expected = {"A": ["10.0.0.1"], "AAAA": ["fd00::1"]}[dns.rdatatype.to_text(second.question[0].rdtype)]
    assert addresses(reply) == expected
