"""Fuzzing the packet parser and the whole in-process query path (QueryHandler.handle) with malformed
and mutated queries: truncated headers, label loops and forward pointers in compression, oversized
labels and names, qdcount 0 or > 1, bogus OPT records, every qtype and class, every flag.

Properties, for every input: handle() never raises; it returns None exactly for packets that must
be dropped (shorter than a header, or QR set); a response is a DNS message dnspython parses, with
QR set, the query's ID and opcode, the question echoed byte for byte, within 512 bytes over UDP
without EDNS (or the EDNS payload size); the stats account for it (dropped / formerr / notimp /
badvers move with what was answered, internal_errors stays 0); and a control query asked right
after still gets the right answer (no cache poisoning). A query dnspython reads as a plain query
gets the same answer as the same question asked cleanly (header junk, 0x20 case and extra records
do not change the answer).

Runs are reproducible (derandomize=True); the generators live in fuzz_dns.py and are shared with
perf/fuzz.py, which runs them much longer.
"""

from __future__ import annotations

import random
import struct

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fuzz_dns
from fuzz_dns import (CONTROL_NAME, GENERATOR_NAMES, GENERATORS, control_in_process, describe, example_handler,
                      fuzz_settings, handle_and_check, header, opt_rr, query, question_end, rr, wire_name)

@pytest.fixture(scope="module")
def handler():
    return example_handler()


def run_one(handler, msg: bytes, tcp: bool) -> bytes | None:
    """Send one input through handle() and check every property (fuzz_dns.handle_and_check)."""
    response, problem = handle_and_check(handler, msg, tcp)
    assert problem is None, problem
    return response


def control(handler, rng: random.Random | None = None) -> None:
    """The control query (plain, with EDNS, over TCP, mixed case) still answers correctly."""
    problem = control_in_process(handler, rng or random.Random(0))
    assert problem is None, problem


# ---------------------------------------------------------------- hand-written corpus: exact outcomes

GOOD = query(CONTROL_NAME)

