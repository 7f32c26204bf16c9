"""Row 9: the memory of the process that did the work (not of one that reopened a store built offline).

One process, the real engine, the public API: N no-op events (``invoke`` in batches of 5,000, then
``scf_nb.wait`` on the batch), VmRSS sampled at 100k, 300k, 600k and 1M events; then 10 events printing 1M
lines each; then another 1M events. 9a: RSS after the lines; 9b: what another 1M events add. The JSON keeps,
for every sample, where the memory is (``snapshot``): /proc/self/smaps_rollup, glibc's malloc statistics,
Python's small-object heap, DuckDB's allocator and own accounting, and the engine's in-memory records
(bench/README.md, "Memory", reads them).

    SCF_NB_BENCH_MEMORY_TRACE=1 python bench/run.py --only memory   # adds tracemalloc's top allocation
                                                                      # sites (slow: figures not comparable)
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import sys
import tempfile
import time
from typing import Any

from common import NOOP_CODE, engine_home, log, row, rss_mb

PRINTER = """
def main_handler(event, context):
    for i in range(event["n"]):
        print("line", i)
    return event["n"]
"""
BATCH = 5000
_TRACE = os.environ.get("SCF_NB_BENCH_MEMORY_TRACE") == "1"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _malloc_mb() -> dict[str, float]:
    """glibc's view: bytes in use by malloc's callers, bytes free but kept, bytes in mmapped blocks."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _Mallinfo2
    m = fn()
    return {"heap_mb": m.arena / 2**20, "in_use_mb": m.uordblks / 2**20, "free_kept_mb": m.fordblks / 2**20,
            "mmapped_mb": m.hblkhd / 2**20}


def _pymalloc_mb() -> dict[str, float]:
    """Python's small-object allocator: its arenas (each 1 MiB, mmapped) and the bytes in live objects."""
    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode()

    def num(name: str) -> int:
        found = re.search(re.escape(name) + r"\s*=\s*([\d,]+)", text)
        assert found is not None, name
        return int(found.group(1).replace(",", ""))

    return {"pymalloc_arenas_mb": float(num("# arenas allocated current")),  # 1 MiB each (Python 3.10+)
            "pymalloc_used_mb": num("# bytes in allocated blocks") / 2**20}


def _jemalloc_mb() -> dict[str, float]:
    """DuckDB's allocator (a jemalloc built into its module): bytes allocated, and resident."""
    try:
        from duckdb import _duckdb

        mallctl = ctypes.CDLL(_duckdb.__file__).duckdb_je_mallctl
    except (ImportError, OSError, AttributeError):
        return {}
    mallctl.argtypes = (ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                        ctypes.c_size_t)
    epoch = ctypes.c_uint64(1)
    mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch))  # refresh the statistics
    out = {}
    for name in ("allocated", "resident", "retained"):
        value, size = ctypes.c_size_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
        if mallctl(f"stats.{name}".encode(), ctypes.byref(value), ctypes.byref(size), None, 0) == 0:
            out[f"duckdb_je_{name}_mb"] = value.value / 2**20
    return out


def _smaps_mb() -> dict[str, float]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Anonymous:", "Pss_Anon:", "Pss_File:"):
                out[parts[0][:-1].lower() + "_mb"] = int(parts[1]) / 1024
    return out


