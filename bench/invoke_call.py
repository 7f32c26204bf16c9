"""The time of the invoke call itself (what the caller waits for before its RequestId): 10,000 no-op async
invocations in bursts of 500, each burst waited for. Run it beside another checkout, alternating:
``PYTHONPATH=. python bench/invoke_call.py`` and ``PYTHONPATH=OTHER python bench/invoke_call.py``."""

import os
import tempfile
import time

os.environ["SCF_NB_HOME"] = tempfile.mkdtemp()
import scf_nb  # noqa: E402

scf_nb.configure(home=os.environ["SCF_NB_HOME"], max_qps=1e9)
scf_nb.create_function("noop", "def main_handler(event, context):\n    return None\n", async_run=True, concurrency=2)
scf_nb.wait([scf_nb.invoke("noop") for _ in range(200)], timeout=60)
ts = []
for _ in range(20):
    evs = []
    for _ in range(500):
        a = time.perf_counter()
        evs.append(scf_nb.invoke("noop", {"i": 1}))
        ts.append(time.perf_counter() - a)
    scf_nb.wait(evs, timeout=60)
ts.sort()
print(f"invoke p50 {ts[len(ts) // 2] * 1e6:.1f} us p95 {ts[int(len(ts) * .95)] * 1e6:.1f} us")
scf_nb.shutdown()
