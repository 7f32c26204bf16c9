"""Row 4: terminate -> ABORTED for a handler in Python code (sleeping; also a busy Python loop), while
bystander events of another function run; none of them may be affected. Row 4d: terminate of an event that
has just become RUNNING (invoke, wait until RUNNING, terminate, 40 times in a row, ``concurrency=2``): its
instance is often one that is still starting (the spare just taken, or a new process).

Raw loky has no way to stop one task: the closest is killing the worker that runs it. Its column shows that,
measured here too: the time from SIGKILL to the task's future failing, and how many other tasks of the pool
failed with it.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

from bystanders import Bystanders, wait_started
from common import engine_home, log, loky_executor, row, stats

SLEEPER = """
import time
def main_handler(event, context):
    print("started", flush=True)
    if event.get("loop"):
        while True:
            pass
    time.sleep(event.get("s", 600))
"""


def _loky_sleeper(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def _loky_bystander(i: int) -> int:
    time.sleep(0.04)
    return i


def _loky_kill(reps: int) -> tuple[list[float], list[int]]:
    ex = loky_executor(2)
    lat, affected = [], []
    for _ in range(reps):
        ex = loky_executor(2)
        path = tempfile.mktemp(prefix="scf_nb-bench-pid-")
        victim = ex.submit(_loky_sleeper, path)
        others = [ex.submit(_loky_bystander, i) for i in range(8)]
        while not os.path.exists(path) or not Path(path).read_text():
            time.sleep(0.002)
        pid = int(Path(path).read_text())
        os.unlink(path)
        t = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        victim.exception(60)  # the kill makes it fail
        lat.append((time.perf_counter() - t) * 1000)
        affected.append(sum(f.exception(60) is not None for f in others))
    return lat, affected


def _terminate_reps(reps: int, event: dict, bys: Bystanders) -> list[float]:
    import scf_nb

    lat = []
    for _ in range(reps):
        bys.invoke(8)  # ~0.3 s of bystander work queued on its own instance
        ev = scf_nb.invoke("sleeper", event)
        wait_started(ev)
        time.sleep(0.02)
        t = time.perf_counter()
        status = ev.terminate()
        lat.append((time.perf_counter() - t) * 1000)
        assert status == "ABORTED", (status, ev.info())
    return lat


def _just_started_reps(reps: int) -> tuple[list[float], int]:
    """invoke, wait until RUNNING, terminate (waits for ABORTED); how many had an instance not connected yet."""
    import scf_nb

    scf_nb.create_function("fresh", "import time\ndef main_handler(event, context):\n    time.sleep(600)\n",
                           async_run=True, concurrency=2)
    lat, unconnected = [], 0
    for _ in range(reps):
        ev = scf_nb.invoke("fresh")
        while ev.status != "RUNNING":
            time.sleep(0.0005)
        t = time.perf_counter()
        status = ev.terminate()
        lat.append((time.perf_counter() - t) * 1000)
        assert status == "ABORTED", (status, ev.info())
        unconnected += ev.info()["instance_pid"] is None
    return lat, unconnected


def run(quick: bool) -> list[dict]:
    import scf_nb

    reps, loop_reps, loky_reps = (6, 3, 3) if quick else (30, 10, 8)
    lk_lat, lk_aff = _loky_kill(loky_reps)
    log(f"loky kill: {lk_lat}, affected {lk_aff}")
    with engine_home():
        bys = Bystanders()
        scf_nb.create_function("sleeper", SLEEPER, async_run=True, concurrency=1)
        sleep_lat = _terminate_reps(reps, {"s": 600}, bys)
        loop_lat = _terminate_reps(loop_reps, {"loop": True}, bys)
        check = bys.check()
        fresh_lat, unconnected = _just_started_reps(40)
    log(f"bystanders: {check}")
    log(f"just started: {sorted(fresh_lat)}; {unconnected} on an instance not connected yet")
    loky = stats(lk_lat)
    loky_note = (f"loky column: SIGKILL of the worker -> its future fails; other tasks of the pool that failed "
                 f"with it: {sum(lk_aff)} of {8 * len(lk_aff)}")
    affected = {"p50": float(check["affected"]), "n": check["bystanders"]}
    return [
        row("4a", "terminate -> ABORTED, sleeping handler", "ms", stats(sleep_lat), loky=loky,
            check=("p95", "<=", 20.0), target="p95 <= 20 ms", note=loky_note),
        row("4b", "terminate -> ABORTED, busy Python loop", "ms", stats(loop_lat), loky=loky,
            check=("p95", "<=", 20.0), target="p95 <= 20 ms"),
        row("4d", "terminate of an event that has just started", "ms", stats(fresh_lat),
            check=("p95", "<=", 20.0), target="p95 <= 20 ms",
            note=(f"40 x: invoke, wait until RUNNING, terminate; concurrency=2; {unconnected} of 40 had been given "
                  f"to an instance that had not connected yet")),
        row("4c", "other events affected (rows 4a+4b)", "events", affected,
            loky={"p50": float(sum(lk_aff))}, check=("p50", "<=", 0.0), target="0",
            note=(f"{check['bystanders']} bystanders: {check['not_finished']} not FINISHED, "
                  f"{check['wrong_result']} wrong result, {check['lost_lines']} lost lines, served by "
                  f"{check['instance_pids']} instance(s); loky: tasks failed by the kills"), **check),
    ]
