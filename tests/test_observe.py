"""The change feed (``scf_nb.subscribe``) and ``Event.add_done_callback``, both fed by the store's commits; on
real loky instances and a real DuckDB store. Listeners that raise or block must cost the others nothing."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from conftest import GATE, wait_until
from engine_support import code_of

from scf_nb.store import observe

GATED = GATE + '''
def main_handler(event, context):
    print("waiting", flush=True)
    wait_file(event["gate"])
    print("bye", flush=True)
    return event.get("n")
'''
NOOP = "def main_handler(event, context):\n    return event\n"


class Calls:
    """What a callback was called with, and on which thread."""

    def __init__(self) -> None:
        self.args: list[Any] = []
        self.threads: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, arg: Any) -> None:
        with self.lock:
            self.args.append(arg)
            self.threads.append(threading.current_thread().name)


def gated(scf: Any, tmp_path: Path, name: str = "gate", n: int = 0) -> tuple[Any, Path]:
    scf.create_function("gated", GATED, async_run=True)
    gate = tmp_path / name
    ev = scf.invoke("gated", {"gate": str(gate), "n": n})
    wait_until(lambda: len(ev.logs()) == 1, what="the handler's first line")
    return ev, gate


# -- add_done_callback -------------------------------------------------------------------------------------------
def test_done_callback_runs_once_when_the_event_ends_off_the_engine_thread(scf: Any, tmp_path: Path) -> None:
    ev, gate = gated(scf, tmp_path, n=7)
    calls = Calls()
    ev.add_done_callback(calls)
    assert calls.args == []
    gate.write_text("")
    wait_until(lambda: calls.args, what="the done callback")
    assert calls.args == [ev] and calls.args[0] is ev
    assert calls.threads[0] not in ("scf_nb-engine", "scf_nb-store", threading.current_thread().name)
    assert ev.status == "FINISHED" and ev.result() == 7
    scf.create_function("noop", NOOP, async_run=True)
    later = scf.invoke("noop", {"x": 1})
    done = Calls()
    later.add_done_callback(done)
    wait_until(lambda: done.args, what="a later event's callback")
    assert calls.args == [ev]  # once


def test_done_callback_of_an_ended_event_runs_at_once_in_the_callers_thread(scf: Any) -> None:
    scf.create_function("noop", NOOP, async_run=True)
    ev = scf.invoke("noop", 1)
    ev.wait(60)
    calls = Calls()
    ev.add_done_callback(calls)
    assert calls.args == [ev] and calls.threads == [threading.current_thread().name]
    by_id = Calls()
    scf.client().add_done_callback(ev.request_id, by_id)
    assert [e.request_id for e in by_id.args] == [ev.request_id]


def test_every_callback_runs_exactly_once_around_the_end(scf: Any, tmp_path: Path) -> None:
    """Registered while events end (some before, some after their end is committed): each runs once."""
    last, gate = gated(scf, tmp_path)
    scf.create_function("noop", NOOP, async_run=True)
    calls = Calls()
    events = []
    for i in range(300):
        ev = scf.invoke("noop", i)
        ev.add_done_callback(calls)
        events.append(ev)
    wait_until(lambda: len(calls.args) >= 300, what="300 callbacks")
    scf.wait(events, timeout=60)
    barrier = Calls()  # its end is committed after all of theirs: once it ran, any late duplicate had too
    last.add_done_callback(barrier)
    gate.write_text("")
    wait_until(lambda: barrier.args, what="the last callback")
    assert sorted(e.request_id for e in calls.args) == sorted(e.request_id for e in events)


def test_a_raising_callback_is_logged_and_harms_nothing(scf: Any, tmp_path: Path, caplog: Any) -> None:
    ev, gate = gated(scf, tmp_path, n=1)
    other, other_gate = gated(scf, tmp_path, "gate2", n=2)

    def boom(e: Any) -> None:
        raise RuntimeError("a broken widget")

    after, of_other = Calls(), Calls()
    ev.add_done_callback(boom)
    ev.add_done_callback(after)
    other.add_done_callback(of_other)
    with caplog.at_level(logging.ERROR, logger="scf_nb"):
        gate.write_text("")
        other_gate.write_text("")
        wait_until(lambda: after.args and of_other.args, what="the callbacks after the one that raised")
    assert after.args == [ev] and of_other.args == [other]
    assert any("a broken widget" in r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert ev.result() == 1 and other.result() == 2
    scf.create_function("noop", NOOP, async_run=True)
    assert scf.invoke("noop", 3).result(timeout=60) == 3  # the engine runs on


def test_done_callback_bad_arguments(scf: Any) -> None:
    scf.create_function("noop", NOOP, async_run=True)
    ev = scf.invoke("noop", 1)
    assert code_of(lambda: ev.add_done_callback("not callable")) == "InvalidParameterValue.Callback"
    unknown = "00000000-0000-4000-8000-000000000000"
    assert code_of(lambda: scf.client().add_done_callback(unknown, print)) == "ResourceNotFound.AsyncEvent"
    assert code_of(lambda: scf.Event(scf.client(), unknown).add_done_callback(print)) == "ResourceNotFound.AsyncEvent"


def test_shutdown_runs_the_callbacks_of_the_events_it_stops(scf: Any, tmp_path: Path) -> None:
    ev, _ = gated(scf, tmp_path)
    calls = Calls()
    ev.add_done_callback(lambda e: calls(e.info()["error_type"]))
    scf.shutdown()
    assert calls.args == ["EngineStopped"]


# -- subscribe ----------------------------------------------------------------------------------------------------
def test_subscriber_hears_status_changes_log_lines_and_ends(scf: Any, tmp_path: Path) -> None:
    heard: list[Any] = []
    with scf.subscribe(heard.append) as sub:
        ev, gate = gated(scf, tmp_path)
        rid = ev.request_id
        wait_until(lambda: any(rid in c.events for c in heard), what="the new event")
        wait_until(lambda: any(rid in c.logs for c in heard), what="its first line")
        assert not any(rid in c.ended for c in heard)
        gate.write_text("")
        wait_until(lambda: any(rid in c.ended for c in heard), what="its end")
        assert all(c.ended <= c.events for c in heard)
        assert not any(c.overflow for c in heard)
        assert all(isinstance(c, scf.Changes) for c in heard)
    assert sub.closed
    n = len(heard)
    scf.create_function("noop", NOOP, async_run=True)
    scf.invoke("noop", 1).wait(60)
    scf.client().engine.store.sync()
    assert len(heard) == n  # closed: no more calls


def test_a_raising_and_a_blocked_subscriber_do_not_stop_the_others(scf: Any, caplog: Any) -> None:
    release = threading.Event()
    blocked_calls: list[Any] = []

    def blocked(changes: Any) -> None:
        blocked_calls.append(changes)
        release.wait(60)

    def raising(changes: Any) -> None:
        raise ValueError("listener bug")

    heard: list[Any] = []
    scf.create_function("noop", NOOP, async_run=True)
    with scf.subscribe(blocked), scf.subscribe(raising), scf.subscribe(heard.append):
        with caplog.at_level(logging.ERROR, logger="scf_nb"):
            first = scf.invoke("noop", 0)
            first.wait(60)
            wait_until(lambda: blocked_calls, what="the blocked subscriber's first call")
            events = [scf.invoke("noop", i) for i in range(1, 50)]
            scf.wait(events, timeout=60)
            everyone = {e.request_id for e in [first] + events}
            wait_until(lambda: everyone <= set().union(*(c.ended for c in heard)), what="every end, heard")
        assert any("listener bug" in str(r.exc_info) for r in caplog.records)
        assert len(blocked_calls) == 1  # still in its first call: what came since waits, merged
        release.set()
        wait_until(lambda: everyone <= set().union(*(c.ended for c in blocked_calls)), what="the merged rest")
        assert len(blocked_calls) <= 3


def test_a_slow_subscriber_gets_overflow_instead_of_a_growing_backlog(scf: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(observe, "MAX_PENDING_IDS", 10)
    release = threading.Event()
    got: list[Any] = []

    def slow(changes: Any) -> None:
        got.append(changes)
        release.wait(60)

    seen: set[str] = set()  # a second, quick listener's: each commit's changes go to both, to slow's first
    overflowed = threading.Event()

    def quick(changes: Any) -> None:
        seen.update(changes.events)
        if changes.overflow:
            overflowed.set()

    scf.create_function("noop", NOOP, async_run=True)
    with scf.subscribe(slow), scf.subscribe(quick):
        scf.invoke("noop", 0).wait(60)
        wait_until(lambda: got, what="the first call")
        events = [scf.invoke("noop", i) for i in range(40)]
        scf.wait(events, timeout=60)
        # The feed dispatches on a thread of its own: more than 10 ids must have reached the slow listener (as
        # the quick one shows) before it is let go, or it keeps up with the rest and rightly never overflows.
        ids = {e.request_id for e in events}
        wait_until(lambda: overflowed.is_set() or len(seen & ids) > 10, what="more than 10 ids dispatched")
        release.set()
        wait_until(lambda: len(got) >= 2 and got[-1].overflow, what="an overflow notice")
        assert not got[-1].events and not got[-1].logs


def test_subscribe_needs_a_callable(scf: Any) -> None:
    assert code_of(lambda: scf.subscribe(None)) == "InvalidParameterValue.Callback"


def test_nothing_is_recorded_for_the_feed_while_nobody_listens(scf: Any) -> None:
    store = scf.client().engine.store
    assert not store.observed
    sub = scf.subscribe(lambda c: None)
    assert store.observed
    sub.close()
    assert not store.observed