def snapshot(label: str, events: int) -> dict[str, Any]:
    """Where this process's memory is now."""
    import scf_nb

    engine = scf_nb.client().engine
    store = engine.store
    cur = store.cursor()
    duck = {tag: n / 2**20 for tag, n in cur.execute(
        "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0").fetchall()}
    # fetchall, not fetchone: a result left unread keeps its transaction open, and DuckDB cannot checkpoint
    size = cur.execute("SELECT database_size, memory_usage, memory_limit, wal_size FROM pragma_database_size() "
                       "WHERE database_name = current_database()").fetchall()[0]
    snap = {"label": label, "events": events, "rss_mb": rss_mb(), **_smaps_mb(), **_malloc_mb(), **_pymalloc_mb(),
            **_jemalloc_mb(), "duckdb_mb": duck, "duckdb_size": size[0], "duckdb_memory_usage": size[1],
            "duckdb_limit": size[2], "duckdb_wal": size[3],
            "recent": len(engine.table.recent), "live": len(engine.table.live), "gc_objects": len(gc.get_objects())}
    if _TRACE:
        import tracemalloc

        top = tracemalloc.take_snapshot().statistics("lineno")[:12]
        snap["traced_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
        snap["top"] = [f"{s.size / 2**20:.1f} MB {s.count} {s.traceback}" for s in top]

    def g(k: str) -> Any:
        return snap.get(k, float("nan"))

    tags = ", ".join(f"{k} {v:.0f}" for k, v in duck.items())
    log(f"{label}: RSS {g('rss_mb'):.0f} MB, anon {g('anonymous_mb'):.0f}: pymalloc arenas "
        f"{g('pymalloc_arenas_mb'):.0f} (objects {g('pymalloc_used_mb'):.0f}), glibc heap {g('heap_mb'):.0f} "
        f"(in use {g('in_use_mb'):.0f}) + mmapped {g('mmapped_mb'):.0f}, duckdb's jemalloc resident "
        f"{g('duckdb_je_resident_mb'):.0f} (allocated {g('duckdb_je_allocated_mb'):.0f}; duckdb counts "
        f"{sum(duck.values()):.0f}: {tags}; file {size[0]}, wal {size[3]}); "
        f"recent {snap['recent']}, live {snap['live']}, objects {snap['gc_objects']}")
    return snap


def _noops(n: int) -> float:
    """``n`` no-op events, in batches; returns events/s."""
    import scf_nb

    t = time.perf_counter()
    for start in range(0, n, BATCH):
        done, not_done = scf_nb.wait([scf_nb.invoke("noop") for _ in range(min(BATCH, n - start))], timeout=300)
        assert not not_done and all(ev.status == "FINISHED" for ev in done)
    return n / (time.perf_counter() - t)


def run(quick: bool) -> list[dict]:
    import scf_nb

    scale = 10 if quick else 1
    marks = [m // scale for m in (100_000, 300_000, 600_000, 1_000_000)]
    lines = 1_000_000 // scale
    if _TRACE:
        import tracemalloc

        tracemalloc.start()
    samples, rates = [], []
    with engine_home():
        scf_nb.create_function("noop", NOOP_CODE, async_run=True, concurrency=2)
        scf_nb.create_function("printer", PRINTER, async_run=True, concurrency=2)
        samples.append(snapshot("start", 0))
        done = 0
        for mark in marks:
            rates.append(_noops(mark - done))
            done = mark
            samples.append(snapshot(f"{mark:,} events", done))
        t = time.perf_counter()
        evs = [scf_nb.invoke("printer", {"n": lines}) for _ in range(10)]
        assert all(ev.wait(600) == "FINISHED" for ev in evs), [ev.info() for ev in evs]
        assert all(len(scf_nb.logs(ev.request_id, since_seq=lines - 1)) == 1 for ev in evs)
        lines_s = 10 * lines / (time.perf_counter() - t)
        del evs
        after_lines = snapshot(f"+ 10 x {lines:,} lines", done)
        samples.append(after_lines)
        rates.append(_noops(marks[-1]))
        after_more = snapshot(f"+ another {marks[-1]:,} events", done + marks[-1])
        samples.append(after_more)
    grown = after_more["rss_mb"] - after_lines["rss_mb"]
    curve = ", ".join(f"{s['label']} {s['rss_mb']:.0f}" for s in samples)
    tag = "" if not quick else f" [quick: 1/{scale} of the events and lines]"
    return [
        row("9a", "RSS of the process that ran 1M events + 10M lines" + tag, "MB", {"p50": after_lines["rss_mb"]},
            check=("p50", "<=", 300.0), target="<= 300 MB",
            note=f"VmRSS: {curve} MB; no-op events/s per step {[round(r) for r in rates]}, lines/s {lines_s:,.0f}",
            samples=samples, rates=rates, lines_per_s=lines_s),
        row("9b", "RSS growth over a further 1M events" + tag, "MB", {"p50": grown}, check=("p50", "<=", 20.0),
            target="<= 20 MB", note=f"{after_lines['rss_mb']:.0f} -> {after_more['rss_mb']:.0f} MB"),
    ]
