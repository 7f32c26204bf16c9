"""Row 1: how long ``invoke()`` of an async function takes to return (a no-op function, instances warm).

Two patterns, each next to raw loky's ``submit()`` in the same process:
- burst: invokes back to back while the earlier events run (the engine thread and the store writer compete
  for the GIL with the caller);
- paced: one invoke every 2 ms, the notebook case (every call finds the engine's threads asleep).
"""

from __future__ import annotations

import time

from common import engine_home, loky_executor, noop, now_us, row, stats, wait_until, warm_function

TARGET = "p50 <= 50 us, p99 <= 1 ms"


def _drain() -> None:
    import scf_nb

    def idle() -> bool:
        ov = scf_nb.overview("noop").set_index("status")["count"]
        return int(ov["QUEUED"] + ov["RUNNING"]) == 0

    assert wait_until(idle, 120, 0.02), "events did not finish"


def _burst(n: int, ex, scf_nb) -> tuple[list[float], list[float]]:
    lk, sc = [], []
    futs = []
    for _ in range(n):
        t = now_us()
        futs.append(ex.submit(noop))
        lk.append(now_us() - t)
    for f in futs:
        f.result()
    evs = []
    for _ in range(n):
        t = now_us()
        evs.append(scf_nb.invoke("noop"))
        sc.append(now_us() - t)
    evs[-1].wait(120)
    _drain()
    return lk, sc


def _paced(n: int, gap: float, ex, scf_nb) -> tuple[list[float], list[float]]:
    lk, sc = [], []
    for _ in range(n):
        time.sleep(gap)
        t = now_us()
        f = ex.submit(noop)
        lk.append(now_us() - t)
        time.sleep(gap)
        t = now_us()
        scf_nb.invoke("noop")
        sc.append(now_us() - t)
        f.result()
    _drain()
    return lk, sc


def run(quick: bool) -> list[dict]:
    import scf_nb

    rounds, per_round = (2, 2500) if quick else (5, 4000)
    paced_n = 300 if quick else 1500
    ex = loky_executor()
    with engine_home():
        warm_function("noop")
        lk_b, sc_b = [], []
        for _ in range(rounds):
            a, b = _burst(per_round, ex, scf_nb)
            lk_b += a
            sc_b += b
        lk_p, sc_p = _paced(paced_n, 0.002, ex, scf_nb)
    burst, burst_l = stats(sc_b), stats(lk_b)
    paced, paced_l = stats(sc_p), stats(lk_p)
    note = "loky column: submit() returning"
    return [
        row("1a", "async invoke() returning, burst", "us", burst, loky=burst_l, check=("p50", "<=", 50.0),
            target="p50 <= 50 us", note=note),
        row("1b", "async invoke() returning, burst: p99", "us", {"p50": burst["p99"], "n": burst["n"]},
            loky={"p50": burst_l["p99"]}, check=("p50", "<=", 1000.0), target="p99 <= 1 ms",
            note="p99 shown in the median column"),
        row("1c", "async invoke() returning, paced 1 per ~4 ms", "us", paced, loky=paced_l,
            check=("p50", "<=", 50.0), target="p50 <= 50 us", note=note),
        row("1d", "async invoke() returning, paced: p99", "us", {"p50": paced["p99"], "n": paced["n"]},
            loky={"p50": paced_l["p99"]}, check=("p50", "<=", 1000.0), target="p99 <= 1 ms",
            note="p99 shown in the median column"),
    ]
