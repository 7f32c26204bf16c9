"""Row 3: no-op events per second with tracking on, against raw loky's throughput, the same pattern on both:

3a: N invokes, then a wait on every event in order (``ev.wait()``)  vs  N ``submit``s, then ``f.result()`` on
    every future in order;
3b: N invokes, then one wait for all of them (``scf_nb.wait(evs)``)  vs  N ``submit``s, then
    ``concurrent.futures.wait(futures)``.
Every event is checked FINISHED. Rounds alternate which side goes first.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from typing import Any

from common import engine_home, loky_executor, noop, row, warm_function


def _loky_each(ex, n: int) -> float:
    t = time.perf_counter()
    for f in [ex.submit(noop) for _ in range(n)]:
        f.result()
    return n / (time.perf_counter() - t)


def _loky_all(ex, n: int) -> float:
    t = time.perf_counter()
    done, _ = cf.wait([ex.submit(noop) for _ in range(n)])
    rate = n / (time.perf_counter() - t)
    assert len(done) == n
    return rate


def _scf_wait_each(scf_nb, n: int) -> float:
    t = time.perf_counter()
    evs = [scf_nb.invoke("noop") for _ in range(n)]
    statuses = [ev.wait(120) for ev in evs]
    rate = n / (time.perf_counter() - t)
    assert statuses.count("FINISHED") == n, {s: statuses.count(s) for s in set(statuses)}
    return rate


def _scf_wait_all(scf_nb, n: int) -> float:
    t = time.perf_counter()
    done, not_done = scf_nb.wait([scf_nb.invoke("noop") for _ in range(n)], timeout=120)
    rate = n / (time.perf_counter() - t)
    assert len(done) == n and not not_done
    statuses = scf_nb.list_events("noop", limit=n)["status"]
    assert (statuses == "FINISHED").all(), statuses.value_counts()
    return rate


def run(quick: bool) -> list[dict]:
    import scf_nb

    rounds, n = (2, 2000) if quick else (5, 5000)
    workers = min(2, os.cpu_count() or 1)
    ex = loky_executor(workers)
    lk_each, lk_all, each, all_ = [], [], [], []
    with engine_home():
        warm_function("noop", concurrency=workers)
        for r in range(rounds):
            pairs = [(lk_each, lambda: _loky_each(ex, n)), (each, lambda: _scf_wait_each(scf_nb, n)),
                     (lk_all, lambda: _loky_all(ex, n)), (all_, lambda: _scf_wait_all(scf_nb, n))]
            if r % 2:  # alternate which side goes first
                pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
            for out, measure in pairs:
                out.append(measure())
            time.sleep(0.2)
        total = int(scf_nb.overview("noop").set_index("status")["count"]["FINISHED"])

    def summary(xs: list[float]) -> dict[str, Any]:
        return {"p50": sorted(xs)[len(xs) // 2], "p95": min(xs), "rounds": xs}

    common = {"target": ">= 1.5x loky", "ratio_target": (">=", 1.5), "higher_is_better": True,
              "note": f"{n} no-ops per round, {rounds} rounds, concurrency={workers}; p95 column = worst round"}
    return [
        row("3a", "no-op events/s, tracking on (wait each in turn)", "ev/s", summary(each), loky=summary(lk_each),
            **common),
        row("3b", "no-op events/s, tracking on (one wait for all)", "ev/s", summary(all_), loky=summary(lk_all),
            **common, finished_in_store=total),
    ]
