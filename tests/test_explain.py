"""kdns explain: its answers are the server's (generated queries against the real server over UDP), its
explanations for the scenarios users hit (golden text), and the console script's exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness import EXAMPLE, ROOT, KdnsProcess, wait_until
from upstream import FakeUpstream

from kdns.cli import _load, build_parser
from kdns.explain import Explainer, Question, candidates
from kdns.explain_cli import load_index, offline_blocks, render
from kdns.log import Logger

UPSTREAM_RECORDS = {("payments.example.com", "A"): ["192.0.2.10"], ("example.org", "A"): ["192.0.2.20"],
                    ("example.org", "AAAA"): ["2001:db8::20"], ("www.example.org", "CNAME"): ["example.org."]}


def explainer(*flags: str) -> Explainer:
    """An offline Explainer built the way `kdns explain` builds it, from these command-line flags."""
    args = build_parser().parse_args(["explain", "x", *flags])

    async def build():
        settings = _load(args)
        index, unfiltered = await load_index(settings, Logger(level="error"), args)
        return Explainer(offline_blocks(settings, index, Logger(level="error"), args.resolv_conf), unfiltered)
    return asyncio.run(build())


def explain(ex: Explainer, name: str, **kw) -> dict:
    return asyncio.run(ex.explain(Question(name, **kw)))


def normalised(text: str) -> str:
    """Golden text without what changes run to run: ages and the upstream's port."""
    text = re.sub(r"^   \d+[smh] ago  ", "   <age> ago  ", text, flags=re.M)
    text = re.sub(r", \d+ s left", ", <n> s left", text)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", text)


# ---------------------------------------------------------------------------------------- same answers


def _names() -> st.SearchStrategy[str]:
    services = ["gateway.shop", "api.shop", "payments.shop", "legacy-api.shop", "search.shop", "db.data",
                "db-peers.data", "cache.data", "kubernetes.default", "kube-dns.kube-system", "gatewy.shop",
                "db.shop", "api.data", "nope.default", "gateway.shop.default", "example.org.shop", "db.data.data"]
    svc = st.sampled_from(services).map(lambda s: s + ".svc.cluster.local")
    endpoint = st.sampled_from(["db-0", "db-1", "db-2", "10-244-1-40", "x"]).flatmap(
        lambda e: st.sampled_from(["db.data", "db-peers.data", "cache.data"]).map(
            lambda s: f"{e}.{s}.svc.cluster.local"))
    srv = st.sampled_from(["_http._tcp", "_https._tcp", "_dns._udp", "_postgres._tcp", "_x._tcp"]).flatmap(
        lambda p: st.sampled_from(services[:8]).map(lambda s: f"{p}.{s}.svc.cluster.local"))
    pod = st.sampled_from(["10-244-1-10", "10-244-9-9", "fd00-10-244--7", "bad"]).flatmap(
        lambda ip: st.sampled_from(["shop", "data", "nons"]).map(lambda ns: f"{ip}.{ns}.pod.cluster.local"))
    reverse = st.sampled_from(["10.96.100.10", "10.244.1.20", "10.96.0.1", "10.1.2.3", "10.96.0.10"]).map(
        lambda ip: ".".join(reversed(ip.split("."))) + ".in-addr.arpa")
    special = st.sampled_from(["cluster.local", "dns-version.cluster.local", "ns.dns.cluster.local",
                               "svc.cluster.local", "shop.svc.cluster.local", "x.cluster.local",
                               "example.org", "www.example.org", "payments.example.com", "nx.example.org"])
    return st.one_of(svc, endpoint, srv, pod, reverse, special)


def _canonical(rtype: str, data: str) -> str:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), data).to_text().lower()


