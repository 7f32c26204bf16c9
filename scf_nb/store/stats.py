"""Running aggregates of the events table for the live overview, so ``overview()`` needs no scan of the store.

Per ``(namespace, function_name, status)`` of ended events: the count, the sum and maximum of ``duration_ms``
and a log-scale histogram of it (16 buckets per doubling), from which p50/p95 are estimated; and the number
of events per ``(namespace, function_name, status)`` that are still QUEUED or RUNNING. The store feeds it the
rows it commits (``commit_new``, ``commit_change``), the rows a purge deletes (``remove_rows``) and, once,
the aggregated table (``add_rows``, ``track``), all under its flush lock; this module knows no SQL beyond the
bucket formula, which it gives the store in both languages (``bucket_of``, ``bucket_sql``) so both agree.

Quantiles are estimated as DuckDB's ``quantile_cont`` computes them (linear interpolation between the two
order statistics around ``q * (n - 1)``), each order statistic replaced by its bucket's representative value.
A bucket ``[lo, hi)`` with ``hi = lo * 2**(1/16)`` is represented by ``2*lo*hi / (lo + hi)``, which is within
``RELATIVE_ERROR`` (2.17 %) of every value in the bucket, so the estimate is within ``RELATIVE_ERROR`` of the
exact quantile too (it is a convex combination of two such values). Durations below ``MIN_MS`` (1 us, zero
included) count as 0 (an absolute error under 1 us); those of ``MAX_MS`` (~35 years) and more share the top
bucket. An estimate is never above the exact maximum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ..core import status as status_module

BUCKETS_PER_OCTAVE = 16
MIN_OCTAVE, MAX_OCTAVE = -10, 40
MIN_MS = 2.0 ** MIN_OCTAVE  # below it: bucket 0, represented by 0
MAX_MS = 2.0 ** MAX_OCTAVE  # from it on: the top bucket
N_BUCKETS = (MAX_OCTAVE - MIN_OCTAVE) * BUCKETS_PER_OCTAVE + 1
_OFFSET = 1 - MIN_OCTAVE * BUCKETS_PER_OCTAVE  # bucket = floor(log2(ms) * 16) + _OFFSET
_GROWTH = 2.0 ** (1.0 / BUCKETS_PER_OCTAVE)
RELATIVE_ERROR = (_GROWTH - 1.0) / (_GROWTH + 1.0)

_LOWER = 2.0 ** ((np.arange(N_BUCKETS, dtype=np.float64) - _OFFSET) / BUCKETS_PER_OCTAVE)
_VALUE = 2.0 * _LOWER * (_LOWER * _GROWTH) / (_LOWER + _LOWER * _GROWTH)
_VALUE[0] = 0.0

STATUSES = tuple(s.value for s in status_module.ALL)  # the overview's rows, in this order
TERMINAL = frozenset(s.value for s in status_module.TERMINAL)
GroupKey = tuple[str, str, str]  # (namespace, function_name, status)


def bucket_of(ms: float | None) -> int | None:
    """The histogram bucket of a duration; None for no duration (NULL, NaN)."""
    if ms is None or math.isnan(ms):
        return None
    if ms < MIN_MS:
        return 0
    if ms >= MAX_MS:
        return N_BUCKETS - 1
    return math.floor(math.log2(ms) * BUCKETS_PER_OCTAVE) + _OFFSET


def bucket_sql(column: str) -> str:
    """``bucket_of`` as a DuckDB expression (the same libm ``log2``, so the same bucket for the same value)."""
    return (f"CASE WHEN {column} IS NULL OR isnan({column}) THEN NULL WHEN {column} < {MIN_MS!r} THEN 0 "
            f"WHEN {column} >= {MAX_MS!r} THEN {N_BUCKETS - 1} "
            f"ELSE CAST(floor(log2({column}) * {BUCKETS_PER_OCTAVE}) AS BIGINT) + {_OFFSET} END")


class Summary(NamedTuple):
    """One status's row of the overview; NaN where there is no duration."""

    events: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    max_ms: float


