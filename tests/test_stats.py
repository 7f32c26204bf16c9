"""The overview's running aggregates: the estimator against exact quantiles, merging groups, removing rows and
counting each event once; then the store and the engine, whose overview must equal what SQL computes over the
events table (counts exact, avg and max exact up to float rounding, p50/p95 within the stated bound), after
events end, after a restart and after a purge. Real DuckDB files, real engines."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from scf_nb.core.functions import make_function
from scf_nb.core.records import EventState, make_request_id
from scf_nb.core.status import Status
from scf_nb.store.stats import MAX_MS, MIN_MS, RELATIVE_ERROR, OverviewStats, bucket_of, bucket_sql
from scf_nb.store.store import Store

STATUSES = ("QUEUED", "RUNNING", "FINISHED", "FAILED", "ABORTED")


def close_quantile(estimate: float, exact: float) -> bool:
    return abs(estimate - exact) <= RELATIVE_ERROR * abs(exact) * (1 + 1e-9) + MIN_MS


def exact_figures(durations: list[float | None]) -> tuple[int, float, float, float, float]:
    """count, avg, p50, p95, max as DuckDB's avg/quantile_cont/max compute them (NULLs skipped)."""
    timed = [d for d in durations if d is not None]
    if not timed:
        return len(durations), math.nan, math.nan, math.nan, math.nan
    p50, p95 = np.quantile(np.array(timed), [0.5, 0.95])  # "linear", as quantile_cont
    return len(durations), math.fsum(timed) / len(timed), float(p50), float(p95), max(timed)


def assert_figures(got: tuple[Any, ...], want: tuple[Any, ...]) -> None:
    assert got[0] == want[0], (got, want)
    for g, w in (got[1], want[1]), (got[4], want[4]):
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, rel=1e-9, abs=1e-9), (got, want)
    for g, w in (got[2], want[2]), (got[3], want[3]):
        assert (math.isnan(g) and math.isnan(w)) or close_quantile(g, w), (got, want)


# -- the estimator ------------------------------------------------------------------------------------------------
DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "lognormal": lambda r: r.lognormvariate(3.0, 2.0),
    "uniform ms": lambda r: r.uniform(0.5, 50.0),
    "whole ms, ties": lambda r: float(r.randrange(1, 20)),
    "bimodal, zeros": lambda r: r.choice([0.0, r.uniform(1, 2), r.uniform(5000, 9000)]),
    "tiny and huge": lambda r: r.choice([r.uniform(1e-9, 1e-3), r.uniform(1e9, 1e11)]),
}


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 20000])
def test_quantiles_within_the_bound_of_exact_ones(name: str, n: int) -> None:
    rng = random.Random(f"{name}{n}")
    data = [DISTRIBUTIONS[name](rng) for _ in range(n)]
    stats = OverviewStats()
    for i, d in enumerate(data):
        stats.commit_new(i, "ns", "f", "FINISHED", d)
    got = stats.summary()["FINISHED"]
    assert_figures(tuple(got), exact_figures(data))
    if n > 1:  # and the exact figures really are those of the statistics module
        assert got.p50_ms == pytest.approx(statistics.median(data), rel=RELATIVE_ERROR * 1.000001, abs=MIN_MS)


def test_the_bound_is_about_two_percent_and_reached_only_at_bucket_edges() -> None:
    assert 0.021 < RELATIVE_ERROR < 0.022
    stats = OverviewStats()
    for i, d in enumerate([32.0, 32.0, 100.0]):  # a median on a bucket's lower edge: the worst case
        stats.commit_new(i, "ns", "f", "FINISHED", d)
    assert stats.summary()["FINISHED"].p50_ms == pytest.approx(32 * (1 + RELATIVE_ERROR), rel=1e-12)


def test_a_bucket_with_one_value_gives_it_exactly() -> None:
    stats = OverviewStats()
    stats.commit_new(1, "ns", "f", "FAILED", 511.075909)  # one event: its p50 is its duration, not ~2% off
    for i, d in enumerate([10.0, 1000.0], start=2):
        stats.commit_new(i, "ns", "f", "FINISHED", d)
    got = stats.summary()
    assert got["FAILED"].p50_ms == got["FAILED"].p95_ms == 511.075909
    assert got["FINISHED"].p50_ms == pytest.approx(505.0) and got["FINISHED"].p95_ms == pytest.approx(950.5)


def test_beyond_the_range_an_estimate_is_still_at_most_the_maximum() -> None:
    stats = OverviewStats()
    for i, d in enumerate([MAX_MS * 3, MAX_MS * 5, MAX_MS * 7]):
        stats.commit_new(i, "ns", "f", "FAILED", d)
    got = stats.summary()["FAILED"]
    assert MAX_MS * 0.95 <= got.p50_ms <= got.p95_ms <= MAX_MS < got.max_ms == MAX_MS * 7  # the top bucket


