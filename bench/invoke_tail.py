"""The slow end of a burst of ``invoke()`` calls, and what it waits for: 5 bursts of 4,000 no-op async
invocations (each burst waited for), the p50/p95/p99 of the call, and how many of the calls above the p99
had a pass of the garbage collector start inside them. Run it beside another checkout, alternating:
``PYTHONPATH=. python bench/invoke_tail.py`` and ``PYTHONPATH=OTHER python bench/invoke_tail.py``;
``--no-gc`` runs the bursts with the collector off (what the tail is without its passes)."""

import bisect
import gc
import os
import sys
import tempfile
import threading
import time

os.environ["SCF_NB_HOME"] = tempfile.mkdtemp()
import scf_nb  # noqa: E402

scf_nb.configure(home=os.environ["SCF_NB_HOME"], max_qps=1e9)
scf_nb.create_function("noop", "def main_handler(event, context):\n    return None\n", async_run=True, concurrency=2)
scf_nb.wait([scf_nb.invoke("noop") for _ in range(200)], timeout=60)
caller = threading.get_ident()
passes: list[tuple[float, int]] = []  # (start, generation) of the collector's passes in this thread


def on_gc(phase: str, info: dict) -> None:
    if phase == "start" and threading.get_ident() == caller:
        passes.append((time.perf_counter(), info["generation"]))


gc.callbacks.append(on_gc)
if "--no-gc" in sys.argv:
    gc.disable()
calls = []
for _ in range(5):
    evs = []
    for _ in range(4000):
        t = time.perf_counter()
        evs.append(scf_nb.invoke("noop"))
        calls.append((t, time.perf_counter()))
    done, not_done = scf_nb.wait(evs, timeout=120)
    assert not not_done
    time.sleep(0.3)
gc.callbacks.remove(on_gc)
took = sorted((b - a) * 1e6 for a, b in calls)
n = len(took)
p99 = took[int(n * 0.99)]
starts = [t for t, _ in passes]
slow = [(a, b) for a, b in calls if (b - a) * 1e6 > p99]
with_gc = sum(1 for a, b in slow if (i := bisect.bisect_left(starts, a)) < len(starts) and starts[i] <= b)
print(f"invoke burst p50 {took[n // 2]:.1f} us p95 {took[int(n * 0.95)]:.1f} us p99 {p99:.1f} us; "
      f"{with_gc} of the {len(slow)} calls above the p99 had a collector pass inside; "
      f"{len(passes)} passes in the caller's thread")
scf_nb.shutdown()
