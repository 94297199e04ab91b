"""SVG charts of a perf/run.py report (matplotlib, the `perf` extra), written to perf/charts/.

    .venv/bin/python perf/charts.py REPORT.json [--out perf/charts]

qps_by_mix.svg        QPS per mix per server (saturation, best run)
cpu_per_query.svg     server CPU µs per answered query at one fixed offered rate, kdns vs Knot etc.
latency_half_load.svg p50 / p99 / p99.9 at half of kdns's saturation rate, per server, mix and tool
startup_by_size.svg   seconds to ready and RSS at ready (and relist peak) by cluster size
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CHARTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "charts")
FILES = {"qps": "qps_by_mix.svg", "cpu": "cpu_per_query.svg", "latency": "latency_half_load.svg",
         "startup": "startup_by_size.svg"}
TITLES = {"qps": "QPS per mix per server", "cpu": "CPU per query at a fixed rate",
          "latency": "Latency percentiles at half load", "startup": "Start-up and memory by cluster size"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.hashsalt": "kdns-perf", "svg.fonttype": "none", "font.size": 9})
    return plt


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})  # no timestamp: reproducible files


def qps_chart(report: dict, path: str) -> bool:
    rows = [r for r in report.get("results", []) if r.get("qps")]
    if not rows:
        return False
    plt = _plt()
    mixes = list(dict.fromkeys(r["mix"] for r in rows))
    names = list(dict.fromkeys(r["server"] for r in rows))
    qps = {(r["server"], r["mix"]): r["qps"] for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(mixes) + 2), 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [m + (i - (len(names) - 1) / 2) * width for m in range(len(mixes))]
        ax.bar(xs, [qps.get((name, mix), 0) for mix in mixes], width, label=name)
    ax.set_xticks(range(len(mixes)), mixes, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("answered queries / s (log)")
    ax.set_title(TITLES["qps"] + " (dnsperf, unlimited rate)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return True


def cpu_chart(report: dict, path: str) -> bool:
    rows = [c for c in report.get("cpu", []) if c.get("us_per_query")]
    w = report.get("workers") or {}
    if w.get("one", {}).get("us_per_query") and w.get("two", {}).get("us_per_query"):
        rows.append(dict(w["one"], server=f"kdns 1 worker, {w['clients']} clients"))
        rows.append(dict(w["two"], server=f"kdns --workers 2, {w['clients']} clients"))
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [f"{r['server']} ({r.get('mix', 'a')})" for r in rows]
    vals = [r["us_per_query"] for r in rows]
    bars = ax.barh(labels, vals, color=["#1f77b4" if r["server"].startswith("kdns") else "#7f7f7f" for r in rows])
    ax.bar_label(bars, [f"{v:.1f} µs" for v in vals], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"server CPU µs per answered query at {rows[0]['rate']:,.0f} QPS offered")
    ax.set_title(TITLES["cpu"])
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(0, max(vals) * 1.25)
    _save(fig, path)
    plt.close(fig)
    return True


def latency_chart(report: dict, path: str) -> bool:
    series = []
    for lat in report.get("latency", []):
        for tool in ("dnsperf", "loadgen"):
            d = lat.get(tool)
            if d and d.get("p99_ms") is not None:
                series.append((f"{lat['server']} {lat['mix']}\n{tool}", d))
    if not series:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(series) + 2), 3.6))
    pcts = (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
    width = 0.8 / len(pcts)
    for i, (key, label) in enumerate(pcts):
        xs = [j + (i - 1) * width for j in range(len(series))]
        ax.bar(xs, [d.get(key) or 0 for _, d in series], width, label=label)
    ax.set_xticks(range(len(series)), [s for s, _ in series], fontsize=7)
    ax.set_ylabel("ms")
    ax.set_title(TITLES["latency"] + " (kdns's half-saturation rate)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return True


def startup_chart(report: dict, path: str) -> bool:
    rows = [r for r in report.get("startup", []) if r.get("ready_s") is not None]
    if not rows:
        return False
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
    for source, marker in (("manifests", "o"), ("api", "s")):
        pts = sorted((r["services"], r) for r in rows if r["source"] == source)
        if not pts:
            continue
        xs = [p for p, _ in pts]
        ax1.plot(xs, [r["ready_s"] for _, r in pts], marker=marker, label=f"from {source}")
        ax2.plot(xs, [(r.get("VmRSS") or 0) / 1024 for _, r in pts], marker=marker, label=f"{source}: at ready")
        if source == "api" and any(r.get("rss_peak_relist") for _, r in pts):
            ax2.plot(xs, [(r.get("rss_peak_relist") or 0) / 1024 for _, r in pts], marker="^", linestyle="--",
                     label="api: peak during a full relist")
    labels = sorted({(r["services"], r["endpoints"]) for r in rows})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks([s for s, _ in labels], [f"{s / 1000:.0f}k svc\n{e / 1000:.0f}k ep" for s, e in labels],
                      fontsize=7)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax1.set_ylabel("seconds from start to ready")
    ax2.set_ylabel("VmRSS MiB")
    fig.suptitle(TITLES["startup"])
    _save(fig, path)
    plt.close(fig)
    return True


def write_all(report: dict, out: str = CHARTS) -> dict[str, str]:
    """Every chart the report has data for; returns {key: file name} of the charts written."""
    os.makedirs(out, exist_ok=True)
    done = {}
    for key, fn in (("qps", qps_chart), ("cpu", cpu_chart), ("latency", latency_chart), ("startup", startup_chart)):
        path = os.path.join(out, FILES[key])
        if fn(report, path):
            done[key] = FILES[key]
    return done


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="JSON written by perf/run.py --json")
    p.add_argument("--out", default=CHARTS)
    a = p.parse_args()
    with open(a.report) as fh:
        report = json.load(fh)
    for key, name in write_all(report, a.out).items():
        print(os.path.join(a.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
