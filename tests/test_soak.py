"""The short soak: queries at a fixed rate while services churn through the API double, which is
restarted and compacted; every change confirmed, every answer checked against the API's states (the
long run is perf/soak.py, figures in perf/BENCH.md)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perf"))

import soak  # noqa: E402


def test_short_soak_serves_no_wrong_answer_and_stays_flat():
    # runs until two API restarts (each: connections refused until kdns logs api_disconnected, changes
    # made meanwhile, history compacted, api_relisted waited for) and 150 confirmed changes are done,
    # however long that takes on this machine (at most 120 s); history compacted throughout as well.
    # No time limit on staleness here (catchup_allowance None): a stale answer is wrong once kdns was
    # seen serving the newer state before the query; how long it stays stale is perf/BENCH.md's
    r = soak.run(seconds=3, rate=500, services=50, churn_interval=0.01, quiet=True, api_restart_every=1.0,
                 api_down_seconds=0.3, compact_every=0.5, catchup_allowance=None,
                 min_restarts=2, min_changes=150, max_seconds=120)
    assert r["api_restarts"] >= 2 and r["changes"] >= 150, r
    assert r["outages_unnoticed"] == 0 and r["restarts_without_relist"] == 0, r  # each restart relisted
    assert all(n >= soak.DOWN_CHANGES for n in r["changes_while_down"]), r
    assert r["relists"] >= r["api_restarts"], r
    assert r["unserved"] == 0, r["examples"]  # every change was served (within 10 s of being made)
    assert r["wrong"] == 0, r["examples"]  # and no answer was a state kdns could not have had
    assert r["servfail"] == 0 and r["lost"] == 0 and r["answers"] == r["queries"] > 0
    assert r["alive"] and r["internal_errors"] == 0
    assert r["rss_end_kib"] - r["rss_start_kib"] < 16 * 1024
