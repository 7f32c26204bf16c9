"""End to end: ``scf_nb.overview()`` (running aggregates) equals what SQL computes over the events table --
counts exact, avg and max exact up to float rounding, p50/p95 within the stated bound -- after events end,
while some are queued or running, after a restart (aggregates loaded again from the store) and after a purge.
Real engines with loky instances, a real DuckDB file."""

from __future__ import annotations

import math
import random
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, wait_until
from test_stats import assert_figures, sql_overview

WORK = textwrap.dedent('''
    import os, time

    def main_handler(event, context):
        go = event.get("go")
        while go and not os.path.exists(go):
            time.sleep(0.005)
        time.sleep(event.get("sleep", 0))
        if event.get("fail"):
            raise ValueError("asked to fail")
        return event.get("sleep", 0)
''')
NAN = (0, math.nan, math.nan, math.nan, math.nan)


def assert_matches_sql(scf: Any, function: str | None = None, namespace: str | None = None) -> dict[str, int]:
    """The overview of ``function``/``namespace`` against the table; returns its counts."""
    frame = scf.overview(function, namespace=namespace)
    assert list(frame.columns) == ["status", "count", "avg_duration_ms", "p50_duration_ms", "p95_duration_ms",
                                   "max_duration_ms"]
    assert list(frame.status) == ["QUEUED", "RUNNING", "FINISHED", "FAILED", "ABORTED"]
    assert str(frame["count"].dtype) == "int64" and all(str(t) == "float64" for t in frame.dtypes[2:])
    want = sql_overview(scf.client().engine.store.rows, function, namespace)
    for row in frame.itertuples(index=False):
        assert_figures(tuple(row)[1:], want.get(row.status, NAN))
    return dict(zip(frame.status, frame["count"].tolist(), strict=True))


def test_overview_equals_sql_as_events_end_run_and_after_a_restart(scf: Any, tmp_path: Path) -> None:
    scf.create_function("work", WORK, async_run=True, concurrency=3)
    scf.create_function("work", WORK, async_run=True, namespace="ns2")
    scf.create_function("quiet", WORK, async_run=True, trace=False)
    assert sum(assert_matches_sql(scf).values()) == 0  # loaded now, so every event below is counted as it ends
    rng = random.Random(1)
    events = [scf.invoke("work", {"sleep": rng.choice([0, 0.002, 0.01, 0.03]), "fail": rng.random() < 0.2})
              for _ in range(40)]
    events += [scf.invoke("work", {"sleep": 0.005}, namespace="ns2") for _ in range(5)]
    events += [scf.invoke("quiet", {"sleep": 0.001}) for _ in range(5)]
    for ev in events:
        ev.wait(timeout=60)
    counts = assert_matches_sql(scf)
    assert counts["FINISHED"] + counts["FAILED"] == 45 and counts["FAILED"] > 0
    for fn, ns in [("work", None), ("work", "default"), (None, "ns2"), ("quiet", None), ("nobody", None)]:
        assert_matches_sql(scf, fn, ns)
    assert sum(assert_matches_sql(scf, "quiet").values()) == 0  # untraced: not in the overview

    go = str(tmp_path / "go")
    gated = [scf.invoke("work", {"go": go}) for _ in range(5)]
    wait_until(lambda: [ev.status for ev in gated].count("RUNNING") == 3, what="three events to run")
    assert scf.terminate(gated[4].request_id) == "ABORTED"  # queued: ends with duration 0
    counts = assert_matches_sql(scf)
    assert (counts["QUEUED"], counts["RUNNING"], counts["ABORTED"]) == (1, 3, 1)
    assert_matches_sql(scf, "work", "default")
    before = counts

    scf.shutdown()  # the queued and running events fail ("engine stopped")
    counts = assert_matches_sql(scf)  # a new engine: the aggregates come from the store
    assert counts == {**before, "QUEUED": 0, "RUNNING": 0, "FAILED": before["FAILED"] + 4}
    for fn, ns in [("work", None), (None, "ns2"), ("quiet", None)]:
        assert_matches_sql(scf, fn, ns)
    scf.invoke("work", {"sleep": 0.001}).wait(timeout=60)  # and they go on from there
    assert assert_matches_sql(scf)["FINISHED"] == counts["FINISHED"] + 1


def test_overview_with_since_stays_exact(scf: Any) -> None:
    scf.create_function("work", WORK, async_run=True)
    for ev in [scf.invoke("work", {"sleep": s}) for s in (0, 0.001, 0.004, 0.02)]:
        ev.wait(timeout=60)
    frame = scf.overview(since=0).set_index("status")
    want = sql_overview(scf.client().engine.store.rows)["FINISHED"]
    assert tuple(frame.loc["FINISHED"]) == pytest.approx(want, rel=1e-12)  # quantile_cont itself
    assert frame.loc["QUEUED", "count"] == 0 and math.isnan(frame.loc["QUEUED", "avg_duration_ms"])




def test_overview_equals_sql_after_a_purge(scf: Any, clock: Clock) -> None:
    scf.create_function("work", WORK, async_run=True, concurrency=2)
    scf.create_function("other", WORK, async_run=True)
    assert sum(assert_matches_sql(scf).values()) == 0  # loaded before the purge: it must take rows out
    old = [scf.invoke("work", {"sleep": 0.06}) for _ in range(6)]  # the slowest: the maximum goes with them
    old += [scf.invoke("work", {"sleep": 0.06, "fail": True}) for _ in range(2)]
    old += [scf.invoke("other", {"sleep": 0.001})]
    for ev in old:
        ev.wait(timeout=60)
    clock.now += 50 * 3600
    new = [scf.invoke("work", {"sleep": 0.001}) for _ in range(10)]
    for ev in new:
        ev.wait(timeout=60)
    assert assert_matches_sql(scf)["FINISHED"] == 17
    assert scf.overview("work").set_index("status").loc["FINISHED", "max_duration_ms"] >= 60

    clock.now += 23 * 3600  # old: 73 h ago, new: 23 h ago; retention 72 h
    scf.purge()
    assert sorted(scf.list_events(limit=None).request_id) == sorted(ev.request_id for ev in new)
    counts = assert_matches_sql(scf)
    assert (counts["FINISHED"], counts["FAILED"]) == (10, 0)
    for fn in ("work", "other"):
        assert_matches_sql(scf, fn)
    assert scf.overview("work").set_index("status").loc["FINISHED", "max_duration_ms"] < 60  # looked up again

    scf.invoke("other", {"sleep": 0.002}).wait(timeout=60)  # counted after a purge too
    assert assert_matches_sql(scf, "other")["FINISHED"] == 1
    scf.shutdown()
    assert assert_matches_sql(scf)["FINISHED"] == 11  # and a new engine loads the same from the store
    clock.now += 100 * 3600
    scf.purge()
    assert sum(assert_matches_sql(scf).values()) == 0
