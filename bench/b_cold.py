"""Row 8: the first event from a cold engine: ``scf_nb.configure(home=<new folder>)``, ``create_function``,
``invoke``, ``result()``; the engine shut down between repetitions, each with a fresh home. The modules are
imported once beforehand (a notebook has done that by its first invoke too; the first-ever time, imports
included, is in the JSON). Split: engine start + create_function, and invoke -> result (the instance's cold
start). The loky column: a new ``loky.ProcessPoolExecutor(max_workers=2)``'s first ``submit(noop).result()``.
"""

from __future__ import annotations

import shutil
import tempfile
import time

from common import NOOP_CODE, log, noop, row, stats


def _loky_cold() -> float:
    import loky

    t = time.perf_counter()
    ex = loky.ProcessPoolExecutor(max_workers=2)
    ex.submit(noop).result()
    dt = (time.perf_counter() - t) * 1000
    ex.shutdown(wait=True, kill_workers=True)
    return dt


def _scf_cold(scf_nb) -> tuple[float, float, float]:
    home = tempfile.mkdtemp(prefix="scf_nb-bench-cold-")
    try:
        t = time.perf_counter()
        scf_nb.configure(home=home, max_qps=1e9)
        scf_nb.create_function("hello", NOOP_CODE, async_run=True)
        t1 = time.perf_counter()
        ev = scf_nb.invoke("hello")
        assert ev.result(60) is None
        t2 = time.perf_counter()
        scf_nb.shutdown()
        return (t2 - t) * 1000, (t1 - t) * 1000, (t2 - t1) * 1000
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(quick: bool) -> list[dict]:
    reps = 3 if quick else 9
    t = time.perf_counter()
    import loky  # noqa: F401

    import scf_nb
    import scf_nb.api
    import scf_nb.instances.loky.worker

    imports_ms = (time.perf_counter() - t) * 1000
    first_ever = _scf_cold(scf_nb)
    lk, total, start, first = [], [], [], []
    for i in range(reps):
        for side in ((0, 1) if i % 2 else (1, 0)):
            if side == 0:
                lk.append(_loky_cold())
            else:
                a, b, c = _scf_cold(scf_nb)
                total.append(a)
                start.append(b)
                first.append(c)
    log(f"imports {imports_ms:.0f} ms, first ever {first_ever}; scf {total}; loky {lk}")
    s = stats(total)
    return [
        row("8", "first event from a cold engine", "ms", s, loky=stats(lk), check=("p50", "<=", 100.0),
            target="<= 100 ms",
            note=(f"median split: engine start + create_function {stats(start)['p50']:.0f} ms, invoke -> result "
                  f"{stats(first)['p50']:.0f} ms; first ever in this process {first_ever[0]:.0f} ms "
                  f"(+ {imports_ms:.0f} ms imports); loky column: new pool, first submit().result()"),
            engine_start=stats(start), invoke_to_result=stats(first), first_ever=first_ever, imports_ms=imports_ms),
    ]