def test_bucket_sql_gives_the_bucket_of_python() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(0, 8) for _ in range(20000)] + [0.0, -5.0, MIN_MS, MAX_MS, 1e300, 1.0, 2.0]
    for i in range(-200, 560, 7):  # on and next to the bucket edges
        edge = 2.0 ** (i / 16)
        values += [edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf)]
    db = duckdb.connect()
    db.register("t", pd.DataFrame({"i": range(len(values) + 2), "d": values + [None, math.nan]}))
    got = [r[0] for r in db.execute(f"SELECT {bucket_sql('d')} FROM t ORDER BY i").fetchall()]
    assert got == [bucket_of(v) for v in values] + [None, None]


def test_groups_merge_and_filter_by_namespace_and_function() -> None:
    rng = random.Random(7)
    stats = OverviewStats()
    data: dict[tuple[str, str, str], list[float]] = {}
    for key in range(6000):
        group = (rng.choice(["a", "b"]), rng.choice(["f", "g", "h"]), rng.choice(["FINISHED", "FAILED"]))
        d = rng.expovariate(1 / 40.0)
        data.setdefault(group, []).append(d)
        stats.commit_new(key, *group, d)
    for ns, fn in [(None, None), ("a", None), (None, "g"), ("b", "h"), ("c", None)]:
        got = stats.summary(ns, fn)
        for status in ("FINISHED", "FAILED"):
            mine = [d for (n, f, s), ds in data.items() for d in ds
                    if s == status and ns in (None, n) and fn in (None, f)]
            if not mine:
                assert status not in got
            else:
                assert_figures(tuple(got[status]), exact_figures(mine))


def test_removing_rows_leaves_the_figures_of_the_rest_and_flags_a_lost_maximum() -> None:
    rng = random.Random(11)
    data = [rng.uniform(1, 100) for _ in range(500)] + [None, None]
    stats = OverviewStats()
    for d in data:  # as the store loads them: per bucket, with sum and max
        stats.add_rows("ns", "f", "FAILED", bucket_of(d), 1, d, d)
    top = data.index(max(d for d in data if d is not None))
    gone = [d for i, d in enumerate(data) if i < 200 or i == top]  # the maximum goes
    kept = [d for i, d in enumerate(data) if not (i < 200 or i == top)]
    flagged = [stats.remove_rows("ns", "f", "FAILED", bucket_of(d), 1, d, d) for d in gone]
    assert any(flagged)
    stats.set_max("ns", "f", "FAILED", max(d for d in kept if d is not None))
    assert_figures(tuple(stats.summary()["FAILED"]), exact_figures(kept))
    for d in kept:  # all of them: the group disappears, with no float residue left behind
        stats.remove_rows("ns", "f", "FAILED", bucket_of(d), 1, d, d)
    assert stats.summary() == {}


def test_an_event_is_counted_once_through_its_life_whatever_is_committed_after() -> None:
    stats = OverviewStats()
    stats.commit_new(1, "ns", "f", "QUEUED", None)
    stats.commit_new(2, "ns", "f", "QUEUED", None)
    assert {s: v.events for s, v in stats.summary().items()} == {"QUEUED": 2}
    assert stats.commit_change(1, "RUNNING", None)
    assert not stats.commit_change(1, "RUNNING", None)  # no move: nothing to count
    assert {s: v.events for s, v in stats.summary().items()} == {"QUEUED": 1, "RUNNING": 1}
    assert stats.commit_change(1, "FINISHED", 12.5)
    assert not stats.commit_change(1, "FINISHED", 12.5)  # committed again: still one
    assert not stats.commit_change(1, "FAILED", 99.0)  # a terminal status is final
    assert not stats.commit_change(3, "FINISHED", 1.0)  # never seen live (untraced, or counted already)
    assert stats.commit_change(2, "ABORTED", 0.0)
    got = stats.summary()
    assert {s: v.events for s, v in got.items()} == {"FINISHED": 1, "ABORTED": 1}
    assert got["FINISHED"].max_ms == 12.5 and stats.live_keys() == 0


# -- the store, without an engine ---------------------------------------------------------------------------------
def sql_overview(rows: Callable[..., list[tuple[Any, ...]]], function: str | None = None,
                 namespace: str | None = None) -> dict[str, tuple[Any, ...]]:
    """The exact figures, from the events table."""
    where, params = ["traced"], []
    for column, value in (("function_name", function), ("namespace", namespace)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    out = rows("SELECT status, count(*), avg(duration_ms), quantile_cont(duration_ms, 0.5), "
               f"quantile_cont(duration_ms, 0.95), max(duration_ms) FROM events WHERE {' AND '.join(where)} "
               "GROUP BY status", params)
    return {r[0]: tuple(math.nan if v is None else v for v in r[1:]) for r in out}


def assert_store_matches_sql(store: Store, function: str | None = None, namespace: str | None = None) -> None:
    got = {s: tuple(v) for s, v in store.overview(namespace, function).items()}
    want = sql_overview(store.rows, function, namespace)
    assert sorted(got) == sorted(want)
    for status in want:
        assert_figures(got[status], want[status])


def function(name: str, trace: bool = True) -> Any:
    return make_function(name, "def main_handler(event, context):\n    return 1\n", async_run=True, trace=trace,
                         timeout=None, concurrency=None, qps_limit=None, handler="main_handler",
                         namespace="default", env=None, memory_mb=None, description="")


class Events:
    """Events written into a store as the engine writes them: through its buffers, under its lock."""

    def __init__(self, store: Store, first_key: int = 1) -> None:
        self.store = store
        self.key = first_key

    def new(self, fn: Any, now: float) -> EventState:
        ev = EventState(self.key, make_request_id(self.key), fn, "$LATEST", "{}", now)
        self.key += 1
        with self.store.lock:
            self.store.add_event(ev)
        return ev

    def run(self, ev: EventState) -> None:
        with self.store.lock:
            ev.status = Status.RUNNING
            self.store.changed(ev)

    def end(self, ev: EventState, status: Status, duration_ms: float | None) -> None:
        with self.store.lock:
            ev.end(status, ev.start_time, duration_ms=duration_ms)
            self.store.changed(ev)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "s.duckdb", 256, lambda events: None)
    try:
        yield s
    finally:
        s.close()


