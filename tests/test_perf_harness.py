"""perf/'s issue 11 harness pieces that decide results: the ceiling responder replays kdns's own
answers byte for byte (ID patched) and answers nothing else; the targets table computes each
ratio and its verdict from a report, and says "not measured" rather than guessing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import dns.message
import dns.query
import pytest

from harness import EXAMPLE, ROOT, KdnsProcess

sys.path.insert(0, os.path.join(ROOT, "perf"))

import ceiling  # noqa: E402
import targets  # noqa: E402

NAMES = [("kubernetes.default.svc.cluster.local", "A"), ("_postgres._tcp.db.data.svc.cluster.local", "SRV"),
         ("nope.shop.svc.cluster.local", "A"), ("1.0.96.10.in-addr.arpa", "PTR")]


@pytest.fixture
def recorded(tmp_path):
    qfile = tmp_path / "queries.txt"
    qfile.write_text("".join(f"{n} {t}\n" for n, t in NAMES) + "kubernetes.default.svc.cluster.local A\n")
    with KdnsProcess("--manifests", EXAMPLE) as kdns:
        questions = ceiling.distinct_questions([str(qfile)])
        assert len(questions) == len(NAMES)  # the repeated line is asked once
        answers = ceiling.record(kdns.port, questions)
        direct = {n: kdns.query(n, t) for n, t in NAMES}
    path = tmp_path / "answers.bin"
    ceiling.save(str(path), answers)
    assert ceiling.load(str(path)) == answers
    return str(path), direct


def test_ceiling_replays_kdns_answers_with_the_query_id(recorded):
    path, direct = recorded
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "perf", "ceiling.py"), "--answers", path],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"udp=127\.0\.0\.1:(\d+)", line).group(1))
        assert f"answers={len(NAMES)}" in line
        for name, rdtype in NAMES:
            q = dns.message.make_query(name, rdtype, use_edns=False)
            reply = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
            assert reply.id == q.id
            want = direct[name]
            assert reply.rcode() == want.rcode() and reply.answer == want.answer
            assert reply.additional == [r for r in want.additional if r.rdtype != 41]  # kdns's had EDNS
        # a question it was not given: no answer at all (counted)
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query("other.default.svc.cluster.local", "A"), "127.0.0.1", port=port,
                          timeout=0.5)
        # with EDNS the question is found by walking the name
        q = dns.message.make_query(NAMES[0][0], "A", use_edns=0)
        assert dns.query.udp(q, "127.0.0.1", port=port, timeout=3).answer == direct[NAMES[0][0]].answer
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "stopped unknown_questions=1" in out


def test_forwarding_ceiling_hands_unknown_questions_to_its_upstream(recorded):
    """perf/ceiling.py --forward: what it has answers for is replayed; anything else goes to the upstream
    with an ID of its own and comes back with the client's, answer intact (the forward-miss floor)."""
    from upstream import FakeUpstream

    path, direct = recorded
    with FakeUpstream({("www.example.test", "A"): ["192.0.2.7"], ("mail.example.test", "AAAA"): ["2001:db8::5"]}) as up:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "perf", "ceiling.py"), "--answers", path,
                                 "--forward", f"127.0.0.1:{up.port}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            line = proc.stdout.readline()
            port = int(re.search(r"udp=127\.0\.0\.1:(\d+)", line).group(1))
            assert f"forward=127.0.0.1:{up.port}" in line
            for i, (name, rdtype, want) in enumerate([("www.example.test", "A", "192.0.2.7"),
                                                      ("mail.example.test", "AAAA", "2001:db8::5")] * 3):
                q = dns.message.make_query(name, rdtype)
                q.id = 1000 + i
                reply = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
                assert reply.id == q.id and [rd.to_text() for rd in reply.answer[0]] == [want]
            q = dns.message.make_query(NAMES[0][0], NAMES[0][1], use_edns=False)  # recorded: replayed, not forwarded
            assert dns.query.udp(q, "127.0.0.1", port=port, timeout=3).answer == direct[NAMES[0][0]].answer
            assert len(up.queries) == 6
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
    assert "forwarded=6" in out


def test_question_of_stops_at_the_question():
    q = dns.message.make_query("a.b.example", "AAAA", use_edns=0).to_wire()
    assert ceiling.question_of(q) == b"\x01a\x01b\x07example\x00\x00\x1c\x00\x01"
    assert ceiling.question_of(q[:20]) is None  # cut inside the name
    assert ceiling.question_of(b"\x00" * 12 + b"\xc0\x0c\x00\x01\x00\x01") is None  # no pointer in a question


