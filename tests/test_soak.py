"""The short soak: queries at a fixed rate while services churn through the API double; every
answer checked against the API's state (the long run is perf/soak.py, figures in perf/BENCH.md)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perf"))

import soak  # noqa: E402


def test_short_soak_serves_no_wrong_answer_and_stays_flat():
    # runs until two API restarts (each: streams cut, changes while down, history compacted, relist)
    # and 150 confirmed changes are done, however long that takes on this machine (at most 120 s)
    r = soak.run(seconds=3, rate=500, services=50, churn_interval=0.01, quiet=True, api_restart_every=1.0,
                 min_restarts=2, min_changes=150, max_seconds=120)
    assert r["api_restarts"] >= 2 and r["relists"] >= 2 and r["changes"] >= 150, r
    assert r["unserved"] == 0, r["examples"]  # every change was served (within 10 s of being made)
    assert r["wrong"] == 0, r["examples"]  # and no answer was a state kdns could not have had
    assert r["servfail"] == 0 and r["lost"] == 0 and r["answers"] == r["queries"] > 0
    assert r["alive"] and r["internal_errors"] == 0
    assert r["rss_end_kib"] - r["rss_start_kib"] < 16 * 1024
