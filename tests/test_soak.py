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


def test_soak_oracle_judges_stale_and_wrong_answers_by_the_states_kdns_was_seen_serving():
    # one service: "a" (served from the start), "b" applied at 5 while the API was down (4 to 10),
    # "c" applied at 20 and seen served at 21; times are made up, no clock is read
    h = soak.History()
    h.confirmed[h.add(0, "a")] = 0
    h.add(5, "b")
    h.confirmed[h.add(20, "c")] = 21
    restart = soak.Restart(down_at=4, up_at=10)
    result = {"answers": 0, "servfail": 0, "wrong": 0, "stale_while_down": 0, "examples": []}
    checked = [(1, 1.1, "s", 0, "a"),  # right: no restart yet
               (6, 6.1, "s", 0, "a"),  # stale while down: the API has "b", kdns cannot know
               (11, 11.1, "s", 0, "a"),  # stale after the return, 1 s after it
               (13, 13.1, "s", 0, "a"),  # stale 3 s after the return: past the 2 s allowance, wrong
               (22, 22.1, "s", 0, "a"),  # wrong: "c" was seen served before this query
               (21.5, 21.6, "s", 0, "b"),  # wrong: likewise
               (3, 3.1, "s", 0, "b"),  # wrong: "b" was not yet applied when the answer came
               (20.5, 20.6, "s", 0, "b"), (20.5, 20.6, "s", 0, "c"),  # both right: "c" not yet seen served
               (22, 22.1, "s", 3, None),  # wrong: NXDOMAIN for a service that exists
               (22, 22.1, "s", 2, None)]  # SERVFAIL, counted apart
    soak.judge(checked, {"s": h}, [restart], 2.0, result)
    assert (result["answers"], result["wrong"], result["servfail"], result["stale_while_down"]) == (11, 5, 1, 1)
    assert (restart.stale_answers, round(restart.stale_seconds, 3)) == (2, 3.1)
    # without an allowance the stale answer 3 s after the return is stale, not wrong
    restart = soak.Restart(down_at=4, up_at=10)
    result = {"answers": 0, "servfail": 0, "wrong": 0, "stale_while_down": 0, "examples": []}
    soak.judge(checked, {"s": h}, [restart], None, result)
    assert (result["wrong"], restart.stale_answers) == (4, 2)
