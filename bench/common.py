"""Shared helpers of the benchmark suite: statistics, result rows, the raw loky baseline, engine set-up.

Every benchmark module exposes ``run(quick: bool) -> list[dict]`` (rows made with :func:`row`) and runs
its raw loky baseline in the same process, right next to the scf_nb measurement.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

NOOP_CODE = "def main_handler(event, context):\n    return None\n"


# -- the raw loky baseline (module-level functions: loky pickles them by reference) -----------------------------
def noop() -> None:
    return None


def loky_executor(max_workers: int = 2) -> Any:
    """The raw loky pool the targets are measured against, warmed up (its workers started)."""
    import loky

    ex = loky.get_reusable_executor(max_workers=max_workers)
    for f in [ex.submit(noop) for _ in range(4 * max_workers)]:
        f.result()
    return ex


# -- statistics ---------------------------------------------------------------------------------------------
def pct(values: Iterable[float], q: float) -> float | None:
    arr = np.asarray(list(values), dtype=float)
    return float(np.percentile(arr, q)) if arr.size else None


def stats(values: Iterable[float]) -> dict[str, Any]:
    arr = np.asarray(list(values), dtype=float)
    if not arr.size:
        return {"n": 0}
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "p99": float(np.percentile(arr, 99)), "min": float(arr.min()), "max": float(arr.max()),
            "mean": float(arr.mean())}


def row(rid: str, figure: str, unit: str, scf: dict[str, Any] | None, *, loky: dict[str, Any] | None = None,
        check: tuple[str, str, float] | None = None, ratio_target: tuple[str, float] | None = None,
        target: str = "", note: str = "", higher_is_better: bool = False, **details: Any) -> dict[str, Any]:
    """One line of the results table.

    Args:
        scf, loky: statistics (``stats()`` output or a dict with p50/p95/...) for scf_nb and the baseline.
        check: ``(stat, op, threshold)`` on scf_nb's figures, e.g. ``("p99", "<=", 1000)``.
        ratio_target: ``(op, threshold)`` on ``scf p50 / loky p50``, e.g. ``("<=", 1.0)``.
        target: the target as the issue writes it.
    """
    scf = scf or {}
    ratio = None
    if loky and scf.get("p50") and loky.get("p50"):
        ratio = scf["p50"] / loky["p50"]
    verdict, checked = "INFO", []
    tests = []
    if check is not None:
        stat, op, thr = check
        tests.append((f"{stat} {_fmt(scf.get(stat))} {op} {_fmt(thr)}", _cmp(scf.get(stat), op, thr)))
    if ratio_target is not None:
        op, thr = ratio_target
        tests.append((f"ratio {_fmt(ratio)} {op} {thr:g}", _cmp(ratio, op, thr)))
    if tests:
        verdict = "PASS" if all(ok for _, ok in tests) else "MISS"
        checked = [t for t, _ in tests]
    return {"id": rid, "figure": figure, "unit": unit, "scf": scf, "loky": loky, "ratio": ratio,
            "target": target, "verdict": verdict, "checked": checked, "note": note,
            "higher_is_better": higher_is_better, "details": details}


def _cmp(value: float | None, op: str, thr: float) -> bool:
    if value is None:
        return False
    return value <= thr if op == "<=" else value >= thr if op == ">=" else value == thr


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


# -- timing ---------------------------------------------------------------------------------------------------
def now_us() -> float:
    return time.perf_counter_ns() / 1000.0


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def log(*parts: Any) -> None:
    print("  ", *parts, file=sys.stderr, flush=True)


# -- the engine -------------------------------------------------------------------------------------------------
@contextmanager
def engine_home(prefix: str = "scf_nb-bench-", **settings: Any) -> Iterator[str]:
    """A fresh store folder with the default engine configured on it (``max_qps`` raised); shut down and
    removed afterwards."""
    import scf_nb

    home = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("SCF_NB_BENCH_TMP"))
    settings.setdefault("max_qps", 1e9)
    scf_nb.configure(home=home, **settings)
    try:
        yield home
    finally:
        scf_nb.shutdown()
        shutil.rmtree(home, ignore_errors=True)


def warm_function(name: str, code: str = NOOP_CODE, concurrency: int = 2, n: int | None = None) -> None:
    """Register an async function and start its instances (so the figures are warm-start ones)."""
    import scf_nb

    scf_nb.create_function(name, code, async_run=True, concurrency=concurrency)
    n = n if n is not None else 4 * concurrency
    for ev in [scf_nb.invoke(name) for _ in range(n)]:
        assert ev.wait(60) == "FINISHED", ev.info()
