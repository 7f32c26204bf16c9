"""Row 3: no-op events per second with tracking on, against raw loky's throughput (submit N, wait all).

scf_nb: N invokes, then ``ev.wait()`` on every event in order: what user code does. Also shown: the same
with a wait on the last event only (then a check that all FINISHED), which is the engine's own pace without
the cost of looking up events that have already ended. Rounds alternate between loky and scf_nb.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time

from common import engine_home, loky_executor, noop, row, wait_until, warm_function


def _loky(ex, n: int) -> float:
    t = time.perf_counter()
    cf.wait([ex.submit(noop) for _ in range(n)])
    return n / (time.perf_counter() - t)


def _scf_wait_each(scf_nb, n: int) -> float:
    t = time.perf_counter()
    evs = [scf_nb.invoke("noop") for _ in range(n)]
    statuses = [ev.wait(120) for ev in evs]
    rate = n / (time.perf_counter() - t)
    assert statuses.count("FINISHED") == n, {s: statuses.count(s) for s in set(statuses)}
    return rate


def _scf_wait_last(scf_nb, n: int) -> float:
    t = time.perf_counter()
    evs = [scf_nb.invoke("noop") for _ in range(n)]
    evs[-1].wait(120)
    rate = n / (time.perf_counter() - t)

    def all_done() -> bool:
        ov = scf_nb.overview("noop").set_index("status")["count"]
        return int(ov["QUEUED"] + ov["RUNNING"]) == 0

    assert wait_until(all_done, 60, 0.01)  # FIFO with 2 instances: at most one event may still be running
    return rate


def run(quick: bool) -> list[dict]:
    import scf_nb

    rounds, n = (2, 2000) if quick else (5, 5000)
    workers = min(2, os.cpu_count() or 1)
    ex = loky_executor(workers)
    lk, each, last = [], [], []
    with engine_home():
        warm_function("noop", concurrency=workers)
        for r in range(rounds):
            if r % 2:
                lk.append(_loky(ex, n))
            each.append(_scf_wait_each(scf_nb, n))
            last.append(_scf_wait_last(scf_nb, n))
            if not r % 2:
                lk.append(_loky(ex, n))
            time.sleep(0.2)
        total = int(scf_nb.overview("noop").set_index("status")["count"]["FINISHED"])
    med = lambda xs: sorted(xs)[len(xs) // 2]
    lo = lambda xs: min(xs)
    loky = {"p50": med(lk), "p95": lo(lk), "rounds": lk}
    common = {"target": ">= 1.5x loky", "ratio_target": (">=", 1.5), "higher_is_better": True,
              "note": f"{n} no-ops per round, {rounds} rounds, concurrency={workers}; p95 column = worst round"}
    return [
        row("3a", "no-op events/s, tracking on (wait each)", "ev/s", {"p50": med(each), "p95": lo(each),
            "rounds": each}, loky=loky, **common),
        row("3b", "no-op events/s, tracking on (wait last)", "ev/s", {"p50": med(last), "p95": lo(last),
            "rounds": last}, loky=loky, **common, finished_in_store=total),
    ]