@pytest.fixture(scope="module", params=[(), ("--autopath",)], ids=["plain", "autopath"])
def live(request):
    with FakeUpstream(UPSTREAM_RECORDS) as upstream:
        flags = ["--manifests", EXAMPLE, "--pods", "insecure", "--upstream", f"127.0.0.1:{upstream.port}",
                 *request.param]
        with KdnsProcess(*flags) as server:
            yield server, explainer(*flags)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_names(), qtype=st.sampled_from(["A", "AAAA", "SRV", "TXT", "PTR", "CNAME", "SOA", "NS"]))
@example(name="gateway.shop.default.svc.cluster.local", qtype="A")  # autopath finds gateway.shop
@example(name="example.org.shop.svc.cluster.local", qtype="AAAA")  # autopath asks upstream
@example(name="db-0.db.data.svc.cluster.local", qtype="A")
def test_explain_final_answer_is_the_wire_answer(live, name, qtype):
    """For generated questions, explain's final rcode and answer records equal the running server's
    answer over UDP (dnspython, TCP when truncated), with and without autopath."""
    server, ex = live
    report = explain(ex, name + ".", qtype=qtype)
    final = report["queries"][-1]
    msg = dns.message.make_query(name + ".", qtype)
    wire, _ = dns.query.udp_with_fallback(msg, "127.0.0.1", port=server.port, timeout=10)
    assert final["rcode"] == dns.rcode.to_text(wire.rcode())
    got = sorted((a["name"].lower(), a["type"], _canonical(a["type"], a["data"])) for a in final["answer"])
    want = sorted((rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype), rd.to_text().lower())
                  for rrset in wire.answer for rd in rrset)
    assert got == want
    assert all(a["source"] for a in final["answer"])


# ---------------------------------------------------------------------------------------- scenarios

TYPO = """\
kdns explain gatewy.shop A from default (ndots 5)
search: default.svc.cluster.local svc.cluster.local cluster.local
note: 'gatewy.shop' has 1 dot (< ndots 5): the search list is tried first, the name as given last
1. gatewy.shop.default.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   why: no Service 'shop' in namespace 'default'
2. gatewy.shop.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   why: no Service 'gatewy' in namespace 'shop'
   fix: did you mean gateway.shop? (a typo: 1 edit)
3. gatewy.shop.cluster.local. A -> NXDOMAIN (kubernetes)
   why: not a cluster name: names under cluster.local are <service>.<namespace>.svc.cluster.local or <ip>.<namespace>.pod.cluster.local
4. gatewy.shop. A -> REFUSED
   why: outside the zones kdns serves here and no forward plugin covers it: REFUSED
answer: none of the 4 names resolved (last: gatewy.shop. REFUSED)
cost: this lookup sends 8 queries (4 names x A/AAAA)
recent changes:
   <age> ago  Namespace default created
   <age> ago  Namespace shop created
"""


def test_typo_suggests_the_near_name():
    report = explain(explainer("--manifests", EXAMPLE), "gatewy.shop")
    assert normalised(render(report)) == TYPO
    assert not report["final"]["ok"]


WRONG_NAMESPACE = """\
kdns explain api A from data (ndots 5)
search: data.svc.cluster.local svc.cluster.local cluster.local
note: 'api' has 0 dots (< ndots 5): the search list is tried first, the name as given last
1. api.data.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   why: no Service 'api' in namespace 'data'
   fix: did you mean api.shop? (Service shop/api exists)
2. api.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   why: no namespace 'api' (no Namespace object, nothing in it)
3. api.cluster.local. A -> NXDOMAIN (kubernetes)
   why: not a cluster name: names under cluster.local are <service>.<namespace>.svc.cluster.local or <ip>.<namespace>.pod.cluster.local
4. api. A -> REFUSED
   why: outside the zones kdns serves here and no forward plugin covers it: REFUSED
answer: none of the 4 names resolved (last: api. REFUSED)
cost: this lookup sends 8 queries (4 names x A/AAAA)
recent changes:
   <age> ago  Namespace data created
"""