@dataclass(slots=True)
class Durations:
    """The ended events of one group: how many, and their durations' sum, maximum and histogram."""

    count: int = 0  # events, with a duration or not
    timed: int = 0  # events with a duration (the histogram's total)
    total: float = 0.0
    max: float = -math.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, dtype=np.int64))
    # the sum of the durations in each bucket: a bucket holding one value knows it exactly, so a group of
    # one event (or of values in distinct buckets) gets exact quantiles
    sums: np.ndarray = field(default_factory=lambda: np.zeros(N_BUCKETS, dtype=np.float64))

    def add(self, ms: float | None) -> None:
        self.count += 1
        b = bucket_of(ms)
        if b is None or ms is None:
            return
        self.timed += 1
        self.total += ms
        self.max = max(self.max, ms)
        self.hist[b] += 1
        self.sums[b] += ms

    def add_rows(self, bucket: int | None, n: int, total: float | None, mx: float | None, sign: int = 1) -> None:
        """``n`` events of one bucket (None: without a duration), with their sum and max; ``sign`` -1 removes
        them (the max then stays: the caller recomputes it when the removed max reached it)."""
        self.count += sign * n
        if bucket is None:
            return
        self.timed += sign * n
        self.hist[bucket] += sign * n
        if self.timed <= 0:  # no float residue from adding and removing
            self.timed, self.total, self.max = 0, 0.0, -math.inf
            self.hist[:] = 0
            self.sums[:] = 0.0
            return
        self.total += sign * float(total or 0.0)
        self.sums[bucket] = 0.0 if self.hist[bucket] <= 0 else self.sums[bucket] + sign * float(total or 0.0)
        if sign > 0 and mx is not None:
            self.max = max(self.max, float(mx))