CORPUS = {
    # name: (packet, expected rcode or None for "dropped")
    "empty": (b"", None),
    "one byte": (b"\x00", None),
    "11-byte header": (GOOD[:11], None),
    "header only, qdcount 1": (GOOD[:12], dns.rcode.FORMERR),
    "question cut in the name": (GOOD[:20], dns.rcode.FORMERR),
    "question without type/class": (GOOD[:-4], dns.rcode.FORMERR),
    "question without class": (GOOD[:-2], dns.rcode.FORMERR),
    "qdcount 0": (GOOD[:4] + b"\x00\x00" + GOOD[6:12], dns.rcode.FORMERR),
    "qdcount 0 with a question": (GOOD[:4] + b"\x00\x00" + GOOD[6:], dns.rcode.FORMERR),
    "qdcount 2, one question": (GOOD[:4] + b"\x00\x02" + GOOD[6:], dns.rcode.FORMERR),
    "qdcount 2, two questions": (GOOD[:4] + b"\x00\x02" + GOOD[6:] + GOOD[12:], dns.rcode.FORMERR),
    "qdcount 65535": (GOOD[:4] + b"\xff\xff" + GOOD[6:], dns.rcode.FORMERR),
    "QR set (a response)": (GOOD[:2] + bytes([GOOD[2] | 0x80]) + GOOD[3:], None),
    "pointer loop in the question": (header(1, 0x100) + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),
    "forward pointer in the question": (header(1, 0x100) + b"\x01a\xc0\x20\x00\x01\x00\x01" + b"\x00" * 20,
                                        dns.rcode.FORMERR),
    "pointer past the end in the question": (header(1, 0x100) + b"\xff\xff\x00\x01\x00\x01", dns.rcode.FORMERR),
    "label type 01": (header(1, 0x100) + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
    "label type 10 (EDNS0 extended label)": (header(1, 0x100) + b"\x81" + b"a" * 2 + b"\x00\x00\x01\x00\x01",
                                             dns.rcode.FORMERR),
    "label of 64 bytes": (header(1, 0x100) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
    "label runs past the end": (header(1, 0x100) + b"\x3fabc", dns.rcode.FORMERR),
    "name of 255 octets (the maximum)": (header(1, 0x100) + (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61
                                         + b"\x00\x00\x01\x00\x01", dns.rcode.REFUSED),
    "name of 300 octets": (header(1, 0x100) + (b"\x3f" + b"a" * 63) * 4 + b"\x2b" + b"b" * 43 + b"\x00\x00\x01\x00\x01",
                           dns.rcode.FORMERR),
    "128 labels": (header(1, 0x100) + b"\x01a" * 128 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
    "opcode IQUERY": (GOOD[:2] + bytes([GOOD[2] | (1 << 3)]) + GOOD[3:], dns.rcode.NOTIMP),
    "opcode STATUS": (GOOD[:2] + bytes([GOOD[2] | (2 << 3)]) + GOOD[3:], dns.rcode.NOTIMP),
    "opcode NOTIFY": (GOOD[:2] + bytes([GOOD[2] | (4 << 3)]) + GOOD[3:], dns.rcode.NOTIMP),
    "opcode UPDATE": (GOOD[:2] + bytes([GOOD[2] | (5 << 3)]) + GOOD[3:], dns.rcode.NOTIMP),
    "opcode 15": (GOOD[:2] + bytes([GOOD[2] | (15 << 3)]) + GOOD[3:], dns.rcode.NOTIMP),
    "two OPT records": (GOOD[:10] + b"\x00\x02" + GOOD[12:] + opt_rr() + opt_rr(), dns.rcode.FORMERR),
    "OPT with a non-root owner": (GOOD[:10] + b"\x00\x01" + GOOD[12:] + opt_rr(owner=wire_name("cluster.local")),
                                  dns.rcode.FORMERR),
    "OPT owner is a pointer loop": (GOOD[:10] + b"\x00\x01" + GOOD[12:] + b"\xc0" + bytes([len(GOOD)])
                                    + struct.pack("!HHIH", 41, 1232, 0, 0), dns.rcode.FORMERR),
    "OPT rdlength runs past the end": (GOOD[:10] + b"\x00\x01" + GOOD[12:] + opt_rr(rdlen=100), dns.rcode.FORMERR),
    "OPT header cut": (GOOD[:10] + b"\x00\x01" + GOOD[12:] + opt_rr()[:7], dns.rcode.FORMERR),
    "arcount 1, no record": (GOOD[:10] + b"\x00\x01" + GOOD[12:], dns.rcode.FORMERR),
    "EDNS version 1": (query(edns=True, version=1), dns.rcode.BADVERS),
    "EDNS version 255 with DO": (query(edns=True, version=255, do=True), dns.rcode.BADVERS),
    "EDNS payload 0": (query(edns=True, payload=0), dns.rcode.NOERROR),
    "EDNS payload 65535": (query(edns=True, payload=65535), dns.rcode.NOERROR),
    "OPT in the answer section": (GOOD[:6] + b"\x00\x01" + GOOD[8:] + opt_rr(), dns.rcode.NOERROR),
    "answer record with a pointer loop owner": (GOOD[:6] + b"\x00\x01" + GOOD[8:] + b"\xc0" + bytes([len(GOOD)])
                                                + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04",
                                                dns.rcode.NOERROR),
    "ancount 65535, no records": (GOOD[:6] + b"\xff\xff" + GOOD[8:], dns.rcode.FORMERR),
    "trailing junk": (GOOD + b"\xde\xad\xbe\xef", dns.rcode.NOERROR),
    "AXFR": (query("cluster.local", 252), dns.rcode.REFUSED),
    "IXFR": (query("cluster.local", 251), dns.rcode.REFUSED),
    "class CH": (query("version.bind", 16, 3), dns.rcode.REFUSED),
    "class NONE": (query(CONTROL_NAME, 1, 254), dns.rcode.REFUSED),
    "class 0": (query(CONTROL_NAME, 1, 0), dns.rcode.REFUSED),
    "class ANY": (query(CONTROL_NAME, 1, 255), dns.rcode.NOERROR),
    "qtype 0": (query(CONTROL_NAME, 0), dns.rcode.NOERROR),
    "qtype OPT": (query(CONTROL_NAME, 41), dns.rcode.NOERROR),
    "qtype ANY": (query(CONTROL_NAME, 255), dns.rcode.NOERROR),
    "qtype 65535": (query(CONTROL_NAME, 65535), dns.rcode.NOERROR),
    "root name": (query(""), dns.rcode.REFUSED),
    "NUL and dot inside labels": (header(1, 0x100) + b"\x03a\x00." + wire_name("shop.svc.cluster.local") + b"\x00\x01\x00\x01",
                                  dns.rcode.NXDOMAIN),
}


@pytest.mark.parametrize("name", list(CORPUS))
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_corpus(handler, name, tcp):
    msg, rcode = CORPUS[name]
    response = run_one(handler, msg, tcp)
    if rcode is None:
        assert response is None
    else:
        assert response is not None and dns.message.from_wire(response).rcode() == rcode, \
            dns.message.from_wire(response)
    control(handler)


# ---------------------------------------------------------------- the generators (shared with perf/fuzz.py)


@pytest.mark.parametrize("kind", GENERATOR_NAMES)
@fuzz_settings(80)
@given(rng=st.randoms(use_true_random=False), tcp=st.booleans())
def test_generated_packets(handler, kind, rng, tcp):
    msg = GENERATORS[kind](rng)
    run_one(handler, msg, tcp)
    control(handler, rng)


@fuzz_settings(400)
@given(data=st.binary(max_size=700), tcp=st.booleans())
def test_random_bytes(handler, data, tcp):
    run_one(handler, data, tcp)


@fuzz_settings(400)
@given(head=st.binary(min_size=12, max_size=12), body=st.binary(max_size=300), tcp=st.booleans())
def test_random_bytes_behind_a_header(handler, head, body, tcp):
    head = head[:2] + bytes([head[2] & 0x7F]) + head[3:]  # a query: QR clear
    run_one(handler, head + body, tcp)


# ---------------------------------------------------------------- structured: every qtype, class, flag and label


LABEL = st.one_of(
    st.sampled_from([b"kubernetes", b"default", b"svc", b"cluster", b"local", b"shop", b"api", b"db", b"db-0",
                     b"data", b"_http", b"_tcp", b"_udp", b"gateway", b"pod", b"10-244-1-7", b"dns-version",
                     b"in-addr", b"arpa", b"ip6", b"1", b"0", b"96", b"10", b"ns", b"dns", b"*", b"-", b"_"]),
    st.binary(min_size=1, max_size=63),
)
KNOWN_SUFFIXES = [[], [b"cluster", b"local"], [b"svc", b"cluster", b"local"], [b"shop", b"svc", b"cluster", b"local"],
                  [b"default", b"svc", b"cluster", b"local"], [b"in-addr", b"arpa"], [b"ip6", b"arpa"]]


@st.composite
def structured_queries(draw):
    labels = draw(st.lists(LABEL, max_size=6)) + draw(st.sampled_from(KNOWN_SUFFIXES))
    labels = [bytes(c ^ 0x20 if 97 <= (c | 0x20) <= 122 and draw(st.booleans()) else c for c in label)
              if draw(st.booleans()) else label for label in labels]
    name = b"".join(bytes([len(l)]) + l for l in labels) + b"\x00"
    qtype = draw(st.one_of(st.sampled_from(fuzz_dns.INTERESTING_QTYPES), st.integers(0, 65535)))
    qclass = draw(st.one_of(st.just(1), st.sampled_from(fuzz_dns.INTERESTING_CLASSES), st.integers(0, 65535)))
    flags = draw(st.integers(0, 0xFFFF)) & ~0x8000 & ~0x7800  # a standard query: any other header bits
    extra = draw(st.lists(st.tuples(st.integers(0, 1), st.sampled_from([1, 5, 16, 28, 255]),
                                    st.binary(max_size=20)), max_size=3))
    an = [rr(b"\x00", t, 1, 0, d) for s, t, d in extra if s == 0]
    ns = [rr(b"\xc0\x0c", t, 1, 0, d) for s, t, d in extra if s == 1]
    edns = draw(st.booleans())
    ar = b""
    if edns:
        ar = opt_rr(draw(st.sampled_from([0, 512, 1232, 4096, 65535]) | st.integers(0, 65535)), 0, draw(st.booleans()),
                    ext_rcode=draw(st.sampled_from([0, 0, 1])))
    msg = header(draw(st.integers(0, 65535)), flags, 1, len(an), len(ns), 1 if edns else 0)
    return msg + name + struct.pack("!HH", qtype, qclass) + b"".join(an) + b"".join(ns) + ar


def clean_twin(msg: bytes) -> bytes | None:
    """The same question asked cleanly (lower case, RD only, no extra records, same EDNS payload
    size and DO bit), as dnspython reads the question (fuzz_dns.query_opt the OPT); None if that is
    not one plain question of a standard query with at most an EDNS version 0 OPT."""
    try:
        parsed = dns.message.from_wire(msg, question_only=True)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error):
        return None
    opt = fuzz_dns.query_opt(msg)
    if len(parsed.question) != 1 or parsed.opcode() != dns.opcode.QUERY or (opt is not None and opt[1] != 0):
        return None
    question = parsed.question[0]
    out = header(parsed.id, 0x0100, 1, 0, 0, 1 if opt is not None else 0)
    out += question.name.canonicalize().to_wire() + struct.pack("!HH", question.rdtype, question.rdclass)
    if opt is not None:
        out += opt_rr(opt[0], 0, opt[2])
    return out


def _sections(response: bytes):
    """What an answer says, as text; SOA serials left out (each handler's index numbers its own)."""
    m = dns.message.from_wire(response)

    def text(section) -> list[str]:
        return sorted(f"{r.name} {r.ttl} {dns.rdatatype.to_text(r.rdtype)} "
                      f"{(rd.replace(serial=0) if r.rdtype == dns.rdatatype.SOA else rd).to_text()}".lower()
                      for r in section for rd in r)
    return (m.rcode(), bool(m.flags & dns.flags.AA), bool(m.flags & dns.flags.TC), m.edns,
            bool(m.ednsflags & dns.flags.DO), text(m.answer), text(m.authority), text(m.additional))


def _primers(twin: bytes) -> list[bytes]:
    """Variants of a clean query: without EDNS, with EDNS and the DO bit flipped, in upper case."""
    qend = question_end(twin)
    question = twin[12:qend]
    plain = header(0x5151, 0x0100, 1, 0, 0, 0) + question
    flipped = header(0x5152, 0x0100, 1, 0, 0, 1) + question + opt_rr(512, 0, not (twin[11] and twin[qend + 7] & 0x80))
    return [plain, flipped, twin[:12] + question[:-4].upper() + question[-4:] + twin[qend:]]


@pytest.fixture(scope="module")
def reference():
    """A second handler for the example cluster that only ever answers clean twins, from an empty cache."""
    return example_handler()


@fuzz_settings(1000)
@given(msg=structured_queries(), tcp=st.booleans())
def test_structured_queries_answer_like_their_clean_twin(handler, reference, msg, tcp):
    twin = clean_twin(msg)
    if twin is not None:
        # the same question asked first in ways whose answers differ from this one's (no EDNS, the
        # other DO bit, upper case): a cache key that confuses them serves this query a wrong answer
        for primer in _primers(twin):
            handler.handle(primer, tcp, ("127.0.0.1", 5353))
    response = run_one(handler, msg, tcp)
    if response is None or twin is None:
        return
    # the reference answers the twin from scratch: the fuzzed query's own cache entry (or one made by
    # an earlier query whose key it shares) is compared with a freshly resolved answer, never with itself
    reference.cache.clear()
    expected = reference.handle(twin, tcp, ("127.0.0.1", 5353))
    assert _sections(response) == _sections(expected), \
        f"header junk, 0x20 or extra records changed the answer:\n  {describe(msg)}\n  twin {describe(twin)}"
    control(handler)


@pytest.mark.parametrize("payload", [None, 0, 511, 512, 513, 1000, 1231, 1232, 1233, 1400, 4096])
@pytest.mark.parametrize("name", sorted(fuzz_dns.BIG_ENDPOINTS))
def test_a_big_answer_fits_the_payload_size_the_client_gave(handler, payload, name):
    """Over UDP a response never exceeds 512 bytes without EDNS, or the OPT's payload size (at least
    512, RFC 6891 6.2.5); what does not fit is truncated (TC), never cut mid-record."""
    msg = query(name, qid=payload or 7, edns=payload is not None, payload=payload or 0)
    full = run_one(handler, msg, tcp=True)  # over TCP nothing is cut: every address
    assert len(dns.message.from_wire(full).answer[0]) == fuzz_dns.BIG_ENDPOINTS[name]
    limit = 512 if payload is None else max(512, payload)
    for _ in range(2):  # resolved, then from the cache
        response = run_one(handler, msg, tcp=False)
        parsed = dns.message.from_wire(response)
        assert len(response) <= limit and bool(parsed.flags & dns.flags.TC) == (len(full) > limit), \
            (len(response), len(full), limit)
        assert (parsed.edns == 0) == (payload is not None)


def test_many_qtypes_and_classes(handler):
    """qtypes and classes 0..299 and every 97th value above (perf/fuzz.py asks all 65536 of each)."""
    values = list(range(300)) + list(range(300, 65536, 97)) + [65535]
    for value in values:
        run_one(handler, query(CONTROL_NAME, value, 1, qid=value), False)
        run_one(handler, query("api.shop.svc.cluster.local", 1, value, qid=value), True)
    control(handler)


# ---------------------------------------------------------------- bugs found by fuzzing (fail until fixed)


def test_bug_name_of_256_octets_is_formerr(handler):
    """BUG (fuzz): _read_name counts label bytes but not the root, so a 256-octet name (RFC 1035:
    at most 255) is accepted, and echoed in a response that dnspython (and other clients) reject."""
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3e" + b"b" * 62 + b"\x00"
    assert len(name) == 256
    msg = header(0x2d2d, 0x0100) + name + b"\x00\x01\x00\x01"
    response = handler.handle(msg, False)
    assert response is not None
    try:
        parsed = dns.message.from_wire(response)
    except dns.exception.DNSException as exc:
        pytest.fail(f"the answer to a 256-octet name is not parseable ({exc!r}): {describe(response)}")
    assert parsed.rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize("label", [b"x\x99", b"\x80", b"a\xad\xad", b"\xc2\x80"])
def test_bug_non_ascii_label_in_our_zone_is_not_an_internal_error(handler, label):
    """BUG (fuzz): a query for a name under cluster.local with a byte that IDNA rejects (0x80-0x9f,
    soft hyphen...) makes resolver._name -> dnslib.DNSLabel(str) raise UnicodeError: the client gets
    SERVFAIL instead of NXDOMAIN and every such packet logs an ERROR internal_error with a traceback."""
    msg = header(7, 0x0100) + bytes([len(label)]) + label + wire_name("shop.svc.cluster.local") + b"\x00\x01\x00\x01"
    before = handler.stats["internal_errors"]
    response = handler.handle(msg, False)
    assert handler.stats["internal_errors"] == before, handler.log.stream.getvalue()[-1500:]
    assert dns.message.from_wire(response).rcode() == dns.rcode.NXDOMAIN