def test_wrong_namespace_names_the_right_one():
    assert normalised(render(explain(explainer("--manifests", EXAMPLE), "api", namespace="data"))) == WRONG_NAMESPACE


HEADLESS_NOTHING_READY = """\
kdns explain search.shop A from default (ndots 5)
search: default.svc.cluster.local svc.cluster.local cluster.local
note: 'search.shop' has 1 dot (< ndots 5): the search list is tried first, the name as given last
1. search.shop.default.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   why: no Service 'shop' in namespace 'default'
2. search.shop.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   why: headless Service shop/search has no ready endpoints (1 endpoint, 0 ready): a headless name has nothing to answer
   fix: wait for the pods to pass their readiness probes, or set publishNotReadyAddresses: true
3. search.shop.cluster.local. A -> NXDOMAIN (kubernetes)
   why: not a cluster name: names under cluster.local are <service>.<namespace>.svc.cluster.local or <ip>.<namespace>.pod.cluster.local
   fix: did you mean search.shop.svc.cluster.local? (Service shop/search exists)
4. search.shop. A -> REFUSED
   why: outside the zones kdns serves here and no forward plugin covers it: REFUSED
answer: none of the 4 names resolved (last: search.shop. REFUSED)
cost: this lookup sends 8 queries (4 names x A/AAAA)
recent changes:
   <age> ago  Namespace default created
   <age> ago  Namespace shop created
   <age> ago  Service shop/search created (headless)
   <age> ago  EndpointSlice shop/search-q8w4z created (1 endpoint, 0 ready)
"""


def test_headless_with_nothing_ready():
    assert normalised(render(explain(explainer("--manifests", EXAMPLE), "search.shop"))) == HEADLESS_NOTHING_READY


EXTERNALNAME_CHAIN = """\
kdns explain legacy-api A from shop (ndots 5)
search: shop.svc.cluster.local svc.cluster.local cluster.local
note: 'legacy-api' has 0 dots (< ndots 5): the search list is tried first, the name as given last
1. legacy-api.shop.svc.cluster.local. A -> NOERROR (kubernetes)
   legacy-api.shop.svc.cluster.local. 5 CNAME api.shop.svc.cluster.local.
      from Service shop/legacy-api (ExternalName -> api.shop.svc.cluster.local)
   api.shop.svc.cluster.local. 5 A 10.96.200.20
      from Service shop/api (ClusterIP)
answer: legacy-api.shop.svc.cluster.local. (2 records)
recent changes:
   <age> ago  Namespace shop created
   <age> ago  Service shop/api created (ClusterIP 10.96.200.20 fd00:10:96::c8)
   <age> ago  Service shop/legacy-api created (ExternalName api.shop.svc.cluster.local)
"""

EXTERNALNAME_UNRESOLVED = """\
kdns explain payments.shop.svc.cluster.local. A from default (ndots 5)
note: 'payments.shop.svc.cluster.local.' ends with a dot: only that name is asked (no search list)
1. payments.shop.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   payments.shop.svc.cluster.local. 5 CNAME payments.example.com.
      from Service shop/payments (ExternalName -> payments.example.com)
   why: ExternalName Service shop/payments -> payments.example.com: the target does not resolve (asked upstream 127.0.0.1:<port>: NXDOMAIN)
answer: none resolved (last: payments.shop.svc.cluster.local. NXDOMAIN)
recent changes:
   <age> ago  Namespace shop created
   <age> ago  Service shop/payments created (ExternalName payments.example.com)
"""


def test_externalname_chain_and_a_target_that_does_not_resolve():
    assert normalised(render(explain(explainer("--manifests", EXAMPLE), "legacy-api", namespace="shop"))) \
        == EXTERNALNAME_CHAIN
    with FakeUpstream({}) as upstream:
        ex = explainer("--manifests", EXAMPLE, "--upstream", f"127.0.0.1:{upstream.port}")
        report = explain(ex, "payments.shop.svc.cluster.local.")
        assert upstream.count("payments.example.com", "A") == 1  # the chase really went upstream
    assert normalised(render(report)) == EXTERNALNAME_UNRESOLVED


