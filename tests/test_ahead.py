"""Events sent ahead: while every instance a function may have is busy, the FIFO's next events go to busy
instances and start the moment the event before them returns. None of the engine's promises may change: a kill
meant for one event never takes an event sent ahead with it, an event sent ahead stays QUEUED (and can be
terminated without running) until it starts, an idle instance takes over events waiting behind a long one, and
every log line belongs to its own event.

Real instances, no mocks. Tests look at the engine's instances only to know that an event *was* sent ahead
before they act; handlers are held by gate files, never by sleeps in the test.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until

import scf_nb
from scf_nb.instances.loky.ahead import RECORDS, Claims, Shared
from scf_nb.instances.loky.sending import RESERVE, Ahead, Sending

HANDLER = GATE + r'''
def main_handler(event, context):
    rid = context.request_id
    print("out", rid, flush=True)
    print("err", rid, file=sys.stderr, flush=True)
    for i in range(event.get("lines", 0)):
        print("line", i, rid)
    if "touch" in event:
        touch(event["touch"], str(os.getpid()))
    if "gate" in event:
        wait_file(event["gate"], event.get("limit", 60.0))
    print("after gate", rid, flush=True)
    if event.get("fail"):
        raise ValueError("boom " + rid)
    return {"pid": os.getpid(), "rid": rid}
'''


def _engine() -> Any:
    return scf_nb.client().engine


def pending(name: str = "one") -> list[Any]:
    """The events of function ``name`` sent ahead that no worker is known to have started, oldest first."""
    ahead = _engine().backend.ahead.get(("default", name))
    return [] if ahead is None else [e for e, _, _ in list(ahead.pending)]


def is_ahead(ev: Any) -> bool:
    ahead = list(_engine().backend.ahead.values())
    return any(e.request_id == ev.request_id for a in ahead for e, _, _ in list(a.pending))


def in_fifo(ev: Any) -> bool:
    queues = list(_engine().dispatcher.queues.values())
    return any(q.request_id == ev.request_id for queue in queues for q in list(queue))


def wait_ahead(ev: Any) -> None:
    wait_until(lambda: is_ahead(ev), 20, f"{ev.request_id} to be sent ahead")
    assert ev.status == "QUEUED"


def own_logs(ev: Any, *tail: str) -> None:
    """The event's lines, and only its lines, on each stream."""
    frame = ev.logs()
    rid = ev.request_id
    assert frame.loc[frame["stream"] == "stdout", "line"].tolist() == [f"out {rid}", *tail]
    assert frame.loc[frame["stream"] == "stderr", "line"].tolist() == [f"err {rid}"]


