"""Issue 11's measurements for perf/run.py (CPU per query at a fixed rate, flood, --workers, event
latency) and its table of targets, each a ratio inside one run.

Every function takes running servers (perf/servers.py) and returns plain dicts, which run.py keeps
in its JSON report; `target_rows(report)` turns a report into (what, target, measured, met) rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import servers  # noqa: E402

MIB = 1024  # KiB per MiB (VmRSS is in KiB)


def _sum(metrics: dict[str, float], prefix: str) -> float:
    """Sum of every sample whose name (labels included) starts with prefix."""
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def cache_hits(metrics: dict[str, float]) -> float:
    """Answers kdns gave from a cache: its answer cache plus the Corefile's `cache` plugin."""
    return _sum(metrics, "kdns_answer_cache_hits_total") + _sum(metrics, "coredns_cache_hits_total")


def udp_queries(metrics: dict[str, float]) -> float:
    return _sum(metrics, 'kdns_queries_total{proto="udp"}')


# ------------------------------------------------------------------------------------ CPU per query


def cpu_per_query(dnsperf, srv, qfile: str, rate: float, duration: float, clients: int = 4) -> dict:
    """Offer `rate` QPS of qfile for `duration` s (dnsperf -Q); the server's CPU time (/proc/PID/stat
    utime+stime of the process and its children: NSD's and kdns's forked workers) / answered queries."""
    m0 = srv.scrape() if hasattr(srv, "scrape") else {}
    c0 = srv.cpu_seconds()
    st = dnsperf(srv.port, qfile, duration=duration, rate=rate, clients=clients, outstanding=500)
    cpu = srv.cpu_seconds() - c0
    m1 = srv.scrape() if hasattr(srv, "scrape") else {}
    answered = st.get("completed", 0)
    out = {"rate": rate, "duration": duration, "clients": clients, "qps": st["qps"], "answered": answered,
           "lost_pct": st.get("lost_pct", 0.0), "cpu_s": cpu,
           "us_per_query": cpu / answered * 1e6 if answered else None, "cmd": st["cmd"],
           "pids": len(srv.pids())}
    if m0 and m1:
        out["worker0_queries"] = udp_queries(m1) - udp_queries(m0)
        if answered:
            out["hit_pct"] = min(100.0, 100.0 * (cache_hits(m1) - cache_hits(m0)) / answered)
    return out


def least_cpu_per_query(dnsperf, srv, qfile: str, rate: float, duration: float, runs: int, clients: int = 4) -> dict:
    """cpu_per_query `runs` times; the run with the least CPU per answered query (the least disturbed: a busy
    neighbour's cache and memory traffic only ever adds to the server's cost, as it only lowers QPS in the
    saturation rows, which keep their best run), every run's figure in `runs_us`."""
    rows = [cpu_per_query(dnsperf, srv, qfile, rate, duration, clients) for _ in range(max(1, runs))]
    best = min(rows, key=lambda r: float("inf") if r["us_per_query"] is None else r["us_per_query"])
    best["runs_us"] = [r["us_per_query"] for r in rows]
    return best


def _runs_us(row: dict) -> str:
    return " / ".join(f"{u:.1f}" for u in row.get("runs_us", []) if u is not None) or "–"


def worker_shares(row: dict, workers: int) -> list[float] | None:
    """Share of the answered queries per worker. Worker 0 serves /metrics, so its own count is known;
    with two workers the other one answered the rest."""
    if workers != 2 or not row.get("answered") or row.get("worker0_queries") is None:
        return None
    w0 = min(1.0, row["worker0_queries"] / row["answered"])
    return [w0, 1.0 - w0]


# ------------------------------------------------------------------------------------ flood


