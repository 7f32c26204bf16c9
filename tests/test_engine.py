"""The engine's execution semantics through the public ``scf_nb`` API: results, failures, timeouts, dying
instances, warm starts, code updates, idle instances, concurrency, FIFO order and the worker cap.

Real loky instances and a real DuckDB store; no mocks. Tests never sleep to synchronise: handlers announce
themselves with a log line (polled through ``Event.logs()``) and wait on gate files the test creates.
Terminate is in ``test_terminate.py``; admission, registration and the invoke API in ``test_invoke.py``.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import kill_quietly, pid_alive, wait_until
from engine_support import WORKER, lines, wait_line


# -- results and failures -----------------------------------------------------------------------------------------
def test_timeout_fails_the_event_with_the_cause(scf: Any) -> None:
    scf.create_function("slow", WORKER, async_run=True, timeout=1)
    t0 = time.monotonic()
    ev = scf.invoke("slow", {"n": 1, "sleep": 30})
    with pytest.raises(scf.FunctionError) as err:
        ev.result(timeout=30)
    assert time.monotonic() - t0 < 15
    assert ev.status == "FAILED"
    assert "timed out after 1 s" in err.value.error_message
    info = ev.info()
    assert "timed out after 1 s" in info["error"]["message"]
    assert info["duration_ms"] >= 900


def test_exception_fails_the_event_and_replaces_the_instance(scf: Any) -> None:
    scf.create_function("flaky", WORKER, async_run=True, concurrency=1)
    first = scf.invoke("flaky", {"n": 1}).result(timeout=30)
    bad = scf.invoke("flaky", {"n": 42, "fail": True})
    with pytest.raises(scf.FunctionError) as err:
        bad.result(timeout=30)
    e = err.value
    assert bad.status == "FAILED"
    assert (e.error_type, e.error_message) == ("ValueError", "bad input 42")
    assert e.request_id == bad.request_id
    assert "ValueError: bad input 42" in e.traceback
    assert "main_handler" in e.traceback and 'raise ValueError(f"bad input' in e.traceback  # with source line
    assert isinstance(e, scf.ScfError)
    info = bad.info()
    assert info["error"]["type"] == "ValueError" and info["error"]["message"] == "bad input 42"
    assert int(info["instance_pid"]) == first["pid"]  # it failed in the warm instance...
    after = scf.invoke("flaky", {"n": 2}).result(timeout=30)
    assert after["pid"] != first["pid"]  # ...which was replaced: the next event gets a fresh process
    assert after["calls"] == 1
    wait_until(lambda: not pid_alive(first["pid"]), 20, "the failed instance to be gone")
    assert scf.get_event_status(bad.request_id) == "FAILED"


def test_cold_start_error_fails_the_event(scf: Any) -> None:
    code = ("print('loading')\nraise RuntimeError('model file missing')\n"
            "def main_handler(event, context):\n    return 1\n")
    scf.create_function("badload", code, async_run=True)
    for _ in range(2):  # each attempt is a fresh instance, and fails the same way
        ev = scf.invoke("badload")
        with pytest.raises(scf.FunctionError) as err:
            ev.result(timeout=30)
        assert (err.value.error_type, err.value.error_message) == ("RuntimeError", "model file missing")
        assert "loading" in lines(ev)


def test_process_exit_in_handler_fails_the_event(scf: Any) -> None:
    code = "import os\ndef main_handler(event, context):\n    print('bye', flush=True)\n    os._exit(3)\n"
    scf.create_function("quitter", code, async_run=True)
    ev = scf.invoke("quitter")
    with pytest.raises(scf.FunctionError) as err:
        ev.result(timeout=30)
    assert "code 3" in err.value.error_message
    assert lines(ev) == ["bye"]


def test_segfault_fails_the_event_with_the_cause(scf: Any) -> None:
    code = "import ctypes\ndef main_handler(event, context):\n    print('crashing', flush=True)\n" \
           "    ctypes.string_at(0)\n"
    scf.create_function("crash", code, async_run=True)
    ev = scf.invoke("crash")
    with pytest.raises(scf.FunctionError) as err:
        ev.result(timeout=30)
    assert "SIGSEGV" in err.value.error_message
    assert lines(ev)[0] == "crashing"  # (a faulthandler dump may follow: it is the event's output too)


def test_sigkill_from_outside_fails_the_event_and_the_next_one_runs(scf: Any) -> None:
    scf.create_function("victim", WORKER, async_run=True, concurrency=1)
    ev = scf.invoke("victim", {"n": 1, "sleep": 60})
    pid = int(wait_line(ev, "running 1").split()[-1])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(scf.FunctionError) as err:
        ev.result(timeout=30)
    assert ev.status == "FAILED"
    assert "SIGKILL" in err.value.error_message
    assert lines(ev) == [f"cold start {pid}", f"running 1 {pid}"]  # its lines before the kill are kept
    nxt = scf.invoke("victim", {"n": 2}).result(timeout=30)
    assert nxt["n"] == 2 and nxt["pid"] != pid


def test_sigterm_from_outside_fails_the_event_and_the_next_one_runs(scf: Any) -> None:
    scf.create_function("termed", WORKER, async_run=True, concurrency=1)
    ev = scf.invoke("termed", {"n": 1, "sleep": 60})
    pid = int(wait_line(ev, "running 1").split()[-1])
    os.kill(pid, signal.SIGTERM)
    assert ev.wait(timeout=30) == "FAILED"  # not ABORTED: nobody terminated it through scf_nb
    with pytest.raises(scf.FunctionError) as err:
        ev.result()
    assert "SIGTERM" in err.value.error_message
    assert scf.invoke("termed", {"n": 2}).result(timeout=30)["pid"] != pid


def test_events_queued_behind_a_killed_instance_still_run(scf: Any) -> None:
    """An event of a killed instance fails; events queued behind it still run (and are not lost)."""
    scf.create_function("queue_behind", WORKER, async_run=True, concurrency=1)
    first = scf.invoke("queue_behind", {"n": 1, "sleep": 60})
    behind = [scf.invoke("queue_behind", {"n": n}) for n in (2, 3)]
    pid = int(wait_line(first, "running 1").split()[-1])
    kill_quietly(pid)
    assert first.wait(timeout=30) == "FAILED"
    assert [ev.result(timeout=30)["n"] for ev in behind] == [2, 3]


def test_memory_limit_exceeded_fails_the_event(scf: Any) -> None:
    code = (
        "import time\n"
        "def main_handler(event, context):\n"
        "    data = b'x' * (400 * 2**20)\n"
        "    print('allocated', len(data), flush=True)\n"
        "    time.sleep(30)\n"
        "    return len(data)\n"
    )
    scf.create_function("hog", code, async_run=True, memory_mb=100)
    t0 = time.monotonic()
    ev = scf.invoke("hog")
    with pytest.raises(scf.FunctionError) as err:
        ev.result(timeout=30)
    assert time.monotonic() - t0 < 20
    assert ev.status == "FAILED"
    assert "memory limit exceeded" in err.value.error_message
    scf.create_function("hog", WORKER, async_run=True, memory_mb=100)  # a function within its limit runs
    assert scf.invoke("hog", {"n": 3}).result(timeout=30)["n"] == 3


def test_non_json_result_is_kept_not_lost(scf: Any) -> None:
    code = "def main_handler(event, context):\n    return {'s': {1}, 'ok': 1}\n"
    scf.create_function("setret", code, async_run=True)
    ev = scf.invoke("setret")
    assert ev.result(timeout=30) == {"s": {1}, "ok": 1}  # the value itself; test_results.py has the rest
    assert ev.status == "FINISHED"


def test_wait_and_result_time_out_on_a_running_event(scf: Any, tmp_path: Path) -> None:
    scf.create_function("held", WORKER, async_run=True)
    gate = tmp_path / "gate"
    ev = scf.invoke("held", {"n": 1, "gate": str(gate)})
    wait_line(ev, "running 1")
    assert ev.wait(timeout=0.05) == "RUNNING"
    with pytest.raises(TimeoutError):
        ev.result(timeout=0.05)
    gate.touch()
    assert ev.wait(timeout=30) == "FINISHED"


# -- instances: warm starts, code updates, idle instances ---------------------------------------------------------
def test_warm_start_keeps_module_state_and_cold_start_logs_go_to_the_first_event(scf: Any) -> None:
    scf.create_function("warm", WORKER, async_run=True, concurrency=1)
    evs = []
    for n in range(3):
        evs.append(scf.invoke("warm", {"n": n}))
        evs[-1].result(timeout=30)
    results = [ev.result() for ev in evs]
    assert [r["calls"] for r in results] == [1, 2, 3]
    assert len({r["pid"] for r in results}) == 1
    pid = results[0]["pid"]
    assert lines(evs[0]) == [f"cold start {pid}", f"running 0 {pid}"]
    assert lines(evs[1]) == [f"running 1 {pid}"]
    assert lines(evs[2]) == [f"running 2 {pid}"]


def test_updated_code_reaches_the_next_event_not_the_running_one(scf: Any, tmp_path: Path) -> None:
    v = "import os, time\ndef main_handler(event, context):\n" \
        "    while not os.path.exists(event.get('gate', '/')):\n        time.sleep(0.01)\n    return 'v{}'\n"
    scf.create_function("upd", v.format(1), async_run=True, concurrency=1)
    assert scf.invoke("upd").result(timeout=30) == "v1"  # a warm instance of v1 is now idle
    gate = tmp_path / "gate"
    running = scf.invoke("upd", {"gate": str(gate)})
    wait_until(lambda: running.status == "RUNNING", 30, "the event to run")
    scf.create_function("upd", v.format(2), async_run=True, concurrency=1)
    queued = scf.invoke("upd")
    gate.touch()
    assert running.result(timeout=30) == "v1"  # the code it started with
    assert queued.result(timeout=30) == "v2"
    scf.create_function("upd", v.format(3), async_run=True, concurrency=1, env={"X": "1"})
    assert scf.invoke("upd").result(timeout=30) == "v3"


@pytest.fixture
def short_idle(scf: Any) -> Any:
    default = type(scf.configure())().idle_instance_seconds
    scf.configure(idle_instance_seconds=0.3)
    try:
        yield scf
    finally:
        scf.configure(idle_instance_seconds=default)


def test_idle_instance_is_stopped_and_the_next_event_cold_starts(short_idle: Any) -> None:
    scf = short_idle
    scf.create_function("idle", WORKER, async_run=True)
    first = scf.invoke("idle", {"n": 1}).result(timeout=30)
    wait_until(lambda: not pid_alive(first["pid"]), 20, "the idle instance to be stopped")
    ev = scf.invoke("idle", {"n": 2})
    second = ev.result(timeout=30)
    assert second["pid"] != first["pid"] and second["calls"] == 1
    assert lines(ev)[0].startswith("cold start")


def test_background_processes_of_events_do_not_pile_up_as_zombies(scf: Any) -> None:
    code = (
        "import os, subprocess\n"
        "def main_handler(event, context):\n"
        "    # a shell that leaves a background job behind and exits: the job is orphaned\n"
        "    out = subprocess.run(['sh', '-c', 'sleep 0.2 & echo $!'], capture_output=True, text=True).stdout\n"
        "    return {'pid': os.getpid(), 'orphan': int(out)}\n"
    )
    scf.create_function("spawner", code, async_run=True, concurrency=1)
    first = scf.invoke("spawner").result(timeout=30)
    orphan = first["orphan"]
    wait_until(lambda: not pid_alive(orphan), 20, f"background job {orphan} to end")
    second = scf.invoke("spawner").result(timeout=30)  # the same warm instance serves another event
    assert second["pid"] == first["pid"]
    kill_quietly(second["orphan"])
    # ended, and reaped: not left behind as a zombie of the instance for as long as the instance lives
    wait_until(lambda: not os.path.exists(f"/proc/{orphan}"), 5, f"zombie {orphan} to be reaped")


# -- concurrency and order ----------------------------------------------------------------------------------------
def test_concurrency_one_queues_events_in_fifo_order(scf: Any, tmp_path: Path) -> None:
    scf.create_function("serial", WORKER, async_run=True, concurrency=1)
    order = tmp_path / "order"
    gates = [tmp_path / f"gate{n}" for n in range(3)]
    evs = [scf.invoke("serial", {"n": n, "gate": str(g), "order": str(order)}) for n, g in enumerate(gates)]
    wait_line(evs[0], "running 0")
    assert evs[0].status == "RUNNING"
    assert [ev.status for ev in evs[1:]] == ["QUEUED", "QUEUED"]
    assert sorted(scf.list_events("serial", status="QUEUED")["request_id"]) == sorted(
        ev.request_id for ev in evs[1:])
    gates[2].touch()  # the last one is free to run first, if it were allowed to jump the queue
    gates[1].touch()
    assert [ev.status for ev in evs[1:]] == ["QUEUED", "QUEUED"]  # no free instance: still waiting
    gates[0].touch()
    assert [ev.result(timeout=30)["n"] for ev in evs] == [0, 1, 2]
    assert order.read_text().split() == ["0", "1", "2"]
    infos = [ev.info() for ev in evs]
    for before, after in itertools.pairwise(infos):
        assert after["run_time"] >= before["end_time"]  # the next one started only when the previous ended
    assert len({ev.result()["pid"] for ev in evs}) == 1


def test_concurrency_two_runs_two_events_at_once(scf: Any, tmp_path: Path) -> None:
    scf.create_function("pair", WORKER, async_run=True, concurrency=2)
    gate = tmp_path / "gate"
    evs = [scf.invoke("pair", {"n": n, "gate": str(gate)}) for n in range(3)]
    wait_line(evs[0], "running 0")
    wait_line(evs[1], "running 1")
    assert [ev.status for ev in evs] == ["RUNNING", "RUNNING", "QUEUED"]
    gate.touch()
    results = [ev.result(timeout=30) for ev in evs]
    assert results[0]["pid"] != results[1]["pid"]
    assert results[2]["pid"] in (results[0]["pid"], results[1]["pid"])


@pytest.fixture
def one_worker(scf: Any) -> Any:
    default = type(scf.configure())().max_workers
    scf.configure(max_workers=1)
    try:
        yield scf
    finally:
        scf.configure(max_workers=default)


def test_max_workers_caps_instances_over_all_functions(one_worker: Any, tmp_path: Path) -> None:
    scf = one_worker
    scf.create_function("a", WORKER, async_run=True)
    scf.create_function("b", WORKER, async_run=True)
    gate = tmp_path / "gate"
    ev_a = scf.invoke("a", {"n": 1, "gate": str(gate)})
    wait_line(ev_a, "running 1")
    ev_b = scf.invoke("b", {"n": 2})
    assert ev_b.status == "QUEUED"  # the one worker is busy with "a"
    gate.touch()
    assert ev_a.result(timeout=30)["n"] == 1
    assert ev_b.result(timeout=30)["n"] == 2  # then "a"'s idle instance made room for "b"
    assert ev_b.info()["run_time"] >= ev_a.info()["end_time"]


def test_exception_that_cannot_be_printed_is_still_reported(scf: Any) -> None:
    code = ("class Weird(Exception):\n    def __str__(self):\n        raise RuntimeError('no str')\n"
            "def main_handler(event, context):\n    raise Weird()\n")
    scf.create_function("weird", code, async_run=True)
    ev = scf.invoke("weird")
    with pytest.raises(scf.FunctionError) as err:
        ev.result(timeout=30)
    assert err.value.error_type == "Weird"
    assert "SIGKILL" not in err.value.error_message
    assert "raise Weird()" in err.value.traceback


# -- timeouts and timers ------------------------------------------------------------------------------------------
def test_timeout_counts_from_each_events_own_start_on_a_warm_instance(scf: Any) -> None:
    # One timer per instance, re-armed for the event it runs: the second event must get its full second, not
    # what was left of the first one's.
    scf.create_function("paced", WORKER, async_run=True, concurrency=1, timeout=1)
    first = scf.invoke("paced", {"n": 1, "sleep": 0.6})
    second = scf.invoke("paced", {"n": 2, "sleep": 30})
    assert first.wait(timeout=30) == "FINISHED"
    with pytest.raises(scf.FunctionError) as err:
        second.result(timeout=30)
    assert "timed out after 1 s" in err.value.error_message
    assert second.info()["duration_ms"] >= 900
    assert first.info()["instance_pid"] == second.info()["instance_pid"]  # same warm instance


def test_ended_events_leave_no_timer_behind(scf: Any) -> None:
    # A timer per event would keep every event (and its payload) in memory for its whole timeout (24 h).
    scf.create_function("brief", "def main_handler(event, context):\n    return event\n", async_run=True,
                        concurrency=2)
    done, _ = scf.wait([scf.invoke("brief", {"i": i, "pad": "x" * 1000}) for i in range(300)], timeout=60)
    assert len(done) == 300
    engine = scf.client().engine
    assert len(engine.loop.timers) <= 2 + 1  # at most one per instance, plus the engine's tick


def test_short_events_report_resident_memory(scf: Any) -> None:
    scf.create_function("tiny", "def main_handler(event, context):\n    return 1\n", async_run=True)
    ev = scf.invoke("tiny")
    ev.wait(timeout=30)
    info = ev.info()
    assert info["duration_ms"] < 1000 and info["mem_usage_bytes"] > 1_000_000  # a Python process: MBs


def test_socket_folders_of_dead_engines_are_removed(scf: Any) -> None:
    # An engine killed with SIGKILL (a killed kernel) cannot remove its socket folder; the next engine does.
    import subprocess
    import sys
    import tempfile

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = Path(tempfile.gettempdir()) / f"scf_nb-{int(gone.stdout)}-test"
    stale.mkdir()
    (stale / "engine.sock").touch()
    mine = Path(tempfile.mkdtemp(prefix=f"scf_nb-{os.getpid()}-"))  # a living process's: kept
    try:
        scf.list_functions()  # starts this test's engine
        assert not stale.exists() and mine.exists()
    finally:
        mine.rmdir()


def _thread_cpu_s(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_the_engine_thread_polls_only_briefly_after_work_then_sleeps(scf: Any) -> None:
    """After a turn the engine's loop polls for ``SPIN_S`` (200 us) before it sleeps, so a "done" or the next
    invoke finds it awake; an idle engine must not keep polling: over a second with nothing to do (its
    instances are warm, no timer is due but the idle reaper's), its thread uses next to no CPU. Polling for
    that second would cost ~1 s of CPU."""
    from scf_nb.engine.loop import SPIN_S

    assert 0 < SPIN_S <= 0.001
    scf.create_function("idle", WORKER, async_run=True, concurrency=2)
    for ev in [scf.invoke("idle", {}) for _ in range(50)]:
        assert ev.wait(30) == "FINISHED"
    thread = scf.client().engine.loop.thread
    before, t0 = _thread_cpu_s(thread.native_id), time.monotonic()
    while time.monotonic() - t0 < 1.0:  # (this thread sleeps too: the interval is measured, not waited on)
        time.sleep(0.05)
    used = _thread_cpu_s(thread.native_id) - before
    assert used < 0.2, f"the idle engine thread used {used:.2f} s of CPU in 1 s"


def _process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_an_idle_instance_polls_only_briefly_after_an_event_then_sleeps(scf: Any) -> None:
    """After an event a worker looks at its socket for ``SPIN_S`` (300 us) before it blocks, so the next run
    finds it awake; an idle instance must not keep looking: over a second with nothing to do, its process
    uses next to no CPU (looking for that second would cost ~1 s)."""
    from scf_nb.instances.loky.worker import SPIN_S

    assert 0 < SPIN_S <= 0.001
    scf.create_function("idle", WORKER, async_run=True, concurrency=2)
    evs = [scf.invoke("idle", {}) for _ in range(50)]
    for ev in evs:
        assert ev.wait(30) == "FINISHED"
    pids = {ev.info()["instance_pid"] for ev in evs}
    before, t0 = {pid: _process_cpu_s(pid) for pid in pids}, time.monotonic()
    while time.monotonic() - t0 < 1.0:  # (the interval is measured, not waited on)
        time.sleep(0.05)
    used = {pid: _process_cpu_s(pid) - before[pid] for pid in pids}
    assert max(used.values()) < 0.2, f"idle instances used {used} s of CPU in 1 s"
