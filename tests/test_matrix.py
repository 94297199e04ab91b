"""Every directive kdns accepts together with every other, in one server block each (generated, not
hand-picked): one kdns process serves all 351 pairs, each block on its own port, and each directive's
probes are asked of every block holding it, over UDP and over TCP. autopath + cache is among them."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Callable

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from harness import EXAMPLE, answers
from test_dropin import start
from test_k8s_external import MANIFEST as EDGE
from upstream import FakeUpstream

BIG = 40  # hosts addresses of big.example: more than 512 bytes


@dataclass
class Probe:
    name: str
    rdtype: str
    check: Callable  # (response) -> None, asserting
    rdclass: str = "IN"
    options: dict = field(default_factory=dict)  # make_query keyword arguments
    when: frozenset = frozenset()  # only in blocks that also hold these directives


@dataclass
class Spec:
    config: str
    needs: tuple = ()
    probes: tuple = ()


def _a(*expected: str):
    def check(msg):
        assert msg.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(msg.rcode())
        assert answers(msg)[-len(expected):] == sorted(expected) or sorted(
            rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset) == sorted(expected)
    return check


def _kubernetes(msg):
    assert answers(msg) == ["10.96.0.1"]


def _nx(msg):
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.authority


def _any(msg):
    assert [rd.to_text() for rrset in msg.answer for rd in rrset] == ['"ANY obsoleted" "See RFC 8482"']


def _refused(msg):
    assert msg.rcode() == dns.rcode.REFUSED


def _cached(msg):
    assert answers(msg) == ["93.184.215.15"] and msg.answer[0].ttl <= 30  # upstream says 60; cache caps at 30


def _autopath_cluster(msg):
    texts = sorted(rd.to_text() for rrset in msg.answer for rd in rrset)
    assert texts == ["10.96.0.1", "kubernetes.default.svc.cluster.local."], texts


def _autopath_upstream(msg):
    texts = sorted(rd.to_text() for rrset in msg.answer for rd in rrset)
    assert texts == ["93.184.215.15", "www.example.com."], texts


def _minimal(msg):
    assert len(msg.answer) == 1 and msg.additional == []


def _nsid(msg):
    assert [o for o in msg.options if o.otype == dns.edns.NSID], "no NSID option"


def _chaos(msg):
    assert answers(msg) == ['"kdns-matrix"']


def _rewrite(msg):
    assert answers(msg) == ["10.96.0.1"] and [str(r.name) for r in msg.answer] == ["alias.example.org."]


def _whoami(msg):
    assert msg.answer == []
    assert [rd.to_text() for rrset in msg.additional if rrset.rdtype == dns.rdatatype.A for rd in rrset] == \
        ["127.0.0.1"]


def _big(msg):
    assert msg.flags & dns.flags.TC or len(msg.answer[0]) == BIG  # UDP: truncated at 512 bytes; TCP: all


def _rotates(answers_seen: list) -> None:
    assert len({tuple(a) for a in answers_seen}) > 1, answers_seen


BASIC = (Probe("kubernetes.default.svc.cluster.local", "A", _kubernetes),)
HOSTS = "hosts {\n" + "".join(f"        10.8.0.{i} big.example\n" for i in range(1, BIG + 1)) + \
    "        10.9.9.9 hosts.example\n        fallthrough\n    }"

DIRECTIVES: dict[str, Spec] = {
    "kubernetes": Spec("kubernetes cluster.local in-addr.arpa ip6.arpa {\n        fallthrough in-addr.arpa ip6.arpa\n"
                       "    }", probes=BASIC + (Probe("nope.default.svc.cluster.local", "A", _nx),)),
    "forward": Spec("forward example.com UPSTREAM", probes=(Probe("www.example.com", "A", _a("93.184.215.15")),)),
    "cache": Spec("cache 30", ("forward",), (Probe("www.example.com", "A", _cached),)),
    "hosts": Spec(HOSTS, probes=(Probe("hosts.example", "A", _a("10.9.9.9")),)),
    "autopath": Spec("autopath @kubernetes", ("kubernetes",), (
        Probe("kubernetes.default.default.svc.cluster.local", "A", _autopath_cluster),
        Probe("www.example.com.default.svc.cluster.local", "A", _autopath_upstream, when=frozenset({"forward"})))),
    "loadbalance": Spec("loadbalance", ("kubernetes",), (Probe("db.data.svc.cluster.local", "A", "rotates"),)),
    "log": Spec("log", ("kubernetes",), BASIC),
    "errors": Spec("errors", ("kubernetes",), BASIC),
    "loop": Spec("loop", ("forward",), (Probe("www.example.com", "A", _a("93.184.215.15")),)),
    "acl": Spec("acl {\n        block type HINFO\n    }", ("kubernetes",),
                (Probe("kubernetes.default.svc.cluster.local", "HINFO", _refused),)),
    "health": Spec("health", ("kubernetes",), BASIC),
    "ready": Spec("ready", ("kubernetes",), BASIC),
    "prometheus": Spec("prometheus :9153", ("kubernetes",), BASIC),
    "reload": Spec("reload", ("kubernetes",), BASIC),
    "bind": Spec("bind 127.0.0.2", ("kubernetes",), BASIC),
    "rewrite": Spec("rewrite name exact alias.example.org kubernetes.default.svc.cluster.local", ("kubernetes",),
                    (Probe("alias.example.org", "A", _rewrite),)),
    "template": Spec('template IN A tpl.example {\n        match ^ip-(?P<a>[0-9]+)-(?P<b>[0-9]+)[.]tpl[.]example[.]$\n'
                     '        answer "{{ .Name }} 60 IN A 10.{{ .Group.a }}.{{ .Group.b }}.1"\n        fallthrough\n    }',
                     probes=(Probe("ip-3-4.tpl.example", "A", _a("10.3.4.1")),)),
    "any": Spec("any", ("kubernetes",), (Probe("kubernetes.default.svc.cluster.local", "ANY", _any),)),
    "minimal": Spec("minimal", ("kubernetes",),
                    (Probe("_https._tcp.kubernetes.default.svc.cluster.local", "SRV", _minimal),)),
    "local": Spec("local", probes=(Probe("localhost", "A", _a("127.0.0.1")),)),
    "nsid": Spec("nsid kdns-matrix", ("kubernetes",), (Probe(
        "kubernetes.default.svc.cluster.local", "A", _nsid,
        options={"use_edns": 0, "options": [dns.edns.GenericOption(dns.edns.NSID, b"")]}),)),
    "bufsize": Spec("bufsize 512", ("hosts",), (Probe("big.example", "A", _big, options={"use_edns": 0,
                                                                                         "payload": 4096}),)),
    "whoami": Spec("whoami", probes=(Probe("who.am.i", "A", _whoami),)),
    "k8s_external": Spec("k8s_external example.external", ("kubernetes",),
                         (Probe("web.edge.example.external", "A", _a("192.0.2.50", "198.51.100.7")),)),
    "debug": Spec("debug", ("kubernetes",), BASIC),
    "explain": Spec("explain 127.0.0.1:0", ("kubernetes",), BASIC),  # one listener for every block naming it
    "memory_budget": Spec("memory_budget 32Mi", ("kubernetes",), BASIC),  # one size: it is the process's
    "root": Spec("root ROOTDIR", ("kubernetes",), BASIC),
    "chaos": Spec("chaos kdns-matrix", probes=(Probe("version.bind", "TXT", _chaos, rdclass="CH"),)),
}
FIRST_PORT = 20000


def _with_needs(names: set) -> set:
    out = set(names)
    while True:
        more = {n for name in out for n in DIRECTIVES[name].needs} - out
        if not more:
            return out
        out |= more


def pairs() -> list[tuple[str, str]]:
    return list(itertools.combinations(sorted(DIRECTIVES), 2))


def corefile() -> str:
    blocks = []
    for i, pair in enumerate(pairs()):
        body = "\n".join(f"    {DIRECTIVES[n].config}" for n in sorted(_with_needs(set(pair))))
        blocks.append(f"# {pair[0]} x {pair[1]}\n.:{FIRST_PORT + i} {{\n{body}\n}}\n")
    return "\n".join(blocks)


def test_every_directive_is_in_the_matrix():
    from kdns.plugins import ORDER
    assert set(DIRECTIVES) == set(ORDER), set(ORDER) ^ set(DIRECTIVES)


def test_combination_matrix(tmp_path):
    all_pairs = pairs()
    assert ("autopath", "cache") in all_pairs
    port_maps = [arg for i in range(len(all_pairs)) for arg in ("--port-map", f"{FIRST_PORT + i}=0")]
    with FakeUpstream({("www.example.com", "A"): ["93.184.215.15"]}) as upstream:
        text = corefile().replace("ROOTDIR", str(tmp_path))
        (tmp_path / "edge.yaml").write_text(EDGE)  # a LoadBalancer service for k8s_external
        # 351 listeners share the memory budget's TCP connections (one each): give each a few, as the
        # probes open one connection per query and the previous one may not be counted down yet
        with start(tmp_path, text, upstream, "--manifests", EXAMPLE, "--manifests", str(tmp_path / "edge.yaml"),
                   "--tcp-max-connections", "8", *port_maps) as kdns:
            kdns.wait_for_log(rf"listening server=dns://:{FIRST_PORT + len(all_pairs) - 1} ", timeout=60)
            where = {}
            for line in kdns.lines:
                m = re.search(r"listening server=dns://:(\d+) udp=(\S+):(\d+) ", line)
                if m:
                    where[int(m.group(1))] = (m.group(2), int(m.group(3)))
            failures = []
            asked = 0
            for i, pair in enumerate(all_pairs):
                host, port = where[FIRST_PORT + i]
                held = _with_needs(set(pair))
                assert (host == "127.0.0.2") == ("bind" in held)
                for name in pair:
                    for probe in DIRECTIVES[name].probes:
                        if not probe.when <= held:
                            continue
                        for tcp in (False, True):
                            asked += 1
                            try:
                                _run(probe, host, port, tcp)
                            except Exception as exc:  # noqa: BLE001 - collect every failing cell, then report
                                failures.append(f"{pair[0]} x {pair[1]}: {name} probe {probe.name} {probe.rdtype} "
                                                f"{'tcp' if tcp else 'udp'}: {exc!r}")
            assert not failures, f"{len(failures)} of {asked} probes failed:\n" + "\n".join(failures[:40])
            assert asked > 4 * len(all_pairs)
            assert not [line for line in kdns.lines if "internal_error" in line]


def _run(probe: Probe, host: str, port: int, tcp: bool) -> None:
    def ask():
        msg = dns.message.make_query(probe.name, probe.rdtype, probe.rdclass, **probe.options)
        if tcp:
            return dns.query.tcp(msg, host, port=port, timeout=5)
        return dns.query.udp(msg, host, port=port, timeout=5, ignore_trailing=True)
    if probe.check == "rotates":
        _rotates([[rd.to_text() for rrset in ask().answer for rd in rrset] for _ in range(16)])  # random: 2^-15 to fail
    else:
        probe.check(ask())


@pytest.mark.parametrize("name", sorted(DIRECTIVES))
def test_each_directive_alone_has_a_probe(name):
    assert DIRECTIVES[name].probes
