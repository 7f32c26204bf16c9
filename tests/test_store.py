"""End to end: the DuckDB store behind the engine. History survives a restart, a dead engine's events are
failed and its processes are gone, a second process gets a clear lock message, retention, the
ListAsyncEvents filters, the overview and the Parquet export. Real loky instances, a real DuckDB file."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import GATE, Clock, kill_quietly, pid_alive, wait_until
from processes import SLOW_START, kill_tagged, read_line, run_script, stop, tagged_env, tagged_processes

import scf_nb

ECHO = textwrap.dedent('''
    def main_handler(event, context):
        print("echo", event.get("tag"))
        if event.get("fail"):
            raise ValueError("asked to fail: " + str(event["tag"]))
        return {"tag": event.get("tag"), "qualifier": context.qualifier}
''')

BLOCK = GATE + textwrap.dedent('''
    def main_handler(event, context):
        print("blocked", event.get("tag"))
        wait_file(event["go"])
        return event.get("tag")
''')




def ids(frame: Any) -> list[str]:
    return list(frame.request_id)


# -- restart -------------------------------------------------------------------------------------------------
def test_history_results_and_logs_survive_a_restart(scf: Any) -> None:
    scf.create_function("echo", ECHO, async_run=True)
    ok = scf.invoke("echo", {"tag": "a"})
    bad = scf.invoke("echo", {"tag": "b", "fail": True})
    assert ok.result(timeout=60) == {"tag": "a", "qualifier": "$LATEST"}
    assert bad.wait(timeout=60) == "FAILED"
    before = scf.list_events(limit=None)

    scf.shutdown()  # the next call starts a new engine on the same home (the fixture's)

    after = scf.list_events(limit=None)
    assert sorted(ids(after)) == sorted(ids(before)) == sorted([ok.request_id, bad.request_id])
    statuses = dict(zip(after.request_id, after.status, strict=True))
    assert statuses == {ok.request_id: "FINISHED", bad.request_id: "FAILED"}
    assert scf.get_event(ok.request_id).result() == {"tag": "a", "qualifier": "$LATEST"}
    with pytest.raises(scf.FunctionError) as e:
        scf.get_event(bad.request_id).result()
    assert e.value.error_type == "ValueError" and "asked to fail: b" in e.value.error_message
    assert "ValueError" in e.value.traceback
    assert list(scf.logs(ok.request_id).line) == ["echo a"]
    assert list(scf.get_event(bad.request_id).logs().line) == ["echo b"]
    assert scf.get_event_status(ok.request_id) == "FINISHED"

    # the function is still registered, and new events get new ids
    again = scf.invoke("echo", {"tag": "c"})
    assert again.result(timeout=60)["tag"] == "c"
    assert again.request_id not in (ok.request_id, bad.request_id)
    assert len(scf.list_events(limit=None)) == 3


SPAWNS = GATE + textwrap.dedent('''
    import subprocess

    def main_handler(event, context):
        child = subprocess.Popen(["sleep", "1000"])
        print("pids", os.getpid(), child.pid, flush=True)
        time.sleep(1000)
''')


def _pids(scf: Any, rid: str) -> tuple[int, int] | None:
    found = [line for line in scf.logs(rid).line if line.startswith("pids ")]
    return (int(found[0].split()[1]), int(found[0].split()[2])) if found else None


def test_shutdown_fails_a_running_event_and_its_processes_die(scf: Any) -> None:
    scf.create_function("spawns", SPAWNS, async_run=True)
    ev = scf.invoke("spawns")
    instance_pid, child_pid = wait_until(lambda: _pids(scf, ev.request_id), what="the handler's pids")
    try:
        scf.shutdown()
        assert scf.get_event_status(ev.request_id) == "FAILED"
        info = scf.get_event(ev.request_id).info()
        assert "engine stopped" in info["error"]["message"]
        wait_until(lambda: not pid_alive(instance_pid) and not pid_alive(child_pid),
                   what="the instance and its child to die with the engine")
    finally:
        kill_quietly(child_pid)
        kill_quietly(instance_pid)


DYING_ENGINE = textwrap.dedent('''
    import sys, time
    import scf_nb

    scf_nb.configure(home=sys.argv[1])
    scf_nb.create_function("spawns", sys.argv[2], async_run=True, concurrency=1)
    ev = scf_nb.invoke("spawns")
    queued = scf_nb.invoke("spawns")  # waits behind it
    deadline = time.monotonic() + 60
    while True:
        found = [l for l in scf_nb.logs(ev.request_id).line if l.startswith("pids ")]
        if found:
            break
        if time.monotonic() > deadline:
            sys.exit("the handler never printed its pids")
        time.sleep(0.01)
    assert queued.status == "QUEUED"
    print(ev.request_id, queued.request_id, found[0], flush=True)
    sys.stdin.read()  # wait to be killed
''')


def test_events_of_a_killed_engine_become_failed_and_its_processes_are_gone(home: Path) -> None:
    tag, env = tagged_env()
    proc = run_script(DYING_ENGINE, str(home), SPAWNS, env=env)
    instance_pid = child_pid = 0
    try:
        rid, queued, _, instance_pid_s, child_pid_s = read_line(proc).split()
        instance_pid, child_pid = int(instance_pid_s), int(child_pid_s)
        assert pid_alive(instance_pid) and pid_alive(child_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        scf_nb.configure(home=home, grace_seconds=2.0)
        assert scf_nb.get_event_status(rid) == "FAILED"
        info = scf_nb.get_event(rid).info()
        assert "engine" in info["error"]["message"] and "stopped" in info["error"]["message"]
        assert info["end_time"] is not None
        with pytest.raises(scf_nb.FunctionError):
            scf_nb.get_event(rid).result(timeout=5)
        assert list(scf_nb.list_events(status=["QUEUED", "RUNNING"]).request_id) == []
        assert scf_nb.get_event_status(queued) == "FAILED"
        assert "stopped" in scf_nb.get_event(queued).info()["error"]["message"]
        assert list(scf_nb.logs(rid).line) == [f"pids {instance_pid} {child_pid}"]
        wait_until(lambda: not pid_alive(instance_pid) and not pid_alive(child_pid),
                   what="the dead engine's instance and its child process to be gone")
        # the new engine works on the recovered store
        scf_nb.create_function("echo", ECHO, async_run=True)
        assert scf_nb.invoke("echo", {"tag": "new"}).result(timeout=60)["tag"] == "new"
    finally:
        stop(proc)
        for pid in (child_pid, instance_pid):
            if pid:
                kill_quietly(pid)
        kill_tagged(tag)  # e.g. an instance that was still starting (see the test below)
        scf_nb.shutdown()


ENGINE_WITH_STARTING_INSTANCE = textwrap.dedent('''
    import glob, os, sys, time
    import scf_nb

    gate = os.environ["SCF_NB_TEST_GATE"]
    scf_nb.configure(home=sys.argv[1])
    scf_nb.create_function("a", "def main_handler(event, context):\\n    return 1\\n", async_run=True)
    assert scf_nb.invoke("a").result(timeout=60) == 1
    open(gate + ".armed", "w").close()  # from now on instance processes start slowly
    scf_nb.create_function("b", "def main_handler(event, context):\\n    return 2\\n", async_run=True)
    scf_nb.invoke("b")  # needs an instance: a process starts
    deadline = time.monotonic() + 60
    while not glob.glob(gate + ".blocked.*"):
        if time.monotonic() > deadline:
            sys.exit("no instance process started")
        time.sleep(0.01)
    print("starting", flush=True)
    sys.stdin.read()  # wait to be killed
''')


def test_an_instance_still_starting_when_the_engine_is_killed_does_not_outlive_it(home: Path,
                                                                                 tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_START)
    gate = tmp_path / "gate"
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    tag, env = tagged_env({"PYTHONPATH": path, "SCF_NB_TEST_GATE": str(gate)})
    proc = run_script(ENGINE_WITH_STARTING_INSTANCE, str(home), env=env)
    try:
        assert read_line(proc) == "starting"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        gate.write_text("")  # the instance's start goes on, after its engine died
        scf_nb.configure(home=home, grace_seconds=2.0)
        scf_nb.list_events()  # a new engine recovers the store
        left: list[str] = []

        def none_left() -> bool:
            left[:] = tagged_processes(tag)
            return not left

        deadline = time.monotonic() + 6  # a fixed engine: gone in about a second
        while not none_left() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"processes of the killed engine still running: {left}"
    finally:
        stop(proc)
        gate.write_text("")
        kill_tagged(tag)
        scf_nb.shutdown()


HOLDER = textwrap.dedent('''
    import os, sys
    import scf_nb

    scf_nb.configure(home=sys.argv[1])
    scf_nb.list_events()  # the engine starts and opens the store
    print(os.getpid(), flush=True)
    sys.stdin.read()  # hold it until the test closes our stdin
    scf_nb.shutdown()
''')


def test_a_second_process_gets_store_locked_naming_the_holder(home: Path) -> None:
    tag, env = tagged_env()
    proc = run_script(HOLDER, str(home), env=env)
    try:
        holder = int(read_line(proc))
        scf_nb.configure(home=home)
        with pytest.raises(scf_nb.ScfError) as e:
            scf_nb.list_events()
        assert e.value.code == "FailedOperation.StoreLocked"
        assert f"process {holder}" in e.value.message
        assert str(home) in e.value.message
        assert "Could not set lock" not in e.value.message  # ours, not DuckDB's raw text

        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert len(scf_nb.list_events()) == 0  # free again: this process opens it now
    finally:
        stop(proc)
        kill_tagged(tag)
        scf_nb.shutdown()


# -- retention --------------------------------------------------------------------------------------------------
def restart_applies_retention(scf: Any, clock: Clock) -> None:
    """Record an event that is past retention, restart the engine and wait until it deletes that event on
    its own. Afterwards the engine's background purge has run, so the test's own purge calls are not raced
    by it (the next one is a minute away). The clock moves only while no engine runs, so only the new
    engine can find the event past retention."""
    clock.now -= 100 * 3600
    scf.create_function("echo", ECHO, async_run=True)
    stale = scf.invoke("echo", {"tag": "stale"})
    stale.result(timeout=60)
    scf.shutdown()
    clock.now += 100 * 3600
    scf.configure(clock=clock)  # a new engine on the same home with the same clock
    wait_until(lambda: stale.request_id not in ids(scf.list_events(limit=None)), timeout=20,
               what="the engine to delete an event past retention by itself, without purge()")
    with pytest.raises(scf.ScfError) as e:
        scf.get_event(stale.request_id)
    assert e.value.code == "ResourceNotFound.AsyncEvent"
    assert len(scf.search_logs("stale")) == 0


def test_retention_is_applied_without_calling_purge(scf: Any, clock: Clock) -> None:
    restart_applies_retention(scf, clock)


def test_purge_deletes_events_and_logs_past_retention_and_keeps_newer(scf: Any, clock: Clock) -> None:
    restart_applies_retention(scf, clock)
    old = scf.invoke("echo", {"tag": "old-one"})
    old.result(timeout=60)
    clock.now += 50 * 3600
    new = scf.invoke("echo", {"tag": "new-one"})
    new.result(timeout=60)

    clock.now += 23 * 3600  # old: 73 h ago, new: 23 h ago; retention 72 h
    assert scf.purge() == 1
    assert ids(scf.list_events(limit=None)) == [new.request_id]
    with pytest.raises(scf.ScfError) as e:
        scf.get_event(old.request_id)
    assert e.value.code == "ResourceNotFound.AsyncEvent"
    assert len(scf.search_logs("old-one")) == 0  # its logs went with it
    assert list(scf.logs(new.request_id).line) == ["echo new-one"]
    assert scf.get_event(new.request_id).result() == {"tag": "new-one", "qualifier": "$LATEST"}
    assert scf.purge() == 0

    clock.now += 50 * 3600  # new: 73 h ago
    assert scf.purge() == 1
    assert len(scf.list_events(limit=None)) == 0
    assert len(scf.search_logs("echo")) == 0


def test_purge_keeps_events_still_running(scf: Any, clock: Clock, tmp_path: Path) -> None:
    restart_applies_retention(scf, clock)
    scf.create_function("block", BLOCK, async_run=True)
    ev = scf.invoke("block", {"go": str(tmp_path / "go"), "tag": "t"})
    wait_until(lambda: ev.status == "RUNNING" and len(ev.logs()) == 1, what="the event to run")
    clock.now += 100 * 3600
    assert scf.purge() == 0
    (tmp_path / "go").write_text("")
    assert ev.result(timeout=60) == "t"
    assert ids(scf.list_events(limit=None)) == [ev.request_id]
    assert scf.purge() == 1  # ended now, but it started 100 h ago: past the window
    assert len(scf.list_events(limit=None)) == 0


def test_concurrent_purges_do_not_fail(scf: Any, clock: Clock) -> None:
    restart_applies_retention(scf, clock)
    errors: list[BaseException] = []
    for _ in range(5):
        events = [scf.invoke("echo", {"tag": i}) for i in range(40)]
        for ev in events:
            ev.wait(timeout=60)
        clock.now += 100 * 3600
        barrier = threading.Barrier(4)
        deleted: list[int] = []

        def purge(barrier: threading.Barrier, deleted: list[int]) -> None:
            barrier.wait()
            try:
                deleted.append(scf.purge())
            except BaseException as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)

        threads = [threading.Thread(target=purge, args=(barrier, deleted)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors[0]
        assert sum(deleted) == 40
        assert len(scf.list_events(limit=None)) == 0


# -- ListAsyncEvents filters ------------------------------------------------------------------------------------
def test_list_events_filters_order_and_paging(scf: Any, clock: Clock, tmp_path: Path) -> None:
    t0 = clock.now
    scf.create_function("alpha", ECHO, async_run=True)
    assert scf.publish_version("alpha") == "1"
    scf.create_function("beta", ECHO, async_run=False)
    scf.create_function("alpha", ECHO, async_run=True, namespace="other")
    scf.create_function("gate", BLOCK, async_run=True, concurrency=2)

    def at(offset: float, *args: Any, **kwargs: Any) -> Any:
        clock.now = t0 + offset
        return scf.invoke(*args, **kwargs)

    e1 = at(0, "alpha", {"tag": 1})
    assert e1.result(timeout=60)["qualifier"] == "$LATEST"
    e2 = at(10, "alpha", {"tag": 2}, qualifier="1")
    assert e2.result(timeout=60)["qualifier"] == "1"
    e3 = at(20, "beta", {"tag": 3})  # sync: returns when ended
    assert e3.status == "FINISHED"
    e4 = at(30, "alpha", {"tag": 4}, namespace="other")
    e4.result(timeout=60)
    e5 = at(40, "alpha", {"tag": 5, "fail": True})
    assert e5.wait(timeout=60) == "FAILED"
    # e6 starts before e7 but ends after it
    e6 = at(50, "gate", {"go": str(tmp_path / "go6"), "tag": 6})
    e7 = at(60, "gate", {"go": str(tmp_path / "go7"), "tag": 7})
    wait_until(lambda: e6.status == e7.status == "RUNNING", what="both gate events to run")
    clock.now = t0 + 70
    (tmp_path / "go7").write_text("")
    assert e7.result(timeout=60) == 7
    clock.now = t0 + 80
    (tmp_path / "go6").write_text("")
    assert e6.result(timeout=60) == 6
    e1, e2, e3, e4, e5, e6, e7 = (e.request_id for e in (e1, e2, e3, e4, e5, e6, e7))
    everything = [e1, e2, e3, e4, e5, e6, e7]

    def listed(**kw: Any) -> list[str]:
        return ids(scf.list_events(order="ASC", limit=None, **kw))

    frame = scf.list_events()
    for column in ("request_id", "function_name", "namespace", "qualifier", "invoke_type", "status", "start_time",
                   "end_time", "duration_ms"):
        assert column in frame.columns
    assert ids(frame) == everything[::-1]  # default: newest first, StartTime DESC
    assert listed() == everything
    assert listed(function="alpha") == [e1, e2, e4, e5]
    assert listed(function="alpha", namespace="default") == [e1, e2, e5]
    assert listed(namespace="other") == [e4]
    assert listed(function="nobody") == []
    assert listed(qualifier="1") == [e2]
    assert listed(qualifier="$LATEST") == [e1, e3, e4, e5, e6, e7]
    assert listed(status="FAILED") == [e5]
    assert listed(status="finished") == [e1, e2, e3, e4, e6, e7]
    assert listed(status=["FAILED", "ABORTED"]) == [e5]
    assert listed(status=["RUNNING", "QUEUED"]) == []
    assert listed(invoke_type="RequestResponse") == [e3]
    assert listed(invoke_type="Event") == [e1, e2, e4, e5, e6, e7]
    assert listed(request_id=e3) == [e3]
    assert listed(request_id=e3, function="alpha") == []

    # start_time / end_time: (start, end), left-closed, right-open; epoch seconds, datetimes, local strings
    assert listed(start_time=(t0 + 10, t0 + 30)) == [e2, e3]
    assert listed(start_time=(t0 + 10, None)) == [e2, e3, e4, e5, e6, e7]
    assert listed(start_time=(None, t0 + 10)) == [e1]
    local = datetime.fromtimestamp
    assert listed(start_time=(local(t0 + 20), local(t0 + 50))) == [e3, e4, e5]
    text = "%Y-%m-%d %H:%M:%S"
    assert listed(start_time=(local(t0 + 40).strftime(text), local(t0 + 60).strftime(text))) == [e5, e6]
    assert listed(end_time=(t0 + 70, t0 + 80)) == [e7]
    assert listed(end_time=(t0 + 70, t0 + 81)) == [e6, e7]
    assert listed(start_time=(t0, t0 + 60), end_time=(t0 + 40, None)) == [e5, e6]

    # order and orderby
    assert ids(scf.list_events(order="DESC", limit=None)) == everything[::-1]
    assert ids(scf.list_events(order="asc", limit=None)) == everything
    assert listed(orderby="EndTime") == [e1, e2, e3, e4, e5, e7, e6]
    assert ids(scf.list_events(orderby="EndTime", order="DESC", limit=None)) == [e6, e7, e5, e4, e3, e2, e1]

    # offset / limit
    assert ids(scf.list_events(order="ASC", offset=2, limit=3)) == [e3, e4, e5]
    assert ids(scf.list_events(order="ASC", offset=5, limit=20)) == [e6, e7]
    assert ids(scf.list_events(order="ASC", offset=7)) == []
    assert ids(scf.list_events(limit=1)) == [e7]
    assert len(scf.list_events(limit=None)) == 7

    rows = scf.list_events(order="ASC", limit=None).set_index("request_id")
    assert rows.loc[e2, "qualifier"] == "1"
    assert rows.loc[e4, "namespace"] == "other"
    assert rows.loc[e3, "invoke_type"] == "RequestResponse"
    assert rows.loc[e6, "end_time"].timestamp() == pytest.approx(t0 + 80)
    assert rows.loc[e6, "start_time"].timestamp() == pytest.approx(t0 + 50)
    # a time read back from the frame selects that very event (left-closed)
    assert listed(start_time=(rows.loc[e3, "start_time"], rows.loc[e4, "start_time"])) == [e3]

    # the overview's since: events that started at or after it
    since = scf.overview(since=t0 + 40).set_index("status")["count"].to_dict()
    assert since == {"QUEUED": 0, "RUNNING": 0, "FINISHED": 2, "FAILED": 1, "ABORTED": 0}


@pytest.mark.parametrize("kwargs, shown", [
    (dict(order="UP"), "UP"),
    (dict(orderby="Start"), "Start"),
    (dict(limit=0), "0"),
    (dict(limit=-5), "-5"),
    (dict(offset=-1), "-1"),
    (dict(status="DONE"), "DONE"),
    (dict(status=["FINISHED", "DONE"]), "DONE"),
    (dict(invoke_type="Nope"), "Nope"),
    (dict(status=[]), "[]"),
    (dict(start_time=("not a time", None)), "not a time"),
    (dict(end_time=(None, "2024-13-45 99:00:00")), "2024-13-45 99:00:00"),
    (dict(start_time="2024-01-01 00:00:00"), "2024-01-01 00:00:00"),
])
def test_list_events_bad_values_give_a_clear_scf_error(scf: Any, kwargs: dict[str, Any], shown: str) -> None:
    with pytest.raises(scf.ScfError) as e:
        scf.list_events(**kwargs)
    assert e.value.code.startswith("InvalidParameterValue."), e.value.code
    assert shown in e.value.message


# -- overview ---------------------------------------------------------------------------------------------------
STATUSES = ["QUEUED", "RUNNING", "FINISHED", "FAILED", "ABORTED"]


def counts(frame: Any) -> dict[str, int]:
    assert sorted(frame.status) == sorted(STATUSES)  # one row per status, zeros included
    return {s: int(c) for s, c in zip(frame.status, frame["count"], strict=True)}


def test_overview_counts_every_status_per_function_and_overall(scf: Any, tmp_path: Path) -> None:
    assert counts(scf.overview()) == dict.fromkeys(STATUSES, 0)
    scf.create_function("echo", ECHO, async_run=True)
    scf.create_function("block", BLOCK, async_run=True, concurrency=1)
    for i in range(3):
        scf.invoke("echo", {"tag": i}).result(timeout=60)
    failed = scf.invoke("echo", {"tag": "x", "fail": True})
    assert failed.wait(timeout=60) == "FAILED"

    go = str(tmp_path / "go")
    running = scf.invoke("block", {"go": go, "tag": "r"})
    queued = scf.invoke("block", {"go": go, "tag": "q"})
    aborted = scf.invoke("block", {"go": go, "tag": "a"})
    wait_until(lambda: running.status == "RUNNING", what="the first block event to run")
    assert queued.status == "QUEUED" and aborted.status == "QUEUED"
    assert scf.terminate(aborted.request_id) == "ABORTED"

    assert counts(scf.overview()) == {"QUEUED": 1, "RUNNING": 1, "FINISHED": 3, "FAILED": 1, "ABORTED": 1}
    assert counts(scf.overview("echo")) == {"QUEUED": 0, "RUNNING": 0, "FINISHED": 3, "FAILED": 1, "ABORTED": 0}
    assert counts(scf.overview("block")) == {"QUEUED": 1, "RUNNING": 1, "FINISHED": 0, "FAILED": 0, "ABORTED": 1}
    assert counts(scf.overview("nobody")) == dict.fromkeys(STATUSES, 0)
    assert counts(scf.overview(namespace="other")) == dict.fromkeys(STATUSES, 0)
    frame = scf.overview("echo").set_index("status")
    assert frame.loc["FINISHED", "max_duration_ms"] >= frame.loc["FINISHED", "avg_duration_ms"] > 0

    (tmp_path / "go").write_text("")
    assert running.result(timeout=60) == "r" and queued.result(timeout=60) == "q"
    assert counts(scf.overview()) == {"QUEUED": 0, "RUNNING": 0, "FINISHED": 5, "FAILED": 1, "ABORTED": 1}
    assert counts(scf.overview("block")) == {"QUEUED": 0, "RUNNING": 0, "FINISHED": 2, "FAILED": 0, "ABORTED": 1}


# -- export -----------------------------------------------------------------------------------------------------
def test_export_writes_parquet_readable_by_duckdb(scf: Any, tmp_path: Path) -> None:
    scf.create_function("echo", ECHO, async_run=True)
    scf.create_function("other", ECHO, async_run=True)
    evs = [scf.invoke("echo", {"tag": i}) for i in range(3)] + [scf.invoke("other", {"tag": "o", "fail": True})]
    for ev in evs:
        ev.wait(timeout=60)
    folder = tmp_path / "export"
    got = scf.export(folder)
    assert got == {"events": 4, "logs": 4, "functions": 2}
    db = duckdb.connect()
    try:
        def read(table: str) -> Any:
            return db.execute(f"SELECT * FROM read_parquet('{folder / (table + '.parquet')}')").df()

        events, logs, functions = read("events"), read("logs"), read("functions")
    finally:
        db.close()
    assert len(events) == got["events"] == len(scf.list_events(limit=None))
    assert len(logs) == got["logs"] == sum(len(scf.logs(ev.request_id)) for ev in evs)
    assert len(functions) == got["functions"] == len(scf.list_functions())
    assert sorted(events.request_id) == sorted(ev.request_id for ev in evs)
    assert sorted(events.status) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    assert sorted(logs.line) == ["echo 0", "echo 1", "echo 2", "echo o"]
    assert sorted(functions.name) == ["echo", "other"]

    scf.invoke("echo", {"tag": "later"}).result(timeout=60)
    assert scf.export(folder) == {"events": 5, "logs": 5, "functions": 2}  # again into the same folder
    db = duckdb.connect()
    try:
        assert db.execute(f"SELECT count(*) FROM read_parquet('{folder / 'events.parquet'}')").fetchone() == (5,)
    finally:
        db.close()


def test_a_running_event_reaches_the_file_without_any_read(scf: Any, tmp_path: Path) -> None:
    # The writer holds back new events for a moment (a short one is then written once, ended), but one that
    # runs on must be in the file soon, even if nothing reads: a crash loses at most that moment.
    from scf_nb.store.store import HOLD_S

    scf.create_function("long", GATE + "\ndef main_handler(event, context):\n    wait_file(event['gate'])\n",
                        async_run=True)
    ev = scf.invoke("long", {"gate": str(tmp_path / "gate")})
    store = scf.client().engine.store
    t0 = time.monotonic()

    def on_disk() -> bool:  # read the table directly, without the sync a read through the API does
        with store._flush_lock:
            return bool(store.cursor().execute("SELECT count(*) FROM events WHERE request_id = ?",
                                               [ev.request_id]).fetchone()[0])

    wait_until(on_disk, timeout=HOLD_S + 10, what="the running event's row in the file")
    assert time.monotonic() - t0 < HOLD_S + 5
    (tmp_path / "gate").touch()
    assert ev.wait(timeout=30) == "FINISHED"


def test_recovery_kills_only_processes_that_were_the_dead_engines(home: Path) -> None:
    # After a reboot the process groups a dead engine recorded may belong to anything: leave those alone.
    import subprocess
    import sys

    scf_nb.configure(home=home, grace_seconds=2.0)
    scf_nb.list_events()  # the store and its tables
    scf_nb.shutdown()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        db = duckdb.connect(str(home / "scf_nb.duckdb"))
        db.execute("INSERT INTO instances (pgid, pid, engine_pid) VALUES (?, ?, ?)",
                   [stranger.pid, stranger.pid, 999999])
        db.close()
        scf_nb.configure(home=home, grace_seconds=2.0)
        scf_nb.list_events()  # a new engine recovers the store
        assert stranger.poll() is None and pid_alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()
        scf_nb.shutdown()