def flood(srv, hot_file: str, flood_file: str, hot_rate: float, duration: float, load_cpu: str,
          loadgen, clients: int = 4, outstanding: int = 200) -> dict:
    """The hot set at a fixed rate (perf/loadgen.py, open loop: its p99) while dnsperf sends unique
    cluster names at full speed (-n 1, one pass of distinct names) for the same time. The hot set is
    asked once first, so a fully protected cache answers all of it. Hit rate = cache hits counted by
    kdns during the run / hot answers (the flood's names are each asked once: never a hit)."""
    warm = loadgen(srv.port, hot_file, min(hot_rate, 2000), 1.0)
    cmd = servers.niced(["taskset", "-c", load_cpu, "dnsperf", "-s", servers.HOST, "-p", str(srv.port), "-d",
                         flood_file, "-n", "1", "-l", f"{duration + 1:g}", "-c", str(clients), "-q",
                         str(outstanding), "-t", "1"])
    m0 = srv.scrape()
    c0, t0 = srv.cpu_seconds(), time.monotonic()
    bg = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)  # the flood is on before the hot set's measured window starts
        hot = loadgen(srv.port, hot_file, hot_rate, duration, realtime=True)
    finally:
        try:
            out, _ = bg.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            bg.kill()
            out, _ = bg.communicate(timeout=10)
    wall = time.monotonic() - t0
    m1 = srv.scrape()
    from run import parse_dnsperf
    fl = parse_dnsperf(out)
    hits = cache_hits(m1) - cache_hits(m0)
    hot_answered = hot["received"]
    return {"hot_rate": hot_rate, "duration": duration, "warm_lost": warm["lost"], "realtime": hot.get("realtime"),
            "hot": {k: hot.get(k) for k in ("sent", "received", "lost", "lost_pct", "qps", "p50_ms", "p99_ms",
                                            "p999_ms", "max_ms", "behind", "rcodes")},
            "flood": {k: fl.get(k) for k in ("sent", "completed", "lost_pct", "qps", "rcodes")},
            "hits": hits, "hit_pct": min(100.0, 100.0 * hits / hot_answered) if hot_answered else None,
            "srv_cpu": (srv.cpu_seconds() - c0) / wall * 100,
            "cmd": f"dnsperf -d flood.txt -n 1 -l {duration + 1:g} -c {clients} -q {outstanding} -t 1 + "
                   f"{'chrt -f 1 ' if hot.get('realtime') else ''}perf/loadgen.py --queries flood-hot.txt "
                   f"--rate {hot_rate:g} --duration {duration:g}"}


# ------------------------------------------------------------------------------------ event latency


def event_latency(changes: int) -> dict:
    """perf/event_latency.py's API mode: Service change in the API double -> changed answer."""
    import event_latency as ev
    values = sorted(v * 1000 for v in ev.run_api(changes))
    return {"changes": len(values), "p50_ms": ev.percentile(values, 50), "p99_ms": ev.percentile(values, 99),
            "max_ms": values[-1], "mean_ms": sum(values) / len(values)}


# ------------------------------------------------------------------------------------ targets


def _qps(report: dict, server: str, mix: str) -> float | None:
    for r in report.get("results", []):
        if r["server"] == server and r["mix"] == mix and r.get("qps"):
            return r["qps"]
    return None


def _ratio_row(what, target, num, den, num_label, den_label, limit, at_least=True):
    if not num or not den:
        return (what, target, f"not measured ({num_label}: {_q(num)}, {den_label}: {_q(den)})", None)
    v = num / den
    return (what, target, f"{v:.2f}× ({num_label} {num:,.0f} / {den_label} {den:,.0f} QPS)",
            v >= limit if at_least else v <= limit)