@pytest.fixture
def sent_ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The RequestIds the engine sent ahead (to a busy instance, not offered to an idle one)."""
    seen: list[str] = []
    original = Sending.feed

    def spy(self: Any, inst: Any, ahead: Any, upto: int | None = None) -> None:
        before = inst.sent_upto
        original(self, inst, ahead, upto)
        if upto is None:
            seen.extend(e.request_id for e, seq, _ in ahead.pending if before < seq <= inst.sent_upto)

    monkeypatch.setattr(Sending, "feed", spy)
    yield seen


@pytest.mark.parametrize("concurrency", [1, 2])
def test_many_events_all_finish_with_their_own_logs(scf: Any, sent_ahead: list[str], concurrency: int) -> None:
    scf.configure(max_qps=1e9)
    try:
        scf.create_function("quick", HANDLER, async_run=True, concurrency=concurrency)
        # some print enough that the engine is still reading when they end: END markers, lines held back
        evs = [scf.invoke("quick", {"lines": 300 if i % 7 == 0 else 0}) for i in range(400)]
        done, not_done = scf.wait(evs, timeout=120)
        assert not not_done and {ev.status for ev in done} == {"FINISHED"}
        assert sent_ahead, "no event was sent ahead"
        for i, ev in enumerate(evs):
            assert ev.result(timeout=5)["rid"] == ev.request_id
            lines = [f"line {k} {ev.request_id}" for k in range(300 if i % 7 == 0 else 0)]
            own_logs(ev, *lines, f"after gate {ev.request_id}")
            assert ev.info()["run_time"] is not None
        assert len({ev.result()["pid"] for ev in evs}) <= concurrency
    finally:
        scf.configure(max_qps=type(scf.configure())().max_qps)


def _busy_with_one_behind(scf: Any, tmp_path: Path, first: dict[str, Any] | None = None,
                          second: dict[str, Any] | None = None, **fn: Any) -> tuple[Any, Any, int]:
    """e1 holds the only instance (waiting on a gate); e2 is sent ahead to it."""
    fn.setdefault("timeout", 300)
    scf.create_function("one", HANDLER, async_run=True, concurrency=1, **fn)
    started = tmp_path / "e1-started"
    e1 = scf.invoke("one", {"gate": str(tmp_path / "gate1"), "touch": str(started), **(first or {})})
    pid = int(wait_until(lambda: started.exists() and started.read_text(), 30, "e1 to start"))  # type: ignore[arg-type]
    e2 = scf.invoke("one", {"touch": str(tmp_path / "e2-ran"), **(second or {})})
    wait_ahead(e2)
    return e1, e2, pid


def test_terminate_of_the_running_event_leaves_the_one_sent_ahead_to_run_elsewhere(scf: Any,
                                                                                    tmp_path: Path) -> None:
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path)
    assert e1.terminate() == "ABORTED"
    result = e2.result(timeout=30)
    assert e2.status == "FINISHED"
    assert result["pid"] != pid  # a fresh instance: the killed one never started it
    own_logs(e2, f"after gate {e2.request_id}")
    own_logs(e1)


def test_terminate_with_grace_of_the_running_event_keeps_the_one_sent_ahead(scf: Any, tmp_path: Path) -> None:
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path)
    assert e1.terminate(grace=True) == "ABORTED"
    assert e2.result(timeout=30)["pid"] != pid
    own_logs(e2, f"after gate {e2.request_id}")


def test_terminate_of_an_event_sent_ahead_aborts_it_without_running(scf: Any, tmp_path: Path) -> None:
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path)
    assert e2.terminate() == "ABORTED"
    assert e2.info()["run_time"] is None
    (tmp_path / "gate1").touch()
    assert e1.result(timeout=30)["pid"] == pid  # its instance was not killed
    e3 = scf.invoke("one", {})
    assert e3.result(timeout=30)["pid"] == pid  # and it still serves the function
    assert not (tmp_path / "e2-ran").exists()
    assert e2.logs().empty and e2.status == "ABORTED"
    own_logs(e1, f"after gate {e1.request_id}")
    own_logs(e3, f"after gate {e3.request_id}")


def test_an_exception_in_the_running_event_does_not_lose_the_one_sent_ahead(scf: Any, tmp_path: Path) -> None:
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path, first={"fail": True})
    (tmp_path / "gate1").touch()
    assert e1.wait(30) == "FAILED"
    assert e2.result(timeout=30)["pid"] != pid  # never started in the failed instance
    own_logs(e1, f"after gate {e1.request_id}")
    own_logs(e2, f"after gate {e2.request_id}")


def test_a_timeout_of_the_running_event_does_not_kill_the_one_sent_ahead(scf: Any, tmp_path: Path) -> None:
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path, timeout=2)
    assert e1.wait(30) == "FAILED"
    assert e1.info()["error_type"] == "TimeoutError"
    assert e2.result(timeout=30)["pid"] != pid
    own_logs(e2, f"after gate {e2.request_id}")


def test_sigkill_of_the_instance_from_outside_fails_only_the_running_event(scf: Any, tmp_path: Path) -> None:
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path)
    os.kill(pid, signal.SIGKILL)
    assert e1.wait(30) == "FAILED" and "SIGKILL" in e1.info()["error"]["message"]
    assert e2.result(timeout=30)["pid"] != pid
    own_logs(e2, f"after gate {e2.request_id}")


def test_an_idle_instance_takes_over_events_waiting_behind_a_long_one(scf: Any, tmp_path: Path) -> None:
    scf.create_function("pair", HANDLER, async_run=True, concurrency=2)
    long_started, short_started = tmp_path / "long", tmp_path / "short"
    long_ev = scf.invoke("pair", {"gate": str(tmp_path / "long-gate"), "touch": str(long_started)})
    short_ev = scf.invoke("pair", {"gate": str(tmp_path / "short-gate"), "touch": str(short_started)})
    wait_until(lambda: long_started.exists() and short_started.exists(), 30, "both to start")
    long_pid = int(long_started.read_text())
    behind = [scf.invoke("pair", {}) for _ in range(6)]
    wait_until(lambda: any(is_ahead(ev) for ev in behind), 20, "events to be sent ahead")
    (tmp_path / "short-gate").touch()  # the long one keeps its instance; everything else must still run
    done, not_done = scf.wait([short_ev, *behind], timeout=60)
    assert not not_done
    assert all(ev.result()["pid"] != long_pid for ev in behind)
    assert long_ev.status == "RUNNING"
    (tmp_path / "long-gate").touch()
    assert long_ev.wait(30) == "FINISHED"


def _on_engine_thread(engine: Any, fn: Any) -> None:
    """Run ``fn`` on the engine thread (its poller is not thread-safe) and wait for it."""
    done = threading.Event()
    engine.loop.post(lambda: (fn(), done.set()))
    assert done.wait(10)


class Unread:
    """Makes the engine stop reading some of an instance's fds (their data waits in the kernel) until
    ``resume``; both run on the engine thread."""

    def __init__(self, engine: Any, inst: Any, fds: list[int]) -> None:
        self.engine, self.inst, self.fds = engine, inst, fds
        self.held: dict[int, Any] = {}

    def hold(self) -> None:
        _on_engine_thread(self.engine, self.hold_now)

    def resume(self) -> None:
        _on_engine_thread(self.engine, self.resume_now)

    def hold_now(self) -> None:
        for fd in self.fds:
            self.held[fd] = self.engine.loop.poller.data[fd]
            self.engine.loop.poller.unregister(fd)

    def resume_now(self) -> None:
        for fd, data in self.held.items():
            if (fd in self.inst.open_fds or fd == self.inst.pidfd) and fd not in self.engine.loop.poller.data:
                self.engine.loop.poller.register(fd, data)



@pytest.mark.parametrize("kill", ["terminate", "timeout"])
def test_a_kill_meant_for_an_event_that_returned_spares_the_one_that_started_after_it(
        scf: Any, tmp_path: Path, kill: str) -> None:
    """The worker started e2 (so e1 returned), but the engine has not read e1's "done" yet: a terminate or a
    timeout aimed at e1 must find e2 started, end e1 FINISHED from its "done", and kill nothing."""
    timeout = 3 if kill == "timeout" else 300
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path, second={"gate": str(tmp_path / "gate2")}, timeout=timeout)
    engine = _engine()
    inst = next(i for i in list(engine.dispatcher.instances) if i.pid == pid)
    unread = Unread(engine, inst, [inst.conn_fd, *inst.streams])  # its "done" and lines wait in the kernel
    unread.hold()
    try:
        (tmp_path / "gate1").touch()
        wait_until(lambda: (tmp_path / "e2-ran").exists(), 30, "e2 to start")
        assert e1.status == "RUNNING" and e2.status == "QUEUED"  # what the engine has seen so far
        if kill == "terminate":
            assert e1.terminate() == "FINISHED"
        else:
            assert e1.wait(30) == "FINISHED"  # its timer fired after it had returned
    finally:
        unread.resume()
    assert e1.result(timeout=5)["pid"] == pid
    wait_until(lambda: e2.status == "RUNNING", 10, "e2 to be seen running")
    (tmp_path / "gate2").touch()
    assert e2.result(timeout=30)["pid"] == pid  # the same instance: nothing was killed
    own_logs(e1, f"after gate {e1.request_id}")
    own_logs(e2, f"after gate {e2.request_id}")


def test_a_finished_event_on_an_instance_being_killed_leaves_it_to_die(scf: Any, tmp_path: Path) -> None:
    """e1's "done" is read but its END markers are not when e1 is terminated (the kill wins): once the markers
    come, e1 ends FINISHED (it returned) and the dying instance must not be given the next event."""
    scf.create_function("one", HANDLER, async_run=True, concurrency=1, timeout=300)
    started = tmp_path / "e1-started"
    e1 = scf.invoke("one", {"gate": str(tmp_path / "gate1"), "touch": str(started)})
    pid = int(wait_until(lambda: started.exists() and started.read_text(), 30, "e1 to start"))  # type: ignore[arg-type]
    engine = _engine()
    inst = next(i for i in list(engine.dispatcher.instances) if i.pid == pid)
    unread = Unread(engine, inst, list(inst.streams))  # the pipes only: "done" comes in before the END markers
    unread.hold()
    try:
        (tmp_path / "gate1").touch()
        wait_until(lambda: len(inst.dones) == 1, 10, "e1's done to be read")
        e1.terminate(wait=False)
        wait_until(lambda: inst.state == "dying", 10, "the instance to be dying")
        e2 = scf.invoke("one", {})
        wait_until(lambda: in_fifo(e2), 10, "e2 to wait for room")
    finally:
        unread.resume()
    done, not_done = scf.wait([e1, e2], timeout=30)
    assert not not_done
    assert e1.status in ("FINISHED", "ABORTED")
    assert e2.status == "FINISHED" and e2.result()["pid"] != pid


def test_room_freed_by_a_kill_takes_events_waiting_behind_a_long_one(scf: Any, tmp_path: Path) -> None:
    scf.create_function("pair", HANDLER, async_run=True, concurrency=2)
    long_started, other_started = tmp_path / "long", tmp_path / "other"
    long_ev = scf.invoke("pair", {"gate": str(tmp_path / "long-gate"), "touch": str(long_started)})
    other = scf.invoke("pair", {"gate": str(tmp_path / "other-gate"), "touch": str(other_started)})
    wait_until(lambda: long_started.exists() and other_started.exists(), 30, "both to start")
    behind = [scf.invoke("pair", {}) for _ in range(3)]
    wait_until(lambda: all(is_ahead(ev) for ev in behind), 20, "them to be sent ahead")
    assert other.terminate() == "ABORTED"  # its instance is killed: room for a new one
    done, not_done = scf.wait(behind, timeout=30)
    assert not not_done and long_ev.status == "RUNNING"
    (tmp_path / "long-gate").touch()
    assert long_ev.wait(30) == "FINISHED"


def test_big_events_are_not_sent_ahead(scf: Any, tmp_path: Path) -> None:
    # A busy instance does not read its socket: only events that surely fit in its buffer go ahead, so the
    # engine never blocks on a send (and a terminate still works at once).
    from scf_nb.instances.loky.sending import AHEAD_MAX_BYTES

    scf.create_function("one", HANDLER, async_run=True, concurrency=1, timeout=300)
    started = tmp_path / "e1-started"
    e1 = scf.invoke("one", {"gate": str(tmp_path / "gate1"), "touch": str(started)})
    wait_until(started.exists, 30, "e1 to start")
    cjk = "\u6f22" * (AHEAD_MAX_BYTES // 3 + 1)  # fewer characters than the limit, more bytes (3 each)
    big = [scf.invoke("one", {"pad": cjk}), *(scf.invoke("one", {"pad": "x" * (AHEAD_MAX_BYTES + 1)})
                                             for _ in range(3))]
    small = scf.invoke("one", {})
    wait_until(lambda: all(in_fifo(ev) for ev in [*big, small]), 10, "them to wait in the FIFO")
    assert not any(is_ahead(ev) for ev in big) and not is_ahead(small)  # FIFO: nothing jumps the big ones
    assert e1.terminate() == "ABORTED"
    done, not_done = scf.wait([*big, small], timeout=30)
    assert not not_done and {ev.status for ev in done} == {"FINISHED"}


def test_a_terminate_waits_for_a_stalled_worker_to_answer(scf: Any, tmp_path: Path) -> None:
    """The worker holds its records' lock (stalled mid-claim): the engine cannot know whether the event sent
    ahead has started, so it neither aborts it nor kills anything until it can ask."""
    import fcntl

    e1, e2, pid = _busy_with_one_behind(scf, tmp_path)
    fd = os.open(_engine().backend.ahead[("default", "one")].shared.path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert e2.terminate(wait=False) == "QUEUED"
        assert e2.wait(timeout=0.3) == "QUEUED" and e1.status == "RUNNING"
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert e2.wait(timeout=10) == "ABORTED"
    (tmp_path / "gate1").touch()
    assert e1.result(timeout=30)["pid"] == pid
    assert not (tmp_path / "e2-ran").exists()


def test_an_instance_killed_after_running_what_was_sent_ahead_loses_none_of_it(scf: Any, tmp_path: Path) -> None:
    """The instance runs everything sent ahead, then dies (SIGKILL from outside) before the engine has read
    their "done" messages: every one of them is FINISHED with its own lines, and the next event runs."""
    e1, _e2, pid = _busy_with_one_behind(scf, tmp_path)
    engine = _engine()
    inst = next(i for i in list(engine.dispatcher.instances) if i.pid == pid)
    from scf_nb.instances.loky.sending import AHEAD

    more = AHEAD // 2  # sending ahead stops past half of AHEAD pending (it refills in batches): later waits
    ahead = [_e2, *(scf.invoke("one", {"lines": 3, "touch": str(tmp_path / f"a{i}")}) for i in range(more))]
    wait_until(lambda: len(pending()) == more + 1, 20, "the events to be sent ahead")
    later = scf.invoke("one", {"lines": 3})
    unread = Unread(engine, inst, [inst.conn_fd, *inst.streams, inst.pidfd])  # the engine stops reading it

    def idle_in_recv() -> bool:  # all four returned: the worker waits for the next run
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
        return state == "S" and ("read" in wchan or "recv" in wchan)

    def dead() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
        except OSError:  # reaped already
            return True

    def kill_then_read() -> None:
        os.kill(pid, signal.SIGKILL)
        wait_until(dead, 10, "the instance to be dead")
        unread.resume_now()
        engine.backend.channels.on_conn(inst.conn_fd, inst)  # the socket first, as epoll may well order it

    unread.hold()
    (tmp_path / "gate1").touch()
    wait_until(lambda: all((tmp_path / f"a{i}").exists() for i in range(more)), 30, "the events sent ahead to run")
    wait_until(idle_in_recv, 30, "the worker to wait for its next run")
    _on_engine_thread(engine, kill_then_read)
    done, not_done = scf.wait([e1, *ahead, later], timeout=30)
    assert not not_done
    for ev in [e1, *ahead]:
        assert ev.status == "FINISHED", ev.info()
        assert all(line.endswith(ev.request_id) for line in ev.logs()["line"])
    assert later.status == "FINISHED" and later.result()["pid"] != pid


def test_shutdown_fails_an_event_sent_ahead_as_never_run(scf: Any, tmp_path: Path) -> None:
    e1, e2, pid = _busy_with_one_behind(scf, tmp_path)
    scf.shutdown()
    assert e1.status == "FAILED" and e2.status == "FAILED"
    assert not (tmp_path / "e2-ran").exists()
    frame = scf.list_events("one", status="FAILED").set_index("request_id")
    assert "before the event ran" in frame.loc[e2.request_id, "error_message"]
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 20, "the instance to be gone")


def test_terminates_at_random_in_a_stream_of_events(scf: Any) -> None:
    """Hundreds of events flowing through two instances with events sent ahead, and terminates aimed at random
    ones: each ends exactly once, a terminated one ABORTED (or FINISHED if it returned first), every other one
    FINISHED with its own lines."""
    scf.configure(max_qps=1e9)
    try:
        scf.create_function("stream", HANDLER, async_run=True, concurrency=2)
        rng = random.Random(7)
        counts = [rng.choice([0, 0, 0, 50]) for _ in range(600)]
        evs = [scf.invoke("stream", {"lines": n}) for n in counts]
        targets = sorted(rng.sample(range(len(evs)), 60))
        outcome: dict[int, str] = {}
        for i in targets:
            try:
                outcome[i] = evs[i].terminate()
            except scf.ScfError as e:  # it had ended already
                assert e.code == "FailedOperation.AsyncEventStatus"
                outcome[i] = "FINISHED"
        done, not_done = scf.wait(evs, timeout=120)
        assert not not_done
        aborted = 0
        for i, ev in enumerate(evs):
            if i in outcome:
                assert ev.status == outcome[i] and ev.status in ("ABORTED", "FINISHED")
                aborted += ev.status == "ABORTED"
                assert all(line.endswith(ev.request_id) for line in ev.logs()["line"])
            else:
                assert ev.status == "FINISHED", (i, ev.info())
                assert ev.result()["rid"] == ev.request_id
                own_logs(ev, *[f"line {k} {ev.request_id}" for k in range(counts[i])], f"after gate {ev.request_id}")
        assert aborted > 0
    finally:
        scf.configure(max_qps=type(scf.configure())().max_qps)


def test_records_reserved_ahead_never_overwrite_an_undecided_event(tmp_path: Path) -> None:
    """The engine makes records PENDING ``RESERVE`` at a time, before the events that will use them exist (a
    worker claims only among the runs it was sent, so a record reserved early is no event to anyone); an
    early reservation stops at a record that still holds an undecided event (the ring is 256 records)."""
    ahead = Ahead(str(tmp_path / "records"))
    assert ahead.reserve(1) == 1 and ahead.reserved == RESERVE  # one take of the lock for the next RESERVE
    while ahead.seq < RECORDS - 2:
        ahead.seq += 1  # (events that came and were decided: here, left PENDING, as if their runs were pending)
        assert ahead.reserve(1) == 1
    assert ahead.reserved == RECORDS  # the ring is full: record RECORDS + 1 would overwrite undecided record 1
    assert ahead.reserve(3) == 2 and ahead.reserve(3) == 2  # so the ring stops it, however often it is asked
    assert ahead.shared.revoke(1) is True  # record 1 is decided now: its place can be reused
    assert ahead.reserve(3) == 3 and ahead.reserved >= RECORDS + 1
    ahead.shared.remove()


def test_records_decide_start_or_take_back(tmp_path: Path) -> None:
    shared = Shared(str(tmp_path / "records"))
    first, second = Claims(shared.path, owner=7), Claims(shared.path, owner=8)
    assert shared.reserve(1) and shared.reserve(2) and shared.reserve(3)
    assert first.claim_first([1, 2, 3]) == (0, 0)  # the oldest PENDING one (its index), none decided before it
    assert shared.revoke(1) is False and shared.started_by([1, 2]) == {1: 7}  # started: cannot be taken back
    assert second.claim_first([1, 2, 3]) == (1, 1)  # the other instance skips what the first one took
    assert shared.revoke(3) is True and shared.revoke(3) is True  # taken back (asking again is harmless)
    assert first.claim_first([3]) == (None, 1)  # nobody starts it any more: drop it
    assert shared.reserve(4) and shared.ban(7, [1, 2, 4]) == [1]  # banned: what it started so far ...
    assert first.claim_first([4]) == (None, 0)  # ... and nothing more (keep it for later)
    assert second.claim_first([4 + RECORDS]) == (None, 1)  # a number it was never sent
    shared.unban(7)
    assert first.claim_first([4]) == (0, 0)
    assert shared.reserve(3 + RECORDS)  # a decided record is reused
    assert shared.reserve(5) and not shared.reserve(5 + RECORDS)  # one holding an undecided event is not
    first.close()
    second.close()
    shared.remove()
    assert not os.path.exists(shared.path)