def report(**over) -> dict:
    base = {
        "results": [{"server": "kdns", "mix": "a", "qps": 100_000}, {"server": "ceiling", "mix": "a", "qps": 110_000},
                    {"server": "kdns", "mix": "uncached", "qps": 40_000},
                    {"server": "kdns", "mix": "forward-cached", "qps": 75_000},
                    {"server": "kdns", "mix": "forward-miss", "qps": 20_000}],
        "cpu": [{"server": "kdns", "us_per_query": 9.0, "rate": 20_000, "workers": 1},
                {"server": "knot", "us_per_query": 4.0, "rate": 20_000, "workers": 1}],
        "flood": {"hit_pct": 99.5, "hot_rate": 2000, "hot": {"p99_ms": 1.5, "lost_pct": 0.0}, "flood": {"qps": 9000}},
        "target_size": [10_000, 100_000],
        "startup": [{"source": "manifests", "services": 10_002, "endpoints": 100_003, "gen_services": 10_000,
                     "gen_endpoints": 100_000, "ready_s": 2.5},
                    {"source": "api", "services": 10_002, "endpoints": 100_003, "gen_services": 10_000,
                     "gen_endpoints": 100_000, "ready_s": 3.5, "VmRSS": 99 * 1024, "rss_peak_relist": 120 * 1024,
                     "relist_s": 4.0}],
        "workers": {"one": {"us_per_query": 10.0}, "two": {"us_per_query": 10.5, "rate": 20_000},
                    "shares": [0.45, 0.55]},
        "event_latency": {"p99_ms": 0.7, "p50_ms": 0.5, "changes": 300},
    }
    base.update(over)
    return base


class verdicts:
    """target row verdicts by the start of the row's text"""

    def __init__(self, rep: dict):
        self.rows = targets.target_rows(rep)

    def __getitem__(self, prefix: str) -> bool | None:
        (ok,) = [ok for what, _, _, ok in self.rows if what.startswith(prefix)]
        return ok


def test_target_rows_compute_each_ratio_and_verdict():
    rows = targets.target_rows(report())
    assert len(rows) == 11  # every row of the table
    v = verdicts(report())
    assert v["cluster hits, kubeadm Corefile"] is False  # 9 / 4 = 2.25x Knot
    assert v["cluster hits at saturation vs the ceiling responder"] is True  # 0.91x
    assert v["`uncached`"] is False  # 0.40x
    assert v["`flood`"] is True
    assert v["`forward-cached` vs cluster hits"] is True  # 0.75x
    assert v["`forward-miss` vs cluster hits"] is False  # 0.20x
    assert v["10k svc + 100k endpoints from manifests"] is True
    assert v["same from the API"] is False  # 3.5 s
    assert v["same: RSS"] is False  # relist peak 120 MiB > 115
    assert v["`--workers 2` at a fixed rate"] is True
    assert v["event → answer"] is True
    measured = {what.split(":")[0]: m for what, _, m, _ in rows}
    assert measured["cluster hits, kubeadm Corefile"].startswith("2.25×")
    # measured without the kubeadm Corefile, the Corefile row has a figure but no verdict
    assert verdicts(report(corefile=None))["cluster hits, kubeadm Corefile"] is None
    assert verdicts(report(corefile=".:53 {}"))["cluster hits, kubeadm Corefile"] is False


def test_missing_measurements_are_not_verdicts():
    rep = report(results=[], cpu=[], flood=None, startup=[], workers={"error": "did not start"}, event_latency=None)
    rows = targets.target_rows(rep)
    assert len(rows) == 11
    assert all(ok is None and "not measured" in m for _, _, m, ok in rows)
    # a worker share under 35% fails the row even when CPU is fine
    assert verdicts(report(workers={"one": {"us_per_query": 10.0}, "two": {"us_per_query": 10.0, "rate": 1},
                                    "shares": [0.3, 0.7]}))["`--workers 2` at a fixed rate"] is False
    # the flood row needs the hot set's answers too: hits at 100% with 5% lost fail
    flood = {"hit_pct": 100.0, "hot_rate": 2000, "hot": {"p99_ms": 1.0, "lost_pct": 5.0}, "flood": {}}
    assert verdicts(report(flood=flood))["`flood`"] is False


def test_hits_vs_ceiling_takes_the_alternated_runs_when_measured():
    """run.py's hits_alternated: the ratio of the best alternated runs decides the row; the throughput table's
    figures (runs minutes apart) are shown beside it, not used."""
    alternated = {"kdns": {"qps": [80_000, 84_000]}, "ceiling": {"qps": [100_000, 105_000]},
                  "pair_ratios": [0.8, 0.8]}
    rep = report(alternated=alternated)  # apart: 100k / 110k = 0.91x; alternated: 84k / 105k = 0.80x
    assert verdicts(rep)["cluster hits at saturation vs the ceiling responder"] is False
    (measured,) = [m for what, _, m, _ in targets.target_rows(rep) if what.startswith("cluster hits at")]
    assert measured.startswith("0.80× (kdns `a` 84,000 / ceiling `a` 105,000 QPS") and "0.91×" in measured
    alternated["kdns"]["qps"] = [95_000, 90_000]
    assert verdicts(rep)["cluster hits at saturation vs the ceiling responder"] is True  # 0.90x
    # not measured (no ceiling run beside kdns): the table's figures decide
    assert verdicts(report(alternated=None))["cluster hits at saturation vs the ceiling responder"] is True