def test_store_aggregates_follow_every_batch_and_count_an_event_once(store: Store) -> None:
    rng = random.Random(5)
    fns = [function("f"), function("g"), function("quiet", trace=False)]
    events = Events(store)
    assert_store_matches_sql(store)  # empty; loaded now, before any event: every batch counts from here on
    batch: list[EventState] = []
    for i in range(3000):
        ev = events.new(rng.choice(fns), 1000.0 + i)
        batch.append(ev)
        if rng.random() < 0.3:
            events.end(ev, Status.ABORTED, 0.0)  # ended before its first write: a new row, terminal already
        if i % 250 == 249:
            store.sync()
            for ev in batch:
                if ev.status is Status.QUEUED and rng.random() < 0.8:
                    events.run(ev)
            store.sync()
            for ev in batch:
                if ev.status is Status.RUNNING and rng.random() < 0.9:
                    events.end(ev, rng.choice([Status.FINISHED, Status.FAILED]), rng.lognormvariate(2, 1.5))
            store.sync()
            for ev in batch[:50]:  # written again once ended: must not count twice
                with store.lock:
                    store.changed(ev)
            assert_store_matches_sql(store)
            batch = []
    store.sync()
    for name in ("f", "g", "quiet", None):
        assert_store_matches_sql(store, function=name)
    assert_store_matches_sql(store, namespace="other")
    assert store.overview().keys() >= {"QUEUED", "RUNNING", "FINISHED", "FAILED", "ABORTED"}


def test_loaded_aggregates_equal_the_kept_ones_and_purge_takes_rows_out(store: Store, tmp_path: Path) -> None:
    rng = random.Random(9)
    fns = [function("f"), function("g")]
    events = Events(store)
    live = []
    for i in range(2000):
        ev = events.new(rng.choice(fns), 1000.0 + i)
        if i % 50 == 0:
            live.append(ev)
            continue
        events.end(ev, rng.choice([Status.FINISHED, Status.FAILED]),
                   None if i % 97 == 0 else rng.uniform(1, 10) + (1000.0 if i < 300 else 0.0))
    store.sync()
    assert store.overview()["FINISHED"].max_ms > 1000  # loaded from the table: the slow early events
    assert_store_matches_sql(store)
    for cutoff in (1100.0, 1300.0, 1300.0):  # the slow early ones go: the maxima are looked up again
        store.purge(cutoff)
        for name in ("f", "g", None):
            assert_store_matches_sql(store, function=name)
    assert store.overview()["FINISHED"].max_ms < 20
    later = [events.new(fns[0], 3000.0) for _ in range(20)]  # kept up to date after a purge too
    for ev in later:
        events.end(ev, Status.FINISHED, 2000.0)
    store.purge(3000.0)
    assert_store_matches_sql(store)
    assert {s: v.events for s, v in store.overview().items()} == {"QUEUED": len(live), "FINISHED": 20}


def test_events_of_a_lost_engine_count_as_failed_with_a_duration_from_their_start(tmp_path: Path) -> None:
    first = Store(tmp_path / "s.duckdb", 256, lambda events: None)
    events = Events(first)
    running = [events.new(function("f"), 1000.0) for _ in range(3)]
    done = events.new(function("f"), 1000.0)
    events.end(done, Status.FAILED, 4.0)
    first.sync()
    running[0].run_time = 1500.0
    events.run(running[0])
    first.sync()
    assert {s: v.events for s, v in first.overview().items()} == {"QUEUED": 2, "RUNNING": 1, "FAILED": 1}
    first.close()  # as if its engine died: the rows stay QUEUED/RUNNING
    second = Store(tmp_path / "s.duckdb", 256, lambda events: None)
    try:
        second.overview()
        assert second.recover("engine lost", 2000.0, "1:0123456789abcdef") == 3
        got = second.overview()
        # recovered at 2000.0: the one that started at 1500.0 ran 500 s, the two that never started 0
        assert got["FAILED"].events == 4 and got["FAILED"].max_ms == 500_000.0
        assert got["FAILED"].avg_ms == (4.0 + 500_000.0) / 4
        assert_store_matches_sql(second)
    finally:
        second.close()
