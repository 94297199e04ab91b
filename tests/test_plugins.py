"""The directives of kdns/plugins/ through real sockets (UDP and TCP): rewrite, template, any, local, chaos,
nsid, whoami, minimal, bufsize, root, debug — with snippets, imports and {$ENV} in the same Corefile.
Cases follow CoreDNS's plugin READMEs (rewrite's ftp-us-west-1 example, template's ip-a-b-c-d and
AAAA-blocking examples, any's RFC 8482 HINFO, chaos's version.bind)."""

from __future__ import annotations

import struct

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from harness import EXAMPLE, answers
from test_dropin import start
from upstream import FakeUpstream

COREFILE = r"""
(common) {
    errors
    log
}
.:53 {
    import common
    import extra/*.conf
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        fallthrough in-addr.arpa ip6.arpa
    }
    rewrite name exact alias.example.org. kubernetes.default.svc.cluster.local
    rewrite name exact hosts-alias.example.org. hosts.example
    rewrite name suffix .corp.internal .shop.svc.cluster.local answer auto
    rewrite stop {
        name regex (.*)-(us-west-1)\.example\.org {1}.{2}.example.com
        answer name (.*)\.(us-west-1)\.example\.com {1}-{2}.example.org
    }
    rewrite continue name prefix chain-one. chain-two.
    rewrite name exact chain-two.example.org. www.example.com.
    rewrite ttl exact ttl.example.com 7
    rewrite rcode exact gone.example.com NXDOMAIN REFUSED
    rewrite cname exact payments.example.com. www.example.com.
    rewrite type HINFO A
    template IN A tpl.example {
        match ^ip-(?P<a>[0-9]+)-(?P<b>[0-9]+)-(?P<c>[0-9]+)-(?P<d>[0-9]+)[.]tpl[.]example[.]$
        answer "{{ .Name }} 60 IN A {{ .Group.a }}.{{ .Group.b }}.{{ .Group.c }}.{{ .Group.d }}"
        fallthrough
    }
    template IN AAAA tpl.example {
        rcode NOERROR
    }
    template IN TXT tpl.example {
        match "^(?P<x>[0-9a-f]+)[.]hex[.]tpl[.]example[.]$"
        answer "{{ .Name }} 30 IN TXT \"{{ parseInt .Group.x 16 32 }} {{ .Zone }} {{ .Remote }} {{ index .Match 1 }}\""
    }
    template ANY ANY nx.example {
        match ^exists[.]nx[.]example[.]$
        answer "{{ .Name }} 60 IN A 192.0.2.7"
    }
    any
    local
    chaos kdns-test "A. Author"
    nsid kdns-nsid
    whoami
    debug
    forward example.com UPSTREAM
    cache {$KDNS_TEST_CACHE_TTL:30}
}
"""

HOSTS_SNIPPET = """hosts {
    10.9.9.9 hosts.example
    fallthrough
}
"""


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream({
        ("www.example.com", "A"): ["93.184.215.15"],
        ("ftp.us-west-1.example.com", "A"): ["10.10.10.10", "10.20.20.20"],
        ("ttl.example.com", "A"): ["192.0.2.60"],
    }) as up:
        yield up


