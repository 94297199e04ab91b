"""The short soak: queries at a fixed rate while services churn through the API double; every
answer checked against the API's state (the long run is perf/soak.py, figures in perf/BENCH.md)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perf"))

import soak  # noqa: E402


def test_short_soak_serves_no_wrong_answer_and_stays_flat():
    # restarts every 1.5 s (unreachable 0.3 s, history compacted: every re-watch relists); 7 s hold at least two
    r = soak.run(seconds=7, rate=500, services=50, churn_interval=0.01, quiet=True, api_restart_every=1.5)
    assert r["changes"] > 100 and r["answers"] >= 3400
    assert r["api_restarts"] >= 2 and r["relists"] >= 2  # relists under load changed no answer
    assert r["wrong"] == 0, r["examples"]
    assert r["servfail"] == 0 and r["lost"] == 0
    assert r["alive"] and r["internal_errors"] == 0
    assert r["rss_end_kib"] - r["rss_start_kib"] < 16 * 1024