def _ceiling_row(report: dict, hit: float | None) -> tuple[str, str, str, bool | None]:
    """Hits vs the ceiling: from their alternated runs (run.py hits_alternated) when measured, the best run of
    each; the figures of the throughput table (each server's runs minutes apart) alongside."""
    what, target = "cluster hits at saturation vs the ceiling responder", "≥ 0.85×"
    apart = _ratio_row(what, target, hit, _qps(report, "ceiling", "a"), "kdns `a`", "ceiling `a`", 0.85)
    alt = report.get("alternated")
    if not alt or not alt["kdns"]["qps"] or not alt["ceiling"]["qps"]:
        return apart
    k, c = max(alt["kdns"]["qps"]), max(alt["ceiling"]["qps"])
    pairs = alt.get("pair_ratios") or []
    text = (f"{k / c:.2f}× (kdns `a` {k:,.0f} / ceiling `a` {c:,.0f} QPS, the best of {len(alt['kdns']['qps'])} "
            f"runs each, the two alternated run by run; run pairs " + " / ".join(f"{p:.2f}" for p in pairs)
            + "); measured minutes apart (the throughput table): " + apart[2])
    return (what, target, text, k / c >= 0.85)


def _q(v) -> str:
    return f"{v:,.0f}" if v else "–"


def target_rows(report: dict) -> list[tuple[str, str, str, bool | None]]:
    """The issue's table: (what, target, measured in this run, met: True/False/None = not measured)."""
    rows = []
    cpu = {c["server"]: c for c in report.get("cpu", []) if c.get("us_per_query") and c.get("workers", 1) == 1}
    k, kn = cpu.get("kdns"), cpu.get("knot")
    if k and kn:
        v = k["us_per_query"] / kn["us_per_query"]
        bare = "corefile" in report and not report["corefile"]  # --no-corefile: not what the target names
        rows.append(("cluster hits, kubeadm Corefile: CPU/query vs Knot at a fixed rate", "≤ 1.5× Knot",
                     f"{v:.2f}× (kdns {k['us_per_query']:.1f} µs, Knot {kn['us_per_query']:.1f} µs per query "
                     f"at {k['rate']:,.0f} QPS)" + ("; kdns ran bare (--no-corefile): no verdict" if bare else ""),
                     None if bare else v <= 1.5))
    else:
        rows.append(("cluster hits, kubeadm Corefile: CPU/query vs Knot at a fixed rate", "≤ 1.5× Knot",
                     "not measured", None))
    hit = _qps(report, "kdns", "a")
    rows.append(_ceiling_row(report, hit))
    rows.append(_ratio_row("`uncached` (every name new, NXDOMAIN) vs hits", "≥ 0.5×",
                           _qps(report, "kdns", "uncached"), hit, "`uncached`", "`a`", 0.5))
    fl = report.get("flood")
    if fl and fl.get("hit_pct") is not None and fl["hot"].get("p99_ms") is not None:
        ok = fl["hit_pct"] >= 99 and fl["hot"]["p99_ms"] < 2 and fl["hot"]["lost_pct"] < 1
        rows.append(("`flood`: hit rate of the hot set while unique names flood", "≥ 99%, hot-set p99 < 2 ms",
                     f"{fl['hit_pct']:.1f}% hits, p99 {fl['hot']['p99_ms']:.2f} ms, {fl['hot']['lost_pct']:.2f}% "
                     f"lost (hot set {fl['hot_rate']:,.0f} QPS; flood answered {_q(fl['flood'].get('qps'))} QPS)",
                     ok))
    else:
        rows.append(("`flood`: hit rate of the hot set while unique names flood", "≥ 99%, hot-set p99 < 2 ms",
                     "not measured", None))
    rows.append(_ratio_row("`forward-cached` vs cluster hits", "≥ 0.7×", _qps(report, "kdns", "forward-cached"),
                           hit, "`forward-cached`", "`a`", 0.7))
    row = _ratio_row("`forward-miss` vs cluster hits", "≥ 0.25×", _qps(report, "kdns", "forward-miss"), hit,
                     "`forward-miss`", "`a`", 0.25)
    floor = _qps(report, "ceiling", "forward-miss")
    if floor and hit:  # the least a forwarder on this loop does (perf/ceiling.py --forward): what kdns could reach
        row = (*row[:2], row[2] + f"; the ceiling's bare forwarder {floor:,.0f} QPS = {floor / hit:.2f}× kdns `a`",
               row[3])
    rows.append(row)
    size = tuple(report.get("target_size") or (10_000, 100_000))
    label = f"{size[0] // 1000}k svc + {size[1] // 1000}k endpoints"
    start = {r["source"]: r for r in report.get("startup", []) if (r.get("gen_services", r["services"]),
                                                                  r.get("gen_endpoints", r["endpoints"])) == size}
    for source, what in (("manifests", f"{label} from manifests: ready"),
                         ("api", "same from the API (initial paged list from the test API double)")):
        r = start.get(source)
        if r and r.get("ready_s") is not None:
            rows.append((what, "< 3 s", f"{r['ready_s']:.1f} s", r["ready_s"] < 3))
        else:
            rows.append((what, "< 3 s", "not measured" + (f" ({r['error'][:80]})" if r and r.get("error") else ""),
                         None))
    r = start.get("api")
    if r and r.get("VmRSS") and r.get("rss_peak_relist"):
        a, b = r["VmRSS"] / MIB, r["rss_peak_relist"] / MIB
        rows.append(("same: RSS at ready / peak during a full relist", "≤ 100 MiB / ≤ 115 MiB",
                     f"{a:.0f} / {b:.0f} MiB (relist took {r['relist_s']:.1f} s)", a <= 100 and b <= 115))
    else:
        rows.append(("same: RSS at ready / peak during a full relist", "≤ 100 MiB / ≤ 115 MiB", "not measured", None))
    w = report.get("workers")
    if w and w.get("one", {}).get("us_per_query") and w.get("two", {}).get("us_per_query"):
        v = w["two"]["us_per_query"] / w["one"]["us_per_query"]
        shares = w.get("shares")
        share_txt = " / ".join(f"{100 * s:.0f}%" for s in shares) if shares else "per-worker counts missing"
        ok = v <= 1.1 and bool(shares) and min(shares) >= 0.35
        rows.append(("`--workers 2` at a fixed rate: total CPU/query vs 1 worker; share of queries per worker",
                     "≤ 1.1×; each ≥ 35%", f"{v:.2f}× ({w['two']['us_per_query']:.1f} vs "
                     f"{w['one']['us_per_query']:.1f} µs at {w['two']['rate']:,.0f} QPS); shares {share_txt}", ok))
    else:
        rows.append(("`--workers 2` at a fixed rate: total CPU/query vs 1 worker; share of queries per worker",
                     "≤ 1.1×; each ≥ 35%", "not measured" + (f" ({w['error'][:80]})" if w and w.get("error") else ""),
                     None))
    ev = report.get("event_latency")
    if ev and ev.get("p99_ms") is not None:
        rows.append(("event → answer p99 (API)", "< 2 ms", f"{ev['p99_ms']:.2f} ms ({ev['changes']} changes, "
                     f"p50 {ev['p50_ms']:.2f} ms)", ev["p99_ms"] < 2))
    else:
        rows.append(("event → answer p99 (API)", "< 2 ms", "not measured", None))
    return rows