@pytest.fixture(scope="module")
def kdns(tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp("plugins")
    (tmp / "extra").mkdir()
    (tmp / "extra" / "hosts.conf").write_text(HOSTS_SNIPPET)
    with start(tmp, COREFILE, upstream, "--manifests", EXAMPLE) as server:
        yield server


def owners(msg) -> list[str]:
    return sorted(str(rrset.name) for rrset in msg.answer)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_rewrite_name_rules_answer_the_clients_own_question(kdns, tcp):
    # exact: the answer is always rewritten back
    msg = kdns.query("alias.example.org", tcp=tcp)
    assert answers(msg) == ["10.96.0.1"] and owners(msg) == ["alias.example.org."]
    # suffix + answer auto: resolved by kubernetes as api.shop.svc.cluster.local, shown as asked
    msg = kdns.query("api.corp.internal", tcp=tcp)
    assert answers(msg) == ["10.96.200.20"] and owners(msg) == ["api.corp.internal."]
    # CoreDNS README: regex with an explicit answer name rule, resolved upstream
    msg = kdns.query("ftp-us-west-1.example.org", tcp=tcp)
    assert answers(msg) == ["10.10.10.10", "10.20.20.20"] and owners(msg) == ["ftp-us-west-1.example.org."]
    # mixed case in the question is echoed (0x20)
    msg = kdns.query("AlIaS.eXample.ORG", tcp=tcp)
    assert str(msg.question[0].name) == "AlIaS.eXample.ORG." and answers(msg) == ["10.96.0.1"]


def test_rewrite_continue_stop_and_response_fields(kdns, upstream):
    # continue: chain-one. -> chain-two. then the next rule -> www.example.com (no answer rule: owner stays)
    msg = kdns.query("chain-one.example.org")
    assert answers(msg) == ["93.184.215.15"]
    assert upstream.count("chain-two.example.org") == 0 and upstream.count("chain-one.example.org") == 0
    # ttl rewrite on a forwarded answer (upstream says 60)
    assert [rrset.ttl for rrset in kdns.query("ttl.example.com").answer] == [7]
    # rcode rewrite: the upstream's NXDOMAIN becomes REFUSED
    assert kdns.query("gone.example.com").rcode() == dns.rcode.REFUSED
    # cname rewrite: the ExternalName's target is replaced and the new target resolved
    msg = kdns.query("payments.shop.svc.cluster.local")
    texts = sorted(rd.to_text() for rrset in msg.answer for rd in rrset)
    assert texts == ["93.184.215.15", "www.example.com."] and msg.rcode() == dns.rcode.NOERROR
    # type rewrite: HINFO asked, A answered, the question is the client's
    msg = kdns.query("kubernetes.default.svc.cluster.local", "HINFO")
    assert answers(msg) == ["10.96.0.1"] and msg.question[0].rdtype == dns.rdatatype.HINFO


def test_rewritten_name_is_served_like_a_direct_one(kdns, upstream):
    direct = kdns.query("api.shop.svc.cluster.local", "SRV")
    rewritten = kdns.query("api.corp.internal", "SRV")
    assert direct.rcode() == rewritten.rcode()
    # answer auto on a suffix rule maps values back too (CoreDNS): the SRV target is the client's name
    assert [a.replace(".corp.internal.", ".shop.svc.cluster.local.") for a in answers(rewritten)] == answers(direct)
    assert kdns.query("nope.corp.internal").rcode() == dns.rcode.NXDOMAIN  # NXDOMAIN from kubernetes
    assert answers(kdns.query("hosts-alias.example.org")) == ["10.9.9.9"]  # hosts, from the imported file
    # forward + cache: the rewritten name goes upstream once, later answers come from the cache
    before = upstream.count("ftp.us-west-1.example.com")
    for tcp in (False, True, False):
        assert answers(kdns.query("ftp-us-west-1.example.org", tcp=tcp)) == ["10.10.10.10", "10.20.20.20"]
    assert upstream.count("ftp.us-west-1.example.com") <= before + 1
    assert upstream.count("ftp-us-west-1.example.org") == 0


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_template(kdns, tcp):
    msg = kdns.query("ip-10-1-2-3.tpl.example", tcp=tcp)
    assert answers(msg) == ["10.1.2.3"] and msg.answer[0].ttl == 60 and msg.flags & 0x0400  # AA
    assert kdns.query("ip-10-1-2-3.tpl.example", "AAAA", tcp=tcp).answer == []  # the AAAA-blocking example
    assert kdns.query("ip-10-1-2-3.tpl.example", "AAAA", tcp=tcp).rcode() == dns.rcode.NOERROR
    txt = kdns.query("ff.hex.tpl.example", "TXT", tcp=tcp)
    assert answers(txt) == ['"255 tpl.example. 127.0.0.1 ff"']
    # no regex matches, no fallthrough: NXDOMAIN; a match of ANY ANY answers every type
    assert kdns.query("other.nx.example", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
    assert answers(kdns.query("exists.nx.example", "MX", tcp=tcp)) == ["192.0.2.7"]
    # the A template falls through for names it does not match: hosts (from an imported file) answers
    assert answers(kdns.query("hosts.example", tcp=tcp)) == ["10.9.9.9"]


def test_any_local_chaos_whoami_nsid(kdns):
    msg = kdns.query("kubernetes.default.svc.cluster.local", "ANY")
    assert [rd.to_text() for rrset in msg.answer for rd in rrset] == ['"ANY obsoleted" "See RFC 8482"']
    assert answers(kdns.query("localhost")) == ["127.0.0.1"] and answers(kdns.query("localhost", "AAAA")) == ["::1"]
    assert answers(kdns.query("1.0.0.127.in-addr.arpa", "PTR")) == ["localhost."]
    assert answers(kdns.query("localhost.example.org")) == ["127.0.0.1"]
    version = dns.message.make_query("version.bind", "TXT", "CH")
    assert answers(dns.query.udp(version, "127.0.0.1", port=kdns.port, timeout=3)) == ['"kdns-test"']
    authors = dns.message.make_query("authors.bind", "TXT", "CH")
    assert answers(dns.query.tcp(authors, "127.0.0.1", port=kdns.port, timeout=3)) == ['"A. Author"']
    for name, rdtype in (("version.bind", "A"), ("other.bind", "TXT")):  # not chaos's: REFUSED down the block
        other = dns.message.make_query(name, rdtype, "CH")
        assert dns.query.udp(other, "127.0.0.1", port=kdns.port, timeout=3).rcode() == dns.rcode.REFUSED
    who = kdns.query("who.am.i")
    assert who.answer == [] and sorted(rrset.rdtype for rrset in who.additional) == [dns.rdatatype.A,
                                                                                     dns.rdatatype.SRV]
    assert [rd.to_text() for rrset in who.additional if rrset.rdtype == dns.rdatatype.A for rd in rrset] == \
        ["127.0.0.1"]
    srv = [(str(rrset.name), rd.target.to_text(), rd.port) for rrset in who.additional
           if rrset.rdtype == dns.rdatatype.SRV for rd in rrset]
    assert len(srv) == 1 and srv[0][:2] == ("_udp.who.am.i.", ".") and 0 < srv[0][2] < 65536  # CoreDNS's shape
    asks = dns.message.make_query("kubernetes.default.svc.cluster.local", "A", use_edns=0,
                                  options=[dns.edns.GenericOption(dns.edns.NSID, b"")])
    reply = dns.query.udp(asks, "127.0.0.1", port=kdns.port, timeout=3)
    assert [o.to_text() for o in reply.options if o.otype == dns.edns.NSID][0].endswith("kdns-nsid")
    plain = kdns.query("kubernetes.default.svc.cluster.local", use_edns=0)
    assert not [o for o in plain.options if o.otype == dns.edns.NSID]


def test_snippet_logs_queries(kdns):
    kdns.query("alias.example.org", "TXT")
    kdns.wait_for_log(r'"TXT IN alias\.example\.org\. udp')


def test_minimal_and_bufsize(tmp_path, upstream):
    # a headless service with 40 ready endpoints: its A answer is over 512 bytes
    endpoints = "".join(f"- {{addresses: [10.77.0.{i}], conditions: {{ready: true}}}}\n" for i in range(1, 41))
    (tmp_path / "big.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: data}\nspec:\n  clusterIP: None\n---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: big-1, namespace: data, labels: "
        "{kubernetes.io/service-name: big}}\naddressType: IPv4\nendpoints:\n" + endpoints)
    text = ".:53 {\n    kubernetes cluster.local\n    minimal\n    bufsize 512\n}\n"
    with start(tmp_path, text, upstream, "--manifests", EXAMPLE, "--manifests", str(tmp_path / "big.yaml")) as kdns:
        srv = kdns.query("_https._tcp.kubernetes.default.svc.cluster.local", "SRV")
        assert len(srv.answer) == 1 and srv.additional == []  # minimal: no address in additional
        nx = kdns.query("nope.default.svc.cluster.local")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority  # negative answers keep their SOA
        # over 512 bytes: truncated although the client offers 4096, also after the full answer went out
        # over TCP (an answer over the cap is never served from the packed-answer cache)
        big = "big.data.svc.cluster.local"
        assert len(kdns.query(big, tcp=True, use_edns=0, payload=4096).answer[0]) == 40  # same cache key
        for _ in range(2):
            reply = kdns.query(big, use_edns=0, payload=4096)
            assert reply.flags & 0x0200 and reply.answer == []
        assert len(kdns.query(big, tcp=True, use_edns=0, payload=4096).answer[0]) == 40  # same cache key
        assert answers(kdns.query("kubernetes.default.svc.cluster.local", use_edns=0, payload=4096)) == ["10.96.0.1"]


def test_plugins_reload_and_a_broken_reload_keeps_them(tmp_path, upstream):
    base = """(tpl) {
    template IN A tpl.example {
        answer "{{ .Name }} 60 IN A ADDRESS"
    }
}
.:53 {
    reload 2s 1s
    kubernetes cluster.local
    rewrite name exact alias.example.org TARGET
    import tpl
    import hosts.d/*
}
"""
    (tmp_path / "hosts.d").mkdir()
    (tmp_path / "hosts.d" / "a").write_text("hosts {\n    10.7.7.7 imported.example\n    fallthrough\n}\n")
    first = base.replace("TARGET", "kubernetes.default.svc.cluster.local").replace("ADDRESS", "192.0.2.1")
    with start(tmp_path, first, upstream, "--manifests", EXAMPLE) as kdns:
        assert answers(kdns.query("alias.example.org")) == ["10.96.0.1"]
        assert answers(kdns.query("x.tpl.example")) == ["192.0.2.1"]
        (tmp_path / "Corefile").write_text(
            base.replace("TARGET", "api.shop.svc.cluster.local").replace("ADDRESS", "192.0.2.2"))
        kdns.wait_for_log(r"INFO reloaded ", timeout=20)
        assert answers(kdns.query("alias.example.org")) == ["10.96.200.20"]
        assert answers(kdns.query("x.tpl.example", tcp=True)) == ["192.0.2.2"]
        mark = len(kdns.lines)
        (tmp_path / "Corefile").write_text(base.replace("TARGET", "a.b").replace("ADDRESS", "{{ .Nope }}"))
        line = kdns.wait_for_log(r"ERROR reload_failed ", timeout=20, start=mark)
        assert f"{tmp_path / 'Corefile'}:3:40: template: unknown field .Nope" in line
        assert answers(kdns.query("alias.example.org")) == ["10.96.200.20"]  # still the last good config
        assert answers(kdns.query("x.tpl.example")) == ["192.0.2.2"]
        # an edit to an imported file alone is a change too
        mark = len(kdns.lines)
        (tmp_path / "Corefile").write_text(
            base.replace("TARGET", "api.shop.svc.cluster.local").replace("ADDRESS", "192.0.2.2"))
        kdns.wait_for_log(r"INFO reloaded ", timeout=20, start=mark)
        assert answers(kdns.query("imported.example")) == ["10.7.7.7"]
        mark = len(kdns.lines)
        (tmp_path / "hosts.d" / "a").write_text("hosts {\n    10.7.7.8 imported.example\n    fallthrough\n}\n")
        kdns.wait_for_log(r"INFO reloaded ", timeout=20, start=mark)
        assert answers(kdns.query("imported.example")) == ["10.7.7.8"]


PLUGIN_NAMES = ["alias.example.org", "api.corp.internal", "ftp-us-west-1.example.org", "chain-one.example.org",
                "ttl.example.com", "gone.example.com", "payments.shop.svc.cluster.local", "ip-10-1-2-3.tpl.example",
                "ff.hex.tpl.example", "zz.hex.tpl.example", "exists.nx.example", "localhost", "version.bind",
                "who.am.i", "1.0.0.127.in-addr.arpa", "localhost.example.org", "x.corp.internal"]
# answers plugins give by design that the generic wire check does not expect: chaos answers class CH,
# and a regex rewrite without an answer rule keeps the rewritten owner (as CoreDNS)
BY_DESIGN = ("class 3 answered NOERROR", "first answer owner")


def test_random_queries_never_break_the_plugins(kdns):
    import random
    import socket

    from fuzz_dns import any_packet, check_response, expects_answer, pick_qclass, pick_qtype, wire_name
    from fuzz_dns import header, opt_rr
    rng = random.Random(12)
    problems = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        for i in range(1500):
            if i % 3:
                edns = rng.random() < 0.5
                msg = header(rng.randrange(65536), 0x0100, 1, 0, 0, int(edns)) + \
                    wire_name(rng.choice(PLUGIN_NAMES), rng) + \
                    struct.pack("!HH", pick_qtype(rng), rng.choice([1, 1, 3, 255, pick_qclass(rng)]))
                if edns:
                    msg += opt_rr(rng.choice([512, 1232, 4096]), 0, rng.random() < 0.5,
                                  rdata=rng.choice([b"", b"\x00\x03\x00\x00"]))
            else:
                msg = any_packet(rng)
            if len(msg) > 512 or not expects_answer(msg):
                continue
            sock.sendto(msg, ("127.0.0.1", kdns.port))
            while True:
                response = sock.recv(65535)
                if response[:2] == msg[:2]:
                    break
            why = check_response(msg, response, False)
            if why is not None and not why.startswith(BY_DESIGN):
                problems.append(f"{why}: {msg.hex()}")
    finally:
        sock.close()
    assert not problems, problems[:5]
    errors = [line for line in kdns.lines if "internal_error" in line]
    assert not errors, "\n".join(errors[:3])


def test_coredns_template_cases(tmp_path, upstream):
    # CoreDNS plugin/template template_test.go: TestMultiSection (each template in the block of its zone, as
    # the server block keys route them in CoreDNS) and TestHandler's MX/additional, authority, NXDOMAIN-with-SOA,
    # SERVFAIL and CNAME cases
    text = r"""test.:53 {
    template IN A {
        rcode REFUSED
    }
    template IN TXT {
        match "$^"
        rcode SERVFAIL
        fallthrough
    }
    template IN MX {
        rcode SERVFAIL
    }
    whoami
}
coredns.invalid.:53 {
    chaos
    template CH TXT coredns.invalid {
        answer "{{ .Name }} 60 CH TXT \"test\""
    }
}
example.:53 {
    template IN A example {
        match ^ip-10-(?P<b>[0-9]*)-(?P<c>[0-9]*)-(?P<d>[0-9]*)[.]example[.]$
        answer "{{ .Name }} 60 IN A 10.{{ .Group.b }}.{{ .Group.c }}.{{ .Group.d }}"
        additional "ns0.example. IN A 203.0.113.8"
        authority "example. IN NS ns0.example.com."
        fallthrough
    }
    template IN MX example {
        match ^ip-10-(?P<b>[0-9]*)-(?P<c>[0-9]*)-(?P<d>[0-9]*)[.]example[.]$
        answer "{{ .Name }} 60 IN MX 10 {{ .Name }}"
        additional "{{ .Name }} 60 IN A 10.{{ .Group.b }}.{{ .Group.c }}.{{ .Group.d }}"
    }
    whoami
}
invalid.:53 {
    template ANY ANY invalid {
        match "[.]invalid[.]$"
        rcode NXDOMAIN
        answer "invalid. 60 {{ .Class }} SOA a.invalid. b.invalid. (1 60 60 60 60)"
    }
}
net.:53 {
    template ANY ANY {
        match "example[.]net[.]"
        answer "example.net 60 IN CNAME target.example.com"
    }
}
"""
    with start(tmp_path, text, upstream) as kdns:
        assert kdns.query("some.test").rcode() == dns.rcode.REFUSED
        assert kdns.query("some.test", "TXT").answer == []  # fell through to whoami (no answer records)
        assert kdns.query("some.test", "TXT").rcode() == dns.rcode.NOERROR
        assert kdns.query("some.test", "MX").rcode() == dns.rcode.SERVFAIL
        ch = dns.query.udp(dns.message.make_query("coredns.invalid", "TXT", "CH"), "127.0.0.1", port=kdns.port,
                           timeout=3)
        assert answers(ch) == ['"test"'] and ch.answer[0].rdclass == dns.rdataclass.CH
        a = kdns.query("ip-10-11-12-13.example")
        assert answers(a) == ["10.11.12.13"]
        assert [rd.to_text() for rrset in a.additional for rd in rrset] == ["203.0.113.8"]
        assert [rd.to_text() for rrset in a.authority for rd in rrset] == ["ns0.example.com."]
        mx = kdns.query("ip-10-11-12-13.example", "MX", tcp=True)
        assert answers(mx) == ["10 ip-10-11-12-13.example."]
        assert [rd.to_text() for rrset in mx.additional for rd in rrset] == ["10.11.12.13"]
        # something.example. A falls through (to whoami); MX never does: NXDOMAIN
        assert kdns.query("something.example").rcode() == dns.rcode.NOERROR
        assert kdns.query("something.example", "MX").rcode() == dns.rcode.NXDOMAIN
        nx = kdns.query("test.invalid", "MX")
        assert nx.rcode() == dns.rcode.NXDOMAIN and [r.rdtype for r in nx.answer] == [dns.rdatatype.SOA]
        assert answers(kdns.query("example.net")) == ["target.example.com."]
        # CH questions no template answers are REFUSED, never answered as IN by the rest of the block
        other = dns.message.make_query("else.coredns.invalid", "A", "CH")
        assert dns.query.udp(other, "127.0.0.1", port=kdns.port, timeout=3).rcode() == dns.rcode.REFUSED


# CoreDNS plugin/local local_test.go: (question, type, rcode, answer (type, owner) or None, authority owner or None)
LOCAL_CASES = [
    ("localhost.", "A", dns.rcode.NOERROR, ("A", "localhost."), None),
    ("localHOst.", "A", dns.rcode.NOERROR, ("A", "localHOst."), None),
    ("localhost.", "AAAA", dns.rcode.NOERROR, ("AAAA", "localhost."), None),
    ("localhost.", "NS", dns.rcode.NOERROR, ("NS", "localhost."), None),
    ("localhost.", "SOA", dns.rcode.NOERROR, ("SOA", "localhost."), None),
    ("127.in-addr.arpa.", "A", dns.rcode.NOERROR, None, "127.in-addr.arpa."),
    ("localhost.", "MX", dns.rcode.NOERROR, None, "localhost."),
    ("a.localhost.", "A", dns.rcode.NXDOMAIN, None, "localhost."),
    ("1.0.0.127.in-addr.arpa.", "PTR", dns.rcode.NOERROR, ("PTR", "1.0.0.127.in-addr.arpa."), None),
    ("1.0.0.127.in-addr.arpa.", "MX", dns.rcode.NOERROR, None, "127.in-addr.arpa."),
    ("2.0.0.127.in-addr.arpa.", "PTR", dns.rcode.NXDOMAIN, None, "127.in-addr.arpa."),
    ("localhost.example.net.", "A", dns.rcode.NOERROR, ("A", "localhost.example.net."), None),
    ("localhost.example.net.", "AAAA", dns.rcode.NOERROR, ("AAAA", "localhost.example.net."), None),
    ("localhost.example.net.", "SOA", dns.rcode.NOERROR, None, "localhost.example.net."),
    ("1." + "0." * 31 + "ip6.arpa.", "PTR", dns.rcode.NOERROR, ("PTR", "1." + "0." * 31 + "ip6.arpa."), None),
]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_coredns_local_cases(kdns, tcp):
    for question, rdtype, rcode, answer, authority in LOCAL_CASES:
        msg = kdns.query(question, rdtype, tcp=tcp)
        got = (msg.rcode(), [(dns.rdatatype.to_text(r.rdtype), str(r.name)) for r in msg.answer][:1] or None,
               [str(r.name) for r in msg.authority][:1] or None)
        assert got == (rcode, [answer] if answer else None, [authority] if authority else None), question
    soa = kdns.query("localhost", "SOA").answer[0][0]
    assert (soa.mname.to_text(), soa.rname.to_text()) == ("root.localhost.", "localhost.")


def test_cached_forwarded_answers_still_pass_the_plugins(tmp_path, upstream):
    # main's fast path serves cached forwarded answers from the query key alone; a block with plugins
    # must not take it, or a second answer would skip them (here: the ttl rule and minimal)
    text = ".:53 {\n    forward . UPSTREAM\n    cache 30\n    rewrite ttl exact www.example.com 7\n    minimal\n}\n"
    with start(tmp_path, text, upstream) as kdns:
        for tcp in (False, True, False, False):
            msg = kdns.query("www.example.com", tcp=tcp)
            assert answers(msg) == ["93.184.215.15"] and msg.answer[0].ttl == 7