FILTERED_NAMESPACE = """\
2. db.data.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   why: namespace 'data' is excluded by the kubernetes `namespaces` filter (served: default, shop)
   fix: namespace data has 3 Service(s) in the source (cache, db, db-peers)
   fix: add data to the kubernetes plugin's `namespaces` list to serve it
"""

FILTERED_LABELS = """\
1. gateway.shop.svc.cluster.local. A -> NXDOMAIN (kubernetes)
   why: no Service 'gateway' in namespace 'shop'
   fix: Service shop/gateway exists in the source but the kubernetes `labels` filter (provider=kubernetes) leaves it out: its labels do not match
"""


def test_filtered_namespace_and_labels():
    text = render(explain(explainer("--manifests", EXAMPLE, "--namespaces", "shop,default"), "db.data"))
    assert FILTERED_NAMESPACE in text
    text = render(explain(explainer("--manifests", EXAMPLE, "--labels", "provider=kubernetes"),
                          "gateway.shop.svc.cluster.local."))
    assert FILTERED_LABELS in text


def test_search_path_amplification_and_autopath():
    report = explain(explainer("--manifests", EXAMPLE), "gateway.shop")
    assert [q["name"] for q in report["queries"]] == candidates("gateway.shop", 5, [
        "default.svc.cluster.local", "svc.cluster.local", "cluster.local"])[:2]
    assert "cost: this lookup sends 4 queries (2 names x A/AAAA); gateway.shop.svc.cluster.local. sends 2" \
        in render(report)
    assert report["cost"]["autopath_would"] == "gateway.shop.svc.cluster.local."
    report = explain(explainer("--manifests", EXAMPLE, "--autopath"), "gateway.shop")
    assert len(report["queries"]) == 1 and report["queries"][0]["plugin"] == "autopath"
    text = render(report)
    assert "autopath answered server-side: CNAME to gateway.shop.svc.cluster.local." in text
    assert "cost: autopath answered server-side; the pod sends 2 queries (A/AAAA)" in text
    assert report["cost"]["autopath_would"] == ""
    assert candidates("a.b.c.d.e.f", 5, ["x"]) == ["a.b.c.d.e.f.", "a.b.c.d.e.f.x."]  # 5 dots: as given first


REWRITE_FORWARD = """\
kdns explain web.corp. A from default (ndots 5)
note: 'web.corp.' ends with a dot: only that name is asked (no search list)
1. web.corp. A -> NOERROR (forward)
   rewritten to example.org. by rewrite rule at <Corefile>:2:5
   web.corp. 30 A 192.0.2.20
      from upstream 127.0.0.1:<port> (forward)
answer: web.corp. (1 record)
"""

REWRITE_CACHED = """\
1. web.corp. A -> NOERROR (cache)
   rewritten to example.org. by rewrite rule at <Corefile>:2:5
   web.corp. 30 A 192.0.2.20
      from the cache plugin: a forwarded answer, <n> s left
"""


def test_rewrite_then_forward_then_cache(tmp_path):
    with FakeUpstream(UPSTREAM_RECORDS) as upstream:
        corefile = tmp_path / "Corefile"
        corefile.write_text(f""".:53 {{
    rewrite name exact web.corp. example.org.
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        manifests {EXAMPLE}
    }}
    cache 30
    forward . 127.0.0.1:{upstream.port}
}}
""")
        ex = explainer("-conf", str(corefile))
        first = normalised(render(explain(ex, "web.corp."))).replace(str(corefile), "<Corefile>")
        second = normalised(render(explain(ex, "web.corp."))).replace(str(corefile), "<Corefile>")
        assert upstream.count("example.org", "A") == 1  # the second answer came from the cache
    assert first == REWRITE_FORWARD
    assert REWRITE_CACHED in second


