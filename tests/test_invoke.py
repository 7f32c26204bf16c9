"""The invoke and function API through the public ``scf_nb`` module: rate limits and payload limits (a
rejection leaves no record), registration checks, the async lock, versions, delete, sync functions, env and
context, async handlers, untraced functions and the per-event figures of ``info()``.

Real loky instances and a real DuckDB store; no mocks; no sleeps standing in for synchronisation.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from engine_support import WORKER, code_of, events_of, lines, wait_line


# -- admission: rate limits and payloads --------------------------------------------------------------------------
@pytest.fixture
def low_max_qps(scf: Any) -> Any:
    default = type(scf.configure())().max_qps
    scf.configure(max_qps=5)
    try:
        yield scf
    finally:
        scf.configure(max_qps=default)


def burst(scf: Any, name: str, n: int) -> tuple[list[Any], list[Any]]:
    accepted, rejected = [], []
    for i in range(n):
        try:
            accepted.append(scf.invoke(name, {"n": i}))
        except scf.ScfError as e:
            rejected.append(e)
    return accepted, rejected


def test_global_rate_limit_rejects_without_a_record(low_max_qps: Any) -> None:
    scf = low_max_qps
    scf.create_function("burst", WORKER, async_run=True)
    accepted, rejected = burst(scf, "burst", 30)
    assert accepted and rejected
    assert len(accepted) <= 10
    assert all(e.code.startswith("LimitExceeded") for e in rejected)
    for ev in accepted:
        assert ev.result(timeout=30)["n"] is not None
    assert sorted(events_of(scf, "burst")) == sorted(ev.request_id for ev in accepted)
    assert int(scf.overview("burst")["count"].sum()) == len(accepted)


def test_function_qps_limit_rejects_only_that_function(scf: Any) -> None:
    scf.create_function("limited", WORKER, async_run=True, qps_limit=3)
    scf.create_function("free", WORKER, async_run=True)
    accepted, rejected = burst(scf, "limited", 20)
    free_ok, free_rejected = burst(scf, "free", 10)
    assert accepted and rejected and len(accepted) <= 6
    assert all(e.code.startswith("LimitExceeded") for e in rejected)
    assert free_rejected == [] and len(free_ok) == 10
    assert sorted(events_of(scf, "limited")) == sorted(ev.request_id for ev in accepted)
    for ev in accepted + free_ok:
        ev.result(timeout=30)


def test_bad_event_payload_is_refused_without_a_record(scf: Any) -> None:
    scf.create_function("payload", WORKER, async_run=True)
    for bad in ({"s": {1, 2}}, {1, 2}, {"x": float("nan")}, {"big": "x" * (130 * 1024)}):
        assert code_of(lambda bad=bad: scf.invoke("payload", bad)) == "InvalidParameterValue.ClientContext"
    assert events_of(scf, "payload") == []
    assert int(scf.overview("payload")["count"].sum()) == 0
    ok = scf.invoke("payload", {"n": 1, "pad": "x" * (100 * 1024)})  # under 128 KB is fine
    assert ok.result(timeout=30)["n"] == 1
    assert events_of(scf, "payload") == [ok.request_id]


def test_event_size_limit_is_counted_in_utf8_bytes(scf: Any) -> None:
    scf.create_function("sized", WORKER, async_run=True)
    limit = 128 * 1024
    overhead = len('{"p": ""}')
    assert scf.invoke("sized", {"p": "x" * (limit - overhead)}).result(timeout=30)["n"] is None  # exactly 128 KB
    assert code_of(lambda: scf.invoke("sized", {"p": "x" * (limit - overhead + 1)})) == \
        "InvalidParameterValue.ClientContext"
    # 70,000 characters, 140,000 bytes
    assert code_of(lambda: scf.invoke("sized", {"p": "\u00e9" * 70_000})) == "InvalidParameterValue.ClientContext"
    assert len(events_of(scf, "sized")) == 1


# -- registration, versions, delete -------------------------------------------------------------------------------
def test_async_run_is_locked_at_creation(scf: Any) -> None:
    scf.create_function("locked", WORKER, async_run=True)
    assert code_of(lambda: scf.create_function("locked", WORKER, async_run=False)) == \
        "InvalidParameterValue.AsyncRunEnable"
    assert code_of(lambda: scf.create_function("locked", WORKER)) == "InvalidParameterValue.AsyncRunEnable"
    assert scf.get_function("locked").async_run is True
    scf.create_function("locked", WORKER, async_run=True, timeout=5)  # same mode: an update is fine
    scf.create_function("sync_one", WORKER)
    assert code_of(lambda: scf.create_function("sync_one", WORKER, async_run=True)) == \
        "InvalidParameterValue.AsyncRunEnable"


def test_delete_then_create_again_may_switch_async_run(scf: Any) -> None:
    scf.create_function("mode", WORKER, async_run=True)
    assert scf.invoke("mode", {"n": 1}).result(timeout=30)["n"] == 1
    scf.delete_function("mode")
    scf.create_function("mode", WORKER, async_run=False)
    assert scf.invoke("mode", {"n": 2}).status == "FINISHED"
    assert code_of(lambda: scf.publish_version("absent")) == "ResourceNotFound.Function"


def test_versions_are_immutable_snapshots(scf: Any) -> None:
    v = "def main_handler(event, context):\n    return 'v{}'\n"
    scf.create_function("ver", v.format(1), async_run=True)
    assert scf.publish_version("ver") == "1"
    scf.create_function("ver", v.format(2), async_run=True)
    for _ in range(2):  # alternate, so warm instances of either revision are not mixed up
        assert scf.invoke("ver", qualifier="1").result(timeout=30) == "v1"
        assert scf.invoke("ver").result(timeout=30) == "v2"
        assert scf.invoke("ver", qualifier="$LATEST").result(timeout=30) == "v2"
    assert scf.publish_version("ver") == "2"
    scf.create_function("ver", v.format(3), async_run=True)
    assert scf.invoke("ver", qualifier="2").result(timeout=30) == "v2"
    assert scf.invoke("ver", qualifier="1").result(timeout=30) == "v1"
    assert scf.invoke("ver").result(timeout=30) == "v3"
    assert sorted(scf.list_events("ver", qualifier="1", limit=None)["qualifier"]) == ["1", "1", "1"]
    assert code_of(lambda: scf.invoke("ver", qualifier="7")).startswith("ResourceNotFound")
    assert code_of(lambda: scf.invoke("nope")) == "ResourceNotFound.Function"


def test_bad_code_and_names_are_refused_at_registration(scf: Any) -> None:
    with pytest.raises(scf.ScfError) as err:
        scf.create_function("broken", "import os\n\ndef main_handler(event, context):\n    return = 1\n")
    assert err.value.code == "InvalidParameterValue.Code"
    assert "line 4" in str(err.value)
    assert code_of(lambda: scf.create_function("nohandler", "def handler(event, context):\n    return 1\n")) \
        == "InvalidParameterValue.Handler"
    assert code_of(lambda: scf.create_function("h2", WORKER, handler="other")) == "InvalidParameterValue.Handler"
    for bad in ("1abc", "has space", "", "x" * 61, "semi;colon"):
        assert code_of(lambda bad=bad: scf.create_function(bad, WORKER)) == "InvalidParameterValue.FunctionName", bad
    for name in ("broken", "nohandler", "h2"):
        assert code_of(lambda name=name: scf.get_function(name)) == "ResourceNotFound.Function"
    # a bad update keeps the working $LATEST
    scf.create_function("keep", WORKER, async_run=True)
    assert code_of(lambda: scf.create_function("keep", "def main_handler(:\n", async_run=True)) == \
        "InvalidParameterValue.Code"
    assert scf.invoke("keep", {"n": 5}).result(timeout=30)["n"] == 5


def test_delete_function_refused_while_its_event_runs(scf: Any, tmp_path: Path) -> None:
    scf.create_function("busy", WORKER, async_run=True, concurrency=1)
    gate = tmp_path / "gate"
    running = scf.invoke("busy", {"n": 1, "gate": str(gate)})
    queued = scf.invoke("busy", {"n": 2, "gate": str(gate)})
    wait_line(running, "running 1")
    with pytest.raises(scf.ScfError):
        scf.delete_function("busy")
    assert scf.get_function("busy").name == "busy"
    assert running.status == "RUNNING" and queued.status == "QUEUED"  # untouched by the refusal
    gate.touch()
    assert [ev.result(timeout=30)["n"] for ev in (running, queued)] == [1, 2]
    scf.delete_function("busy")
    assert code_of(lambda: scf.get_function("busy")) == "ResourceNotFound.Function"
    assert code_of(lambda: scf.invoke("busy")) == "ResourceNotFound.Function"
    assert sorted(events_of(scf, "busy")) == sorted([running.request_id, queued.request_id])  # history stays


# -- invoke: sync, env and context, async handlers, trace, info ---------------------------------------------------
def test_sync_function_invoke_returns_when_the_event_ended(scf: Any) -> None:
    scf.create_function("syncfn", WORKER)
    ev = scf.invoke("syncfn", {"n": 1, "sleep": 0.3})
    assert ev.status == "FINISHED"  # no wait: it had ended when invoke returned
    assert ev.result(timeout=0)["n"] == 1
    assert ev.info()["duration_ms"] >= 300
    failed = scf.invoke("syncfn", {"n": 2, "fail": True})
    assert failed.status == "FAILED"
    with pytest.raises(scf.FunctionError):
        failed.result(timeout=0)
    frame = scf.list_events("syncfn", limit=None)
    assert set(frame["invoke_type"]) == {"RequestResponse"}
    # sync events may be bigger than async ones (6 MB, not 128 KB)
    assert scf.invoke("syncfn", {"n": 3, "pad": "x" * 200_000}).status == "FINISHED"


def test_env_and_context_reach_the_handler(scf: Any) -> None:
    code = (
        "import os\n"
        "def main_handler(event, context):\n"
        "    return {'color': os.environ.get('COLOR'), 'num': os.environ.get('NUM'),\n"
        "            'request_id': context.request_id, 'function_name': context.function_name,\n"
        "            'qualifier': context.qualifier, 'namespace': context.namespace,\n"
        "            'remaining': context.get_remaining_time_in_millis(), 'event': event}\n"
    )
    scf.create_function("ctx", code, async_run=True, timeout=60, env={"COLOR": "blue", "NUM": 3},
                        namespace="team-a")
    scf.create_function("ctx", code, async_run=True, timeout=60)  # same name, other namespace, no env
    ev = scf.invoke("ctx", {"k": [1, "two"]}, namespace="team-a")
    got = ev.result(timeout=30)
    assert got["color"] == "blue" and got["num"] == "3"
    assert got["request_id"] == ev.request_id
    assert (got["function_name"], got["qualifier"], got["namespace"]) == ("ctx", "$LATEST", "team-a")
    assert 0 < got["remaining"] <= 60_000
    assert got["event"] == {"k": [1, "two"]}
    other = scf.invoke("ctx").result(timeout=30)
    assert other["color"] is None and other["namespace"] == "default" and other["event"] == {}
    assert "COLOR" not in os.environ  # the engine's own process is not changed
    assert scf.publish_version("ctx", namespace="team-a") == "1"
    assert scf.invoke("ctx", qualifier="1", namespace="team-a").result(timeout=30)["qualifier"] == "1"


def test_default_timeouts_are_24_hours_async_and_15_minutes_sync(scf: Any) -> None:
    code = "def main_handler(event, context):\n    return context.get_remaining_time_in_millis()\n"
    scf.create_function("async_default", code, async_run=True)
    scf.create_function("sync_default", code)
    assert 24 * 3600_000 - 60_000 < scf.invoke("async_default").result(timeout=30) <= 24 * 3600_000
    assert 15 * 60_000 - 60_000 < scf.invoke("sync_default").result(timeout=30) <= 15 * 60_000


def test_async_def_handler(scf: Any) -> None:
    code = (
        "import asyncio\n"
        "async def main_handler(event, context):\n"
        "    await asyncio.sleep(0.01)\n"
        "    print('awaited', flush=True)\n"
        "    return event['x'] * 2\n"
    )
    scf.create_function("coro", code, async_run=True)
    ev = scf.invoke("coro", {"x": 21})
    assert ev.result(timeout=30) == 42
    assert lines(ev) == ["awaited"]


def test_untraced_function_returns_a_working_event_but_lists_nothing(scf: Any) -> None:
    scf.create_function("quiet", WORKER, async_run=True, trace=False)
    ev = scf.invoke("quiet", {"n": 4})
    assert len(ev.request_id) == 36
    assert ev.result(timeout=30)["n"] == 4
    assert ev.status == "FINISHED"
    assert any(line.startswith("running 4") for line in lines(ev))  # logs are still kept
    assert events_of(scf, "quiet") == []
    assert ev.request_id not in scf.list_events(limit=None)["request_id"].tolist()
    assert int(scf.overview("quiet")["count"].sum()) == 0


def test_info_has_times_durations_and_memory(scf: Any, tmp_path: Path) -> None:
    scf.create_function("measured", WORKER, async_run=True)
    gate = tmp_path / "gate"  # held RUNNING until looked at (a 0.2 s sleep alone was over, on a slow machine,
    ev = scf.invoke("measured", {"n": 1, "sleep": 0.2, "gate": str(gate)})  # before its line was read)
    wait_line(ev, "running 1")
    live = ev.info()
    assert live["status"] == "RUNNING" and live["end_time"] is None
    gate.touch()
    ev.result(timeout=30)
    info = ev.info()
    assert info["status"] == "FINISHED"
    assert info["request_id"] == ev.request_id and info["function_name"] == "measured"
    assert info["duration_ms"] >= 200
    billed = info["billed_duration_ms"]
    assert isinstance(billed, int) and billed >= info["duration_ms"] and billed == math.ceil(info["duration_ms"])
    assert info["mem_usage_bytes"] > 1_000_000
    assert info["start_time"] <= info["run_time"] <= info["end_time"]
    assert info["error"] is None
    row = scf.list_events("measured").iloc[0]
    assert row["status"] == "FINISHED" and row["duration_ms"] == pytest.approx(info["duration_ms"])


# -- one wait for many events -------------------------------------------------------------------------------------
def test_wait_returns_done_and_not_done_in_the_order_given(scf: Any, tmp_path: Path) -> None:
    scf.create_function("many", WORKER, async_run=True, concurrency=2)
    gate = tmp_path / "gate"
    quick = [scf.invoke("many", {"n": i}) for i in range(6)]
    held = scf.invoke("many", {"n": 99, "gate": str(gate)})
    evs = [*quick[:3], held, *quick[3:]]

    assert scf.wait(quick, timeout=60).not_done == []  # (their instances may take a while to start)
    done, not_done = scf.wait(evs, timeout=0.3)  # the held one cannot end before the gate opens
    assert not_done == [held] and done == quick
    assert all(ev.status == "FINISHED" for ev in done)

    gate.touch()
    done, not_done = scf.wait([ev.request_id for ev in evs])  # RequestIds work too
    assert not not_done and [ev.request_id for ev in done] == [ev.request_id for ev in evs]
    assert held.status == "FINISHED" and held.result()["n"] == 99
    assert scf.wait([]) == ([], [])


def test_wait_sees_terminated_events_end_and_refuses_unknown_ids(scf: Any, tmp_path: Path) -> None:
    scf.create_function("stoppable", WORKER, async_run=True, concurrency=1)
    running = scf.invoke("stoppable", {"n": 1, "gate": str(tmp_path / "never")})
    queued = scf.invoke("stoppable", {"n": 2})
    wait_line(running, "running 1")
    waiter_result: list[Any] = []
    import threading

    t = threading.Thread(target=lambda: waiter_result.append(scf.wait([running, queued], timeout=60)))
    t.start()
    running.terminate()
    t.join(timeout=60)
    done, not_done = waiter_result[0]
    assert not not_done and [ev.status for ev in done] == ["ABORTED", "FINISHED"]

    with pytest.raises(scf.ScfError) as e:
        scf.wait([running, "00000000-0000-4000-8000-000000000000"])
    assert e.value.code == "ResourceNotFound.AsyncEvent"


def test_wait_on_events_of_an_earlier_engine(scf: Any) -> None:
    scf.create_function("kept", WORKER, async_run=True)
    ids = [scf.invoke("kept", {"n": i}).request_id for i in range(3)]
    scf.wait(ids)
    scf.shutdown()  # the next call starts a new engine on the same store, as after a kernel restart
    done, not_done = scf.wait(ids, timeout=5)
    assert not not_done and [ev.status for ev in done] == ["FINISHED"] * 3
