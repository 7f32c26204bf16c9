"""Terminate: whatever the handler is doing, the event becomes ABORTED, its process (and its children) die,
and an event running beside it finishes untouched with its result and every log line.

Real loky instances and a real DuckDB store; no mocks. Handlers announce that they started by printing a
line (polled through ``Event.logs()``); siblings are held by a gate file, never by a sleep in the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import kill_quietly, pid_alive, wait_until
from engine_support import lines, wait_line

# One function, several behaviours chosen by the event: what the terminated event does when it is killed.
TARGET = r'''
import os, signal, subprocess, sys, time

def main_handler(event, context):
    mode = event["mode"]
    if mode == "sibling":
        return sibling(event)
    print("started", os.getpid(), flush=True)
    if mode == "sleep":
        time.sleep(120)
    elif mode == "loop":
        x = 0
        while True:
            x += 1
    elif mode == "gil":
        # one C call that holds the GIL for minutes: no Python signal handler runs until it returns
        sum(range(10**12))
    elif mode == "child":
        # the child prints its own pid (into our captured stdout), then becomes `sleep 120`
        subprocess.run(["sh", "-c", "echo child $$; exec sleep 120"])
    elif mode == "finally":
        try:
            time.sleep(120)
        finally:
            print("saving work", flush=True)
            with open(event["saved"], "w") as f:
                f.write("saved")
    elif mode == "setsid":
        # a child that starts its own session (as daemons and some libraries do) leaves our process group
        child = subprocess.Popen(["sleep", "120"], start_new_session=True)
        print("child", child.pid, flush=True)
        child.wait()
    elif mode == "slow_save":
        try:
            time.sleep(120)
        finally:
            print("saving", flush=True)
            time.sleep(1.0)  # work that takes a while, well within the grace period
            with open(event["saved"], "w") as f:
                f.write(repr(time.time()))
    elif mode == "stamp":
        return time.time()
    elif mode == "sigterm":
        def on_term(signum, frame):
            print("got SIGTERM", flush=True)
            with open(event["saved"], "w") as f:
                f.write("saved")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("handler installed", flush=True)
        time.sleep(120)
    return "not reached"

def sibling(event):
    print("sibling started", os.getpid(), flush=True)
    for i in range(3):
        print("before", i)
    print("err before", file=sys.stderr)
    while not os.path.exists(event["gate"]):
        time.sleep(0.01)
    for i in range(3):
        print("after", i)
    print("err after", file=sys.stderr)
    return {"n": event["n"], "pid": os.getpid()}
'''


def make(scf: Any, name: str, **kw: Any) -> None:
    kw.setdefault("async_run", True)
    kw.setdefault("timeout", 300)
    scf.create_function(name, TARGET, **kw)


def start_sibling(scf: Any, fn: str, gate: Path) -> tuple[Any, int]:
    sib = scf.invoke(fn, {"mode": "sibling", "gate": str(gate), "n": 7})
    pid = int(wait_line(sib, "sibling started").split()[-1])
    wait_until(lambda: "err before" in lines(sib), 30, "the sibling's first lines")
    return sib, pid


def check_sibling_untouched(scf: Any, sib: Any, pid: int, gate: Path) -> None:
    assert sib.status == "RUNNING"
    gate.touch()
    assert sib.result(timeout=30) == {"n": 7, "pid": pid}  # same process: it was not restarted
    assert sib.status == "FINISHED"
    frame = sib.logs()
    expected = {"stdout": [f"sibling started {pid}", "before 0", "before 1", "before 2", "after 0", "after 1",
                           "after 2"],
                "stderr": ["err before", "err after"]}
    for stream, want in expected.items():
        assert frame.loc[frame["stream"] == stream, "line"].tolist() == want
    assert frame["seq"].tolist() == list(range(1, 10))
    assert scf.list_events(status="FAILED").empty


def check_aborted(scf: Any, ev: Any, pid: int) -> None:
    assert ev.status == "ABORTED"
    assert scf.get_event_status(ev.request_id) == "ABORTED"
    with pytest.raises(scf.EventAborted):
        ev.result(timeout=5)
    assert ev.request_id in scf.list_events(status="ABORTED")["request_id"].tolist()
    wait_until(lambda: not pid_alive(pid), 20, f"instance {pid} to be gone")


@pytest.mark.parametrize("mode", ["sleep", "loop", "gil", "child"])
@pytest.mark.parametrize("sibling", ["other_function", "same_function"])
def test_terminate_stops_the_event_and_nothing_else(scf: Any, tmp_path: Path, mode: str, sibling: str) -> None:
    if sibling == "same_function":
        make(scf, "work", concurrency=2)
        sib_fn = "work"
    else:
        make(scf, "work")
        make(scf, "neighbour")
        sib_fn = "neighbour"
    gate = tmp_path / "gate"
    sib, sib_pid = start_sibling(scf, sib_fn, gate)

    ev = scf.invoke("work", {"mode": mode})
    pid = int(wait_line(ev, "started").split()[-1])
    assert pid != sib_pid
    child = None
    if mode == "child":
        child = int(wait_line(ev, "child").split()[-1])
        assert pid_alive(child)

    t0 = time.monotonic()
    assert ev.terminate() == "ABORTED"
    assert time.monotonic() - t0 < 10  # no grace: a SIGKILL, not a wait for the handler
    check_aborted(scf, ev, pid)
    if child is not None:
        wait_until(lambda: not pid_alive(child), 20, f"child process {child} to be gone")
    assert any(line.startswith("started") for line in lines(ev))  # its lines before the kill are kept
    ended = ev.info()["end_time"]
    check_sibling_untouched(scf, sib, sib_pid, gate)
    assert ev.status == "ABORTED" and ev.info()["end_time"] == ended  # a terminal status is final


def test_module_level_terminate_by_request_id(scf: Any) -> None:
    make(scf, "work")
    ev = scf.invoke("work", {"mode": "sleep"})
    pid = int(wait_line(ev, "started").split()[-1])
    assert scf.terminate(ev.request_id) == "ABORTED"
    check_aborted(scf, ev, pid)
    assert ev.info()["status"] == "ABORTED"
    # the function still works afterwards, in a new instance
    assert scf.invoke("work", {"mode": "sibling", "gate": "/", "n": 1}).result(timeout=30)["n"] == 1


@pytest.mark.parametrize("mode", ["finally", "sigterm"])
def test_terminate_with_grace_lets_the_handler_save_work(scf: Any, tmp_path: Path, mode: str) -> None:
    make(scf, "work")
    make(scf, "neighbour")
    gate = tmp_path / "gate"
    sib, sib_pid = start_sibling(scf, "neighbour", gate)
    saved = tmp_path / "saved"
    ev = scf.invoke("work", {"mode": mode, "saved": str(saved)})
    pid = int(wait_line(ev, "started").split()[-1])
    if mode == "sigterm":
        wait_line(ev, "handler installed")

    assert scf.terminate(ev.request_id, grace=True) == "ABORTED"
    assert saved.read_text() == "saved"
    check_aborted(scf, ev, pid)
    # what the handler printed while shutting down is kept with the event
    assert ("saving work" if mode == "finally" else "got SIGTERM") in lines(ev)
    check_sibling_untouched(scf, sib, sib_pid, gate)


def test_terminate_with_grace_ends_a_gil_holding_call_after_the_grace_period(scf: Any, tmp_path: Path) -> None:
    grace = scf.configure().grace_seconds  # the fixture sets 2 s
    make(scf, "work")
    make(scf, "neighbour")
    gate = tmp_path / "gate"
    sib, sib_pid = start_sibling(scf, "neighbour", gate)
    ev = scf.invoke("work", {"mode": "gil"})
    pid = int(wait_line(ev, "started").split()[-1])

    t0 = time.monotonic()
    assert ev.terminate(grace=True) == "ABORTED"
    elapsed = time.monotonic() - t0
    # SIGTERM cannot interrupt sum(); the kill after the grace period must. Generous bound: shared machine.
    assert elapsed < grace + 8, elapsed
    assert elapsed > grace * 0.8, elapsed  # and the kill waited for the grace period it promised
    check_aborted(scf, ev, pid)
    check_sibling_untouched(scf, sib, sib_pid, gate)


def test_terminate_queued_event_never_runs(scf: Any, tmp_path: Path) -> None:
    make(scf, "work", concurrency=1)
    gate = tmp_path / "gate"
    first, _ = start_sibling(scf, "work", gate)
    queued = scf.invoke("work", {"mode": "sibling", "gate": str(gate), "n": 8})
    assert queued.status == "QUEUED"

    assert queued.terminate() == "ABORTED"
    assert queued.status == "ABORTED"
    with pytest.raises(scf.EventAborted):
        queued.result(timeout=5)
    gate.touch()
    assert first.result(timeout=30)["n"] == 7
    assert first.status == "FINISHED"
    # it never ran: no line, no start of execution, no instance
    assert lines(queued) == []
    info = queued.info()
    assert info["status"] == "ABORTED"
    assert info["run_time"] is None or str(info["run_time"]) in ("NaT", "None")
    assert info["instance_pid"] is None or info["instance_pid"] != info["instance_pid"]  # None or NaN
    # the queue moves on: a later event still runs
    assert scf.invoke("work", {"mode": "sibling", "gate": str(gate), "n": 9}).result(timeout=30)["n"] == 9


def test_terminate_an_ended_or_unknown_event_is_refused(scf: Any) -> None:
    make(scf, "work")
    ev = scf.invoke("work", {"mode": "sibling", "gate": "/", "n": 1})
    assert ev.result(timeout=30)["n"] == 1
    for call in (lambda: ev.terminate(), lambda: scf.terminate(ev.request_id),
                 lambda: scf.terminate(ev.request_id, grace=True)):
        with pytest.raises(scf.ScfError) as err:
            call()
        assert err.value.code == "FailedOperation.AsyncEventStatus"
    assert ev.status == "FINISHED"  # and it stays so

    aborted = scf.invoke("work", {"mode": "sleep"})
    wait_line(aborted, "started")
    aborted.terminate()
    with pytest.raises(scf.ScfError) as err:
        aborted.terminate()
    assert err.value.code == "FailedOperation.AsyncEventStatus"

    for unknown in ("00000000-ffff-4000-8000-000000000000", "not-a-request-id", ""):
        with pytest.raises(scf.ScfError) as err:
            scf.terminate(unknown)
        assert err.value.code == "ResourceNotFound.AsyncEvent", unknown


def test_terminate_right_after_invoke_during_cold_start(scf: Any, tmp_path: Path) -> None:
    make(scf, "work")
    make(scf, "neighbour")
    gate = tmp_path / "gate"
    sib, sib_pid = start_sibling(scf, "neighbour", gate)
    evs = [scf.invoke("work", {"mode": "sleep"}) for _ in range(3)]  # no instance of "work" exists yet
    for ev in evs:
        ev.terminate(wait=False)
    for ev in evs:
        assert ev.wait(timeout=30) == "ABORTED"
        with pytest.raises(scf.EventAborted):
            ev.result(timeout=5)
    check_sibling_untouched(scf, sib, sib_pid, gate)
    # the function is not left stuck: the next event runs
    assert scf.invoke("work", {"mode": "sibling", "gate": "/", "n": 3}).result(timeout=30)["n"] == 3


def test_terminate_running_event_lets_the_queued_one_behind_it_run(scf: Any, tmp_path: Path) -> None:
    make(scf, "work", concurrency=1)
    gate = tmp_path / "gate"
    gate.touch()
    ev = scf.invoke("work", {"mode": "loop"})
    behind = [scf.invoke("work", {"mode": "sibling", "gate": str(gate), "n": n}) for n in (1, 2)]
    pid = int(wait_line(ev, "started").split()[-1])
    assert [b.status for b in behind] == ["QUEUED", "QUEUED"]
    assert ev.terminate() == "ABORTED"
    check_aborted(scf, ev, pid)
    assert [b.result(timeout=30)["n"] for b in behind] == [1, 2]
    assert [b.status for b in behind] == ["FINISHED", "FINISHED"]


def test_terminate_many_running_events_at_once(scf: Any) -> None:
    make(scf, "work", concurrency=3)
    evs = [scf.invoke("work", {"mode": m}) for m in ("sleep", "loop", "child")]
    pids = [int(wait_line(ev, "started").split()[-1]) for ev in evs]
    child = int(wait_line(evs[2], "child").split()[-1])
    for ev in evs:
        ev.terminate(wait=False)
    for ev, pid in zip(evs, pids, strict=True):
        assert ev.wait(timeout=30) == "ABORTED"
        check_aborted(scf, ev, pid)
    wait_until(lambda: not pid_alive(child), 20, f"child process {child} to be gone")


def test_terminate_kills_a_child_that_left_the_process_group(scf: Any) -> None:
    make(scf, "work")
    ev = scf.invoke("work", {"mode": "setsid"})
    pid = int(wait_line(ev, "started").split()[-1])
    child = int(wait_line(ev, "child").split()[-1])
    try:
        assert ev.terminate() == "ABORTED"
        check_aborted(scf, ev, pid)
        wait_until(lambda: not pid_alive(child), 3, f"child process {child} (own session) to be gone")
    finally:
        kill_quietly(child)


def test_instance_in_its_grace_period_still_counts_against_concurrency(scf: Any, tmp_path: Path) -> None:
    make(scf, "work", concurrency=1)
    saved = tmp_path / "saved"
    ev = scf.invoke("work", {"mode": "slow_save", "saved": str(saved)})
    wait_line(ev, "started")
    nxt = scf.invoke("work", {"mode": "stamp"})
    assert nxt.status == "QUEUED"
    assert ev.terminate(grace=True) == "ABORTED"
    started_next = nxt.result(timeout=30)
    # the handler saved its work within the grace period; only then may the one instance serve another event
    assert started_next > float(saved.read_text())


def _on_engine_thread(engine: Any, fn: Any) -> None:
    """Run ``fn`` on the engine thread (its poller is not thread-safe) and wait for it."""
    done = threading.Event()
    engine.loop.post(lambda: (fn(), done.set()))
    assert done.wait(10)


@pytest.fixture
def no_spare(scf: Any) -> Iterator[Any]:
    """An engine without a warm spare (every instance is a new process)."""
    scf.configure(warm_spare=False)
    try:
        yield scf
    finally:
        scf.shutdown()
        scf.configure(warm_spare=True)  # settings stick: give the next test the default back


def test_terminate_of_an_event_whose_instance_has_not_connected_keeps_the_instance(no_spare: Any) -> None:
    """An event waits QUEUED while the new instance for it starts (it is given to an instance only once that
    has said hello): terminate ends it ABORTED at once, and the starting instance is kept (not killed and
    replaced) to serve the next event."""
    scf = no_spare
    make(scf, "work", concurrency=1)
    engine = scf.client().engine
    listener = engine.backend.listener.fileno()
    _on_engine_thread(engine, lambda: engine.loop.poller.unregister(listener))  # hellos wait in the backlog
    ev = scf.invoke("work", {"mode": "sleep"})
    wait_until(lambda: engine.dispatcher.pools.get(("default", "work")), 10, "an instance to be started for it")
    inst = engine.dispatcher.pools[("default", "work")][0]
    assert inst.conn is None and ev.status == "QUEUED"

    assert ev.terminate() == "ABORTED"
    assert inst.state == "starting" and inst in engine.dispatcher.pools[("default", "work")]  # not killed
    assert ev.info()["exit_reason"] == "terminated while queued"
    nxt = scf.invoke("work", {"mode": "sibling", "gate": "/", "n": 2})
    _on_engine_thread(engine, lambda: None)  # posted after the invoke: the engine has taken the event
    assert nxt.status == "QUEUED"
    _on_engine_thread(engine, lambda: engine.loop.poller.register(listener, (engine.backend.channels.on_accept, None)))
    assert nxt.result(timeout=30)["pid"] == inst.pid  # the same process serves it once it connects
    assert pid_alive(inst.pid) and lines(ev) == []
