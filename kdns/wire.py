"""DNS wire format on the hot path: struct parse of header + question + OPT, packing, ID/question patching, truncation.

dnslib is used only to build a response on a cache miss (`pack_answer`); a cache hit never touches it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import A, AAAA, CNAME, EDNS0, NS, PTR, QTYPE, RCODE, SOA, SRV, TXT, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

HEADER = struct.Struct("!HHHHHH")
U16 = struct.Struct("!H")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

OUR_UDP_SIZE = 1232  # what we advertise in OPT (DNS flag day 2020)
MIN_UDP_SIZE = 512
T_OPT = 41
# response codes as plain ints (dnslib's RCODE.X is an attribute lookup through its Bimap: costly per query)
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
FLAG_QR = 0x8000
FLAG_TC = 0x0200


class WireError(ValueError):
    """A packet we cannot answer normally. `respond` tells whether a FORMERR/NOTIMP reply is possible."""

    def __init__(self, offset: int, reason: str, rcode: int | None = RCODE.FORMERR):
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason
        self.rcode = rcode  # None: drop silently (count it), else answer with this rcode


@dataclass(slots=True)
class Query:
    data: bytes  # the raw packet
    id: int
    flags: int
    qname: bytes  # wire-format name exactly as asked (case preserved)
    qtype: int
    qclass: int
    qend: int  # offset just past the question
    edns: bool = False
    udp_size: int = MIN_UDP_SIZE
    do: bool = False
    edns_version: int = 0
    _labels: tuple | None = None

    @property
    def key(self) -> tuple:
        return (self.qname.lower(), self.qtype, self.qclass, self.edns, self.do)

    @property
    def labels(self) -> tuple[str, ...]:
        """Lower-case labels as text (latin-1 keeps every byte; non-ASCII simply matches nothing)."""
        if self._labels is None:
            self._labels = self._split()
        return self._labels

    def _split(self) -> tuple[str, ...]:
        return wire_labels(self.qname.lower())

    @property
    def name_text(self) -> str:
        return ".".join(self.labels) + "."


_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT's high byte 0
_TYPE_CLASS = struct.Struct("!HH").unpack_from
_OPT_FIXED = struct.Struct("!BHHxBHH").unpack_from  # root name, type, UDP size, (extended rcode), version, flags, rdlen


def fast_key(data: bytes):
    """The cache key of an ordinary query -- one question, no answer/authority records, at most one
    OPT (EDNS version 0) -- and (question end, UDP payload size); None sends it down the full parser.
    Equal to parse_query(data).key for every packet it accepts."""
    n = len(data)
    if n < 17 or data[2] & 0xF8 or data[4:11] != _PLAIN_COUNTS:
        return None
    pos = 12
    length = data[12]
    while length:
        pos += length + 1
        if length > 63 or pos >= n:
            return None
        length = data[pos]
    qend = pos + 5
    if qend > n or pos > 266:  # the name, root byte included, is at most 255 bytes
        return None
    qtype, qclass = _TYPE_CLASS(data, pos + 1)
    ar = data[11]
    if ar == 0:
        if qend != n:
            return None
        return (data[12:pos + 1].lower(), qtype, qclass, False, False), qend, MIN_UDP_SIZE
    if ar != 1 or n < qend + 11:
        return None
    root, rtype, udp, version, flags, rdlen = _OPT_FIXED(data, qend)
    if root or rtype != T_OPT or version or qend + 11 + rdlen != n:
        return None  # not a plain root OPT of version 0
    return ((data[12:pos + 1].lower(), qtype, qclass, True, flags >= 0x8000), qend,
            udp if udp > MIN_UDP_SIZE else MIN_UDP_SIZE)


def wire_labels(name: bytes) -> tuple[str, ...]:
    """The labels of a wire-format name (as a cache key holds it, lower case) as text, as Query.labels."""
    out = []
    pos = 0
    text = name.decode("latin-1")  # one decode; the labels are slices of it
    n = name[0]
    while n:
        end = pos + 1 + n
        out.append(text[pos + 1:end])
        pos = end
        n = name[pos]
    return tuple(out)


def query_from_fast(data: bytes, fast: tuple) -> Query:
    """The Query of a packet fast_key accepted (its result `fast`), without walking it again."""
    key, qend, udp_size = fast
    return Query(data, data[0] << 8 | data[1], data[2] << 8 | data[3], data[12:qend - 4], key[1], key[2], qend,
                 key[3], udp_size, key[4])


def parse_header(data: bytes) -> tuple[int, int, int, int, int, int]:
    if len(data) < 12:
        raise WireError(len(data), f"packet of {len(data)} bytes is shorter than the 12-byte header", rcode=None)
    return HEADER.unpack_from(data)


def _read_name(data: bytes, pos: int, allow_pointers: bool) -> int:
    """Walk a name at pos; return the offset after it. Pointers end the name (we never follow them here)."""
    start = pos
    total = 0
    end = len(data)
    while True:
        if pos >= end:
            raise WireError(pos, "name runs past the end of the packet")
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            if not allow_pointers:
                raise WireError(pos, "compression pointer in the question name")
            if pos + 2 > end:
                raise WireError(pos, "compression pointer runs past the end of the packet")
            return pos + 2
        if n & 0xC0:
            raise WireError(pos, f"unsupported label type 0x{n & 0xC0:02x}")
        if pos + 1 + n >= end:
            raise WireError(pos, f"label of {n} bytes runs past the end of the packet")
        total += n + 1
        if total + 1 > 255:  # with the root byte
            raise WireError(start, "name longer than 255 bytes")
        pos += 1 + n


def parse_query(data: bytes) -> Query:
    """Parse a query. Raises WireError; its rcode is None when the packet must be dropped."""
    qid, flags, qd, an, ns, ar = parse_header(data)
    if flags & FLAG_QR:
        raise WireError(2, "QR bit set: a response, not a query", rcode=None)
    opcode = (flags >> 11) & 0xF
    if qd != 1:
        raise WireError(4, f"question count is {qd}, expected 1")
    qend_name = _read_name(data, 12, allow_pointers=False)
    if qend_name + 4 > len(data):
        raise WireError(qend_name, "question type/class missing")
    qtype, qclass = struct.unpack_from("!HH", data, qend_name)
    qend = qend_name + 4
    query = Query(data, qid, flags, data[12:qend_name], qtype, qclass, qend)
    if opcode != 0:
        raise WireError(2, f"opcode {opcode}: only QUERY is served (NOTIMP)", rcode=RCODE.NOTIMP)
    pos = qend
    # skip answer and authority records (a query should carry none, but it may)
    for _ in range(an + ns):
        pos = _skip_rr(data, pos)
    opt_seen = False
    for _ in range(ar):
        rr_start = pos
        _, rtype, rclass, ttl, rdlen, pos = _rr_header(data, pos)
        if rtype == T_OPT:
            if opt_seen:
                raise WireError(rr_start, "more than one OPT record")
            if data[rr_start] != 0:
                raise WireError(rr_start, "OPT record owner is not the root")
            opt_seen = True
            query.edns = True
            query.udp_size = max(MIN_UDP_SIZE, rclass)
            query.edns_version = (ttl >> 16) & 0xFF
            query.do = bool(ttl & 0x8000)
    return query


def _rr_header(data: bytes, pos: int) -> tuple[int, int, int, int, int, int]:
    """(name end, type, class, ttl, rdlength, offset after the record) of the record at pos."""
    name_end = _read_name(data, pos, allow_pointers=True)
    if name_end + 10 > len(data):
        raise WireError(name_end, "resource record header runs past the end of the packet")
    rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, name_end)
    end = name_end + 10 + rdlen
    if end > len(data):
        raise WireError(name_end + 8, f"rdlength {rdlen} runs past the end of the packet")
    return name_end, rtype, rclass, ttl, rdlen, end


def _skip_rr(data: bytes, pos: int) -> int:
    return _rr_header(data, pos)[5]


# ------------------------------------------------------------------------------ building


def opt_record(do: bool, ext_rcode: int = 0, udp_size: int = OUR_UDP_SIZE) -> bytes:
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + RR_FIXED.pack(T_OPT, udp_size, ttl, 0)


def pack_answer(query: Query, answer, recursion_available: bool) -> bytes:
    """Build the full response for `answer` (a resolver.Answer), question in lower case.

    The result is reusable for any query with the same Query.key: `patch` writes the ID,
    RD/CD bits and the asked question bytes back in. The record types the resolver produces are
    packed here by hand, byte for byte as dnslib would (its name compression included); anything
    else (an upstream's records in a chased answer) goes through dnslib.
    """
    try:
        return _pack_by_hand(query, answer, recursion_available)
    except _NotByHand:
        return _pack_with_dnslib(query, answer, recursion_available)


class _NotByHand(Exception):
    pass


_SIMPLE_NAME_TYPES = (CNAME, PTR, NS)


_NEGATIVE_SOA: dict[tuple[int, int], tuple] = {}  # (id(SOA RR), pointer to the zone) -> (RR, record bytes)
_SOA_SHAPES: dict[int, tuple] = {}  # id(SOA RR) -> (RR, zone in wire form, first labels of its names)


def _soa_shape(rr) -> tuple | None:
    """(rr, the zone's wire bytes, the labels that precede the zone in the SOA's own names), or None
    when the SOA's names are not under its zone (then no template applies)."""
    if type(rr.rdata) is not SOA or not rr.rname.label:
        return None
    zone = rr.rname.label
    n = len(zone)
    lasts = set()
    for name in (rr.rdata.mname.label, rr.rdata.rname.label):
        if len(name) <= n or name[len(name) - n:] != zone:
            return None
        lasts.add(name[len(name) - n - 1])
    return rr, b"".join(bytes((len(label),)) + label for label in zone) + b"\x00", frozenset(lasts)


def _pack_negative(query: Query, answer, flags: int) -> bytes | None:
    """NXDOMAIN / NODATA: header, the question, the zone's SOA with its names pointing into the
    question (the zone is the question's suffix). The SOA record's bytes are kept per SOA and pointer,
    so a miss costs a dict lookup, not a name compression. None when the layout is not this one."""
    rr = answer.authority[0]
    shape = _SOA_SHAPES.get(id(rr))
    if shape is None or shape[0] is not rr:
        shape = _soa_shape(rr)
        if shape is None:
            return None
        if len(_SOA_SHAPES) >= 256:
            _SOA_SHAPES.clear()
        _SOA_SHAPES[id(rr)] = shape
    qname = query.qname.lower()
    zone_wire = shape[1]
    if not qname.endswith(zone_wire):
        return None
    end = len(qname) - len(zone_wire)
    pos, last = 0, -1
    while pos < end:  # the zone must start at a label boundary
        last = pos
        pos += qname[pos] + 1
    if pos != end:
        return None
    if last >= 0 and qname[last + 1:end] in shape[2]:
        return None  # the SOA's names would compress into the question's own labels: not shareable
    key = (id(rr), 12 + end)
    cached = _NEGATIVE_SOA.get(key)
    if cached is None or cached[0] is not rr:
        out = bytearray(HEADER.pack(0, 0, 1, 0, 1, 0))
        names: dict[tuple, int] = {}
        _put_name(out, names, tuple(_wire_labels(qname)))
        out += U16.pack(query.qtype) + U16.pack(query.qclass)
        start = len(out)
        _put_name(out, names, rr.rname.label)
        out += RR_FIXED.pack(rr.rtype, rr.rclass, rr.ttl, 0)
        rdata = len(out)
        _put_name(out, names, rr.rdata.mname.label)
        _put_name(out, names, rr.rdata.rname.label)
        out += struct.pack("!IIIII", *rr.rdata.times)
        struct.pack_into("!H", out, rdata - 2, len(out) - rdata)
        if len(_NEGATIVE_SOA) >= 4096:
            _NEGATIVE_SOA.clear()
        cached = _NEGATIVE_SOA[key] = (rr, bytes(out[start:]))
    edns = opt_record(query.do, answer.rcode >> 4) if query.edns else b""
    return b"".join((HEADER.pack(0, flags, 1, 0, 1, 1 if edns else 0), qname, query.data[query.qend - 4:query.qend],
                     cached[1], edns))


def _pack_by_hand(query: Query, answer, recursion_available: bool) -> bytes:
    rcode = answer.rcode
    # RD set as dnslib sets it: `patch` copies the asker's RD in
    flags = FLAG_QR | 0x0100 | (0x0400 if answer.authoritative else 0) | (0x0080 if recursion_available else 0) \
        | (rcode & 0xF)
    if not answer.answer and not answer.additional and len(answer.authority) == 1:
        packed = _pack_negative(query, answer, flags)
        if packed is not None:
            return packed
    records = answer.answer, answer.authority, answer.additional
    out = bytearray(HEADER.pack(0, flags, 1, len(records[0]), len(records[1]),
                                len(records[2]) + (1 if query.edns else 0)))
    names: dict[tuple, int] = {}
    _put_name(out, names, tuple(_wire_labels(query.qname.lower())))
    out += U16.pack(query.qtype) + U16.pack(query.qclass)
    for section in records:
        for rr in section:
            rdata = rr.rdata
            kind = type(rdata)
            _put_name(out, names, rr.rname.label)
            out += RR_FIXED.pack(rr.rtype, rr.rclass, rr.ttl, 0)
            start = len(out)
            if kind is A or kind is AAAA:
                out += bytes(rdata.data)
            elif kind in _SIMPLE_NAME_TYPES:
                _put_name(out, names, rdata.label.label)
            elif kind is SRV:
                out += struct.pack("!HHH", rdata.priority, rdata.weight, rdata.port)
                for label in rdata.target.label:  # SRV targets are never compressed (RFC 2782)
                    out.append(len(label))
                    out += label
                out.append(0)
            elif kind is SOA:
                _put_name(out, names, rdata.mname.label)
                _put_name(out, names, rdata.rname.label)
                out += struct.pack("!IIIII", *rdata.times)
            elif kind is TXT:
                for item in rdata.data:
                    out.append(len(item))
                    out += item
            else:
                raise _NotByHand
            struct.pack_into("!H", out, start - 2, len(out) - start)
    if query.edns:
        out += opt_record(query.do, rcode >> 4)
    return bytes(out)


def _put_name(out: bytearray, names: dict, labels: tuple) -> None:
    """Append a name, compressed against the suffixes already written (dnslib's scheme)."""
    for i in range(len(labels)):
        suffix = labels[i:]
        pointer = names.get(suffix)
        if pointer is not None:
            out += U16.pack(0xC000 | pointer)
            return
        if len(out) < 0x4000:
            names[suffix] = len(out)
        label = labels[i]
        if len(label) > 63:
            raise _NotByHand
        out.append(len(label))
        out += label
    out.append(0)


def _pack_with_dnslib(query: Query, answer, recursion_available: bool) -> bytes:
    header = DNSHeader(id=0, qr=1, aa=int(answer.authoritative), ra=int(recursion_available),
                       rcode=answer.rcode & 0xF)
    qname = DNSLabel(list(_wire_labels(query.qname.lower())) or ".")
    record = DNSRecord(header, q=DNSQuestion(qname, query.qtype, query.qclass))
    record.rr = list(answer.answer)
    record.auth = list(answer.authority)
    record.ar = list(answer.additional)
    if query.edns:
        record.ar.append(EDNS0(udp_len=OUR_UDP_SIZE, flags="do" if query.do else "",
                               ext_rcode=answer.rcode >> 4))
    return bytes(record.pack())


def _wire_labels(name: bytes):
    pos = 0
    while name[pos]:
        n = name[pos]
        yield name[pos + 1: pos + 1 + n]
        pos += 1 + n


def patch(packed: bytes, query: Query) -> bytes:
    """Reuse a packed response for `query`: its ID, RD and CD bits, and its question bytes (0x20 case)."""
    q = query.data
    flags_hi = (packed[2] & 0xFE) | (q[2] & 0x01)
    flags_lo = (packed[3] & 0xEF) | (q[3] & 0x10)
    return b"".join((q[0:2], bytes((flags_hi, flags_lo)), packed[4:12], q[12:query.qend], packed[query.qend:]))


def truncate(response: bytes, query: Query) -> bytes:
    """The header and question of `response` with TC set and no records (plus OPT when EDNS)."""
    flags = U16.unpack_from(response, 2)[0] | FLAG_TC
    rcode = flags & 0xF
    ar = 1 if query.edns else 0
    head = HEADER.pack(U16.unpack_from(response, 0)[0], flags, 1, 0, 0, ar)
    out = head + response[12:query.qend]
    if query.edns:
        out += opt_record(query.do, rcode >> 4)
    return out


def error_response(data: bytes, rcode: int, query: Query | None = None) -> bytes:
    """FORMERR / NOTIMP / REFUSED / SERVFAIL: header (ID, opcode, RD echoed) and the question when known."""
    qid, flags = struct.unpack_from("!HH", data)
    out_flags = FLAG_QR | (flags & 0x7900) | (rcode & 0xF)  # opcode + RD kept
    out_flags |= flags & 0x0010  # CD
    if query is None:
        return HEADER.pack(qid, out_flags, 0, 0, 0, 0)
    ar = 1 if query.edns else 0
    body = HEADER.pack(qid, out_flags, 1, 0, 0, ar) + data[12:query.qend]
    if query.edns:
        body += opt_record(query.do, rcode >> 4)
    return body


def qtype_name(qtype: int) -> str:
    return QTYPE.get(qtype, f"TYPE{qtype}")


# ------------------------------------------------------------------------------ walking records


@dataclass(frozen=True, slots=True)
class RecordPos:
    section: int  # 0 answer, 1 authority, 2 additional
    owner: int  # offset of the owner name
    rtype: int
    ttl_offset: int
    rdata: int  # offset of rdata
    rdlen: int


def walk_records(packet: bytes) -> list[RecordPos]:
    """Positions of every resource record after the question (for TTL rewriting and rotation)."""
    _, _, qd, an, ns, ar = parse_header(packet)
    pos = 12
    for _ in range(qd):
        pos = _read_name(packet, pos, allow_pointers=True) + 4
    out = []
    for section, count in enumerate((an, ns, ar)):
        for _ in range(count):
            name_end, rtype, _, _, rdlen, next_pos = _rr_header(packet, pos)
            out.append(RecordPos(section, pos, rtype, name_end + 4, name_end + 10, rdlen))
            pos = next_pos
    return out


def rotation_groups(packet: bytes) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """A/AAAA answer RRsets with more than one record: ((rdlen, rdata offsets), ...) for loadbalance."""
    groups: dict[tuple[bytes, int], list[int]] = {}
    for rec in walk_records(packet):
        if rec.section == 0 and rec.rtype in (1, 28):
            owner = packet[rec.owner:rec.owner + 2] if packet[rec.owner] & 0xC0 == 0xC0 else bytes([rec.owner])
            groups.setdefault((owner, rec.rtype), []).append(rec.rdata)
    return tuple((4 if rtype == 1 else 16, tuple(offsets))
                 for (_, rtype), offsets in groups.items() if len(offsets) > 1)


def rotate(packet: bytes, groups, step: int) -> bytes:
    """Round-robin the rdata of each group by `step` positions (answers keep their other bytes)."""
    out = bytearray(packet)
    for size, offsets in groups:
        n = len(offsets)
        k = step % n
        if not k:
            continue
        values = [packet[o:o + size] for o in offsets]
        for i, o in enumerate(offsets):
            out[o:o + size] = values[(i + k) % n]
    return bytes(out)