def test_other_qtype_and_oversized_names():
    report = explain(explainer("--manifests", EXAMPLE), "db.data.svc.cluster.local.", qtype="AAAA")
    only = report["queries"][0]
    assert (only["rcode"], only["answer"]) == ("NOERROR", [])
    assert only["reason"] == "Service data/db (Headless, 3 endpoints, 2 ready) has no AAAA records; it has A only"
    assert only["hints"][0] == ("the name has A and SRV records: it exists, just not as AAAA "
                                "(a single-stack service)")
    report = explain(explainer("--manifests", EXAMPLE), "x" * 64 + ".shop")
    assert {q["rcode"] for q in report["queries"]} == {"NOT SENT"}
    assert "is 64 bytes: over the 63-byte limit, never sent" in report["queries"][0]["reason"]
    report = explain(explainer("--manifests", EXAMPLE), ".".join(["a" * 60] * 4), namespace="shop")
    assert report["queries"][0]["rcode"] == "NOT SENT" and "over the 253-byte limit" in report["queries"][0]["reason"]


# ---------------------------------------------------------------------------------------- the console script

KDNS = os.path.join(os.path.dirname(sys.executable), "kdns")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KDNS, "explain", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_cli_exit_codes_and_json():
    found = run_cli("gateway", "--from", "shop", "--manifests", EXAMPLE, "--json")
    assert found.returncode == 0, found.stderr
    report = json.loads(found.stdout)
    assert report["final"] == {"name": "gateway.shop.svc.cluster.local.", "rcode": "NOERROR", "records": 1, "ok": True}
    assert report["queries"][0]["answer"][0]["source"] == "Service shop/gateway (ClusterIP)"
    assert {"question", "notes", "queries", "final", "cost", "history"} == set(report)
    missing = run_cli("gatewy", "--from", "shop", "--manifests", EXAMPLE)
    assert missing.returncode == 1
    assert "did you mean gateway.shop? (a typo: 1 edit)" in missing.stdout
    bad_type = run_cli("gateway", "--type", "BOGUS", "--manifests", EXAMPLE)
    assert bad_type.returncode == 2 and "unknown record type 'BOGUS'" in bad_type.stderr
    no_source = run_cli("gateway")
    assert no_source.returncode == 2 and "no cluster source" in no_source.stderr


# ---------------------------------------------------------------------------------------- live: /explain


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket inodes matched in /proc/net/tcp{,6}, state LISTEN)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def explain_port(server: KdnsProcess) -> int:
    line = server.wait_for_log(r"INFO listening ")
    return int(re.search(r"explain=127\.0\.0\.1:(\d+)", line).group(1))


def test_explain_endpoint_is_off_by_default():
    with KdnsProcess("--manifests", EXAMPLE, "--metrics-listen", "127.0.0.1:0") as server:
        line = server.wait_for_log(r"INFO listening ")
        assert "explain=" not in line
        # nothing but DNS and the metrics listener asked for: no explain listener anywhere
        assert listening_tcp_ports(server.proc.pid) == {server.port, server.http["metrics"]}
        status, _ = server.get("metrics", "/explain?name=gateway.shop")
        assert status == 404
        refused = run_cli("gateway", "--server", f"http://127.0.0.1:{server.http['metrics']}")
        assert refused.returncode == 2 and "HTTP 404" in refused.stderr