def render_target_table(report: dict) -> list[str]:
    out = ["### Against issue 11's targets (ratios inside this run)", "",
           "| what | target | measured | met |", "| --- | --- | --- | --- |"]
    for what, target, measured, ok in target_rows(report):
        out.append(f"| {what} | {target} | {measured} | {'–' if ok is None else 'yes' if ok else 'no'} |")
    out.append("")
    return out


# ------------------------------------------------------------------------------------ report sections


def _n(x, fmt="{:,.0f}"):
    return "–" if x is None or (isinstance(x, float) and x != x) else fmt.format(x)


def render_charts(chart_files: dict[str, str] | None) -> list[str]:
    """Markdown embedding the charts written next to BENCH.md (charts/NAME.svg)."""
    if not chart_files:
        return []
    from charts import TITLES
    out = ["### Charts", ""]
    for key, name in chart_files.items():
        out += [f"![{TITLES[key]}](charts/{name})", ""]
    return out


def render_sections(report: dict) -> list[str]:
    """The tables behind issue 11's targets: CPU per query, --workers, flood, start-up, event latency."""
    out: list[str] = []
    for section in (_cpu_section, _workers_section, _flood_section, _startup_section, _event_section):
        out += section(report)
    return out


def _cpu_section(report: dict) -> list[str]:
    cpu = report.get("cpu") or []
    out: list[str] = []
    if cpu:
        out += ["### CPU per query at a fixed offered rate", "",
                "`dnsperf -Q RATE` of the `a` mix (cluster A hits: after the saturation runs, and just after one "
                "pass of the mix, as the mixes measured since `a` may have pushed its names out of the caches) for "
                "a fixed time; the server's CPU time from /proc/PID/stat (utime + stime, of the process and its "
                "children) over the run, divided by the answered queries. It does not depend on the "
                "generator's ceiling. Ratios: to Knot's figure of this run. *Hits*: kdns's cache hits over the "
                "run / answered queries. Each server is measured this way several times (*runs*: µs per query of "
                "each); the table shows its least disturbed run, the one with the least CPU per query.", "",
                "| server | offered QPS | answered QPS | lost % | CPU s | µs CPU per answered query | vs Knot | hits "
                "| runs (µs) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        knot = next((c["us_per_query"] for c in cpu if c["server"] == "knot" and c.get("us_per_query")), None)
        for c in cpu:
            ratio = f"{c['us_per_query'] / knot:.2f}×" if knot and c.get("us_per_query") else "–"
            hits = f"{c['hit_pct']:.1f}%" if c.get("hit_pct") is not None else "–"
            out.append(f"| {c['server']} | {_n(c['rate'])} | {_n(c['qps'])} | {_n(c['lost_pct'], '{:.2f}')} | "
                       f"{_n(c['cpu_s'], '{:.2f}')} | {_n(c.get('us_per_query'), '{:.1f}')} | {ratio} | {hits} | "
                       f"{_runs_us(c)} |")
        out.append("")
    return out


def _workers_section(report: dict) -> list[str]:
    w = report.get("workers")
    out = ["### `--workers 2` at a fixed rate", ""]
    if w and w.get("one") and w.get("two"):
        shares = w.get("shares")
        out += [f"The same `dnsperf -Q {w['rate']:,.0f} -c {w['clients']}` on `a` (many source sockets, so the "
                "kernel's SO_REUSEPORT hash has flows to spread) against the headline kdns (one process, core 0) "
                f"and against `kdns serve --workers 2` ({w.get('processes', 2)} processes, pinned to cores 0-1; "
                "dnsperf shares core 1). CPU: every process of the tree. Share per worker: worker 0 serves "
                "/metrics, so its `kdns_queries_total{proto=\"udp\"}` over the run / the answered queries; "
                "worker 1 answered the rest. Each is measured several times; the run with the least CPU per "
                "query is shown (*runs*: every run's µs per query).", "",
                "| kdns | answered QPS | lost % | µs CPU per answered query | vs 1 worker | share per worker "
                "| runs (µs) |",
                "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
        one, two = w["one"], w["two"]
        out.append(f"| 1 worker | {_n(one['qps'])} | {_n(one['lost_pct'], '{:.2f}')} | "
                   f"{_n(one.get('us_per_query'), '{:.1f}')} | 1 | 100% | {_runs_us(one)} |")
        ratio = two["us_per_query"] / one["us_per_query"] if one.get("us_per_query") and two.get("us_per_query") else None
        out.append(f"| 2 workers | {_n(two['qps'])} | {_n(two['lost_pct'], '{:.2f}')} | "
                   f"{_n(two.get('us_per_query'), '{:.1f}')} | {_n(ratio, '{:.2f}×')} | "
                   + (" / ".join(f"{100 * s:.0f}%" for s in shares) if shares else "–") + f" | {_runs_us(two)} |")
    else:
        out.append("Not measured in this run" + (f": {w['error']}" if w and w.get("error") else "") + ".")
    out.append("")
    return out


def _flood_section(report: dict) -> list[str]:
    fl = report.get("flood")
    if not fl:
        return []
    hot, f = fl["hot"], fl["flood"]
    out = ["### `flood`: a hot set while unique names flood", "",
           f"`{fl['cmd']}`: perf/loadgen.py asks the hot set (200 cluster A names, asked once before) at "
           f"{fl['hot_rate']:,.0f} QPS, open loop, while dnsperf sends distinct random cluster names "
           "(NXDOMAIN, each asked once) as fast as kdns takes them, both on the load core"
           + (" (loadgen under SCHED_FIFO, `chrt -f 1`, so the flood's dnsperf saturating that core does "
              "not delay its sends and reads: the latencies are kdns's)" if fl.get("realtime") else "")
           + ". Hit rate: the "
           "cache hits kdns counted (answer cache + `cache` plugin) during the run / the hot queries "
           "answered (the flood's names are never asked twice, so never a hit).", "",
           "| hot QPS | hot answered | hot lost % | hit rate | p50 ms | p99 ms | p99.9 ms | max ms | "
           "flood QPS answered | flood lost % | kdns CPU % |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
           f"| {_n(hot.get('qps'))} | {_n(hot.get('received'))} | {_n(hot.get('lost_pct'), '{:.2f}')} | "
           f"{_n(fl.get('hit_pct'), '{:.1f}%')} | {_n(hot.get('p50_ms'), '{:.3f}')} | "
           f"{_n(hot.get('p99_ms'), '{:.3f}')} | {_n(hot.get('p999_ms'), '{:.3f}')} | "
           f"{_n(hot.get('max_ms'), '{:.3f}')} | {_n(f.get('qps'))} | {_n(f.get('lost_pct'), '{:.1f}')} | "
           f"{_n(fl.get('srv_cpu'))} |", ""]
    if hot.get("behind"):
        out += ["loadgen fell behind its schedule in this run: its latencies include its own lag.", ""]
    return out


def _startup_section(report: dict) -> list[str]:
    st = report.get("startup") or []
    out: list[str] = []
    if st:
        out += ["### Start-up and memory by cluster size", "",
                "perf/startup.py, kdns pinned to core 0. *manifests*: generated YAML (perf/gen_cluster.py), ready "
                "= first answer (kdns loads the files before it listens). *api*: the same objects in the API "
                "double (tests/apiserver.py, paged lists, its thread on core 1), ready = /ready 200; then a full "
                "relist is forced (outage, history compacted: 410 Gone) and VmRSS sampled every 20 ms until "
                "kdns logged `api_relisted` for Services, EndpointSlices and Namespaces.", "",
                "| source | services | endpoints | ready s | VmRSS at ready MiB | VmHWM MiB | relist s | "
                "RSS peak during relist MiB |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        mib = lambda v: _n(v / MIB if v else None)  # noqa: E731
        for r in st:
            err = f" — {r['error'][:100]}" if r.get("error") else ""
            out.append(f"| {r['source']}{err} | {_n(r['services'])} | {_n(r['endpoints'])} | "
                       f"{_n(r.get('ready_s'), '{:.2f}')} | {mib(r.get('VmRSS'))} | {mib(r.get('VmHWM'))} | "
                       f"{_n(r.get('relist_s'), '{:.1f}')} | {mib(r.get('rss_peak_relist'))} |")
        out.append("")
    return out


def _event_section(report: dict) -> list[str]:
    ev = report.get("event_latency")
    out: list[str] = []
    if ev:
        out += ["### Event → answer (API)", "",
                "perf/event_latency.py's API mode inside this run: the API double changes a Service's address and "
                "writes the watch event; a tight UDP query loop times the first answer with the new address.", "",
                "| changes | p50 ms | p99 ms | max ms | mean ms |", "| ---: | ---: | ---: | ---: | ---: |",
                f"| {ev['changes']} | {ev['p50_ms']:.2f} | {ev['p99_ms']:.2f} | {ev['max_ms']:.2f} | "
                f"{ev['mean_ms']:.2f} |", ""]
    return out
