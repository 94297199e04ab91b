"""Fuzz inputs for the DNS side: malformed and mutated queries, lying TCP streams, and the checks
every answer must pass. Shared by the test suite (tests/test_fuzz_wire.py, test_fuzz_server.py,
driven by hypothesis through `random.Random` instances) and perf/fuzz.py (longer seeded runs).

Every generator is `gen(rng: random.Random) -> bytes`, bounded in size (a UDP query is at most a
few KiB, a TCP stream at most ~70 KiB). `check_response` is the oracle: it uses dnspython (and
an RFC 1035 record walk where dnspython rejects a packet), never kdns's own parser.
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.rcode

from dnstcp import frame

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "cluster.yaml")

CONTROL_NAME = "kubernetes.default.svc.cluster.local"
CONTROL_ANSWER = ["10.96.0.1"]

# names the example cluster serves (and a few it does not), as asked by real clients
NAMES = [
    "kubernetes.default.svc.cluster.local", "api.shop.svc.cluster.local", "gateway.shop.svc.cluster.local",
    "_http._tcp.gateway.shop.svc.cluster.local", "db.data.svc.cluster.local", "db-0.db.data.svc.cluster.local",
    "_postgres._tcp.db.data.svc.cluster.local", "legacy-api.shop.svc.cluster.local",
    "payments.shop.svc.cluster.local", "1.0.96.10.in-addr.arpa", "10-244-1-7.shop.pod.cluster.local",
    "dns-version.cluster.local", "cluster.local", "svc.cluster.local", "shop.svc.cluster.local",
    "nope.shop.svc.cluster.local", "ns.dns.cluster.local", "example.com", "in-addr.arpa", "ip6.arpa",
    "8.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa", "",
    "big.shop.svc.cluster.local", "mid.shop.svc.cluster.local",
]
# example_handler adds these headless services: A answers of ~1,300 bytes (over 512 and 1232) and ~700
BIG_ENDPOINTS = {"big.shop.svc.cluster.local": 80, "mid.shop.svc.cluster.local": 40}

# every qtype is drawn from 0..65535; these get extra weight (meta types, OPT, zone transfers, TSIG...)
INTERESTING_QTYPES = [0, 1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 39, 41, 43, 46, 47, 48, 50, 52, 64, 65, 99,
                      249, 250, 251, 252, 253, 254, 255, 256, 257, 32768, 32769, 65280, 65534, 65535]
INTERESTING_CLASSES = [0, 1, 2, 3, 4, 254, 255, 256, 32769, 65535]

HEADER = struct.Struct("!HHHHHH")


# ------------------------------------------------------------------------------ building blocks


def wire_name(name: str, rng: random.Random | None = None) -> bytes:
    """Uncompressed wire name of a dotted name; with rng, letters get random case (0x20)."""
    out = b""
    for label in (name.encode().split(b".") if name else []):
        if not label:
            continue
        if rng is not None:
            label = bytes(c ^ 0x20 if 97 <= (c | 0x20) <= 122 and rng.random() < 0.5 else c for c in label)
        out += bytes([len(label)]) + label
    return out + b"\x00"


def header(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return HEADER.pack(qid & 0xFFFF, flags & 0xFFFF, qd & 0xFFFF, an & 0xFFFF, ns & 0xFFFF, ar & 0xFFFF)


def opt_rr(payload: int = 1232, version: int = 0, do: bool = False, ext_rcode: int = 0, rdata: bytes = b"",
           owner: bytes = b"\x00", rdlen: int | None = None) -> bytes:
    ttl = (ext_rcode << 24) | (version << 16) | (0x8000 if do else 0)
    return owner + struct.pack("!HHIH", 41, payload & 0xFFFF, ttl & 0xFFFFFFFF,
                               len(rdata) if rdlen is None else rdlen & 0xFFFF) + rdata


def rr(owner: bytes, rtype: int, rclass: int = 1, ttl: int = 0, rdata: bytes = b"", rdlen: int | None = None) -> bytes:
    return owner + struct.pack("!HHIH", rtype & 0xFFFF, rclass & 0xFFFF, ttl & 0xFFFFFFFF,
                               len(rdata) if rdlen is None else rdlen & 0xFFFF) + rdata


def query(name: str | bytes = CONTROL_NAME, qtype: int = 1, qclass: int = 1, qid: int = 0x4242, flags: int = 0x0100,
          edns: bool = False, payload: int = 1232, do: bool = False, version: int = 0) -> bytes:
    """A query; `name` is text, or bytes already in wire format."""
    qname = name if isinstance(name, bytes) else wire_name(name)
    out = header(qid, flags, 1, 0, 0, 1 if edns else 0) + qname + struct.pack("!HH", qtype, qclass)
    if edns:
        out += opt_rr(payload, version, do)
    return out


def pick_qtype(rng: random.Random) -> int:
    return rng.choice(INTERESTING_QTYPES) if rng.random() < 0.6 else rng.randrange(65536)


def pick_qclass(rng: random.Random) -> int:
    r = rng.random()
    return 1 if r < 0.6 else rng.choice(INTERESTING_CLASSES) if r < 0.85 else rng.randrange(65536)


def pick_name(rng: random.Random) -> bytes:
    return wire_name(rng.choice(NAMES), rng)


def valid_query(rng: random.Random) -> bytes:
    """A well-formed query: any known name (random case), any qtype and class, maybe EDNS with any size/DO."""
    edns = rng.random() < 0.5
    out = header(rng.randrange(65536), rng.choice([0, 0x0100, 0x0110, 0x0120]), 1, 0, 0, 1 if edns else 0)
    out += pick_name(rng) + struct.pack("!HH", pick_qtype(rng), pick_qclass(rng))
    if edns:
        out += opt_rr(rng.choice([0, 1, 511, 512, 513, 1232, 4096, 65535, rng.randrange(65536)]), 0,
                      rng.random() < 0.5)
    return out


# ------------------------------------------------------------------------------ malformations


def truncated(rng: random.Random) -> bytes:
    """A valid query cut anywhere, including inside the 12-byte header (and to nothing)."""
    q = valid_query(rng)
    return q[:rng.randrange(len(q))]


def bad_counts(rng: random.Random) -> bytes:
    """qdcount 0, 2 or huge; an/ns/ar counts that promise records that are (or are not) there."""
    q = bytearray(valid_query(rng))
    which = rng.randrange(4)
    q[4 + 2 * which:6 + 2 * which] = struct.pack("!H", rng.choice([0, 1, 2, 3, 255, 256, 65535, rng.randrange(65536)]))
    if which == 0 and rng.random() < 0.5:  # really carry a second question
        q += pick_name(rng) + struct.pack("!HH", pick_qtype(rng), pick_qclass(rng))
    return bytes(q)


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | (offset & 0x3FFF))


def compression(rng: random.Random) -> bytes:
    """Pointers where they must not be (the question), label loops, forward pointers, pointers past the end."""
    qid = rng.randrange(65536)
    kind = rng.randrange(6)
    if kind == 0:  # pointer loop in the question name (points at itself)
        return header(qid, 0x0100) + pointer(12) + struct.pack("!HH", 1, 1)
    if kind == 1:  # question name = label + forward pointer past the end
        return header(qid, 0x0100) + b"\x03www" + pointer(rng.choice([40, 200, 0x3FFF])) + struct.pack("!HH", 1, 1)
    q = query(rng.choice(NAMES), pick_qtype(rng), qid=qid)
    q = bytearray(q)
    q[11] = 1  # arcount 1: an OPT or another record whose owner is compressed
    if kind == 2:  # OPT owner is a pointer to itself (a loop)
        here = len(q)
        return bytes(q) + pointer(here) + struct.pack("!HHIH", 41, 1232, 0, 0)
    if kind == 3:  # a record whose owner is a pointer loop between two names
        here = len(q)
        return bytes(q) + b"\x01a" + pointer(here + 2) + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    if kind == 4:  # forward pointer into the record's own rdata
        here = len(q)
        return bytes(q) + pointer(here + 12) + struct.pack("!HHIH", 16, 1, 0, 3) + b"\x02hi"
    # chain of pointers, each to the one before, ending at the question name
    chain = b""
    prev = 12
    for _ in range(rng.randrange(1, 40)):
        here = len(q) + len(chain)
        chain += pointer(prev)
        prev = here
    q[11] = 0
    q[7] = 1  # ancount 1, owner = the last pointer of the chain
    return bytes(q) + chain + pointer(prev) + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x0a\x00\x00\x01"


def oversized(rng: random.Random) -> bytes:
    """Labels of 64..255 bytes (label types 01/10/11), names over 255 bytes, 127+ labels, empty labels."""
    qid = rng.randrange(65536)
    kind = rng.randrange(5)
    if kind == 0:
        n = rng.randrange(64, 256)
        name = bytes([n]) + b"x" * n + b"\x00"
    elif kind == 1:
        name = b"".join(b"\x3f" + b"a" * 63 for _ in range(rng.randrange(4, 6))) + b"\x00"
    elif kind == 2:
        name = b"\x01a" * rng.randrange(126, 140) + b"\x00"
    elif kind == 3:  # exactly at the 255-byte limit, then one over
        name = b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + bytes([61 + rng.randrange(2)])
        name += b"d" * name[-1] + b"\x00"
    else:  # a zero-length label in the middle is the end of the name: the rest is junk
        name = b"\x03abc\x00\x03def" + wire_name("svc.cluster.local")
    return header(qid, 0x0100) + name + struct.pack("!HH", pick_qtype(rng), pick_qclass(rng))


def bogus_opt(rng: random.Random) -> bytes:
    """Two OPTs, a non-root owner, version > 0, any payload size, lying rdlength, junk options, OPT in answers."""
    q = bytearray(query(rng.choice(NAMES), pick_qtype(rng), qid=rng.randrange(65536)))
    kind = rng.randrange(8)
    payload = rng.choice([0, 1, 511, 512, 1232, 4096, 65535])
    if kind == 0:
        q[11] = 2
        return bytes(q) + opt_rr(payload) + opt_rr(payload)
    q[11] = 1
    if kind == 1:
        return bytes(q) + opt_rr(payload, owner=wire_name("cluster.local"))
    if kind == 2:
        return bytes(q) + opt_rr(payload, version=rng.randrange(1, 256), do=rng.random() < 0.5)
    if kind == 3:
        return bytes(q) + opt_rr(payload, rdata=rng.randbytes(rng.randrange(0, 8)), rdlen=rng.randrange(65536))
    if kind == 4:  # options: ECS, cookie, padding, garbage
        opts = b"".join(struct.pack("!HH", code, len(data)) + data for code, data in (
            (8, b"\x00\x01\x18\x00\x0a\x00\x00"), (10, rng.randbytes(rng.choice([0, 7, 8, 16, 40]))),
            (12, b"\x00" * rng.randrange(0, 64)), (rng.randrange(65536), rng.randbytes(rng.randrange(0, 10)))))
        return bytes(q) + opt_rr(payload, do=True, rdata=opts)
    if kind == 5:  # ext rcode bits set in a query
        return bytes(q) + opt_rr(payload, ext_rcode=rng.randrange(1, 256))
    if kind == 6:  # OPT in the answer section
        q[11] = 0
        q[7] = 1
        return bytes(q) + opt_rr(payload)
    q[11] = rng.randrange(2, 6)  # arcount says more than there is
    return bytes(q) + opt_rr(payload)


def flags_soup(rng: random.Random) -> bytes:
    """Every header flag, opcode and rcode bit pattern on an otherwise valid query."""
    q = bytearray(valid_query(rng))
    flags = rng.randrange(65536)
    if rng.random() < 0.5:
        flags &= ~0x8000  # mostly queries: a response (QR) is dropped
    q[2:4] = struct.pack("!H", flags)
    return bytes(q)


def extra_records(rng: random.Random) -> bytes:
    """A query carrying answer/authority/additional records (valid ones, or with lying rdlength)."""
    q = bytearray(valid_query(rng))
    ar = struct.unpack_from("!H", q, 10)[0]
    opt = b""
    if ar:  # keep the OPT last
        opt_start = len(q) - 11
        opt = bytes(q[opt_start:])
        del q[opt_start:]
    records = []
    for _ in range(rng.randrange(1, 6)):
        owner = rng.choice([b"\x00", pointer(12), pick_name(rng)])
        rtype = rng.choice([1, 2, 5, 6, 16, 28, 41, 250, 255, rng.randrange(65536)])
        rdata = rng.randbytes(rng.randrange(0, 40))
        rdlen = None if rng.random() < 0.8 else rng.randrange(65536)
        records.append(rr(owner, rtype, pick_qclass(rng), rng.randrange(1 << 32), rdata, rdlen))
    counts = [0, 0, 0]
    for _ in records:
        counts[rng.randrange(3)] += 1
    q[6:12] = struct.pack("!HHH", counts[0], counts[1], counts[2] + (1 if opt else 0))
    return bytes(q) + b"".join(records) + opt


def mutated(rng: random.Random) -> bytes:
    """Byte-level mutation of a valid query: flips, inserts, deletes, overwrites, duplicated spans."""
    q = bytearray(rng.choice([valid_query, bogus_opt, extra_records])(rng))
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(q) + 1)
        if op == 0 and q:
            pos = min(pos, len(q) - 1)
            q[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            q[pos:pos] = bytes([rng.choice([0, 0x3F, 0x40, 0xC0, 0xFF, rng.randrange(256)])])
        elif op == 2 and q:
            del q[pos:pos + rng.randrange(1, 4)]
        elif op == 3 and q:
            pos = min(pos, len(q) - 1)
            q[pos] = rng.randrange(256)
        else:
            span = bytes(q[pos:pos + rng.randrange(1, 16)])
            q[pos:pos] = span
    return bytes(q)


def garbage(rng: random.Random) -> bytes:
    """Random bytes, sometimes behind a plausible header."""
    body = rng.randbytes(rng.randrange(0, 600)) if rng.random() < 0.9 else bytes(rng.randrange(0, 4000))
    if rng.random() < 0.5:
        return header(rng.randrange(65536), rng.randrange(0x8000), 1, 0, 0, 0) + body
    return body


def trailing_junk(rng: random.Random) -> bytes:
    """A valid query with bytes after its last record."""
    return valid_query(rng) + rng.randbytes(rng.randrange(1, 64))


def huge(rng: random.Random) -> bytes:
    """A big query (up to a few KiB over UDP): thousands of additional records or padding."""
    q = bytearray(query(rng.choice(NAMES), pick_qtype(rng), qid=rng.randrange(65536), edns=False))
    n = rng.randrange(100, 400)
    q[10:12] = struct.pack("!H", n)
    return bytes(q) + rr(b"\x00", 1, 1, 0, b"\x7f\x00\x00\x01") * n


GENERATORS = {
    "valid": valid_query, "truncated": truncated, "bad_counts": bad_counts, "compression": compression,
    "oversized": oversized, "bogus_opt": bogus_opt, "flags": flags_soup, "extra_records": extra_records,
    "mutated": mutated, "garbage": garbage, "trailing_junk": trailing_junk, "huge": huge,
}
GENERATOR_NAMES = sorted(GENERATORS)


def any_packet(rng: random.Random) -> bytes:
    return GENERATORS[rng.choice(GENERATOR_NAMES)](rng)


# ------------------------------------------------------------------------------ TCP streams


@dataclass
class Stream:
    """Bytes to write to one TCP connection, in chunks, and what the server must do with them."""

    kind: str
    chunks: list[bytes]
    frames: list[bytes] = field(default_factory=list)  # complete, honestly framed messages
    exact: bool = True  # False: after a lie, the rest is reinterpreted: count responses loosely
    half_close: bool = True  # shutdown(SHUT_WR) after the last chunk; else wait for the idle timeout
    reset: bool = False  # close with RST instead (SO_LINGER 0), reading nothing


def expects_answer(msg: bytes) -> bool:
    """README: a malformed packet gets FORMERR when its header is readable, and is dropped otherwise;
    responses (QR set) are never answered."""
    return len(msg) >= 12 and not msg[2] & 0x80


def tcp_stream(rng: random.Random) -> Stream:
    kind = rng.choice(["pipelined", "lie_long", "lie_short", "partial_prefix", "zero_prefix", "max_prefix",
                       "dribble", "garbage", "reset", "no_close"])
    msgs = [any_packet(rng) for _ in range(rng.randrange(1, 12 if kind != "pipelined" else 60))]
    msgs = [m[:65535] for m in msgs]
    honest = b"".join(frame(m) for m in msgs)
    if kind == "pipelined":
        return Stream(kind, _split(rng, honest), msgs)
    if kind == "lie_long":  # promises more than it sends, then half-closes (or goes idle)
        tail = rng.choice(msgs)
        claim = min(65535, len(tail) + rng.randrange(1, 1000))
        return Stream(kind, _split(rng, honest + struct.pack("!H", claim) + tail), msgs,
                      half_close=rng.random() < 0.5)
    if kind == "lie_short":  # promises less: the rest of the message is read as the next length prefix
        tail = rng.choice(msgs)
        claim = rng.randrange(0, max(1, len(tail)))
        return Stream(kind, _split(rng, honest + struct.pack("!H", claim) + tail), msgs, exact=False,
                      half_close=rng.random() < 0.5)
    if kind == "partial_prefix":
        return Stream(kind, [honest, b"\x00"], msgs, half_close=rng.random() < 0.5)
    if kind == "zero_prefix":
        return Stream(kind, _split(rng, b"\x00\x00" * rng.randrange(1, 20) + honest), msgs)
    if kind == "max_prefix":  # a 65535-byte message (a valid query padded with additional records)
        q = bytearray(query(rng.choice(NAMES), 1, qid=rng.randrange(65536)))
        pad = 65535 - len(q)
        n = pad // 15
        q[10:12] = struct.pack("!H", n)
        big = bytes(q) + rr(b"\x00", 1, 1, 0, b"\x7f\x00\x00\x01") * n
        big += b"\x00" * (65535 - len(big))  # trailing junk up to the maximum
        return Stream(kind, _split(rng, frame(big) + honest), [big] + msgs)
    if kind == "dribble":  # one byte at a time
        m = msgs[0]
        data = frame(m)
        return Stream(kind, [data[i:i + 1] for i in range(min(len(data), 80))] + [data[80:]] if len(data) > 80
                      else [data[i:i + 1] for i in range(len(data))], [m])
    if kind == "garbage":
        return Stream(kind, [rng.randbytes(rng.randrange(1, 3000))], [], exact=False, half_close=rng.random() < 0.5)
    if kind == "reset":
        return Stream(kind, _split(rng, honest), msgs, reset=True)
    return Stream("no_close", _split(rng, honest), msgs, half_close=False)


def _split(rng: random.Random, data: bytes) -> list[bytes]:
    """The same bytes written in 1..8 chunks (so prefixes and messages straddle segments)."""
    if len(data) < 2 or rng.random() < 0.4:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 8))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


# ------------------------------------------------------------------------------ the oracle


def edns_payload(msg: bytes) -> int | None:
    """The UDP payload size a query's OPT record allows (RFC 6891 6.2.5: never below 512), None
    without exactly one OPT of root owner."""
    opt = query_opt(msg)
    return max(512, opt[0]) if opt is not None else None


def query_opt(msg: bytes) -> tuple[int, int, bool] | None:
    """(payload size field, EDNS version, DO) of a query's one OPT record of root owner, else None.
    Read with dnspython; where dnspython rejects the packet for a reason of its own (a TSIG not
    last, bad rdata), by walking the records per RFC 1035 here: never with kdns's parser, whose
    misreadings this oracle must catch."""
    try:
        parsed = dns.message.from_wire(msg, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error):
        return _walk_for_opt(msg)
    return (parsed.payload, parsed.edns, bool(parsed.ednsflags & dns.flags.DO)) if parsed.edns >= 0 else None


def _walk_for_opt(msg: bytes) -> tuple[int, int, bool] | None:
    """RFC 1035 4.1: skip the questions and the answer/authority records, read the additional ones."""
    def name_end(pos: int) -> int:
        while True:
            n = msg[pos]
            if n & 0xC0 == 0xC0:
                return pos + 2
            if n & 0xC0:
                raise ValueError("label type")
            if n == 0:
                return pos + 1
            pos += 1 + n

    try:
        qd, an, ns, ar = struct.unpack_from("!HHHH", msg, 4)
        pos = 12
        for _ in range(qd):
            pos = name_end(pos) + 4
        opts = []
        for i in range(an + ns + ar):
            owner = pos
            pos = name_end(pos)
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", msg, pos)
            pos += 10 + rdlen
            if pos > len(msg):
                return None
            if i >= an + ns and rtype == 41:
                opts.append((rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000)) if msg[owner] == 0 else None)
    except (IndexError, ValueError, struct.error):
        return None
    return opts[0] if len(opts) == 1 else None


def question_end(msg: bytes) -> int | None:
    """Offset after the (single, uncompressed) question of msg, or None."""
    pos = 12
    while pos < len(msg):
        n = msg[pos]
        if n == 0:
            return pos + 5 if pos + 5 <= len(msg) else None
        if n & 0xC0:
            return None
        pos += 1 + n
    return None


def check_response(msg: bytes, response: bytes, tcp: bool) -> str | None:
    """Why `response` is not an acceptable answer to the query bytes `msg` (None if it is)."""
    if not expects_answer(msg):
        return f"answered a packet that must be dropped ({len(msg)} bytes, QR={bool(len(msg) > 2 and msg[2] & 0x80)})"
    try:
        parsed = dns.message.from_wire(response)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
        return f"response is not a parseable DNS message: {exc!r}"
    if not parsed.flags & dns.flags.QR:
        return "response without the QR bit"
    if response[:2] != msg[:2]:
        return f"response ID {response[:2].hex()} differs from the query's {msg[:2].hex()}"
    if (response[2] >> 3) & 0xF != (msg[2] >> 3) & 0xF:
        return "response opcode differs from the query's"
    payload = edns_payload(msg)
    limit = 65535 if tcp else (payload if payload is not None else 512)
    if len(response) > limit:
        return f"response of {len(response)} bytes over the {limit}-byte limit"
    if parsed.edns >= 0 and payload is None and parsed.rcode() not in (dns.rcode.FORMERR, dns.rcode.NOTIMP):
        return "response carries OPT but the query had no usable OPT"
    opcode = (msg[2] >> 3) & 0xF
    rcode = parsed.rcode()
    if opcode != 0 and rcode not in (dns.rcode.NOTIMP, dns.rcode.FORMERR):
        return f"opcode {opcode} answered {dns.rcode.to_text(rcode)}, not NOTIMP/FORMERR"
    if parsed.question:
        if len(parsed.question) != 1:
            return "response with more than one question"
        end = question_end(msg)
        if end is None or response[12:end] != msg[12:end]:
            return "response question is not the query's question echoed byte for byte"
        if rcode not in (dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.BADVERS):
            qclass = struct.unpack_from("!H", msg, end - 2)[0]
            qtype = struct.unpack_from("!H", msg, end - 4)[0]
            if qclass not in (1, 255) and rcode != dns.rcode.REFUSED:
                return f"class {qclass} answered {dns.rcode.to_text(rcode)}, not REFUSED"
            if qtype in (251, 252) and rcode != dns.rcode.REFUSED:
                return f"zone transfer type {qtype} answered {dns.rcode.to_text(rcode)}, not REFUSED"
    if parsed.answer and parsed.question and parsed.answer[0].name != parsed.question[0].name:
        return f"first answer owner {parsed.answer[0].name} is not the question name {parsed.question[0].name}"
    if parsed.flags & dns.flags.TC and (parsed.answer or parsed.authority):
        return "truncated response still carries records"
    return None


def control_ok(response: bytes | None, qid: bytes) -> str | None:
    """Why a response to the control query (CONTROL_NAME A) is wrong, or None."""
    if response is None:
        return "no answer to the control query"
    try:
        parsed = dns.message.from_wire(response)
    except dns.exception.DNSException as exc:
        return f"control answer unparseable: {exc!r}"
    got = sorted(rd.to_text() for rrset in parsed.answer for rd in rrset)
    if response[:2] != qid or parsed.rcode() != dns.rcode.NOERROR or got != CONTROL_ANSWER:
        return f"control answer wrong: rcode {dns.rcode.to_text(parsed.rcode())}, answers {got}"
    return None


def describe(data: bytes, limit: int = 400) -> str:
    """An input as a Python literal, for reproducers."""
    text = repr(data)
    return text if len(text) <= limit else text[:limit] + f"... ({len(data)} bytes)"


# ------------------------------------------------------------------------------ in-process: one input through QueryHandler


COUNTED = ("dropped", "formerr", "notimp", "badvers")


def example_handler():
    """A QueryHandler (one `.` block, no upstream) serving examples/cluster.yaml, as `kdns serve
    --manifests examples/cluster.yaml` does, plus the headless services BIG_ENDPOINTS (answers too big for UDP)."""
    from builders import handler_for
    from kdns.sources.manifests import parse_manifest_text
    with open(EXAMPLE, encoding="utf-8") as fh:
        objects, problems = parse_manifest_text(fh.read(), EXAMPLE)
    assert not problems, problems
    from builders import ep, eps, headless
    big = [obj for i, (name, count) in enumerate(BIG_ENDPOINTS.items()) for obj in (
        headless("shop", name.split(".")[0]),
        eps("shop", name.split(".")[0], *(ep(f"10.245.{i}.{n + 1}") for n in range(count))))]
    _, handler = handler_for(*(obj for obj, _ in objects), *big, implicit=True)
    return handler


def handle_and_check(handler, msg: bytes, tcp: bool) -> tuple[bytes | None, str | None]:
    """handle() one input and check every property: (response, why it is wrong or None)."""
    before = {k: handler.stats[k] for k in COUNTED + ("internal_errors", "queries_udp", "queries_tcp")}
    try:
        result = handler.handle(msg, tcp, ("127.0.0.1", 5353))
    except Exception as exc:  # noqa: BLE001
        return None, f"handle() raised {exc!r} for {describe(msg)}"
    if result is not None and not isinstance(result, bytes):
        return None, f"handle() returned {type(result).__name__} (no upstream is configured): {describe(msg)}"
    delta = {k: handler.stats[k] - v for k, v in before.items()}
    if delta["internal_errors"]:
        log = handler.log.stream.getvalue() if hasattr(handler.log.stream, "getvalue") else ""
        return result, f"internal error for {describe(msg)}: {log[-600:]}"
    if delta["queries_tcp" if tcp else "queries_udp"] != 1:
        return result, f"the query was not counted: {delta}"
    if result is None:
        if expects_answer(msg):
            return None, f"a query with a readable header was dropped: {describe(msg)}"
        if delta["dropped"] != 1:
            return None, f"dropped without being counted: {describe(msg)}"
        return None, None
    problem = check_response(msg, result, tcp)
    if problem:
        return result, f"{problem}\n  query:    {describe(msg)}\n  response: {describe(result)}"
    rcode = dns.message.from_wire(result).rcode()
    expected = {"formerr": int(rcode == dns.rcode.FORMERR), "notimp": int(rcode == dns.rcode.NOTIMP),
                "badvers": int(rcode == dns.rcode.BADVERS), "dropped": 0}
    if {k: delta[k] for k in expected} != expected:
        return result, f"stats {delta} do not account for a {dns.rcode.to_text(rcode)} answer to {describe(msg)}"
    return result, None


def control_in_process(handler, rng: random.Random) -> str | None:
    """The control query (plain or mixed case, with or without EDNS/DO, UDP or TCP) answers correctly."""
    name = wire_name(CONTROL_NAME, rng) if rng.random() < 0.5 else CONTROL_NAME
    msg = query(name, qid=rng.randrange(65536), edns=rng.random() < 0.5, do=rng.random() < 0.3)
    try:
        response = handler.handle(msg, rng.random() < 0.3)
    except Exception as exc:  # noqa: BLE001
        return f"control query raised {exc!r}"
    return control_ok(response if isinstance(response, bytes) else None, msg[:2])


def fuzz_settings(max_examples: int):
    """hypothesis settings for the suite's fuzz tests: reproducible (derandomize, no example
    database), no deadline, and no shrinking (a failure reports the generated input as it was; the
    minimal reproducers are the test_bug_* tests), so a failing run costs no more than a passing one.
    Health checks that catch a generator filtering or oversizing its inputs stay on."""
    from hypothesis import HealthCheck, Phase, settings
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate),
                    # generation speed depends on the machine's load: not a property of the generators
                    suppress_health_check=[HealthCheck.too_slow])