def test_explain_endpoint_answers_as_the_offline_command():
    with KdnsProcess("--manifests", EXAMPLE, "--explain-listen", "0") as server:
        port = explain_port(server)
        assert listening_tcp_ports(server.proc.pid) == {server.port, port}
        live = run_cli("gatewy.shop", "--server", f"http://127.0.0.1:{port}")
        offline = run_cli("gatewy.shop", "--manifests", EXAMPLE)
        assert live.returncode == offline.returncode == 1
        assert normalised(live.stdout) == normalised(offline.stdout) == TYPO
        found = run_cli("gateway", "--from", "shop", "--server", f"http://127.0.0.1:{port}", "--json")
        assert found.returncode == 0
        assert json.loads(found.stdout)["queries"][0]["answer"][0]["source"] == "Service shop/gateway (ClusterIP)"
        bad = run_cli("gateway", "--type", "NOPE", "--server", f"http://127.0.0.1:{port}")
        assert bad.returncode == 2 and "unknown record type 'NOPE'" in bad.stderr


def test_explain_directive_binds_localhost_and_history_shows_a_change(tmp_path):
    manifests = tmp_path / "cluster.yaml"
    manifests.write_text(open(EXAMPLE).read())
    corefile = tmp_path / "Corefile"
    corefile.write_text(f""".:53 {{
    explain :0
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        manifests {manifests}
    }}
}}
""")
    with KdnsProcess("-conf", str(corefile), "--port-map", "53=0", "--bind", "127.0.0.1", listen=False) as server:
        port = explain_port(server)
        before = run_cli("search.shop.svc.cluster.local.", "--server", f"http://127.0.0.1:{port}", "--json")
        assert before.returncode == 1
        assert "no ready endpoints (1 endpoint, 0 ready)" in json.loads(before.stdout)["queries"][0]["reason"]
        manifests.write_text(open(EXAMPLE).read().replace("- addresses: [10.244.2.30]\n  conditions: {ready: false}",
                                                          "- addresses: [10.244.2.30]\n  conditions: {ready: true}"))
        wait_until(lambda: server.query("search.shop.svc.cluster.local.").answer, what="search.shop answered")
        after = run_cli("search.shop.svc.cluster.local.", "--server", f"http://127.0.0.1:{port}")
    assert after.returncode == 0
    assert "from EndpointSlice shop/search-q8w4z endpoint 0 (ready)" in after.stdout
    changes = [line.split("ago  ")[1] for line in after.stdout.splitlines() if " ago  " in line]
    assert changes[-2:] == ["EndpointSlice shop/search-q8w4z created (1 endpoint, 0 ready)",
                            "EndpointSlice shop/search-q8w4z updated (1 endpoint, 1 ready)"]