def estimate(hist: np.ndarray, q: float, mx: float, sums: np.ndarray | None = None) -> float:
    """The ``q`` quantile (0..1) of the durations counted in ``hist`` as ``quantile_cont`` interpolates it,
    at most ``mx``; NaN for an empty histogram. With ``sums`` (per bucket), a bucket that holds a single value
    gives that value instead of the bucket's middle (more values: the middle, which keeps the error bound)."""
    cum = np.cumsum(hist)
    n = int(cum[-1])
    if n <= 0:
        return math.nan
    rank = q * (n - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    b_lo, b_hi = np.searchsorted(cum, [lo, hi], side="right")
    v_lo, v_hi = float(_VALUE[b_lo]), float(_VALUE[b_hi])
    if sums is not None:
        v_lo = float(sums[b_lo]) if hist[b_lo] == 1 else v_lo
        v_hi = float(sums[b_hi]) if hist[b_hi] == 1 else v_hi
    return min(v_lo + (rank - lo) * (v_hi - v_lo), mx)


class OverviewStats:
    """The overview's figures, kept up to date as rows are committed to and deleted from the events table.

    Only traced events belong here: the store leaves untraced ones out. Not thread-safe: the store calls it
    under its flush lock.
    """

    def __init__(self) -> None:
        self._ended: dict[GroupKey, Durations] = {}
        self._live: dict[int, GroupKey] = {}  # event_key -> its committed live group
        self._live_counts: dict[GroupKey, int] = {}

    # -- feeding --------------------------------------------------------------------------------------------
    def commit_new(self, key: int, namespace: str, function: str, status: str, ms: float | None) -> None:
        """A new event's row reached the store with ``status``."""
        if status in TERMINAL:
            self._group(namespace, function, status).add(ms)
        else:
            self.track(key, namespace, function, status)

    def commit_change(self, key: int, status: str, ms: float | None) -> bool:
        """The row of event ``key`` was updated to ``status``. Only an event this object saw live counts, and
        only its move to another status: an ended event is counted once, whatever is committed after.
        Returns whether it counted."""
        group = self._live.get(key)
        if group is None or group[2] == status:
            return False
        self._untrack(key, group)
        if status in TERMINAL:
            self._group(group[0], group[1], status).add(ms)
        else:
            self.track(key, group[0], group[1], status)
        return True

    def track(self, key: int, namespace: str, function: str, status: str) -> None:
        """Event ``key`` is QUEUED or RUNNING in the store."""
        group = (namespace, function, status)
        old = self._live.get(key)
        if old is not None:
            self._untrack(key, old)
        self._live[key] = group
        self._live_counts[group] = self._live_counts.get(group, 0) + 1

    def add_rows(self, namespace: str, function: str, status: str, bucket: int | None, n: int,
                 total: float | None, mx: float | None) -> None:
        """``n`` ended events of one group and bucket (an aggregate of the table)."""
        self._group(namespace, function, status).add_rows(bucket, n, total, mx)

    def remove_rows(self, namespace: str, function: str, status: str, bucket: int | None, n: int,
                    total: float | None, mx: float | None) -> bool:
        """``n`` ended events of one group and bucket were deleted. Returns whether the group's maximum may
        have gone with them (then ``set_max`` it from the table)."""
        key = (namespace, function, status)
        group = self._ended.get(key)
        if group is None:
            return False
        group.add_rows(bucket, n, total, mx, sign=-1)
        if group.count <= 0:
            del self._ended[key]
            return False
        return mx is not None and group.timed > 0 and float(mx) >= group.max

    def set_max(self, namespace: str, function: str, status: str, mx: float | None) -> None:
        group = self._ended.get((namespace, function, status))
        if group is not None:
            group.max = -math.inf if mx is None else float(mx)

    # -- reading --------------------------------------------------------------------------------------------
    def summary(self, namespace: str | None = None, function: str | None = None) -> dict[str, Summary]:
        """Per status (only those with events): count, avg, ~p50, ~p95 and max of ``duration_ms`` over the
        groups of ``namespace`` and ``function`` (None: all)."""
        out: dict[str, Summary] = {}
        live: dict[str, int] = {}
        for (ns, fn, status), n in self._live_counts.items():
            if (namespace is None or ns == namespace) and (function is None or fn == function):
                live[status] = live.get(status, 0) + n
        nan = math.nan
        for status, n in live.items():
            out[status] = Summary(n, nan, nan, nan, nan)
        merged: dict[str, list[Durations]] = {}
        for (ns, fn, status), group in self._ended.items():
            if (namespace is None or ns == namespace) and (function is None or fn == function):
                merged.setdefault(status, []).append(group)
        for status, groups in merged.items():
            count = sum(g.count for g in groups)
            timed = sum(g.timed for g in groups)
            if not timed:
                out[status] = Summary(count, nan, nan, nan, nan)
                continue
            hist = groups[0].hist.copy()
            sums = groups[0].sums.copy()
            for g in groups[1:]:
                hist += g.hist
                sums += g.sums
            mx = max(g.max for g in groups)
            total = math.fsum(g.total for g in groups)
            out[status] = Summary(count, total / timed, estimate(hist, 0.5, mx, sums),
                                  estimate(hist, 0.95, mx, sums), mx)
        return out

    def live_keys(self) -> int:
        """How many QUEUED/RUNNING events are tracked."""
        return len(self._live)

    # -- internals ------------------------------------------------------------------------------------------
    def _group(self, namespace: str, function: str, status: str) -> Durations:
        key = (namespace, function, status)
        group = self._ended.get(key)
        if group is None:
            group = self._ended[key] = Durations()
        return group

    def _untrack(self, key: int, group: GroupKey) -> None:
        del self._live[key]
        n = self._live_counts[group] - 1
        if n:
            self._live_counts[group] = n
        else:
            del self._live_counts[group]


def overview_frame(by_status: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """The overview's frame from ``status -> (count, avg, p50, p95, max)`` (a ``Summary`` or a query's row):
    one row per status in ``STATUSES`` order, 0 and NaN where there is nothing; ``count`` int64, the rest
    float64."""
    counts, figures = [], []
    for status in STATUSES:
        count, *rest = by_status.get(status, (0, None, None, None, None))
        counts.append(int(count))
        figures.append([math.nan if v is None else float(v) for v in rest])
    values = np.array(figures, dtype=np.float64)
    frame: dict[str, Any] = {"status": list(STATUSES), "count": np.array(counts, dtype=np.int64)}
    for i, column in enumerate(("avg_duration_ms", "p50_duration_ms", "p95_duration_ms", "max_duration_ms")):
        frame[column] = values[:, i]
    return pd.DataFrame(frame)