def test_explain_address_errors(tmp_path):
    from kdns.config import load_corefile
    from kdns.corefile import CorefileError
    corefile = tmp_path / "Corefile"
    corefile.write_text(".:53 {\n    explain 127.0.0.1:http\n}\n")
    with pytest.raises(CorefileError) as err:
        load_corefile(str(corefile))
    assert (err.value.line, err.value.col) == (2, 13)
    assert "explain: expected [HOST]:PORT (port 0-65535), got '127.0.0.1:http'" in str(err.value)
    corefile.write_text(".:53 {\n    explain :9155\n}\n.:54 {\n    explain 127.0.0.1:9156\n}\n")
    with pytest.raises(CorefileError) as err:
        load_corefile(str(corefile))
    assert err.value.line == 5 and "differs from another server block's (127.0.0.1:9155)" in str(err.value)
    bad = subprocess.run([KDNS, "serve", "--manifests", EXAMPLE, "--explain-listen", "99999"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--explain-listen" in bad.stderr


def test_readme_transcripts_are_real():
    """The README's `$ kdns explain` transcripts are what the command prints (ages aside)."""
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = [b for b in re.findall(r"```\n(\$ kdns explain .*?)```", text, re.S)]
    assert len(blocks) >= 2
    for block in blocks:
        command, *expected = block.splitlines()
        if "$ echo $?" in expected:
            at = expected.index("$ echo $?")
            expected, status = expected[:at], int(expected[at + 1])
        else:
            status = 0
        out = subprocess.run(["bash", "-c", command[2:].replace("kdns", KDNS, 1)], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
        assert out.returncode == status, out.stderr
        assert normalised(out.stdout) == normalised("\n".join(expected) + "\n"), command


def test_hosts_record_names_its_line(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# hosts\n10.0.0.1 other\n10.1.2.3 db.corp db\n")
    corefile = tmp_path / "Corefile"
    corefile.write_text(f".:53 {{\n    hosts {hosts} {{\n        fallthrough\n    }}\n"
                        f"    kubernetes cluster.local {{\n        manifests {EXAMPLE}\n    }}\n}}\n")
    report = explain(explainer("-conf", str(corefile)), "db.corp.")
    assert report["queries"][0]["plugin"] == "hosts"
    assert report["queries"][0]["answer"][0]["source"] == f"hosts file {hosts} line 3"


def test_kubeconfig_one_shot_list(tmp_path):
    """Offline against a cluster: one list through the real kubernetes client (the API double), then explain."""
    from apiserver import FakeApiServer, endpointslice, kubeconfig_args, namespace, service
    with FakeApiServer() as api:
        api.apply(namespace("shop"))
        api.apply(service("shop", "db", "None"))
        endpoints = endpointslice("shop", "db", "db-abc", "10.244.1.5", "10.244.2.6", ready=False)
        endpoints["endpoints"][0]["conditions"]["terminating"] = True
        api.apply(endpoints)
        out = run_cli("db", "--from", "shop", *kubeconfig_args(api, tmp_path), "--json")
    assert out.returncode == 1, out.stderr
    first = json.loads(out.stdout)["queries"][0]
    assert (first["name"], first["rcode"]) == ("db.shop.svc.cluster.local.", "NXDOMAIN")
    assert first["reason"].startswith("headless Service shop/db has no ready endpoints "
                                      "(2 endpoints, 0 ready, 1 terminating)")


def test_from_a_pod():
    ok = run_cli("gateway", "--from", "shop/gateway-5d8f7c9b4-abcde", "--manifests", EXAMPLE, "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["question"]["from"] == "shop/gateway-5d8f7c9b4-abcde"
    assert report["notes"][0].startswith("asking as pod shop/gateway-5d8f7c9b4-abcde (10.244.")
    unknown = run_cli("gateway", "--from", "shop/nope", "--manifests", EXAMPLE)
    assert unknown.returncode == 2 and "kdns knows no such pod" in unknown.stderr


POD_WITH_DNS_CONFIG = """
---
apiVersion: v1
kind: Pod
metadata: {name: custom, namespace: data}
spec:
  dnsPolicy: "None"
  dnsConfig:
    nameservers: [10.96.0.10]
    searches: [shop.svc.cluster.local, corp.example]
    options: [{name: ndots, value: "2"}, {name: edns0}]
  containers: [{name: c, image: busybox}]
status: {podIP: 10.244.3.3}
"""


def test_from_a_pod_replays_its_dns_config(tmp_path):
    manifests = tmp_path / "cluster.yaml"
    manifests.write_text(open(EXAMPLE).read() + POD_WITH_DNS_CONFIG)
    ex = explainer("--manifests", str(manifests))
    report = explain(ex, "gateway", namespace="data", pod="custom")
    assert report["question"]["search"] == ["shop.svc.cluster.local", "corp.example"]
    assert report["question"]["ndots"] == 2
    assert [q["name"] for q in report["queries"]] == ["gateway.shop.svc.cluster.local."]
    assert "the pod's dnsConfig sets ndots 2" in report["notes"]
    dotted = explain(ex, "api.shop.svc", namespace="data", pod="custom")  # 2 dots: asked as given first
    assert [q["name"] for q in dotted["queries"]][:2] == ["api.shop.svc.", "api.shop.svc.shop.svc.cluster.local."]
    flags_win = explain(ex, "gateway", namespace="data", pod="custom", ndots=5, search=["data.svc.cluster.local"])
    assert [q["name"] for q in flags_win["queries"]][0] == "gateway.data.svc.cluster.local."
